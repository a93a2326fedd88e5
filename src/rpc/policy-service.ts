/**
 * `fabric.v1.PolicyService` (proto/fabric/v1/policy.proto): operators list, add, replace and
 * remove the fabric's policies, and evaluate a tool call as a dry run.
 *
 * A policy arriving as a message is turned into the library's plain shape and handed to
 * `PolicyEngine.addPolicy`, so it is validated exactly as a library caller's would be (an
 * unset enum becomes a missing field, an unknown enum number an invalid value, for the
 * library to name) — and, over durable state, committed to the state file before the call
 * answers (`PolicyEngine.persistTo`, started by the sidecar after the config's policies). The evaluation is `PolicyEngine.evaluateAsync` — the side-effect-free half
 * of the pipeline's policy step (a policy service behind a `policy-grpc` plugin is asked): no approval is opened, no budget reserved, no audit record
 * written, and the agent's record is only read (`lifecycle.peek`, not a heartbeat).
 *
 * @module
 */
import { create, type JsonObject } from '@bufbuild/protobuf';
import { InvalidArgumentError, PolicyNotFoundError } from '../errors.js';
import type { AgentFabric } from '../fabric.js';
import { checkInputBounds, DEFAULT_INPUT_BOUNDS } from '../gateway/input-bounds.js';
import {
  AddPolicyResponseSchema,
  EvaluatePolicyResponseSchema,
  GetPolicyResponseSchema,
  ListPoliciesResponseSchema,
  PolicyAction,
  PolicyAuditEntrySchema,
  PolicyMode,
  PolicyRuleSchema,
  PolicySchema,
  PolicyService,
  RemovePolicyResponseSchema,
  ReplacePolicyResponseSchema,
  type Policy,
} from '../gen/fabric/v1/policy_pb.js';
import type { NormalizedPolicy, PolicyAction as FabricAction } from '../policy/policy.js';
import { policyWarnings } from '../policy/conditions.js';
import { grpcDefinition } from './grpc-definition.js';
import {
  fromJsonBytes,
  fromValue,
  toJsonBytes,
  toValue,
  type ServiceImplementation,
} from './rpc-call.js';

/** The grpc-js definition of `fabric.v1.PolicyService` (for clients). */
export const POLICY_SERVICE_DEFINITION = grpcDefinition(PolicyService);

const ACTION: Readonly<Record<FabricAction, PolicyAction>> = {
  allow: PolicyAction.ALLOW,
  deny: PolicyAction.DENY,
  require_approval: PolicyAction.REQUIRE_APPROVAL,
};
const ACTION_NAME = new Map(Object.entries(ACTION).map(([k, v]) => [v, k]));

/** The library's name of an enum number: unset → undefined; unknown → a value it rejects. */
function enumName(names: ReadonlyMap<number, string>, n: number): string | undefined {
  if (n === 0) return undefined;
  return names.get(n) ?? `unknown enum value ${n}`;
}

const MODE_NAME = new Map<number, string>([
  [PolicyMode.ENFORCE, 'enforce'],
  [PolicyMode.AUDIT, 'audit'],
]);

/** A JSON object as a `google.protobuf.Struct` field (protobuf-es holds those as JSON). */
function toStruct(v: object): JsonObject {
  return JSON.parse(JSON.stringify(v)) as JsonObject;
}

/** A `fabric.v1.Policy` in the library's plain shape (validated by the engine, not here). */
function policyInput(p: Policy): Record<string, unknown> {
  return {
    name: p.name,
    rules: p.rules.map((r, i) => ({
      tool: r.tool,
      action: enumName(ACTION_NAME, r.action),
      ...(r.conditions === undefined ? {} : { conditions: r.conditions }),
      ...(r.when === undefined ? {} : { when: fromValue(r.when, `policy.rules[${i}].when`) }),
      ...(r.reason === '' ? {} : { reason: r.reason }),
    })),
    // Number() of an int64 beyond 2^53 is not a safe integer: the engine rejects it by name.
    priority: Number(p.priority),
    ...(p.enabled === undefined ? {} : { enabled: p.enabled }),
    ...(p.mode === PolicyMode.UNSPECIFIED ? {} : { mode: enumName(MODE_NAME, p.mode) }),
    ...(p.description === '' ? {} : { description: p.description }),
  };
}

/** The policy of an Add/Replace request: exactly one of `policy` and `policy_json`. */
function requestedPolicy(req: { policy?: Policy | undefined; policyJson: Uint8Array }): unknown {
  const hasJson = req.policyJson.length > 0;
  if ((req.policy === undefined) === !hasJson) {
    throw new InvalidArgumentError('policy', 'set exactly one of policy and policy_json');
  }
  if (req.policy !== undefined) return policyInput(req.policy);
  const json = fromJsonBytes(req.policyJson, 'policy_json');
  const tooBig = checkInputBounds(json, DEFAULT_INPUT_BOUNDS, 'policy_json');
  if (tooBig !== undefined) throw tooBig;
  return json;
}

/** A stored policy as a `fabric.v1.Policy` (with its lossless JSON). */
export function policyMessage(p: NormalizedPolicy): Policy {
  return create(PolicySchema, {
    name: p.name,
    rules: p.rules.map((r) =>
      create(PolicyRuleSchema, {
        tool: r.tool,
        action: ACTION[r.action],
        ...(r.conditions === undefined ? {} : { conditions: toStruct(r.conditions) }),
        ...(r.when === undefined ? {} : { when: toValue(r.when) }),
        reason: r.reason ?? '',
      }),
    ),
    priority: BigInt(p.priority),
    enabled: p.enabled,
    mode: p.mode === 'audit' ? PolicyMode.AUDIT : PolicyMode.ENFORCE,
    description: p.description ?? '',
    policyJson: toJsonBytes(p),
  });
}

/** The parameters of an evaluation: a JSON object within the gateway's input bounds. */
function evaluationParams(req: {
  params?: Parameters<typeof fromValue>[0];
  paramsJson: Uint8Array;
}): Record<string, unknown> {
  const hasJson = req.paramsJson.length > 0;
  if (hasJson && req.params !== undefined) {
    throw new InvalidArgumentError('params', 'set at most one of params and params_json');
  }
  const params = hasJson
    ? fromJsonBytes(req.paramsJson, 'params_json')
    : req.params === undefined
      ? {}
      : fromValue(req.params, 'params');
  if (params === null || typeof params !== 'object' || Array.isArray(params)) {
    throw new InvalidArgumentError('params', 'must be a JSON object');
  }
  const tooBig = checkInputBounds(params, DEFAULT_INPUT_BOUNDS, 'params');
  if (tooBig !== undefined) throw tooBig;
  return params as Record<string, unknown>;
}

function policyName(name: string): string {
  if (name === '') throw new InvalidArgumentError('name', 'must be a non-empty policy name');
  return name;
}

/** `fabric.v1.PolicyService` over `fabric`, for the administrator. */
export function policyService(fabric: AgentFabric): ServiceImplementation<typeof PolicyService> {
  const engine = fabric.policies;
  return {
    service: PolicyService,
    caller: 'admin',
    unary: {
      listPolicies: async () =>
        create(ListPoliciesResponseSchema, {
          policies: engine.listPolicies().map(policyMessage),
        }),
      getPolicy: async (_caller, req) => {
        const p = engine.getPolicy(policyName(req.name));
        if (p === undefined) throw new PolicyNotFoundError(req.name);
        return create(GetPolicyResponseSchema, { policy: policyMessage(p) });
      },
      addPolicy: async (_caller, req) => {
        const stored = engine.addPolicy(requestedPolicy(req));
        return create(AddPolicyResponseSchema, {
          policy: policyMessage(stored),
          warnings: policyWarnings(stored),
        });
      },
      replacePolicy: async (_caller, req) => {
        const input = requestedPolicy(req);
        const name = (input as { name?: unknown } | null)?.name;
        // Checked and replaced in one synchronous step: nothing can add or remove it between.
        if (typeof name === 'string' && engine.getPolicy(name) === undefined) {
          throw new PolicyNotFoundError(name);
        }
        const stored = engine.addPolicy(input, { replace: true });
        return create(ReplacePolicyResponseSchema, {
          policy: policyMessage(stored),
          warnings: policyWarnings(stored),
        });
      },
      removePolicy: async (_caller, req) => {
        if (!engine.removePolicy(policyName(req.name))) throw new PolicyNotFoundError(req.name);
        return create(RemovePolicyResponseSchema);
      },
      evaluatePolicy: async (_caller, req, signal) => {
        if (req.tool === '')
          throw new InvalidArgumentError('tool', 'must be a non-empty tool name');
        const params = evaluationParams(req);
        const attributes = req.attributes;
        const rec = req.agentId === '' ? undefined : fabric.lifecycle.peek(req.agentId);
        if (rec !== undefined && (req.poolId !== '' || Object.keys(req.labels).length > 0)) {
          throw new InvalidArgumentError(
            'agent_id',
            `names a known agent (its pool and labels come from its record): leave pool_id and labels empty`,
          );
        }
        const poolId = rec === undefined ? req.poolId || undefined : rec.poolId;
        const d = await engine.evaluateAsync(
          {
            agentId: req.agentId,
            tool: req.tool,
            params,
            ...(poolId === undefined ? {} : { poolId }),
            labels: rec === undefined ? { ...req.labels } : rec.labels,
            ...(attributes === undefined ? {} : { attributes }),
          },
          // A dry run its client gave up (cancelled, past its deadline) stops waiting for the
          // policy providers asked, and tells them.
          signal,
        );
        return create(EvaluatePolicyResponseSchema, {
          action: ACTION[d.action],
          allowed: d.allowed,
          policy: d.policy ?? '',
          ...(d.rule === null ? {} : { rule: d.rule }),
          reason: d.reason,
          audit: (d.audit ?? []).map((a) =>
            create(PolicyAuditEntrySchema, {
              policy: a.policy,
              rule: a.rule,
              action: ACTION[a.action],
              reason: a.reason,
            }),
          ),
          knownAgent: rec !== undefined,
        });
      },
    },
  };
}
