/**
 * The first-party counting policy plugins (policy-rate-limit, policy-loop-guard), loaded through
 * a PluginHost into a fabric and driven through its real tool-call pipeline.
 */
import { fileURLToPath } from 'node:url';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { PluginError } from '../../src/errors.js';
import { AgentFabric } from '../../src/fabric.js';
import { PluginHost } from '../../src/plugins/plugin-host.js';
import type { ToolCallAuthorization } from '../../src/policy/tool-call-authorizer.js';

let fabric: AgentFabric;
let host: PluginHost;
let a: string;
let b: string;

beforeEach(async () => {
  vi.useFakeTimers({ now: new Date('2026-01-01T00:00:00Z') });
  fabric = new AgentFabric();
  fabric.policies.addPolicy({ name: 'allow-all', rules: [{ tool: '*', action: 'allow' }] });
  host = new PluginHost(fabric);
  a = (await fabric.spawn({ model: 'm', name: 'a', executor: 'inprocess' })).id;
  b = (await fabric.spawn({ model: 'm', name: 'b', executor: 'inprocess' })).id;
});
afterEach(async () => {
  await host.close();
  await fabric.close();
  vi.useRealTimers();
});

function call(agentId: string, tool: string, params: Record<string, unknown> = {}) {
  const auth = fabric.tryAuthorizeToolCall({ agentId, tool, params })!;
  if (auth.allowed) fabric.settleToolCall(auth);
  return auth;
}

function refusal(auth: ToolCallAuthorization) {
  expect(auth.allowed).toBe(false);
  return auth as Extract<ToolCallAuthorization, { allowed: false }>;
}

describe('policy-rate-limit', () => {
  beforeEach(async () => {
    await host.load('policy-rate-limit', {
      perAgent: { capacity: 3, refillPerSecond: 1 },
      perTool: { 'fs__write*': { capacity: 1, refillPerSecond: 0.1 } },
    });
  });

  it('refuses the call past the burst with retryAt, and lets it through once refilled', () => {
    for (let i = 0; i < 3; i++) expect(call(a, 'fs__read').allowed).toBe(true);
    const r = refusal(call(a, 'fs__read'));
    expect(r.code).toBe('FABRIC_ERR_POLICY_DENIED');
    expect(r.reason).toMatch(/rate limit \(agent: 3 calls, 1\/s\)/);
    expect(r.retryAt).toBe(Date.now() + 1000);
    expect(r.details).toMatchObject({ policy: 'policy-rate-limit', retryAt: r.retryAt });
    vi.advanceTimersByTime(999);
    expect(call(a, 'fs__read').allowed).toBe(false);
    vi.advanceTimersByTime(1);
    expect(call(a, 'fs__read').allowed).toBe(true);
  });

  it('refills by elapsed time: a wall-clock step neither locks agents out nor refills them', () => {
    for (let i = 0; i < 3; i++) expect(call(a, 'fs__read').allowed).toBe(true);
    expect(call(b, 'fs__read').allowed).toBe(true);
    // The wall clock jumps a day ahead (no time passes): nothing refills.
    vi.setSystemTime(Date.now() + 86_400_000);
    expect(refusal(call(a, 'fs__read')).retryAt).toBe(Date.now() + 1000);
    // Then two days back: a second later `a` has its token and `b` its burst, not a day later.
    vi.setSystemTime(Date.now() - 2 * 86_400_000);
    vi.advanceTimersByTime(1000);
    expect(call(a, 'fs__read').allowed).toBe(true);
    expect(call(a, 'fs__read').allowed).toBe(false);
    for (let i = 0; i < 3; i++) expect(call(b, 'fs__read').allowed).toBe(true);
  });

  it('limits a tool per agent on its own bucket', () => {
    expect(call(a, 'fs__write_file').allowed).toBe(true);
    const r = refusal(call(a, 'fs__write_file'));
    expect(r.reason).toMatch(/tool fs__write\*/);
    expect(r.retryAt).toBe(Date.now() + 10_000);
    expect(call(a, 'fs__read').allowed).toBe(true);
    expect(call(b, 'fs__write_file').allowed).toBe(true);
  });

  it('one agent flooding does not starve another; refused calls and probes take no tokens', () => {
    for (let i = 0; i < 100; i++) call(a, 'fs__read');
    for (let i = 0; i < 100; i++) fabric.isToolVisible({ agentId: b, tool: 'fs__read' });
    for (let i = 0; i < 3; i++) expect(call(b, 'fs__read').allowed).toBe(true);
    // `a`'s 97 refused calls took nothing: one second refills one call.
    vi.advanceTimersByTime(1000);
    expect(call(a, 'fs__read').allowed).toBe(true);
  });

  it('rejects bad options with an error naming the plugin and the option', async () => {
    const other = new PluginHost(fabric, { pluginDirs: [] });
    const err = await other
      .load(new URL('../../plugins/policy-rate-limit/index.js', import.meta.url), {
        perAgent: { capacity: -1, refillPerSecond: 1 },
      })
      .catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PluginError);
    expect((err as Error).message).toMatch(
      /plugin policy-rate-limit: invalid options: options\.perAgent\.capacity/,
    );
    const unknown = await other
      .load(new URL('../../plugins/policy-rate-limit/index.js', import.meta.url), { burst: 5 })
      .catch((e: unknown) => e);
    expect((unknown as Error).message).toMatch(/policy-rate-limit: invalid options.*burst/);
  });
});

describe('policy-loop-guard', () => {
  beforeEach(async () => {
    await host.load('policy-loop-guard', {
      maxRepeats: 3,
      windowSeconds: 60,
      ignoreTools: ['fabric__claim_task'],
    });
  });

  it('refuses the same call made more than maxRepeats times in the window', () => {
    const t0 = Date.now();
    for (let i = 0; i < 3; i++) {
      expect(call(a, 'search', { q: 'same', page: 1 }).allowed).toBe(true);
      vi.advanceTimersByTime(1000);
    }
    // Reordered keys and different whitespace: the same call.
    const r = refusal(call(a, 'search', { page: 1, q: ' same  ' }));
    expect(r.reason).toMatch(/same search call \(same arguments\) ran 3 times within 60 s/);
    expect(r.retryAt).toBe(t0 + 60_000);
    // A different call, or another agent's same call, is not a loop.
    expect(call(a, 'search', { q: 'same', page: 2 }).allowed).toBe(true);
    expect(call(b, 'search', { q: 'same', page: 1 }).allowed).toBe(true);
    // Refused calls do not count: at retryAt the first call has left the window.
    vi.advanceTimersByTime(r.retryAt! - Date.now());
    expect(call(a, 'search', { q: 'same', page: 1 }).allowed).toBe(true);
    expect(call(a, 'search', { q: 'same', page: 1 }).allowed).toBe(false);
  });

  it('keeps its window in elapsed time: a wall-clock step neither prolongs a refusal nor forgets calls', () => {
    for (let i = 0; i < 3; i++) {
      expect(call(a, 'search', { q: 'same' }).allowed).toBe(true);
      vi.advanceTimersByTime(1000);
    }
    // The wall clock jumps a day ahead (no time passes): the calls are still in the window.
    vi.setSystemTime(Date.now() + 86_400_000);
    expect(refusal(call(a, 'search', { q: 'same' })).retryAt).toBe(Date.now() + 57_000);
    // Then two days back: the refusal ends 60 s after the first call, not a day later.
    vi.setSystemTime(Date.now() - 2 * 86_400_000);
    vi.advanceTimersByTime(56_999);
    expect(call(a, 'search', { q: 'same' }).allowed).toBe(false);
    vi.advanceTimersByTime(1);
    expect(call(a, 'search', { q: 'same' }).allowed).toBe(true);
  });

  it('leaves ignored tools alone and forgets terminated agents', async () => {
    for (let i = 0; i < 10; i++) expect(call(a, 'fabric__claim_task').allowed).toBe(true);
    for (let i = 0; i < 3; i++) call(a, 'search', { q: 'x' });
    expect(call(a, 'search', { q: 'x' }).allowed).toBe(false);
    const guard = host.instanceOf<'policy'>('policy-loop-guard')!;
    await fabric.terminate(a);
    // A new agent with the same calls starts clean, and nothing is kept for the old one.
    expect(guard.decide({ agentId: a, tool: 'search', params: { q: 'x' } })).toBeUndefined();
  });

  it('stays bounded on hostile arguments (deep, wide, cyclic)', () => {
    let deep: Record<string, unknown> = {};
    const root = deep;
    for (let i = 0; i < 100_000; i++) deep = (deep.d = {}) as Record<string, unknown>;
    const cyclic: Record<string, unknown> = { x: 1 };
    cyclic.self = cyclic;
    for (const params of [root, cyclic, { wide: Array.from({ length: 50_000 }, (_, i) => i) }]) {
      for (let i = 0; i < 3; i++) expect(call(a, 'odd', params).allowed).toBe(true);
      expect(call(a, 'odd', params).allowed).toBe(false);
    }
  });
});

describe('policy-loop-guard memory', () => {
  it('an agent making only unique calls is remembered for at most maxCallsPerAgent of them', async () => {
    const { LoopGuard, optionsSchema } = (await import(
      fileURLToPath(new URL('../../plugins/policy-loop-guard/index.js', import.meta.url))
    )) as {
      LoopGuard: new (o: unknown) => {
        record(ctx: unknown): void;
        check(ctx: unknown): unknown;
        remembered(agentId: string): number;
      };
      optionsSchema: { parse(o: unknown): unknown };
    };
    const guard = new LoopGuard(optionsSchema.parse({ maxCallsPerAgent: 100, maxRepeats: 1 }));
    for (let i = 0; i < 5000; i++) guard.record({ agentId: 'a', tool: 't', params: { i } });
    expect(guard.remembered('a')).toBe(100);
    // The latest are the ones kept.
    expect(guard.check({ agentId: 'a', tool: 't', params: { i: 4999 } })).toBeDefined();
    expect(guard.check({ agentId: 'a', tool: 't', params: { i: 0 } })).toBeUndefined();
  });
});
