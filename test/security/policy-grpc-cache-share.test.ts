/**
 * policy-grpc's decision cache, shared by every agent, against one agent that sends ever new
 * arguments. Found by the noisy-neighbour review: the cache was one LRU of `cacheSize` answers,
 * so an agent asking about distinct arguments pushed every other agent's cached answers out —
 * they paid a round trip to the policy service again, and were denied whenever it then missed
 * its deadline. Now each agent holds at most `cacheSizePerAgent` answers: its next replaces its
 * own oldest. A REAL Python policy service (test/fixtures/grpc/python_policy_service.py), the
 * real plugin loaded through the PluginHost; `decide` (the plugin's no-wait probe) tells what
 * is cached.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import type { PolicyProvider } from '../../src/policy/policy-engine.js';
import { PluginHost } from '../../src/plugins/plugin-host.js';
import { FIRST_PARTY } from '../contracts/load-plugin.js';
import {
  pythonGrpc,
  startPythonPolicyService,
  type PythonPolicyService,
} from '../fixtures/grpc/python-policy-service.js';

const runs = pythonGrpc || process.env.CI !== undefined;

/**
 * Registers, for the enclosing describe, a Python policy service, a fabric with the policy-grpc
 * plugin loaded with `cache` options, and two remote agents; returns what the tests use.
 */
function floodSetup(cache: { cacheSize: number; cacheSizePerAgent?: number }) {
  const t = {} as {
    service: PythonPolicyService;
    fabric: AgentFabric;
    host: PluginHost;
    provider: PolicyProvider;
    victim: string;
    attacker: string;
  };
  beforeAll(async () => {
    t.service = await startPythonPolicyService();
    t.fabric = new AgentFabric();
    t.fabric.policies.addPolicy({ name: 'rules', rules: [{ tool: 'py__*', action: 'allow' }] });
    t.host = new PluginHost(t.fabric, { log: () => undefined });
    await t.host.load(FIRST_PARTY('policy-grpc'), {
      target: t.service.address,
      insecure: true,
      deadlineMs: 5000,
      ...cache,
    });
    t.provider = t.host.instanceOf<'policy'>('policy-grpc')!;
    t.victim = (await t.fabric.spawn({ model: 'm', name: 'victim', executor: 'remote' })).id;
    t.attacker = (await t.fabric.spawn({ model: 'm', name: 'attacker', executor: 'remote' })).id;
  });
  afterAll(async () => {
    await t.host?.close();
    await t.fabric?.close();
    await t.service?.close();
  });
  return {
    t,
    /** One allowed `py__cached` call of `agentId` with argument `n`. */
    call: async (agentId: string, n: number): Promise<void> => {
      const a = await t.fabric.authorizeToolCall({ agentId, tool: 'py__cached', params: { n } });
      expect(a.allowed).toBe(true);
    },
    /** Whether that call's answer is cached (the plugin's no-wait probe). */
    cached: (agentId: string, n: number): boolean =>
      t.provider.decide!({ agentId, tool: 'py__cached', params: { n } }) !== undefined,
  };
}

describe.runIf(runs)('policy-grpc’s cache and one agent flooding it', () => {
  const { t, call, cached } = floodSetup({ cacheSize: 20, cacheSizePerAgent: 5 });

  it('keeps the other agents’ answers (before: all pushed out) and the flooder’s newest only', async () => {
    for (let n = 0; n < 5; n++) await call(t.victim, n);
    expect([0, 1, 2, 3, 4].map((n) => cached(t.victim, n))).toEqual([true, true, true, true, true]);
    // 60 distinct arguments: three times the whole cache.
    for (let n = 0; n < 60; n++) await call(t.attacker, n);
    expect([0, 1, 2, 3, 4].map((n) => cached(t.victim, n))).toEqual([true, true, true, true, true]);
    const attackers = Array.from({ length: 60 }, (_, n) => n).filter((n) => cached(t.attacker, n));
    expect(attackers).toEqual([55, 56, 57, 58, 59]);
    // An answer asked again (its entry refreshed) stays in the agent's share.
    await call(t.attacker, 100);
    expect(cached(t.attacker, 100)).toBe(true);
    expect(cached(t.attacker, 55)).toBe(false);
  });
});

/**
 * Found by the hostile review of the share: the default share (1000) was no share at all for a
 * cache configured smaller than it (`cacheSize: 20` without `cacheSizePerAgent`): the flooder
 * pushed every other agent's answers out as before. The default share is now a tenth of the
 * cache (at most 1000), and a share that is the whole cache is refused at load.
 */
describe.runIf(runs)('policy-grpc’s default share of a small cache', () => {
  const { t, call, cached } = floodSetup({ cacheSize: 20 });

  it('keeps the victim’s answers under a cache smaller than 1000 (before: all pushed out)', async () => {
    await call(t.victim, 0);
    await call(t.victim, 1);
    for (let n = 0; n < 60; n++) await call(t.attacker, n);
    expect([cached(t.victim, 0), cached(t.victim, 1)]).toEqual([true, true]);
    // A tenth of 20: the flooder's newest two.
    const attackers = Array.from({ length: 60 }, (_, n) => n).filter((n) => cached(t.attacker, n));
    expect(attackers).toEqual([58, 59]);
  });

  it('refuses a share that is the whole cache', async () => {
    const own = new AgentFabric();
    const other = new PluginHost(own, { log: () => undefined });
    try {
      await expect(
        other.load(FIRST_PARTY('policy-grpc'), {
          target: t.service.address,
          insecure: true,
          cacheSize: 20,
          cacheSizePerAgent: 20,
        }),
      ).rejects.toThrow(/cacheSizePerAgent/);
      expect(other.instanceOf<'policy'>('policy-grpc')).toBeUndefined();
    } finally {
      await other.close();
      await own.close();
    }
  });
});
