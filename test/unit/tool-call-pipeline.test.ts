import { describe, expect, it, vi } from 'vitest';
import type { AuditOutcome } from '../../src/gateway/audit-log.js';
import type {
  AgentIdentity,
  Decision,
  GatewayBackend,
  Reservation,
  ToolCallAllowed,
  ToolCallAuthorization,
  ToolCallRefused,
} from '../../src/gateway/backend.js';
import { GatewayMetrics } from '../../src/gateway/metrics.js';
import { TokenEstimates } from '../../src/gateway/token-estimates.js';
import { ToolCallPipeline, type PipelineCall } from '../../src/gateway/tool-call-pipeline.js';
import { ToolCosts } from '../../src/gateway/tool-costs.js';
import type { Approval } from '../../src/policy/approval-manager.js';

const AGENT: AgentIdentity = { kind: 'agent', agentId: 'a1', labels: {} };
const ALLOW: Decision = Object.freeze({
  action: 'allow',
  allowed: true,
  policy: 'p',
  rule: 0,
  reason: 'ok',
});
const RESERVATION = { tokens: 10, cost: 1, state: 'reserved' } as unknown as Reservation;
const allowed: ToolCallAllowed = { allowed: true, decision: ALLOW, reservation: RESERVATION };

/** A fake backend (this is a unit test of the pipeline alone): decides with `decide`. */
function backend(
  decide: () => ToolCallAuthorization | undefined,
  wait?: (onWaiting: (a: Approval) => void) => Promise<ToolCallAuthorization>,
  settle: () => ToolCallRefused | undefined = () => undefined,
) {
  const settled: { tokens: number; cost: number }[] = [];
  const b = {
    tryAuthorizeToolCall: vi.fn(() => decide()),
    authorizeToolCall: vi.fn((ctx: { onWaiting?: (a: Approval) => void }) => wait!(ctx.onWaiting!)),
    settleToolCall: vi.fn((_auth: ToolCallAllowed, usage: { tokens: number; cost: number }) => {
      settled.push(usage);
      return settle();
    }),
  };
  return { b: b as unknown as GatewayBackend, settled, raw: b };
}

function pipeline(b: GatewayBackend): ToolCallPipeline {
  return new ToolCallPipeline({
    backend: b,
    costs: new ToolCosts({ t: 1 }),
    estimates: new TokenEstimates(),
    budgetWaitMs: 0,
    approvalProgressIntervalMs: 1000,
    audit: undefined,
    metrics: new GatewayMetrics(),
    log: () => undefined,
  });
}

function call(extra: Partial<PipelineCall> = {}): PipelineCall & { lines: AuditOutcome[] } {
  const lines: AuditOutcome[] = [];
  return {
    identity: AGENT,
    tool: 't',
    params: { x: 1 },
    abort: { signal: new AbortController().signal },
    audit: (f) => lines.push(f),
    lines,
    ...extra,
  };
}

describe('ToolCallPipeline (one tool call, any door)', () => {
  it('an allowed call: forwarded, settled with its usage, audited with the rule', async () => {
    const { b, settled } = backend(() => allowed);
    const c = call();
    const out = await pipeline(b).run(c, async () => ({ content: [] }));
    expect(out).toMatchObject({ kind: 'result', decision: ALLOW, approved: false });
    expect(settled).toHaveLength(1);
    expect(settled[0]!.cost).toBe(1);
    expect(c.lines).toEqual([
      expect.objectContaining({ decision: 'allow', rule: 'p#0', outcome: 'ok', cost: 1 }),
    ]);
  });

  it('a refusal is an outcome with its decision; nothing is forwarded', async () => {
    const deny: ToolCallRefused = {
      allowed: false,
      code: 'FABRIC_ERR_POLICY_DENIED',
      reason: 'no',
      decision: { ...ALLOW, action: 'deny', allowed: false, rule: 3 },
    };
    const { b, settled } = backend(() => deny);
    const forward = vi.fn(async () => ({}));
    const c = call();
    const out = await pipeline(b).run(c, forward);
    expect(out).toEqual({ kind: 'refused', refusal: deny, withheld: false });
    expect(forward).not.toHaveBeenCalled();
    expect(settled).toHaveLength(0);
    expect(c.lines).toEqual([
      { decision: 'deny', rule: 'p#3', outcome: 'denied', code: 'FABRIC_ERR_POLICY_DENIED' },
    ]);
  });

  it('a forward that fails before reaching an upstream is an error outcome, charged nothing', async () => {
    const { b, settled } = backend(() => allowed);
    const c = call();
    const boom = new Error('down');
    const out = await pipeline(b).run(c, async () => {
      throw boom;
    });
    expect(out).toEqual({ kind: 'error', error: boom, stage: 'forward' });
    expect(settled).toEqual([{ tokens: 0, cost: 0 }]);
    expect(c.lines[0]).toMatchObject({ outcome: 'error', code: 'FABRIC_ERR_INTERNAL', cost: 0 });
  });

  it('a result whose tokens do not fit is withheld (refused, withheld: true)', async () => {
    const over: ToolCallRefused = {
      allowed: false,
      code: 'FABRIC_ERR_BUDGET_EXCEEDED',
      reason: 'full',
      retryAt: 5,
    };
    const { b } = backend(
      () => allowed,
      undefined,
      () => over,
    );
    const c = call();
    const out = await pipeline(b).run(c, async () => ({ content: [] }));
    expect(out).toEqual({ kind: 'refused', refusal: over, withheld: true });
    expect(c.lines[0]).toMatchObject({ outcome: 'withheld', code: 'FABRIC_ERR_BUDGET_EXCEEDED' });
    const delivered = call({ alwaysDelivered: true });
    expect((await pipeline(b).run(delivered, async () => ({}))).kind).toBe('result');
  });

  it('a call parked for approval reports progress, then runs as approved', async () => {
    const { b } = backend(
      () => undefined,
      async (onWaiting) => {
        onWaiting({ id: 'apr_1' } as Approval);
        return allowed;
      },
    );
    const progress = vi.fn();
    const c = call({ progress });
    const out = await pipeline(b).run(c, async () => ({}));
    expect(out).toMatchObject({ kind: 'result', approved: true });
    expect(progress).toHaveBeenCalledWith({
      progress: 0,
      message: 'waiting for human approval apr_1',
    });
    expect(c.lines[0]).toMatchObject({ decision: 'approved', outcome: 'ok' });
  });

  it('a wait the caller cancels is an admission error, audited as cancelled', async () => {
    const controller = new AbortController();
    const { b } = backend(
      () => undefined,
      () => {
        controller.abort(new Error('gone'));
        return Promise.reject(controller.signal.reason as Error);
      },
    );
    const c = call({ abort: { signal: controller.signal } });
    const out = await pipeline(b).run(c, async () => ({}));
    expect(out).toMatchObject({ kind: 'error', stage: 'admission' });
    expect(c.lines[0]).toMatchObject({ decision: 'error', outcome: 'cancelled' });
  });
});
