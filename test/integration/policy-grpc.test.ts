/**
 * plugins/policy-grpc against a REAL Python policy service (grpcio, stubs generated from
 * proto/fabric/v1/policy_provider.proto at test time): allow, deny, approval, abstain, the
 * decision cache (the service counts the calls it answers), fail-closed on deadline, error,
 * unusable decisions, bytes that are not a DecideResponse, an oversized answer and a killed
 * service; hostile arguments; option validation; and through the real gateway, an MCP SDK
 * client's tools/call denied by the Python service never reaches the filesystem upstream. TLS:
 * policy-grpc-tls.test.ts.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import type { PolicyProvider } from '../../src/policy/policy-engine.js';
import type { ToolCallAuthorization } from '../../src/policy/tool-call-authorizer.js';
import { PluginHost } from '../../src/plugins/plugin-host.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import { FIRST_PARTY } from '../contracts/load-plugin.js';
import {
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  FILESYSTEM_BIN,
  httpClient,
  startTestSidecar,
  tempDir,
  text,
} from '../fixtures/gateway/harness.js';
import {
  EXAMPLE_SERVICE,
  pythonGrpc,
  startPythonPolicyService,
  type PythonPolicyService,
} from '../fixtures/grpc/python-policy-service.js';

const PLUGIN = FIRST_PARTY('policy-grpc');
const TOKEN = 'py-policy-token-7f3a';
const runs = pythonGrpc || process.env.CI !== undefined;

describe.runIf(runs)('policy-grpc with a Python policy service', () => {
  let service: PythonPolicyService;
  let fabric: AgentFabric;
  let host: PluginHost;
  let agentId: string;
  let provider: PolicyProvider;
  const logs: { level: string; msg: string }[] = [];

  beforeAll(async () => {
    service = await startPythonPolicyService(undefined, [TOKEN]);
    fabric = new AgentFabric();
    // Rules allow every py__ tool at the plugin's priority: the service's deny still wins (deny
    // beats allow at equal priority); its abstain leaves the rule to decide.
    fabric.policies.addPolicy({ name: 'rules', rules: [{ tool: 'py__*', action: 'allow' }] });
    host = new PluginHost(fabric, { log: (e) => logs.push(e) });
    await host.load(PLUGIN, {
      target: service.address,
      insecure: true,
      deadlineMs: 1000,
      authToken: TOKEN,
      metadata: { 'x-team': 'blue' },
    });
    provider = host.instanceOf<'policy'>('policy-grpc')!;
    agentId = (
      await fabric.spawn({ model: 'm', name: 'a', executor: 'remote', labels: { tier: 'gold' } })
    ).id;
  });

  afterAll(async () => {
    await host?.close();
    await fabric?.close();
    await service?.close();
  });

  const call = (tool: string, params: Record<string, unknown> = {}, id = agentId) =>
    fabric.authorizeToolCall({ agentId: id, tool, params });
  // The service prints a CALL line before it answers, but the line may reach us after the
  // answer: a marker call, awaited until its own line is in, flushes the lines before it.
  let marker = 0;
  const settled = async (): Promise<void> => {
    const m = `m${marker++}`;
    await provider.decideAsync!({ agentId: 'sync', tool: 'sync__allow', params: { m } });
    await vi.waitFor(() =>
      expect(service.calls.some((c) => c.tool === 'sync__allow' && c.args.includes(m))).toBe(true),
    );
  };
  const seen = async (tool: string) => {
    await settled();
    return service.calls.filter((c) => c.tool === tool);
  };
  const asked = async () => {
    await settled();
    return service.calls.filter((c) => c.tool !== 'sync__allow').length;
  };
  const refusal = (a: ToolCallAuthorization) => {
    if (a.allowed) throw new Error(`allowed: ${a.decision.reason}`);
    return a;
  };

  it('allow: the service gets the agent, tool, normalized arguments, labels and metadata', async () => {
    const a = await call('py__allow', { b: [2, 1], a: { z: 1, y: 'x' } });
    expect(a.allowed).toBe(true);
    expect(await seen('py__allow')).toEqual([
      {
        agent: agentId,
        tool: 'py__allow',
        args: '{"a":{"y":"x","z":1},"b":[2,1]}',
        pool: '',
        labels: { tier: 'gold' },
        team: 'blue',
        client: null,
      },
    ]);
  });

  it('deny: refused with the service reason, outranking an allow rule', async () => {
    const a = refusal(await call('py__deny', { path: '/etc/shadow' }));
    expect(a.code).toBe('FABRIC_ERR_POLICY_DENIED');
    expect(a.reason).toContain(`python denies py__deny to ${agentId}`);
    expect(a.decision?.policy).toBe('policy-grpc');
  });

  it('require_approval: the call waits for a human, and runs once approved', async () => {
    const approvals: string[] = [];
    const a = await fabric.authorizeToolCall({
      agentId,
      tool: 'py__approval',
      params: {},
      onWaiting: (pending) => {
        approvals.push(pending.id);
        fabric.approvals.approve(pending.id, { approver: 'op' });
      },
    });
    expect(a.allowed).toBe(true);
    expect(approvals).toHaveLength(1);
    expect(fabric.approvals.getApproval(approvals[0]!)).toMatchObject({
      status: 'approved',
      reason: 'ask a human',
      tool: 'py__approval',
    });
  });

  it('abstain: the other policies decide (an allow rule; the default deny where no rule matches)', async () => {
    const a = await call('py__abstain');
    expect(a.allowed).toBe(true);
    expect(a.decision?.policy).toBe('rules');
    const b = refusal(await call('other__abstain'));
    expect(b.code).toBe('FABRIC_ERR_POLICY_DENIED');
    expect(b.decision?.policy).toBeNull();
    expect(await seen('other__abstain')).toHaveLength(1);
  });

  it('cache: a cacheable answer is reused for the same agent, tool and normalized arguments only', async () => {
    for (const params of [
      { q: 1, r: 'x' },
      { r: 'x', q: 1 },
      { q: 1, r: 'x' },
    ]) {
      expect((await call('py__cached', params)).allowed).toBe(true);
    }
    expect(await seen('py__cached')).toHaveLength(1);
    expect((await call('py__cached', { q: 2, r: 'x' })).allowed).toBe(true);
    expect(await seen('py__cached')).toHaveLength(2);
    const other = (await fabric.spawn({ model: 'm', name: 'b', executor: 'remote' })).id;
    expect((await call('py__cached', { q: 1, r: 'x' }, other)).allowed).toBe(true);
    expect(await seen('py__cached')).toHaveLength(3);
    // Without waiting (tools/list probes): the cached answer, or no opinion.
    expect(
      provider.decide({ agentId, tool: 'py__cached', params: { r: 'x', q: 1 } }),
    ).toMatchObject({
      action: 'allow',
    });
    expect(provider.decide({ agentId, tool: 'py__deny', params: {} })).toBeUndefined();
    // Not cacheable (cache_ttl_ms 0): asked every time.
    await call('py__allow', { n: 1 });
    await call('py__allow', { n: 1 });
    expect((await seen('py__allow')).filter((c) => c.args === '{"n":1}')).toHaveLength(2);
  });

  it('identical concurrent calls ask the service once', async () => {
    const all = await Promise.all(
      Array.from({ length: 20 }, () => call('py__cached', { burst: true })),
    );
    expect(all.every((a) => a.allowed)).toBe(true);
    expect((await seen('py__cached')).filter((c) => c.args === '{"burst":true}')).toHaveLength(1);
  });

  it('deadline exceeded: denied, failing closed, with FABRIC_ERR_POLICY_UNAVAILABLE', async () => {
    const a = refusal(await call('py__slow'));
    expect(a.code).toBe('FABRIC_ERR_POLICY_UNAVAILABLE');
    expect(a.reason).toMatch(/DEADLINE_EXCEEDED.*failing closed/);
  });

  it('an error status or an unusable answer: denied, failing closed', async () => {
    for (const [tool, why] of [
      ['py__error', /INTERNAL: policy store down/],
      ['py__bogus', /unusable decision \(99\)/],
      ['py__unspecified', /unusable decision \(0\)/],
    ] as const) {
      const a = refusal(await call(tool));
      expect(a.code).toBe('FABRIC_ERR_POLICY_UNAVAILABLE');
      expect(a.reason).toMatch(why);
      expect(await seen(tool)).toHaveLength(1);
    }
    expect(logs.some((l) => l.level === 'warn' && /tool calls are denied/.test(l.msg))).toBe(true);
  });

  it('bytes that are not a DecideResponse, or one past the size cap: denied, failing closed, nothing cached', async () => {
    for (const [tool, why] of [
      ['py__garbage', /INTERNAL: Response message parsing error/],
      // Starts as a valid ALLOW: a half-read answer must not allow.
      ['py__truncated', /INTERNAL: Response message parsing error/],
      ['py__badutf8', /INTERNAL: Response message parsing error.*utf-8/],
      ['py__huge', /RESOURCE_EXHAUSTED/],
    ] as const) {
      for (let i = 0; i < 2; i++) {
        const a = refusal(await call(tool, { i: 0 }));
        expect(a.code).toBe('FABRIC_ERR_POLICY_UNAVAILABLE');
        expect(a.reason).toMatch(why);
        expect(provider.decide({ agentId, tool, params: { i: 0 } })).toBeUndefined();
      }
      // Asked both times: a failure is never served from the cache.
      expect(await seen(tool)).toHaveLength(2);
    }
    // The channel is still good after them.
    expect((await call('py__allow', { after: 'garbage' })).allowed).toBe(true);
  });

  it('hostile arguments: too deep or too big are denied without asking the service', async () => {
    let deep: Record<string, unknown> = { leaf: 1 };
    for (let i = 0; i < 200; i++) deep = { d: deep };
    const before = await asked();
    const a = refusal(await call('py__allow', deep));
    expect(a.code).toBe('FABRIC_ERR_POLICY_UNAVAILABLE');
    expect(a.reason).toMatch(/deeper than 64 levels/);
    const b = refusal(await call('py__allow', { blob: 'x'.repeat(1_100_000) }));
    expect(b.reason).toMatch(/exceed maxArgumentsBytes 1048576/);
    expect(await asked()).toBe(before);
  });

  it('a wrong token is refused by the service: denied, and the token is never in the reason', async () => {
    const f = new AgentFabric();
    const h = new PluginHost(f);
    try {
      f.policies.addPolicy(DEFAULT_ALLOW);
      await h.load(PLUGIN, { target: service.address, insecure: true, authToken: 'wrong-token' });
      const id = (await f.spawn({ model: 'm', name: 'w', executor: 'remote' })).id;
      const a = refusal(await f.authorizeToolCall({ agentId: id, tool: 'py__allow', params: {} }));
      expect(a.code).toBe('FABRIC_ERR_POLICY_UNAVAILABLE');
      expect(a.reason).toMatch(/UNAUTHENTICATED/);
      expect(a.reason).not.toContain('wrong-token');
    } finally {
      await h.close();
      await f.close();
    }
  });

  it('a request is cancelled at the service once every call waiting for it is given up', async () => {
    // A deadline far past the service's 3 s hold: only a cancellation ends the request early.
    const other = new AgentFabric();
    const long = new PluginHost(other, { log: () => undefined });
    await long.load(PLUGIN, {
      target: service.address,
      insecure: true,
      deadlineMs: 30_000,
      authToken: TOKEN,
    });
    try {
      const p = long.instanceOf<'policy'>('policy-grpc')!;
      const held = (n: number) => ({ agentId, tool: 'py__hold', params: { n } });
      const reaching = (n: number) =>
        vi.waitFor(() => expect(service.calls.some((c) => c.args === `{"n":${n}}`)).toBe(true), {
          timeout: 5000,
        });

      // Two identical calls share one request; one gives up, the other still gets the answer.
      const gone = new AbortController();
      const waiting = new AbortController();
      const first = p.decideAsync!(held(1), gone.signal);
      const second = p.decideAsync!(held(1), waiting.signal);
      await reaching(1);
      gone.abort(new Error('given up'));
      await expect(first).rejects.toThrow('given up');
      expect(await second).toMatchObject({ action: 'allow', reason: 'held to the end' });

      // Both give up: the service sees the request cancelled.
      const a = new AbortController();
      const b = new AbortController();
      const both = [p.decideAsync!(held(2), a.signal), p.decideAsync!(held(2), b.signal)];
      await reaching(2);
      a.abort(new Error('a gone'));
      b.abort(new Error('b gone'));
      await Promise.allSettled(both);
      await vi.waitFor(() => expect(service.cancelled).toEqual(['{"n":2}']), { timeout: 5000 });
      // A call already given up is not sent at all.
      const late = new AbortController();
      late.abort(new Error('late'));
      await expect(p.decideAsync!(held(3), late.signal)).rejects.toThrow('late');
      expect(service.calls.some((c) => c.args === '{"n":3}')).toBe(false);
    } finally {
      await long.close();
      await other.close();
    }
  });

  it('service killed: every uncached call is denied, failing closed (a granted cache entry still answers)', async () => {
    await service.kill();
    const a = refusal(await call('py__allow', { after: 'kill' }));
    expect(a.code).toBe('FABRIC_ERR_POLICY_UNAVAILABLE');
    expect(a.reason).toMatch(/UNAVAILABLE/);
    expect((await call('py__cached', { q: 1, r: 'x' })).allowed).toBe(true);
  });
});

describe('policy-grpc options', () => {
  const load = async (options: unknown) => {
    const f = new AgentFabric();
    try {
      await new PluginHost(f).load(PLUGIN, options);
    } finally {
      await f.close();
    }
  };

  it.each([
    [{ target: '127.0.0.1:1' }, /options\.insecure: say how to connect/],
    [{ target: '127.0.0.1:1', insecure: true, tls: {} }, /options\.insecure: say how to connect/],
    [{ insecure: true }, /options\.target/],
    [{ target: '127.0.0.1:1', insecure: true, deadlineMs: 0 }, /options\.deadlineMs/],
    [{ target: '127.0.0.1:1', insecure: true, cacheSize: -1 }, /options\.cacheSize/],
    [
      { target: '127.0.0.1:1', insecure: true, metadata: { Authorization: 'x' } },
      /options\.metadata/,
    ],
    [{ target: '127.0.0.1:1', insecure: true, tls_: 1 }, /options/],
    [{ target: '127.0.0.1:1', tls: { certFile: '/x.pem' } }, /certFile and keyFile go together/],
    [
      { target: '127.0.0.1:1', insecure: true, authToken: 'a', authTokenEnv: 'B' },
      /options\.authTokenEnv: give authToken or authTokenEnv, not both/,
    ],
    [
      { target: '127.0.0.1:1', insecure: true, authTokenEnv: 'POLICY_GRPC_UNSET_VAR' },
      /environment variable POLICY_GRPC_UNSET_VAR is not set/,
    ],
  ])('%j is refused naming the plugin and the option', async (options, message) => {
    const err = await load(options).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toMatchObject({ code: 'FABRIC_ERR_PLUGIN' });
    expect((err as Error).message).toMatch(/policy-grpc/);
    expect((err as Error).message).toMatch(message);
  });
});

describe.runIf(runs)(
  'policy-grpc in the sidecar: the README example service denies a write',
  () => {
    const sandbox = tempDir('policy-grpc');
    let service: PythonPolicyService;
    let sidecar: Sidecar;
    let agent: Client;

    beforeAll(async () => {
      service = await startPythonPolicyService(EXAMPLE_SERVICE, ['0'], { POLICY_TOKEN: TOKEN });
      writeFileSync(join(sandbox, 'notes.txt'), 'original');
      process.env.POLICY_GRPC_TOKEN = TOKEN;
      sidecar = await startTestSidecar({
        upstreams: {
          fs: { command: process.execPath, args: [FILESYSTEM_BIN, sandbox], stderr: 'ignore' },
        },
        policies: [DEFAULT_ALLOW],
        plugins: [
          {
            module: 'policy-grpc',
            // The token from the environment (the example service refuses calls without it).
            options: { target: service.address, insecure: true, authTokenEnv: 'POLICY_GRPC_TOKEN' },
          },
        ],
        agents: [{ name: 'writer' }],
      });
      agent = await httpClient(sidecar.url!, agentToken(sidecar, 'writer'));
    });

    afterAll(async () => {
      await agent?.close();
      await closeSidecar(sidecar);
      await service?.close();
    });

    it('tools/call of fs__write_file is refused and the file is untouched', async () => {
      const target = join(sandbox, 'notes.txt');
      const fresh = join(sandbox, 'new.txt');
      for (const path of [target, fresh]) {
        const res = (await agent.callTool({
          name: 'fs__write_file',
          arguments: { path, content: 'overwritten' },
        })) as CallToolResult;
        expect(res.isError).toBe(true);
        expect(text(res)).toMatch(/this service allows no writes \(fs__write_file\)/);
        expect(text(res)).toContain('FABRIC_ERR_POLICY_DENIED');
      }
      expect(readFileSync(target, 'utf8')).toBe('original');
      expect(existsSync(fresh)).toBe(false);
      await vi.waitFor(() =>
        expect(service.calls.filter((c) => c.tool === 'fs__write_file')).toHaveLength(2),
      );
    });

    it('a read the service allows reaches the upstream', async () => {
      const res = (await agent.callTool({
        name: 'fs__read_text_file',
        arguments: { path: join(sandbox, 'notes.txt') },
      })) as CallToolResult;
      expect(res.isError, text(res)).toBeFalsy();
      expect(text(res)).toContain('original');
    });

    it('with the service gone, a write is refused (FABRIC_ERR_POLICY_UNAVAILABLE) and nothing is written', async () => {
      await service.kill();
      const path = join(sandbox, 'after-kill.txt');
      const res = (await agent.callTool({
        name: 'fs__write_file',
        arguments: { path, content: 'x' },
      })) as CallToolResult;
      expect(res.isError).toBe(true);
      expect(text(res)).toContain('FABRIC_ERR_POLICY_UNAVAILABLE');
      expect(existsSync(path)).toBe(false);
    });
  },
);
