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

describe.runIf(runs)('policy-grpc’s cache and one agent flooding it', () => {
  let service: PythonPolicyService;
  let fabric: AgentFabric;
  let host: PluginHost;
  let provider: PolicyProvider;
  let victim: string;
  let attacker: string;

  beforeAll(async () => {
    service = await startPythonPolicyService();
    fabric = new AgentFabric();
    fabric.policies.addPolicy({ name: 'rules', rules: [{ tool: 'py__*', action: 'allow' }] });
    host = new PluginHost(fabric, { log: () => undefined });
    await host.load(FIRST_PARTY('policy-grpc'), {
      target: service.address,
      insecure: true,
      deadlineMs: 5000,
      cacheSize: 20,
      cacheSizePerAgent: 5,
    });
    provider = host.instanceOf<'policy'>('policy-grpc')!;
    victim = (await fabric.spawn({ model: 'm', name: 'victim', executor: 'remote' })).id;
    attacker = (await fabric.spawn({ model: 'm', name: 'attacker', executor: 'remote' })).id;
  });

  afterAll(async () => {
    await host?.close();
    await fabric?.close();
    await service?.close();
  });

  const call = async (agentId: string, n: number): Promise<void> => {
    const a = await fabric.authorizeToolCall({ agentId, tool: 'py__cached', params: { n } });
    expect(a.allowed).toBe(true);
  };
  const cached = (agentId: string, n: number): boolean =>
    provider.decide!({ agentId, tool: 'py__cached', params: { n } }) !== undefined;

  it('keeps the other agents’ answers (before: all pushed out) and the flooder’s newest only', async () => {
    for (let n = 0; n < 5; n++) await call(victim, n);
    expect([0, 1, 2, 3, 4].map((n) => cached(victim, n))).toEqual([true, true, true, true, true]);
    // 60 distinct arguments: three times the whole cache.
    for (let n = 0; n < 60; n++) await call(attacker, n);
    expect([0, 1, 2, 3, 4].map((n) => cached(victim, n))).toEqual([true, true, true, true, true]);
    const attackers = Array.from({ length: 60 }, (_, n) => n).filter((n) => cached(attacker, n));
    expect(attackers).toEqual([55, 56, 57, 58, 59]);
    // An answer asked again (its entry refreshed) stays in the agent's share.
    await call(attacker, 100);
    expect(cached(attacker, 100)).toBe(true);
    expect(cached(attacker, 55)).toBe(false);
  });
});

/**
 * Found by the hostile review of the share: the default share (1000) was no share at all for a
 * cache configured smaller than it (`cacheSize: 20` without `cacheSizePerAgent`): the flooder
 * pushed every other agent's answers out as before. The default share is now a tenth of the
 * cache (at most 1000), and a share that is the whole cache is refused at load.
 */
describe.runIf(runs)('policy-grpc’s default share of a small cache', () => {
  let service: PythonPolicyService;
  let fabric: AgentFabric;
  let host: PluginHost;
  let provider: PolicyProvider;
  let victim: string;
  let attacker: string;

  beforeAll(async () => {
    service = await startPythonPolicyService();
    fabric = new AgentFabric();
    fabric.policies.addPolicy({ name: 'rules', rules: [{ tool: 'py__*', action: 'allow' }] });
    host = new PluginHost(fabric, { log: () => undefined });
    await host.load(FIRST_PARTY('policy-grpc'), {
      target: service.address,
      insecure: true,
      deadlineMs: 5000,
      cacheSize: 20,
    });
    provider = host.instanceOf<'policy'>('policy-grpc')!;
    victim = (await fabric.spawn({ model: 'm', name: 'victim', executor: 'remote' })).id;
    attacker = (await fabric.spawn({ model: 'm', name: 'attacker', executor: 'remote' })).id;
  });

  afterAll(async () => {
    await host?.close();
    await fabric?.close();
    await service?.close();
  });

  const call = async (agentId: string, n: number): Promise<void> => {
    const a = await fabric.authorizeToolCall({ agentId, tool: 'py__cached', params: { n } });
    expect(a.allowed).toBe(true);
  };
  const cached = (agentId: string, n: number): boolean =>
    provider.decide!({ agentId, tool: 'py__cached', params: { n } }) !== undefined;

  it('keeps the victim’s answers under a cache smaller than 1000 (before: all pushed out)', async () => {
    await call(victim, 0);
    await call(victim, 1);
    for (let n = 0; n < 60; n++) await call(attacker, n);
    expect([cached(victim, 0), cached(victim, 1)]).toEqual([true, true]);
    // A tenth of 20: the flooder's newest two.
    const attackers = Array.from({ length: 60 }, (_, n) => n).filter((n) => cached(attacker, n));
    expect(attackers).toEqual([58, 59]);
  });

  it('refuses a share that is the whole cache', async () => {
    const own = new AgentFabric();
    const other = new PluginHost(own, { log: () => undefined });
    try {
      await expect(
        other.load(FIRST_PARTY('policy-grpc'), {
          target: service.address,
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
