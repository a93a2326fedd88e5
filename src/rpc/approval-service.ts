/**
 * `fabric.v1.ApprovalService` (proto/fabric/v1/approval.proto): operators list, inspect, approve
 * and deny the approvals `require_approval` policies open, and watch them come and go — over the
 * fabric's public {@link ApprovalManager} API only (its `created`/`resolved` events and its
 * list/get/approve/deny methods).
 *
 * The approver recorded on a decision is the admin credential's name, never a name the request
 * supplies. Parameters are shown as the copy the approval holds (what the policy decided on, its
 * unresolved-path markers showing what the call forwards in their place; see `approvalRequest`),
 * not masked.
 *
 * @module
 */
import { create } from '@bufbuild/protobuf';
import { timestampFromMs } from '@bufbuild/protobuf/wkt';
import { ApprovalNotFoundError, InvalidArgumentError } from '../errors.js';
import type { AgentFabric } from '../fabric.js';
import {
  ApprovalEventKind,
  ApprovalEventSchema,
  ApprovalSchema,
  ApprovalService,
  ApprovalServiceWatchResponseSchema,
  ApprovalStatus,
  ApproveResponseSchema,
  DenyResponseSchema,
  GetApprovalResponseSchema,
  ListApprovalsResponseSchema,
  type Approval,
  type ApprovalEvent,
} from '../gen/fabric/v1/approval_pb.js';
import type {
  Approval as FabricApproval,
  ApprovalManager,
  ApprovalStatus as FabricApprovalStatus,
} from '../policy/approval-manager.js';
import { grpcDefinition } from './grpc-definition.js';
import {
  forwardEvents,
  sequencedSender,
  toJsonBytes,
  toValue,
  type ListenerGuard,
  type ServiceImplementation,
  type StreamSender,
} from './rpc-call.js';

/** The grpc-js definition of `fabric.v1.ApprovalService` (for clients). */
export const APPROVAL_SERVICE_DEFINITION = grpcDefinition(ApprovalService);

const STATUS: Readonly<Record<FabricApprovalStatus, ApprovalStatus>> = {
  pending: ApprovalStatus.PENDING,
  approved: ApprovalStatus.APPROVED,
  denied: ApprovalStatus.DENIED,
  expired: ApprovalStatus.EXPIRED,
};

const STATUS_FILTER: ReadonlyMap<ApprovalStatus, FabricApprovalStatus> = new Map(
  Object.entries(STATUS).map(([k, v]) => [v, k as FabricApprovalStatus]),
);

/**
 * An approval as a `fabric.v1.Approval`; without `params_json` when `omitParamsJson`
 * (ListApprovals' `omit_params_json`).
 */
export function approvalMessage(a: FabricApproval, omitParamsJson = false): Approval {
  return create(ApprovalSchema, {
    id: a.id,
    agentId: a.agentId,
    poolId: a.poolId ?? '',
    tool: a.tool,
    params: toValue(a.params),
    ...(omitParamsJson ? {} : { paramsJson: toJsonBytes(a.params) }),
    policy: a.policy ?? '',
    ...(a.rule === null ? {} : { rule: a.rule }),
    reason: a.reason ?? '',
    status: STATUS[a.status],
    createdAt: timestampFromMs(a.createdAt),
    expiresAt: timestampFromMs(a.expiresAt),
    ...(a.decidedAt === undefined ? {} : { decidedAt: timestampFromMs(a.decidedAt) }),
    approver: a.approver ?? '',
    decisionReason: a.decisionReason ?? '',
    orphaned: a.orphaned === true,
  });
}

/** An approval's `created` or `resolved` event as a `fabric.v1.ApprovalEvent`. */
export function approvalEvent(a: FabricApproval, existing = false): ApprovalEvent {
  const kind =
    a.status === 'pending'
      ? ApprovalEventKind.REQUESTED
      : a.status === 'expired'
        ? ApprovalEventKind.EXPIRED
        : ApprovalEventKind.DECIDED;
  return create(ApprovalEventSchema, { kind, approval: approvalMessage(a), existing });
}

/**
 * Subscribes to `approvals` and sends an event for every approval pending now (`existing` set),
 * then for each one created or resolved; returns the unsubscription. Listeners are wrapped by
 * `guard` (see `forwardEvents`).
 *
 * Subscribing and listing happen in one synchronous step, and the manager emits synchronously
 * after each change, so no approval falls between the list and the first live event, and none
 * is sent twice. The pending ones go out with `send.paced`: as the client reads them, not in one
 * burst — a client that keeps up gets them all however many are pending (a burst of more than
 * the stream's bound overflowed every watch at once), and events that happen meanwhile follow
 * them. Each is shown as it was when the watch started (an approval's snapshot is immutable).
 */
export function subscribeApprovals(
  approvals: ApprovalManager,
  guard: ListenerGuard,
  send: StreamSender<ApprovalEvent>,
): () => void {
  const onEvent = guard((a: FabricApproval) => send(approvalEvent(a)));
  approvals.on('created', onEvent);
  approvals.on('resolved', onEvent);
  guard(() => {
    send.paced(approvals.listApprovals({ status: 'pending' }), (a) => approvalEvent(a, true));
  })();
  return () => {
    approvals.off('created', onEvent);
    approvals.off('resolved', onEvent);
  };
}

function approvalId(id: string): string {
  if (id === '') throw new InvalidArgumentError('id', 'must be a non-empty approval id');
  return id;
}

/** `fabric.v1.ApprovalService` over `fabric`, for the administrator. */
export function approvalService(
  fabric: AgentFabric,
): ServiceImplementation<typeof ApprovalService> {
  const approvals = fabric.approvals;
  return {
    service: ApprovalService,
    caller: 'admin',
    unary: {
      listApprovals: async (_caller, req) => {
        const status = STATUS_FILTER.get(req.status);
        if (req.status !== ApprovalStatus.UNSPECIFIED && status === undefined) {
          throw new InvalidArgumentError('status', `is not an ApprovalStatus (${req.status})`);
        }
        const list = approvals.listApprovals({
          ...(status === undefined ? {} : { status }),
          ...(req.agentId === '' ? {} : { agentId: req.agentId }),
        });
        // The newest `limit` (the list is oldest first).
        const shown = req.limit > 0 && list.length > req.limit ? list.slice(-req.limit) : list;
        return create(ListApprovalsResponseSchema, {
          approvals: shown.map((a) => approvalMessage(a, req.omitParamsJson)),
        });
      },
      getApproval: async (_caller, req) => {
        const a = approvals.getApproval(approvalId(req.id));
        if (a === undefined) throw new ApprovalNotFoundError(req.id);
        return create(GetApprovalResponseSchema, { approval: approvalMessage(a) });
      },
      approve: async (caller, req) =>
        create(ApproveResponseSchema, {
          approval: approvalMessage(
            approvals.approve(approvalId(req.id), {
              approver: caller.id,
              ...(req.reason === '' ? {} : { reason: req.reason }),
            }),
          ),
        }),
      deny: async (caller, req) =>
        create(DenyResponseSchema, {
          approval: approvalMessage(
            approvals.deny(approvalId(req.id), {
              approver: caller.id,
              ...(req.reason === '' ? {} : { reason: req.reason }),
            }),
          ),
        }),
    },
    serverStream: {
      watch: async (_caller, _req, signal, send) => {
        const sendEvent = sequencedSender(send, (event: ApprovalEvent, sequence) =>
          create(ApprovalServiceWatchResponseSchema, { sequence, event }),
        );
        await forwardEvents(signal, (guard) => subscribeApprovals(approvals, guard, sendEvent));
      },
    },
  };
}
