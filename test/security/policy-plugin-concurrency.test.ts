/**
 * What an attacker found: policy-rate-limit and policy-loop-guard look in `decide` and count in
 * `admitted`. Next to a provider that decides asynchronously (policy-grpc, as in the README's
 * example config), the tool-call authorizer awaited the policy service between a call's `decide`
 * and its `admitted` (policy-grpc even shares one pending answer between identical calls, so they
 * all resume together): every call sent at once saw the untouched bucket / history and passed.
 * One agent ran 10 identical calls under `maxRepeats: 2` and 20 of 20 burst calls under a
 * capacity of 3.
 *
 * Now the counting providers are asked again at admission, in the same synchronous step as
 * `admitted` (`PolicyEngine.recheckAdmission`). First the attack itself — a real sidecar, a real
 * gRPC policy service, a real upstream that writes each call it runs to a file, counted on disk —
 * then the same pipeline in a fabric with a policy service held at a gate (no timing), for the
 * refusal's shape, precedence, and the calls that waited for a human or for budget.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { create } from '@bufbuild/protobuf';
import { Server, ServerCredentials } from '@grpc/grpc-js';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import { Decision, DecideResponseSchema } from '../../src/gen/fabric/v1/policy_provider_pb.js';
import { PluginHost } from '../../src/plugins/plugin-host.js';
import type { Approval } from '../../src/policy/approval-manager.js';
import type {
  ToolCallAuthorization,
  ToolCallContext,
  ToolCallDenied,
} from '../../src/policy/tool-call-authorizer.js';
import { POLICY_PROVIDER_SERVICE_DEFINITION } from '../../src/rpc/policy-provider.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  httpClient,
  startTestSidecar,
  tempDir,
  text,
} from '../fixtures/gateway/harness.js';

const COUNTER = fileURLToPath(new URL('../fixtures/gateway/counter-server.mjs', import.meta.url));
const plugin = (name: string) =>
  fileURLToPath(new URL(`../../plugins/${name}/index.js`, import.meta.url));

/** A gRPC policy service that abstains on everything, after `delayMs` (a real one takes time). */
async function abstainingService(
  delayMs: number,
): Promise<{ address: string; asked(): number; close(): Promise<void> }> {
  let asked = 0;
  const server = new Server();
  server.addService(POLICY_PROVIDER_SERVICE_DEFINITION, {
    decide: (_call: unknown, cb: (err: null, res: unknown) => void) => {
      asked++;
      setTimeout(
        () => cb(null, create(DecideResponseSchema, { decision: Decision.ABSTAIN, cacheTtlMs: 0 })),
        delayMs,
      );
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  return {
    address: `127.0.0.1:${port}`,
    asked: () => asked,
    close: () => new Promise((resolve) => server.tryShutdown(() => resolve())),
  };
}

/** The labels of the calls the upstream ran, from its file. */
function ran(file: string, label: string): number {
  if (!existsSync(file)) return 0;
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l === label).length;
}

describe('an agent bursting past rate-limit and loop-guard next to policy-grpc (real sidecar)', () => {
  let service: Awaited<ReturnType<typeof abstainingService>> | undefined;
  let sidecar: Sidecar | undefined;
  let agent: Client | undefined;

  afterEach(async () => {
    await agent?.close();
    await closeSidecar(sidecar);
    agent = undefined;
    sidecar = undefined;
  });
  afterAll(async () => {
    await service?.close();
  });

  async function start(counting: object, countFile: string): Promise<Client> {
    service ??= await abstainingService(300);
    sidecar = await startTestSidecar({
      upstreams: {
        c: {
          command: process.execPath,
          args: [COUNTER],
          env: { COUNT_FILE: countFile },
          stderr: 'ignore',
        },
      },
      policies: [DEFAULT_ALLOW],
      plugins: [
        {
          module: plugin('policy-grpc'),
          options: { target: service.address, insecure: true, deadlineMs: 5000 },
        },
        counting,
      ],
      agents: [{ name: 'a' }],
    } as never);
    agent = await httpClient(sidecar.url!, agentToken(sidecar, 'a'));
    return agent;
  }

  const bump = (client: Client, label: string) =>
    client.callTool({ name: 'c__bump', arguments: { label } }) as Promise<CallToolResult>;

  it('policy-loop-guard (maxRepeats 2): of 10 identical calls sent at once, 2 run', async () => {
    const count = join(tempDir('loop-burst'), 'count.txt');
    const client = await start(
      { module: plugin('policy-loop-guard'), options: { maxRepeats: 2, windowSeconds: 600 } },
      count,
    );
    const warm = await bump(client, 'warm');
    expect(warm.isError, text(warm)).toBeFalsy();
    const asked = service!.asked();

    const results = await Promise.all(Array.from({ length: 10 }, () => bump(client, 'same')));
    // The policy service was really asked about the burst (the path of the attack).
    expect(service!.asked()).toBeGreaterThan(asked);
    // The refusal of the burst is the guard's ordinary refusal: the lone call after gets the same.
    const after = await bump(client, 'same');
    expect(after.isError).toBe(true);
    expect(text(after)).toMatch(/ran 2 times within 600 s.*\(policy-loop-guard\)/);
    const refused = results.filter((r) => r.isError === true);
    expect(refused.map((r) => text(r).replace(/until \S+/, 'until T'))).toEqual(
      Array(8).fill(text(after).replace(/until \S+/, 'until T')),
    );
    expect(ran(count, 'same')).toBe(2);
  }, 60_000);

  it('policy-rate-limit (capacity 3): of 20 calls sent at once with 2 tokens left, 2 run', async () => {
    const count = join(tempDir('rate-burst'), 'count.txt');
    const client = await start(
      {
        module: plugin('policy-rate-limit'),
        options: { perAgent: { capacity: 3, refillPerSecond: 0.0001 } },
      },
      count,
    );
    const warm = await bump(client, 'warm');
    expect(warm.isError, text(warm)).toBeFalsy();

    const results = await Promise.all(Array.from({ length: 20 }, () => bump(client, 'burst')));
    const after = await bump(client, 'after');
    expect(after.isError).toBe(true);
    expect(text(after)).toMatch(/rate limit \(agent: 3 calls.*\(policy-rate-limit\)/);
    const refused = results.filter((r) => r.isError === true);
    expect(refused).toHaveLength(18);
    for (const r of refused)
      expect(text(r)).toMatch(/rate limit \(agent: 3 calls.*\(policy-rate-limit\)/);
    // Exactly 2: none past the limit, and none counted twice.
    expect(ran(count, 'burst')).toBe(2);
    expect(ran(count, 'after')).toBe(0);
  }, 60_000);
});

describe('counting providers beside an asynchronous provider, in a fabric (policy service at a gate)', () => {
  let fabric: AgentFabric;
  let host: PluginHost;
  let a: string;
  /** Opens the gate the policy service's answers wait at, and sets up a closed one. */
  let open: () => void;

  beforeEach(async () => {
    vi.useFakeTimers({ now: new Date('2026-01-01T00:00:00Z'), toFake: ['Date', 'performance'] });
    fabric = new AgentFabric();
    fabric.policies.addPolicy({ name: 'allow-all', rules: [{ tool: '*', action: 'allow' }] });
    fabric.policies.addPolicy({
      name: 'ask',
      priority: 10,
      rules: [{ tool: 'ask', action: 'require_approval' }],
    });
    fabric.policies.addPolicy({
      name: 'exempt',
      priority: 1000,
      rules: [{ tool: 'exempt', action: 'allow' }],
    });
    let gate!: Promise<void>;
    open = () => {
      const opened = release;
      gate = new Promise<void>((r) => (release = r));
      opened();
    };
    let release!: () => void;
    gate = new Promise<void>((r) => (release = r));
    // Asked about every call (highest priority), abstains once the gate opens.
    fabric.policies.addProvider({
      name: 'remote',
      priority: 2000,
      decide: () => undefined,
      decideAsync: async () => {
        await gate;
        return undefined;
      },
    });
    host = new PluginHost(fabric);
    await host.load('policy-rate-limit', { perAgent: { capacity: 3, refillPerSecond: 1 } });
    a = (await fabric.spawn({ model: 'm', name: 'a', executor: 'inprocess' })).id;
  });
  afterEach(async () => {
    await host.close();
    await fabric.close();
    vi.useRealTimers();
  });

  /** Sends `n` calls at once, lets the policy service answer them all, and waits for them. */
  async function burst(
    n: number,
    ctx: Partial<ToolCallContext> = {},
  ): Promise<ToolCallAuthorization[]> {
    const calls = Array.from({ length: n }, () =>
      fabric.authorizeToolCall({ agentId: a, tool: 'fs__read', params: {}, ...ctx }),
    );
    open();
    return Promise.all(calls);
  }

  function refusals(all: ToolCallAuthorization[]): ToolCallDenied[] {
    return all.filter((x): x is ToolCallDenied => !x.allowed);
  }

  it('admits exactly what the bucket holds, refusing the rest as the limiter refuses one call', async () => {
    const all = await burst(10);
    expect(all.filter((x) => x.allowed)).toHaveLength(3);
    const refused = refusals(all);
    expect(refused).toHaveLength(7);
    // The refusal a lone call gets when the bucket is empty.
    const [lone] = await burst(1);
    expect(lone!.allowed).toBe(false);
    const { code, reason, retryAt, details, decision } = lone as ToolCallDenied;
    expect(code).toBe('FABRIC_ERR_POLICY_DENIED');
    expect(details).toMatchObject({ policy: 'policy-rate-limit', rule: null });
    for (const r of refused) {
      expect({ code: r.code, reason: r.reason, retryAt: r.retryAt, details: r.details }).toEqual({
        code,
        reason,
        retryAt,
        details,
      });
      expect(r.decision).toMatchObject({ action: 'deny', policy: decision!.policy, rule: null });
    }
  });

  it('a rule that outranks the limiter still lets every call through', async () => {
    const all = await burst(10, { tool: 'exempt' });
    expect(all.every((x) => x.allowed)).toBe(true);
  });

  it('calls a human approved are admitted and each counted once (they may overdraw, as documented)', async () => {
    const waiting: Approval[] = [];
    const calls = Array.from({ length: 3 }, () =>
      fabric.authorizeToolCall({
        agentId: a,
        tool: 'ask',
        params: {},
        onWaiting: (p) => waiting.push(p),
      }),
    );
    open();
    await vi.waitUntil(() => waiting.length === 3);
    // One token is used meanwhile: 2 left for 3 approved calls.
    expect((await burst(1))[0]!.allowed).toBe(true);
    for (const p of waiting) fabric.approvals.approve(p.id, { approver: 'alice' });
    const approved = await Promise.all(calls);
    expect(approved.map((x) => x.allowed)).toEqual([true, true, true]);
    // 4 calls counted against a capacity of 3: the debt is repaid before the next call passes.
    const next = (await burst(1))[0]!;
    expect(next.allowed).toBe(false);
    expect((next as ToolCallDenied).retryAt).toBe(Date.now() + 2000);
  });

  it('a call that waited for budget is admitted and counted once', async () => {
    fabric.budgets.setBudget(a, { maxTokensPerHour: 100 });
    const budgeted = { estimate: { tokens: 100, cost: 0 }, budget: { waitMs: 60_000 } };
    const [first] = await burst(1, budgeted);
    expect(first!.allowed).toBe(true);
    // The second fits the limiter but waits for the first's reservation.
    let second: ToolCallAuthorization | undefined;
    const pending = fabric
      .authorizeToolCall({ agentId: a, tool: 'fs__read', params: {}, ...budgeted })
      .then((x) => (second = x));
    open();
    await new Promise((resolve) => setImmediate(resolve));
    expect(second).toBeUndefined(); // parked until the first reservation settles
    fabric.settleToolCall(first!, { tokens: 0, cost: 0 });
    await pending;
    expect(second!.allowed).toBe(true);
    fabric.settleToolCall(second!, { tokens: 0, cost: 0 });
    // Two of three tokens taken, one each: one more call passes, the next is refused.
    expect((await burst(1))[0]!.allowed).toBe(true);
    expect((await burst(1))[0]!.allowed).toBe(false);
  });
});
