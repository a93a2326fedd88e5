/**
 * A hostile review of the first-party policy plugins, from an agent holding one credential and
 * from a policy service that misbehaves. Real sidecar (harness), official MCP SDK client, real
 * upstreams that write what they ran to a file (counted on disk).
 *
 * - policy-rate-limit / policy-loop-guard: a call the budget made wait (only other calls'
 *   in-flight reservations kept it out) was counted when admitted without a second look, so an
 *   agent that held its budget with one slow call could park any number of calls behind it and
 *   have them all run past the limit when it ended (10 of 10 under a capacity of 4, and under
 *   `maxRepeats: 2`).
 * - secret-guard: its patterns asked for a word boundary around the secret, so a credential glued
 *   to one letter (`x` + the agent's own credential, a GitHub token + `_`, letters + an AWS key id)
 *   reached the upstream, and the admin token a sidecar generates (`fab_admin_…`) matched nothing.
 * - policy-grpc, from a service that misbehaves (grpc-js, raw answer bytes): text the service
 *   sends (an error's details, a deny's reason) reached the agent and the log as it came, so a
 *   service that echoed what it received handed the plugin's auth token to the agent. Hanging,
 *   garbage, huge, unusable answers, a service gone mid-run or down at start: all fail closed.
 * - policy-loop-guard: a looping call with a zero-width space, a word joiner, a soft hyphen or
 *   full-width letters in a string was another call each time (key order, number spelling and
 *   whitespace were already one call).
 * Held: policy-rate-limit counts per agent across every door, session and MCP task; secret-guard
 * reads JSON escapes (`\u0061fk_…`) before it scans.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { create } from '@bufbuild/protobuf';
import {
  type Metadata,
  Server,
  ServerCredentials,
  type ServiceDefinition,
  status,
} from '@grpc/grpc-js';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import {
  CallToolResultSchema,
  CreateMessageRequestSchema,
  type CallToolResult,
} from '@modelcontextprotocol/sdk/types.js';
import { afterEach, describe, expect, it } from 'vitest';
import type { GatewayLogEntry } from '../../src/gateway/tool-call-pipeline.js';
import { CallToolRequestSchema, type CallToolResponse } from '../../src/gen/fabric/v1/tool_pb.js';
import { Decision, DecideResponseSchema } from '../../src/gen/fabric/v1/policy_provider_pb.js';
import { POLICY_PROVIDER_SERVICE_DEFINITION } from '../../src/rpc/policy-provider.js';
import { TOOL_SERVICE_DEFINITION } from '../../src/rpc/tool-service.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import { postJson } from '../fixtures/api.js';
import {
  agentId,
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  httpClient,
  startTestSidecar,
  tempDir,
  text,
  until,
} from '../fixtures/gateway/harness.js';
import { callAsTask } from '../fixtures/gateway/tasks.js';
import { failure, grpcClient, unary } from '../fixtures/grpc-client.js';

const COUNTER = fileURLToPath(new URL('../fixtures/gateway/counter-server.mjs', import.meta.url));
const HOLD_COUNTER = fileURLToPath(
  new URL('../fixtures/gateway/hold-counter-server.mjs', import.meta.url),
);
const plugin = (name: string) =>
  fileURLToPath(new URL(`../../plugins/${name}/index.js`, import.meta.url));

/** The labels of the calls the upstream ran, from its file. */
function ran(file: string): string[] {
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l !== '');
}

const bump = (client: Client, label: string) =>
  client.callTool({ name: 'c__bump', arguments: { label } }) as Promise<CallToolResult>;

let sidecar: Sidecar | undefined;
const clients: Client[] = [];
afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close()));
  await closeSidecar(sidecar);
  sidecar = undefined;
});

/** The counter upstream `c`, which appends each call it runs to `countFile`. */
function counterUpstream(countFile: string) {
  return {
    c: {
      command: process.execPath,
      args: [COUNTER],
      env: { COUNT_FILE: countFile },
      stderr: 'ignore',
    },
  } as const;
}
describe('counting plugins: calls parked behind the agent’s own held budget (real sidecar)', () => {
  /**
   * The attack: `c__hold` is estimated at the agent's whole token budget, so while it runs every
   * other call of the agent is kept out by that in-flight reservation only — and waits for it
   * (gateway.budgetWaitSeconds). The agent parks 10 calls behind it, then ends the hold (it
   * answers the upstream's sampling request); the hold's real result is small, so all 10 fit.
   */
  async function parkBehindHold(counting: object, label: (i: number) => string) {
    const count = join(tempDir('park'), 'count.txt');
    sidecar = await startTestSidecar({
      upstreams: {
        c: {
          command: process.execPath,
          args: [HOLD_COUNTER],
          env: { COUNT_FILE: count },
          stderr: 'ignore',
        },
      },
      policies: [DEFAULT_ALLOW],
      plugins: [counting],
      agents: [{ name: 'a', budget: { maxTokensPerHour: 1_000_000 } }],
      tokenEstimates: { c__hold: 1000, c__bump: 10 },
      gateway: { budgetWaitSeconds: 120 },
    } as never);
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    let sampled!: () => void;
    const sampling = new Promise<void>((r) => (sampled = r));
    const client = await httpClient(sidecar.url!, agentToken(sidecar, 'a'), { sampling: {} });
    clients.push(client);
    client.setRequestHandler(CreateMessageRequestSchema, async () => {
      sampled();
      await released;
      return { role: 'assistant', model: 'm', content: { type: 'text', text: 'go' } };
    });
    // A first call teaches the gateway what a bump costs (calls of a tool not seen yet wait for
    // the first one's result instead of the budget).
    const warm = await bump(client, 'warm');
    expect(warm.isError, text(warm)).toBeFalsy();
    // The operator tightens the budget to what is used plus the hold's estimate: the hold fits
    // exactly, and while it runs nothing else does.
    const budgets = sidecar.fabric!.budgets;
    const id = agentId(sidecar, 'a');
    budgets.setBudget(id, { maxTokensPerHour: budgets.getStatus(id).tokensUsed + 1000 });
    const hold = client.callTool({ name: 'c__hold', arguments: {} }, undefined, {
      timeout: 120_000,
    }) as Promise<CallToolResult>;
    await sampling; // the hold runs upstream: its reservation holds the whole budget
    const parked = Array.from(
      { length: 10 },
      (_, i) =>
        client.callTool({ name: 'c__bump', arguments: { label: label(i) } }, undefined, {
          timeout: 120_000,
        }) as Promise<CallToolResult>,
    );
    // Every one of them waits for the budget (none refused, none run yet).
    await until(() => budgets.waiting === 10, 30_000);
    expect(ran(count)).toEqual(['warm']);
    release();
    const held = await hold;
    expect(held.isError, text(held)).toBeFalsy();
    const results = await Promise.all(parked);
    return { ran: ran(count).slice(1), results };
  }

  it('policy-rate-limit (capacity 4): of 10 calls parked behind a held budget, 2 run', async () => {
    const { ran: burst, results } = await parkBehindHold(
      {
        module: plugin('policy-rate-limit'),
        options: { perAgent: { capacity: 4, refillPerSecond: 0.0001 } },
      },
      (i) => `burst-${i}`,
    );
    // The warm-up and the hold took one token each: two are left.
    expect(burst).toHaveLength(2);
    const refused = results.filter((r) => r.isError === true);
    expect(refused).toHaveLength(8);
    for (const r of refused) {
      expect(text(r)).toMatch(/rate limit \(agent: 4 calls.*\(policy-rate-limit\)/);
      expect(r._meta?.['agent-fabric/error']).toMatchObject({ code: 'FABRIC_ERR_POLICY_DENIED' });
    }
    // What the refused calls reserved was given back.
    const status = sidecar!.fabric!.budgets.getStatus(agentId(sidecar!, 'a'));
    expect(status.tokensReserved).toBe(0);
  }, 120_000);

  it('policy-loop-guard (maxRepeats 2): of 10 identical calls parked behind a held budget, 2 run', async () => {
    const { ran: burst, results } = await parkBehindHold(
      { module: plugin('policy-loop-guard'), options: { maxRepeats: 2, windowSeconds: 600 } },
      () => 'same',
    );
    expect(burst).toEqual(['same', 'same']);
    const refused = results.filter((r) => r.isError === true);
    expect(refused).toHaveLength(8);
    for (const r of refused) expect(text(r)).toMatch(/ran 2 times within 600 s/);
  }, 120_000);
});

describe('secret-guard: a secret glued to other characters (real sidecar, counter upstream)', () => {
  const AWS = 'AKIAIOSFODNN7EXAMPLE';
  const GITHUB = `ghp_${'A1b2C3d4E5'.repeat(4).slice(0, 36)}`;
  /** The format the sidecar generates for its admin token when none is configured. */
  const ADMIN = `fab_admin_${'Zq9-x_Y3'.repeat(4)}`;

  it('refuses each one, naming the parameter, and the upstream never sees it', async () => {
    const count = join(tempDir('glued'), 'count.txt');
    sidecar = await startTestSidecar({
      upstreams: counterUpstream(count),
      policies: [DEFAULT_ALLOW],
      plugins: [{ module: plugin('secret-guard') }],
      agents: [{ name: 'a' }],
      grpc: { port: 0 },
    } as never);
    const own = agentToken(sidecar, 'a');
    const client = await httpClient(sidecar.url!, own);
    clients.push(client);
    const ok = await bump(client, 'clean');
    expect(ok.isError, text(ok)).toBeFalsy();
    // The receiver drops the glue; each of these is the secret, whole.
    const attempts: [string, string][] = [
      ['x + own agent credential', `x${own}`],
      ['own agent credential in a word', `token=tok${own}end`],
      ['GitHub token + _', `${GITHUB}_`],
      ['GitHub token + _ + more', `${GITHUB}_x`],
      ['letters + AWS key id', `key${AWS}`],
      ['AWS key id + digit', `${AWS}0`],
      ['generated admin token', ADMIN],
      ['generated admin token glued', `admin${ADMIN}x`],
    ];
    for (const [what, label] of attempts) {
      const r = await bump(client, label);
      expect(r.isError, `${what}: ${text(r)}`).toBe(true);
      expect(text(r), what).toMatch(/params\.label looks like a secret \(.*\).*\(secret-guard\)/);
      expect(text(r), what).not.toContain(label);
    }
    // JSON escapes are read before the scan: `\u0061fk_…` sent as written over gRPC is `afk_…`.
    const tools = grpcClient(TOOL_SERVICE_DEFINITION, sidecar.grpcAddress!);
    try {
      const escaped = `{"label":"\\u0061${own.slice(1).replace(/_/g, '\\u005f')}"}`;
      expect(escaped).not.toContain(own);
      const refusal = await failure(
        unary(
          tools,
          'callTool',
          create(CallToolRequestSchema, {
            name: 'c__bump',
            args: { case: 'argumentsJson', value: Buffer.from(escaped) },
          }),
          own,
        ),
      );
      expect(refusal.details).toMatch(/params\.label looks like a secret/);
    } finally {
      tools.close();
    }
    expect(ran(count)).toEqual(['clean']);
  }, 60_000);
});

/** The plugin's token: a misbehaving service echoes it back. */
const POLICY_TOKEN = 'policy-token-Q7v2-never-shown';

/**
 * A grpc-js policy service that misbehaves as the call's `label` says. Its answers are raw bytes
 * (so it can send what is not a DecideResponse); `allow` is a well-formed ALLOW.
 */
async function misbehavingService(): Promise<{
  address: string;
  asked: string[];
  close(): void;
}> {
  const definition = POLICY_PROVIDER_SERVICE_DEFINITION.decide!;
  const encode = (init: Parameters<typeof create<typeof DecideResponseSchema>>[1]) =>
    definition.responseSerialize(create(DecideResponseSchema, init));
  const asked: string[] = [];
  const server = new Server();
  server.addService(
    { decide: { ...definition, responseSerialize: (b: Buffer) => b } } as ServiceDefinition,
    {
      decide: (
        call: { request: { argumentsJson: string }; metadata: Metadata },
        cb: (err: object | null, res?: Buffer) => void,
      ) => {
        const { label } = JSON.parse(call.request.argumentsJson) as { label: string };
        asked.push(label);
        const auth = String(call.metadata.get('authorization')[0]);
        switch (label) {
          case 'allow':
            return cb(null, encode({ decision: Decision.ALLOW }));
          case 'echo-error':
            return cb({ code: status.UNAUTHENTICATED, details: `token not accepted: ${auth}` });
          case 'echo-bare-error':
            return cb({ code: status.PERMISSION_DENIED, details: `unknown key ${auth.slice(7)}` });
          case 'echo-deny':
            return cb(null, encode({ decision: Decision.DENY, reason: `you sent ${auth}` }));
          case 'bogus':
            return cb(null, encode({ decision: 99 as Decision }));
          case 'garbage':
            return cb(null, Buffer.from([0xff, 0xff, 0xff, 0xff]));
          case 'huge':
            return cb(null, encode({ decision: Decision.ALLOW, reason: 'x'.repeat(200_000) }));
          case 'hang':
            return; // never answers
          case 'close-mid-call':
            // Goes away while the call waits for its answer (connections cut, not drained).
            setImmediate(() => server.forceShutdown());
            return;
          default:
            return cb({ code: status.INTERNAL, details: 'unexpected' });
        }
      },
    },
  );
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  return { address: `127.0.0.1:${port}`, asked, close: () => server.forceShutdown() };
}

describe('policy-grpc: a service that misbehaves (real sidecar, grpc-js service, counter upstream)', () => {
  it('every misbehaviour fails closed, nothing reaches the upstream, and the token is never shown', async () => {
    const service = await misbehavingService();
    const count = join(tempDir('grpc-bad'), 'count.txt');
    const logs: GatewayLogEntry[] = [];
    try {
      sidecar = await startTestSidecar(
        {
          upstreams: counterUpstream(count),
          policies: [DEFAULT_ALLOW],
          plugins: [
            {
              module: plugin('policy-grpc'),
              options: {
                target: service.address,
                insecure: true,
                authToken: POLICY_TOKEN,
                deadlineMs: 500,
              },
            },
          ],
          agents: [{ name: 'a' }],
        } as never,
        { logger: (e) => logs.push(e) },
      );
      const client = await httpClient(sidecar.url!, agentToken(sidecar, 'a'));
      clients.push(client);
      const ok = await bump(client, 'allow');
      expect(ok.isError, text(ok)).toBeFalsy();
      for (const [label, code, why] of [
        ['echo-error', 'FABRIC_ERR_POLICY_UNAVAILABLE', /UNAUTHENTICATED: token not accepted/],
        ['echo-bare-error', 'FABRIC_ERR_POLICY_UNAVAILABLE', /PERMISSION_DENIED: unknown key/],
        ['echo-deny', 'FABRIC_ERR_POLICY_DENIED', /you sent/],
        ['bogus', 'FABRIC_ERR_POLICY_UNAVAILABLE', /unusable decision \(99\)/],
        ['garbage', 'FABRIC_ERR_POLICY_UNAVAILABLE', /INTERNAL: .*pars/],
        ['huge', 'FABRIC_ERR_POLICY_UNAVAILABLE', /RESOURCE_EXHAUSTED/],
        ['hang', 'FABRIC_ERR_POLICY_UNAVAILABLE', /DEADLINE_EXCEEDED/],
      ] as const) {
        const r = await bump(client, label);
        expect(r.isError, `${label}: ${text(r)}`).toBe(true);
        expect(r._meta?.['agent-fabric/error'], label).toMatchObject({ code });
        expect(text(r), label).toMatch(why);
        expect(text(r), label).not.toContain(POLICY_TOKEN);
      }
      expect(service.asked).toContain('hang');
      // The service goes away in the middle of a call, and stays away: still closed.
      for (const label of ['close-mid-call', 'allow-again']) {
        const down = await bump(client, label);
        expect(down._meta?.['agent-fabric/error'], label).toMatchObject({
          code: 'FABRIC_ERR_POLICY_UNAVAILABLE',
        });
        expect(text(down), label).toMatch(/UNAVAILABLE|CANCELLED|INTERNAL/);
      }
      expect(service.asked).toContain('close-mid-call');
      expect(ran(count)).toEqual(['allow']);
      expect(logs.some((l) => /policy service fails/.test(l.msg))).toBe(true);
      expect(JSON.stringify(logs)).not.toContain(POLICY_TOKEN);

      // Down at start: the sidecar starts (the plugin does not connect when it loads), and every
      // call is refused, failing closed.
      await Promise.all(clients.splice(0).map((c) => c.close()));
      await closeSidecar(sidecar);
      sidecar = await startTestSidecar({
        upstreams: counterUpstream(count),
        policies: [DEFAULT_ALLOW],
        plugins: [
          {
            module: plugin('policy-grpc'),
            options: { target: service.address, insecure: true, authToken: POLICY_TOKEN },
          },
        ],
        agents: [{ name: 'a' }],
      } as never);
      const late = await httpClient(sidecar.url!, agentToken(sidecar, 'a'));
      clients.push(late);
      const refused = await bump(late, 'allow-at-start');
      expect(refused._meta?.['agent-fabric/error']).toMatchObject({
        code: 'FABRIC_ERR_POLICY_UNAVAILABLE',
      });
      expect(text(refused)).toMatch(/UNAVAILABLE/);
      expect(ran(count)).toEqual(['allow']);
    } finally {
      service.close();
    }
  }, 60_000);
});

describe('policy-rate-limit: one bucket per agent, whichever door or session (real sidecar)', () => {
  it('MCP sessions old and new, MCP tasks, gRPC CallTool, /api CallTool and fabric__ tools all draw from it', async () => {
    const count = join(tempDir('doors'), 'count.txt');
    sidecar = await startTestSidecar({
      upstreams: counterUpstream(count),
      policies: [DEFAULT_ALLOW],
      plugins: [
        {
          module: plugin('policy-rate-limit'),
          options: { perAgent: { capacity: 7, refillPerSecond: 0.0001 } },
        },
      ],
      agents: [{ name: 'a' }, { name: 'b' }],
      grpc: { port: 0 },
    } as never);
    const token = agentToken(sidecar, 'a');
    const tools = grpcClient(TOOL_SERVICE_DEFINITION, sidecar.grpcAddress!);
    const viaGrpc = (label: string) =>
      unary<CallToolResponse>(
        tools,
        'callTool',
        create(CallToolRequestSchema, {
          name: 'c__bump',
          args: { case: 'argumentsJson', value: Buffer.from(JSON.stringify({ label })) },
        }),
        token,
      );
    const viaApi = (label: string) =>
      postJson(
        new URL('/api/fabric.v1.ToolService/CallTool', sidecar!.url!),
        {
          name: 'c__bump',
          argumentsJson: Buffer.from(JSON.stringify({ label })).toString('base64'),
        },
        token,
      );
    try {
      const first = await httpClient(sidecar.url!, token);
      clients.push(first);
      expect((await bump(first, 'mcp-1')).isError).toBeFalsy();
      const second = await httpClient(sidecar.url!, token);
      clients.push(second);
      expect((await bump(second, 'mcp-2')).isError).toBeFalsy();
      expect((await viaGrpc('grpc')).result?.isError).toBeFalsy();
      expect((await viaApi('api')).status).toBe(200);
      const hb = (await first.callTool({
        name: 'fabric__heartbeat',
        arguments: {},
      })) as CallToolResult;
      expect(hb.isError, text(hb)).toBeFalsy();
      expect((await bump(second, 'mcp-3')).isError).toBeFalsy();
      const { task } = await callAsTask(second, 'c__bump', { label: 'task' });
      const done = await second.experimental.tasks.getTaskResult(task.taskId, CallToolResultSchema);
      expect(done.isError, text(done)).toBeFalsy();
      // Seven taken. A fresh session, the other doors and the old sessions are all refused.
      await first.close();
      const fresh = await httpClient(sidecar.url!, token);
      clients.push(fresh);
      const refused = await bump(fresh, 'fresh');
      expect(text(refused)).toMatch(/rate limit \(agent: 7 calls.*\(policy-rate-limit\)/);
      const grpcRefusal = await failure(viaGrpc('grpc-2'));
      expect(grpcRefusal.code).toBe(status.PERMISSION_DENIED);
      expect(grpcRefusal.details).toMatch(/rate limit/);
      const api = await viaApi('api-2');
      expect(api.status).not.toBe(200);
      expect(await api.text()).toMatch(/rate limit/);
      expect((await bump(second, 'mcp-4')).isError).toBe(true);
      const late = await callAsTask(second, 'c__bump', { label: 'task-2' }).then(
        async ({ task: t }) =>
          second.experimental.tasks.getTaskResult(t.taskId, CallToolResultSchema),
        (err: Error) => err,
      );
      expect(late instanceof Error ? late.message : text(late)).toMatch(/rate limit/);
      // Another agent's bucket is its own.
      const other = await httpClient(sidecar.url!, agentToken(sidecar, 'b'));
      clients.push(other);
      expect((await bump(other, 'b-1')).isError).toBeFalsy();
      expect(ran(count)).toEqual(['mcp-1', 'mcp-2', 'grpc', 'api', 'mcp-3', 'task', 'b-1']);
    } finally {
      tools.close();
    }
  }, 60_000);
});

describe('policy-loop-guard: the same call spelled differently (real sidecar, MCP and gRPC doors)', () => {
  it('key order, number spelling, whitespace, invisible and compatibility characters are one call', async () => {
    const count = join(tempDir('loop-spell'), 'count.txt');
    sidecar = await startTestSidecar({
      upstreams: counterUpstream(count),
      policies: [DEFAULT_ALLOW],
      plugins: [
        { module: plugin('policy-loop-guard'), options: { maxRepeats: 2, windowSeconds: 600 } },
      ],
      agents: [{ name: 'a' }],
      grpc: { port: 0 },
    } as never);
    const token = agentToken(sidecar, 'a');
    const client = await httpClient(sidecar.url!, token);
    clients.push(client);
    const tools = grpcClient(TOOL_SERVICE_DEFINITION, sidecar.grpcAddress!);
    /** JSON text as written: gRPC `arguments_json` reaches the sidecar as the agent spelled it. */
    const viaGrpc = (json: string) =>
      unary<CallToolResponse>(
        tools,
        'callTool',
        create(CallToolRequestSchema, {
          name: 'c__bump',
          args: { case: 'argumentsJson', value: Buffer.from(json) },
        }),
        token,
      ).then(
        () => 'ran',
        (err: { details: string }) => err.details,
      );
    try {
      // The counter tool ignores `n`: these are one call to it, spelled three ways.
      expect(await viaGrpc('{"label":"same","n":1.0}')).toBe('ran');
      expect(await viaGrpc('{ "n": 1, "label": "same" }')).toBe('ran');
      expect(await viaGrpc('{"n":1e0,"label":" same "}')).toMatch(/ran 2 times within 600 s/);
      // Invisible (format) characters and compatibility forms a model may vary while looping.
      for (const label of [
        'loop',
        '\u200bloop',
        'loop\u2060',
        'lo\u00adop',
        'ｌｏｏｐ',
        'loop\ufeff',
      ]) {
        await bump(client, label);
      }
      expect(ran(count)).toEqual(['same', 'same', 'loop', '\u200bloop']);
    } finally {
      tools.close();
    }
  }, 60_000);
});
