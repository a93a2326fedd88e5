import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { create, toJson, type DescService } from '@bufbuild/protobuf';
import { ValueSchema } from '@bufbuild/protobuf/wkt';
import { status, type Client } from '@grpc/grpc-js';
import type { Client as McpClient } from '@modelcontextprotocol/sdk/client/index.js';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { AgentFabric } from '../../src/fabric.js';
import {
  ApprovalEventKind,
  ApprovalService,
  ApprovalServiceWatchRequestSchema,
  ApprovalStatus,
  ApproveRequestSchema,
  DenyRequestSchema,
  GetApprovalRequestSchema,
  ListApprovalsRequestSchema,
  type ApprovalServiceWatchResponse,
  type ApproveResponse,
  type DenyResponse,
  type GetApprovalResponse,
  type ListApprovalsResponse,
} from '../../src/gen/fabric/v1/approval_pb.js';
import {
  BudgetScopeSchema,
  BudgetService,
  GetBudgetStatusRequestSchema,
  RemoveBudgetLimitsRequestSchema,
  SetBudgetLimitsRequestSchema,
  type GetBudgetStatusResponse,
  type RemoveBudgetLimitsResponse,
  type SetBudgetLimitsResponse,
} from '../../src/gen/fabric/v1/budget_pb.js';
import {
  AgentEventKind,
  BudgetAlertKind,
  BudgetLimitKind,
  EventService,
  EventServiceWatchRequestSchema,
  EventTopic,
  TaskEventKind,
  type EventServiceWatchResponse,
} from '../../src/gen/fabric/v1/events_pb.js';
import {
  AddPolicyRequestSchema,
  EvaluatePolicyRequestSchema,
  GetPolicyRequestSchema,
  ListPoliciesRequestSchema,
  PolicyAction,
  PolicyMode,
  PolicyService,
  RemovePolicyRequestSchema,
  ReplacePolicyRequestSchema,
  type AddPolicyResponse,
  type EvaluatePolicyResponse,
  type GetPolicyResponse,
  type ListPoliciesResponse,
  type ReplacePolicyResponse,
} from '../../src/gen/fabric/v1/policy_pb.js';
import { APPROVAL_SERVICE_DEFINITION } from '../../src/rpc/approval-service.js';
import { BUDGET_SERVICE_DEFINITION } from '../../src/rpc/budget-service.js';
import { EVENT_SERVICE_DEFINITION } from '../../src/rpc/events-service.js';
import { POLICY_SERVICE_DEFINITION } from '../../src/rpc/policy-service.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import { TaskStatus } from '../../src/task.js';
import {
  ADMIN_TOKEN,
  agentId,
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  httpClient,
  startTestSidecar,
  tempDir,
  text,
  until,
} from '../fixtures/gateway/harness.js';
import { grpcClient, openStream, unary, unaryError } from '../fixtures/grpc-client.js';

const APPROVAL_POLICY = {
  name: 'approvals',
  priority: 100,
  rules: [
    {
      tool: 'ev__echo',
      action: 'require_approval',
      conditions: { message: 'needs approval' },
      reason: 'echoing this needs a human',
    },
  ],
};
const LABEL_POLICY = {
  name: 'red-team',
  priority: 50,
  rules: [
    {
      tool: 'ev__get-sum',
      action: 'deny',
      when: { '==': [{ var: 'agent.labels.team' }, 'red'] },
      reason: 'red team may not add',
    },
  ],
};

const enc = (v: unknown): Uint8Array => new TextEncoder().encode(JSON.stringify(v));
const dec = (b: Uint8Array): unknown => JSON.parse(new TextDecoder().decode(b));

describe('operator services over gRPC (real sidecar, real MCP upstream, real grpc-js clients)', () => {
  const auditPath = join(tempDir('grpc-admin'), 'audit.log');
  let sidecar: Sidecar;
  let fabric: AgentFabric;
  let mcp: McpClient;
  let agent: { id: string; token: string };
  let policies: Client;
  let approvals: Client;
  let budgets: Client;
  let events: Client;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstreams: {
        ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
      },
      policies: [APPROVAL_POLICY, LABEL_POLICY, DEFAULT_ALLOW],
      agents: [{ name: 'worker' }],
      audit: { path: auditPath, flushIntervalMs: 10 },
      grpc: { host: '127.0.0.1', port: 0 },
    });
    fabric = sidecar.fabric!;
    agent = { id: agentId(sidecar, 'worker'), token: agentToken(sidecar, 'worker') };
    const address = sidecar.grpcAddress!;
    policies = grpcClient(POLICY_SERVICE_DEFINITION, address);
    approvals = grpcClient(APPROVAL_SERVICE_DEFINITION, address);
    budgets = grpcClient(BUDGET_SERVICE_DEFINITION, address);
    events = grpcClient(EVENT_SERVICE_DEFINITION, address);
  });

  afterAll(async () => {
    for (const c of [policies, approvals, budgets, events]) c?.close();
    await mcp?.close();
    await closeSidecar(sidecar);
  });

  it('refuses every method to an agent credential (PERMISSION_DENIED) and to none (UNAUTHENTICATED)', async () => {
    const services: [DescService, Client][] = [
      [PolicyService, policies],
      [ApprovalService, approvals],
      [BudgetService, budgets],
      [EventService, events],
    ];
    let methods = 0;
    for (const [service, client] of services) {
      for (const method of service.methods) {
        methods++;
        for (const [credential, code] of [
          [agent.token, status.PERMISSION_DENIED],
          ['', status.UNAUTHENTICATED],
        ] as const) {
          const req = create(method.input);
          const err =
            method.methodKind === 'server_streaming'
              ? await openStream(client, method.localName, req, credential).ended
              : await unaryError(client, method.localName, req, credential);
          expect({ method: method.name, code: err?.code }).toEqual({ method: method.name, code });
        }
      }
    }
    expect(methods).toBe(15);
  });

  it('an agent credential changes nothing: no policy added, no limit set', async () => {
    const before = fabric.policies.listPolicies().map((p) => p.name);
    const add = await unaryError(
      policies,
      'addPolicy',
      create(AddPolicyRequestSchema, {
        policyJson: enc({ name: 'sneaky', rules: [{ tool: '*', action: 'allow' }], priority: 1e6 }),
      }),
      agent.token,
    );
    expect(add.code).toBe(status.PERMISSION_DENIED);
    expect(fabric.policies.listPolicies().map((p) => p.name)).toEqual(before);
    const set = await unaryError(
      budgets,
      'setBudgetLimits',
      create(SetBudgetLimitsRequestSchema, {
        scope: { scope: { case: 'fabric', value: true } },
        limits: { maxTokensPerHour: 1 },
      }),
      agent.token,
    );
    expect(set.code).toBe(status.PERMISSION_DENIED);
    expect(fabric.budgets.getFabricStatus().tokensLimit).toBe(Number.POSITIVE_INFINITY);
  });

  it('EvaluatePolicy decides as the pipeline would, with no side effect (approvals, budgets, heartbeat, audit)', async () => {
    fabric.budgets.setBudget(agent.id, { maxTokensPerHour: 1000 });
    const budgetBefore = fabric.budgets.getStatus(agent.id);
    const heartbeatBefore = fabric.lifecycle.peek(agent.id)!.lastHeartbeat;
    const approvalsBefore = fabric.approvals.listApprovals().length;

    const parked = await unary<EvaluatePolicyResponse>(
      policies,
      'evaluatePolicy',
      create(EvaluatePolicyRequestSchema, {
        agentId: agent.id,
        tool: 'ev__echo',
        params: create(ValueSchema, {
          kind: {
            case: 'structValue',
            value: {
              fields: { message: { kind: { case: 'stringValue', value: 'needs approval' } } },
            },
          },
        }),
      }),
      ADMIN_TOKEN,
    );
    expect(parked).toMatchObject({
      action: PolicyAction.REQUIRE_APPROVAL,
      allowed: false,
      policy: 'approvals',
      rule: 0,
      reason: 'echoing this needs a human',
      knownAgent: true,
    });
    const allowed = await unary<EvaluatePolicyResponse>(
      policies,
      'evaluatePolicy',
      create(EvaluatePolicyRequestSchema, {
        agentId: agent.id,
        tool: 'ev__echo',
        paramsJson: enc({ message: 'hello' }),
      }),
      ADMIN_TOKEN,
    );
    expect(allowed).toMatchObject({ action: PolicyAction.ALLOW, policy: 'default-allow', rule: 0 });
    // A hypothetical agent described by its labels.
    const red = await unary<EvaluatePolicyResponse>(
      policies,
      'evaluatePolicy',
      create(EvaluatePolicyRequestSchema, {
        agentId: 'nobody-yet',
        labels: { team: 'red' },
        tool: 'ev__get-sum',
        paramsJson: enc({ a: 1, b: 2 }),
      }),
      ADMIN_TOKEN,
    );
    expect(red).toMatchObject({
      action: PolicyAction.DENY,
      policy: 'red-team',
      rule: 0,
      knownAgent: false,
    });

    // Nothing happened: no approval, no reservation or usage, no heartbeat.
    expect(fabric.approvals.listApprovals()).toHaveLength(approvalsBefore);
    expect(fabric.budgets.getStatus(agent.id)).toEqual({
      ...budgetBefore,
      resetsAt: budgetBefore.resetsAt,
    });
    expect(fabric.lifecycle.peek(agent.id)!.lastHeartbeat).toBe(heartbeatBefore);
    fabric.budgets.removeBudget(agent.id);

    // …and no audit record: the first line the log gets is a real call's.
    mcp = await httpClient(sidecar.url!, agent.token);
    const r = await mcp.callTool({ name: 'ev__echo', arguments: { message: 'sentinel' } });
    expect(text(r)).toBe('Echo: sentinel');
    await until(() => existsSync(auditPath) && readFileSync(auditPath, 'utf8').includes('\n'));
    const lines = readFileSync(auditPath, 'utf8').trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(JSON.parse(lines[0]!)).toMatchObject({
      tool: 'ev__echo',
      agent: agent.id,
      outcome: 'ok',
    });
  });

  it('EvaluatePolicy refuses bad input with INVALID_ARGUMENT', async () => {
    let deep: unknown = 1;
    for (let i = 0; i < 200; i++) deep = [deep];
    const bad = [
      { tool: '' },
      { tool: 't', paramsJson: enc({ x: deep }) },
      { tool: 't', paramsJson: enc([1, 2]) },
      { tool: 't', paramsJson: new TextEncoder().encode('{not json') },
      { tool: 't', paramsJson: new Uint8Array(2 * 1024 * 1024).fill(32) },
      { tool: 't', agentId: agent.id, poolId: 'elsewhere' },
      {
        tool: 't',
        paramsJson: enc({}),
        params: create(ValueSchema, { kind: { case: 'nullValue', value: 0 } }),
      },
    ];
    for (const req of bad) {
      const err = await unaryError(
        policies,
        'evaluatePolicy',
        create(EvaluatePolicyRequestSchema, req),
        ADMIN_TOKEN,
      );
      expect(err.code).toBe(status.INVALID_ARGUMENT);
      expect(err.metadata.get('fabric-error-code')).toEqual(['FABRIC_ERR_INVALID_ARGUMENT']);
    }
  });

  it('lists, adds, replaces and removes policies, validated as the library validates them', async () => {
    const added = await unary<AddPolicyResponse>(
      policies,
      'addPolicy',
      create(AddPolicyRequestSchema, {
        policy: {
          name: 'no-deletes',
          priority: 10n,
          rules: [
            {
              tool: 'fs__delete_*',
              action: PolicyAction.DENY,
              conditions: { path: '/etc/**' },
              reason: 'never',
            },
          ],
        },
      }),
      ADMIN_TOKEN,
    );
    expect(added.policy).toMatchObject({
      name: 'no-deletes',
      priority: 10n,
      enabled: true,
      mode: PolicyMode.ENFORCE,
      rules: [{ tool: 'fs__delete_*', action: PolicyAction.DENY, conditions: { path: '/etc/**' } }],
    });
    expect(fabric.policies.getPolicy('no-deletes')).toMatchObject({ priority: 10 });
    expect(added.warnings).toEqual([]);

    const list = await unary<ListPoliciesResponse>(
      policies,
      'listPolicies',
      create(ListPoliciesRequestSchema),
      ADMIN_TOKEN,
    );
    expect(list.policies.map((p) => p.name)).toEqual(
      fabric.policies.listPolicies().map((p) => p.name),
    );

    const dup = await unaryError(
      policies,
      'addPolicy',
      create(AddPolicyRequestSchema, {
        policy: { name: 'no-deletes', rules: [{ tool: 'x', action: PolicyAction.ALLOW }] },
      }),
      ADMIN_TOKEN,
    );
    expect(dup.code).toBe(status.ALREADY_EXISTS);

    // Invalid policies: the error names the problem; nothing is stored.
    const invalid: [unknown, string][] = [
      [{ name: 'p1', rules: [{ tool: 'x' }] }, 'rules[0].action'],
      [{ name: 'p2', rules: [] }, 'rules'],
      [{ name: 'p3', rules: [{ tool: 'x', action: 'allow', when: { nope: [1] } }] }, 'when'],
      [{ name: 'p4', rules: [{ tool: 'x', action: 'allow' }], priority: 2 ** 60 }, 'priority'],
      [{ name: 'p5', rules: [{ tool: 'x', action: 'allow', extra: 1 }] }, 'rules[0]'],
    ];
    for (const [policy, field] of invalid) {
      const err = await unaryError(
        policies,
        'addPolicy',
        create(AddPolicyRequestSchema, { policyJson: enc(policy) }),
        ADMIN_TOKEN,
      );
      expect(err.code).toBe(status.INVALID_ARGUMENT);
      expect(err.metadata.get('fabric-error-code')).toEqual(['FABRIC_ERR_POLICY_INVALID']);
      expect(err.details).toContain(field);
    }
    // A message with no action (enum unset) is refused the same way.
    const noAction = await unaryError(
      policies,
      'addPolicy',
      create(AddPolicyRequestSchema, { policy: { name: 'p6', rules: [{ tool: 'x' }] } }),
      ADMIN_TOKEN,
    );
    expect(noAction.details).toContain('rules[0].action');
    // int64 priority beyond 2^53 is refused by name, not rounded.
    const huge = await unaryError(
      policies,
      'addPolicy',
      create(AddPolicyRequestSchema, {
        policy: {
          name: 'p7',
          priority: 2n ** 62n,
          rules: [{ tool: 'x', action: PolicyAction.ALLOW }],
        },
      }),
      ADMIN_TOKEN,
    );
    expect(huge.details).toContain('priority');
    const both = await unaryError(
      policies,
      'addPolicy',
      create(AddPolicyRequestSchema, { policy: { name: 'p8' }, policyJson: enc({ name: 'p8' }) }),
      ADMIN_TOKEN,
    );
    expect(both.code).toBe(status.INVALID_ARGUMENT);
    expect(fabric.policies.listPolicies().map((p) => p.name)).not.toEqual(
      expect.arrayContaining(['p1', 'p2', 'p3', 'p4', 'p5', 'p6', 'p7', 'p8']),
    );
    for (const n of ['p1', 'p2', 'p3', 'p4', 'p5', 'p6', 'p7', 'p8']) {
      expect(fabric.policies.getPolicy(n)).toBeUndefined();
    }

    // policy_json in and out: the library's own shape (numbers are JavaScript numbers).
    const replaced = await unary<ReplacePolicyResponse>(
      policies,
      'replacePolicy',
      create(ReplacePolicyRequestSchema, {
        policyJson: new TextEncoder().encode(
          `{"name":"no-deletes","mode":"audit","rules":[{"tool":"fs__delete_*","action":"deny","conditions":{"id":42}}]}`,
        ),
      }),
      ADMIN_TOKEN,
    );
    expect(replaced.policy?.mode).toBe(PolicyMode.AUDIT);
    expect(replaced.warnings).toEqual([]);
    const got = await unary<GetPolicyResponse>(
      policies,
      'getPolicy',
      create(GetPolicyRequestSchema, { name: 'no-deletes' }),
      ADMIN_TOKEN,
    );
    expect(dec(got.policy!.policyJson)).toEqual({
      name: 'no-deletes',
      mode: 'audit',
      priority: 0,
      enabled: true,
      rules: [{ tool: 'fs__delete_*', action: 'deny', conditions: { id: 42 } }],
    });
    expect(got.policy!.rules[0]!.conditions).toEqual({ id: 42 });
    // A relative path pattern is stored, and the answer says it matches no call in the gateway.
    const relative = await unary<ReplacePolicyResponse>(
      policies,
      'replacePolicy',
      create(ReplacePolicyRequestSchema, {
        policyJson: enc({
          name: 'no-deletes',
          mode: 'audit',
          rules: [
            { tool: 'fs__delete_*', action: 'deny', conditions: { path: ['protected/**', '/x'] } },
          ],
        }),
      }),
      ADMIN_TOKEN,
    );
    expect(relative.warnings).toHaveLength(1);
    expect(relative.warnings[0]).toMatch(
      /^rule #0 condition "path": "protected\/\*\*" is a relative path; .* matches no call there/,
    );
    expect(fabric.policies.getPolicy('no-deletes')!.rules[0]!.conditions).toEqual({
      path: ['protected/**', '/x'],
    });
    const relativeAdd = await unary<AddPolicyResponse>(
      policies,
      'addPolicy',
      create(AddPolicyRequestSchema, {
        policyJson: enc({
          name: 'rel-add',
          rules: [{ tool: 'x', action: 'deny', conditions: { cwd: './build' } }],
        }),
      }),
      ADMIN_TOKEN,
    );
    expect(relativeAdd.warnings).toEqual([expect.stringContaining('"./build" is a relative path')]);
    expect(fabric.policies.removePolicy('rel-add')).toBe(true);

    const ghost = await unaryError(
      policies,
      'replacePolicy',
      create(ReplacePolicyRequestSchema, {
        policy: { name: 'ghost', rules: [{ tool: 'x', action: PolicyAction.ALLOW }] },
      }),
      ADMIN_TOKEN,
    );
    expect(ghost.code).toBe(status.NOT_FOUND);
    expect(ghost.metadata.get('fabric-error-code')).toEqual(['FABRIC_ERR_POLICY_NOT_FOUND']);
    expect(fabric.policies.getPolicy('ghost')).toBeUndefined();

    await unary(
      policies,
      'removePolicy',
      create(RemovePolicyRequestSchema, { name: 'no-deletes' }),
      ADMIN_TOKEN,
    );
    expect(fabric.policies.getPolicy('no-deletes')).toBeUndefined();
    const again = await unaryError(
      policies,
      'removePolicy',
      create(RemovePolicyRequestSchema, { name: 'no-deletes' }),
      ADMIN_TOKEN,
    );
    expect(again.code).toBe(status.NOT_FOUND);
  });

  it('a call parked by the gateway shows on Watch, is approved over gRPC and proceeds', async () => {
    const watch = openStream<ApprovalServiceWatchResponse>(
      approvals,
      'watch',
      create(ApprovalServiceWatchRequestSchema),
      ADMIN_TOKEN,
    );
    await vi.waitFor(() => expect(fabric.approvals.listenerCount('created')).toBeGreaterThan(0));
    const call = mcp.callTool({ name: 'ev__echo', arguments: { message: 'needs approval' } });

    const [requested] = await watch.first(1);
    expect(requested).toMatchObject({
      sequence: 1n,
      event: {
        kind: ApprovalEventKind.REQUESTED,
        existing: false,
        approval: {
          agentId: agent.id,
          tool: 'ev__echo',
          status: ApprovalStatus.PENDING,
          policy: 'approvals',
          rule: 0,
          reason: 'echoing this needs a human',
        },
      },
    });
    const approval = requested!.event!.approval!;
    expect(toJson(ValueSchema, approval.params!)).toEqual({ message: 'needs approval' });
    expect(dec(approval.paramsJson)).toEqual({ message: 'needs approval' });

    const listed = await unary<ListApprovalsResponse>(
      approvals,
      'listApprovals',
      create(ListApprovalsRequestSchema, { status: ApprovalStatus.PENDING }),
      ADMIN_TOKEN,
    );
    expect(listed.approvals.map((a) => a.id)).toEqual([approval.id]);

    const approved = await unary<ApproveResponse>(
      approvals,
      'approve',
      create(ApproveRequestSchema, { id: approval.id, reason: 'looks fine' }),
      ADMIN_TOKEN,
    );
    expect(approved.approval).toMatchObject({
      status: ApprovalStatus.APPROVED,
      approver: 'admin',
      decisionReason: 'looks fine',
    });
    const r = await call;
    expect(r.isError).toBeFalsy();
    expect(text(r)).toBe('Echo: needs approval');

    const [, decided] = await watch.first(2);
    expect(decided).toMatchObject({
      sequence: 2n,
      event: {
        kind: ApprovalEventKind.DECIDED,
        approval: { id: approval.id, status: ApprovalStatus.APPROVED },
      },
    });
    const final = await unaryError(
      approvals,
      'deny',
      create(DenyRequestSchema, { id: approval.id }),
      ADMIN_TOKEN,
    );
    expect(final.code).toBe(status.FAILED_PRECONDITION);
    expect(final.metadata.get('fabric-error-code')).toEqual(['FABRIC_ERR_APPROVAL_DECIDED']);
    watch.stream.cancel();
    await watch.ended;
  });

  it('Watch starts with the approvals already pending; Deny refuses the parked call with the reason', async () => {
    const call = mcp.callTool({ name: 'ev__echo', arguments: { message: 'needs approval' } });
    await until(() => fabric.approvals.listApprovals({ status: 'pending' }).length === 1);
    const watch = openStream<ApprovalServiceWatchResponse>(
      approvals,
      'watch',
      create(ApprovalServiceWatchRequestSchema),
      ADMIN_TOKEN,
    );
    const [first] = await watch.first(1);
    expect(first!.event).toMatchObject({ kind: ApprovalEventKind.REQUESTED, existing: true });
    const id = first!.event!.approval!.id;
    const got = await unary<GetApprovalResponse>(
      approvals,
      'getApproval',
      create(GetApprovalRequestSchema, { id }),
      ADMIN_TOKEN,
    );
    expect(got.approval?.status).toBe(ApprovalStatus.PENDING);
    const denied = await unary<DenyResponse>(
      approvals,
      'deny',
      create(DenyRequestSchema, { id, reason: 'not today' }),
      ADMIN_TOKEN,
    );
    expect(denied.approval).toMatchObject({ status: ApprovalStatus.DENIED, approver: 'admin' });
    const r = await call;
    expect(r.isError).toBe(true);
    expect(text(r)).toContain('FABRIC_ERR_APPROVAL_DENIED');
    expect(text(r)).toContain('not today');
    const [, decided] = await watch.first(2);
    expect(decided!.event).toMatchObject({ kind: ApprovalEventKind.DECIDED, existing: false });
    watch.stream.cancel();
    await watch.ended;

    const unknown = await unaryError(
      approvals,
      'getApproval',
      create(GetApprovalRequestSchema, { id: 'apr_nope' }),
      ADMIN_TOKEN,
    );
    expect(unknown.code).toBe(status.NOT_FOUND);
  });

  it('reads, sets and removes budget limits of an agent, a pool and the fabric; a budget alert shows on the event Watch', async () => {
    // A fresh agent: the tool calls above already used some of the worker's tokens.
    const fresh = await fabric.spawn({ model: 'm', name: 'budgeted', executor: 'remote' });
    const scope = { scope: { case: 'agentId' as const, value: fresh.id } };
    const watch = openStream<EventServiceWatchResponse>(
      events,
      'watch',
      create(EventServiceWatchRequestSchema, { topics: [EventTopic.BUDGETS] }),
      ADMIN_TOKEN,
    );
    await vi.waitFor(() => expect(fabric.budgets.listenerCount('warning')).toBeGreaterThan(0));

    const set = await unary<SetBudgetLimitsResponse>(
      budgets,
      'setBudgetLimits',
      create(SetBudgetLimitsRequestSchema, {
        scope,
        limits: { maxTokensPerHour: 100, warnAtPercent: 50 },
      }),
      ADMIN_TOKEN,
    );
    expect(set.status).toMatchObject({
      scope: `agent:${fresh.id}`,
      warnAtPercent: 50,
      tokens: { limit: 100 },
    });
    expect(set.status!.cost!.limit).toBeUndefined();

    await fabric.recordUsage(fresh.id, { tokens: 60 });
    const [alert] = await watch.first(1);
    expect(alert!.event).toMatchObject({
      case: 'budgetAlert',
      value: {
        kind: BudgetAlertKind.WARNING,
        scope: `agent:${fresh.id}`,
        limit: BudgetLimitKind.TOKENS,
        used: 60,
        max: 100,
      },
    });
    const got = await unary<GetBudgetStatusResponse>(
      budgets,
      'getBudgetStatus',
      create(GetBudgetStatusRequestSchema, { scope }),
      ADMIN_TOKEN,
    );
    expect(got.status).toMatchObject({
      tokens: { used: 60, limit: 100 },
      percentUsed: 60,
      warning: true,
      exhausted: false,
    });
    expect(got.status!.resetsAt).toBeDefined();

    // A bad limit names the field and changes nothing.
    const bad = await unaryError(
      budgets,
      'setBudgetLimits',
      create(SetBudgetLimitsRequestSchema, { scope, limits: { maxTokensPerHour: -5 } }),
      ADMIN_TOKEN,
    );
    expect(bad.code).toBe(status.INVALID_ARGUMENT);
    expect(bad.details).toContain('maxTokensPerHour');
    expect(fabric.budgets.getStatus(fresh.id).tokensLimit).toBe(100);

    const removed = await unary<RemoveBudgetLimitsResponse>(
      budgets,
      'removeBudgetLimits',
      create(RemoveBudgetLimitsRequestSchema, { scope }),
      ADMIN_TOKEN,
    );
    expect(removed.status!.tokens).toMatchObject({ used: 60 });
    expect(removed.status!.tokens!.limit).toBeUndefined();

    const fabricScope = await unary<SetBudgetLimitsResponse>(
      budgets,
      'setBudgetLimits',
      create(SetBudgetLimitsRequestSchema, {
        scope: { scope: { case: 'fabric', value: true } },
        limits: { maxCostPerDay: 5 },
      }),
      ADMIN_TOKEN,
    );
    expect(fabricScope.status).toMatchObject({ scope: 'fabric', cost: { limit: 5 } });
    fabric.budgets.removeFabricBudget();

    // Unknown agents and pools are NOT_FOUND and leave no budget state behind.
    const held = fabric.budgets.agentCount;
    for (const s of [
      create(BudgetScopeSchema, { scope: { case: 'agentId', value: 'agent-that-does-not-exist' } }),
      create(BudgetScopeSchema, { scope: { case: 'poolId', value: 'no-such-pool' } }),
    ]) {
      const err = await unaryError(
        budgets,
        'setBudgetLimits',
        create(SetBudgetLimitsRequestSchema, { scope: s, limits: { maxTokensPerHour: 1 } }),
        ADMIN_TOKEN,
      );
      expect(err.code).toBe(status.NOT_FOUND);
    }
    expect(fabric.budgets.agentCount).toBe(held);
    for (const s of [undefined, { scope: { case: 'fabric' as const, value: false } }]) {
      const err = await unaryError(
        budgets,
        'getBudgetStatus',
        create(GetBudgetStatusRequestSchema, s === undefined ? {} : { scope: s }),
        ADMIN_TOKEN,
      );
      expect(err.code).toBe(status.INVALID_ARGUMENT);
    }
    watch.stream.cancel();
    await watch.ended;
  });

  it('the event Watch reports agents and tasks, only for the topics asked for', async () => {
    const watch = openStream<EventServiceWatchResponse>(
      events,
      'watch',
      create(EventServiceWatchRequestSchema, { topics: [EventTopic.AGENTS, EventTopic.TASKS] }),
      ADMIN_TOKEN,
    );
    await vi.waitFor(() =>
      expect(fabric.scheduler.events.listenerCount('task.scheduled')).toBeGreaterThan(0),
    );
    // Not a topic of this watch: must not show up before the agent event.
    fabric.budgets.setFabricBudget({ maxTokensPerHour: 10 });
    await fabric.recordUsage(agent.id, { tokens: 10 });
    fabric.budgets.removeFabricBudget();

    const spawned = await fabric.spawn({ model: 'm', name: 'late', executor: 'remote' });
    const task = await fabric.schedule({ agentId: spawned.id, taskType: 'review', payload: {} });
    await fabric.cancelTask(task.id);
    const got = await watch.first(3);
    expect(got.map((m) => m.event.case)).toEqual(['agent', 'task', 'task']);
    expect(got[0]!.event.value).toMatchObject({
      kind: AgentEventKind.SPAWNED,
      agentId: spawned.id,
      name: 'late',
    });
    expect(got[1]!.event.value).toMatchObject({
      kind: TaskEventKind.SCHEDULED,
      taskId: task.id,
      agentId: spawned.id,
    });
    expect(got[2]!.event.value).toMatchObject({
      kind: TaskEventKind.FINISHED,
      taskId: task.id,
      status: TaskStatus.CANCELLED,
    });
    expect(got.map((m) => m.sequence)).toEqual([1n, 2n, 3n]);
    watch.stream.cancel();
    await watch.ended;

    const bad = openStream(
      events,
      'watch',
      create(EventServiceWatchRequestSchema, { topics: [99 as EventTopic] }),
      ADMIN_TOKEN,
    );
    expect(await bad.ended).toMatchObject({ code: status.INVALID_ARGUMENT });
  });
});

describe('generated code of the operator services', () => {
  it('is exactly what buf generates from proto/ (never edited by hand)', async () => {
    const root = new URL('../../', import.meta.url);
    const out = await mkdtemp(join(tmpdir(), 'fabric-gen-'));
    try {
      execFileSync('npx', ['buf', 'generate', '--output', out], { cwd: root, stdio: 'pipe' });
      for (const file of ['policy_pb.ts', 'approval_pb.ts', 'budget_pb.ts', 'events_pb.ts']) {
        const fresh = await readFile(join(out, 'src/gen/fabric/v1', file), 'utf8');
        const committed = await readFile(new URL(`src/gen/fabric/v1/${file}`, root), 'utf8');
        expect({ file, committed }).toEqual({ file, committed: fresh });
      }
    } finally {
      await rm(out, { recursive: true, force: true });
    }
  });
});
