/**
 * Hostile input at the operator services, from real grpc-js clients: raw bytes on a unary and a
 * streaming method (credential checked before decoding), an event no stream can encode, many
 * watches opened and cancelled at once, racing decisions, and an over-deep policy.
 */
import { create } from '@bufbuild/protobuf';
import {
  Metadata,
  status,
  type Client,
  type ServiceDefinition,
  type ServiceError,
} from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import {
  ApprovalServiceWatchRequestSchema,
  ApproveRequestSchema,
  type ApprovalServiceWatchResponse,
} from '../../src/gen/fabric/v1/approval_pb.js';
import { EventServiceWatchRequestSchema } from '../../src/gen/fabric/v1/events_pb.js';
import { AddPolicyRequestSchema } from '../../src/gen/fabric/v1/policy_pb.js';
import { APPROVAL_SERVICE_DEFINITION } from '../../src/rpc/approval-service.js';
import { EVENT_SERVICE_DEFINITION } from '../../src/rpc/events-service.js';
import { startGrpcServer, type GrpcServer } from '../../src/rpc/grpc-server.js';
import { POLICY_SERVICE_DEFINITION } from '../../src/rpc/policy-service.js';
import { grpcClient, openStream, unary } from '../fixtures/grpc-client.js';

const ADMIN = 'admin-credential-for-hostile-tests-0123456789';
/** Not a protobuf message: a field tag followed by a length that runs past the end. */
const GARBAGE = Buffer.from([0x0a, 0xff, 0xff, 0xff, 0x0f, 0x01]);

/** `definition` with requests sent as the given bytes, unchanged. */
function raw(definition: ServiceDefinition): ServiceDefinition {
  return Object.fromEntries(
    Object.entries(definition).map(([name, m]) => [
      name,
      { ...m, requestSerialize: (b: Buffer) => b },
    ]),
  );
}

function approvalListeners(fabric: AgentFabric): number {
  return fabric.approvals.listenerCount('created') + fabric.approvals.listenerCount('resolved');
}

describe('operator services under hostile input (real server, real grpc-js clients)', () => {
  let fabric: AgentFabric;
  let server: GrpcServer;
  let agent: { id: string; credential: string };
  let approvals: Client;
  let policies: Client;

  beforeAll(async () => {
    fabric = new AgentFabric({}, { adminCredentials: [ADMIN] });
    agent = await fabric.spawn({ model: 'm', name: 'hostile', executor: 'remote' });
    server = await startGrpcServer(fabric);
    approvals = grpcClient(APPROVAL_SERVICE_DEFINITION, server.address);
    policies = grpcClient(POLICY_SERVICE_DEFINITION, server.address);
  });

  afterAll(async () => {
    approvals?.close();
    policies?.close();
    await server?.close();
    await fabric?.close();
  });

  it('checks the credential before decoding, on unary and streaming methods alike', async () => {
    const rawPolicies = grpcClient(raw(POLICY_SERVICE_DEFINITION), server.address);
    const rawEvents = grpcClient(raw(EVENT_SERVICE_DEFINITION), server.address);
    try {
      for (const [credential, code, fabricCode] of [
        ['', status.UNAUTHENTICATED, 'FABRIC_ERR_UNAUTHENTICATED'],
        [agent.credential, status.PERMISSION_DENIED, 'FABRIC_ERR_PERMISSION_DENIED'],
        [ADMIN, status.INVALID_ARGUMENT, 'FABRIC_ERR_INVALID_ARGUMENT'],
      ] as const) {
        const md = new Metadata();
        if (credential) md.set('authorization', `Bearer ${credential}`);
        const unaryErr = await new Promise<ServiceError | null>((resolve) =>
          (
            rawPolicies as unknown as Record<
              string,
              (b: Buffer, m: Metadata, cb: (e: ServiceError | null) => void) => void
            >
          ).evaluatePolicy!.call(rawPolicies, GARBAGE, md, (e) => resolve(e)),
        );
        expect(unaryErr).toMatchObject({ code });
        expect(unaryErr!.metadata.get('fabric-error-code')).toEqual([fabricCode]);
        const streamErr = await openStream(rawEvents, 'watch', GARBAGE, credential).ended;
        expect(streamErr).toMatchObject({ code });
        expect(streamErr!.metadata.get('fabric-error-code')).toEqual([fabricCode]);
      }
    } finally {
      rawPolicies.close();
      rawEvents.close();
    }
  });

  it('an event no stream can encode ends the stream (INTERNAL), not the call that emitted it', async () => {
    const baseline = approvalListeners(fabric);
    const watch = openStream<ApprovalServiceWatchResponse>(
      approvals,
      'watch',
      create(ApprovalServiceWatchRequestSchema),
      ADMIN,
    );
    await vi.waitFor(() => expect(approvalListeners(fabric)).toBe(baseline + 2));
    // A library caller's parameters may hold what JSON cannot (a BigInt).
    const a = fabric.approvals.create({ agentId: agent.id, tool: 'x', params: { n: 1n } });
    expect(fabric.approvals.getApproval(a.id)?.status).toBe('pending');
    expect(await watch.ended).toMatchObject({ code: status.INTERNAL });
    expect(approvalListeners(fabric)).toBe(baseline);
    fabric.approvals.deny(a.id, { approver: 'test' }); // emits to no stream: nothing throws
  });

  it('many watches opened and cancelled at once leave no listener behind', async () => {
    const baseline = approvalListeners(fabric);
    const events = grpcClient(EVENT_SERVICE_DEFINITION, server.address);
    try {
      const watches = Array.from({ length: 40 }, (_, i) =>
        i % 2 === 0
          ? openStream(approvals, 'watch', create(ApprovalServiceWatchRequestSchema), ADMIN)
          : openStream(events, 'watch', create(EventServiceWatchRequestSchema), ADMIN),
      );
      await vi.waitFor(() => expect(approvalListeners(fabric)).toBe(baseline + 80));
      for (const w of watches) w.stream.cancel();
      for (const w of watches) expect(await w.ended).toMatchObject({ code: status.CANCELLED });
      await vi.waitFor(() => expect(approvalListeners(fabric)).toBe(baseline));
      expect(fabric.lifecycle.events.listenerCount('agent.spawned')).toBe(0);
      expect(fabric.budgets.listenerCount('warning')).toBe(0);
    } finally {
      events.close();
    }
  });

  it('racing approvals of one call: exactly one decision wins', async () => {
    const a = fabric.approvals.create({ agentId: agent.id, tool: 'x', params: {} });
    const results = await Promise.allSettled(
      Array.from({ length: 10 }, () =>
        unary(approvals, 'approve', create(ApproveRequestSchema, { id: a.id }), ADMIN),
      ),
    );
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    for (const r of results) {
      if (r.status === 'rejected') {
        expect((r.reason as ServiceError).code).toBe(status.FAILED_PRECONDITION);
      }
    }
    expect(fabric.approvals.getApproval(a.id)).toMatchObject({
      status: 'approved',
      approver: 'admin',
    });
  });

  it('a policy nested past the input bounds is refused and not stored', async () => {
    let when: unknown = true;
    for (let i = 0; i < 500; i++) when = { '!!': [when] };
    const json = JSON.stringify({ name: 'deep', rules: [{ tool: '*', action: 'allow', when }] });
    const err = await unary(
      policies,
      'addPolicy',
      create(AddPolicyRequestSchema, { policyJson: new TextEncoder().encode(json) }),
      ADMIN,
    ).catch((e: ServiceError) => e);
    expect(err).toMatchObject({ code: status.INVALID_ARGUMENT });
    expect(fabric.policies.getPolicy('deep')).toBeUndefined();
  });
});
