import { existsSync, readFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { create } from '@bufbuild/protobuf';
import type { Client as GrpcClient, ServiceError } from '@grpc/grpc-js';
import { CreateMessageRequestSchema } from '@modelcontextprotocol/sdk/types.js';
import { afterEach, describe, expect, it, vi } from 'vitest';
import {
  ClaimTaskRequestSchema,
  type ClaimTaskResponse,
} from '../../src/gen/fabric/v1/agent_pb.js';
import { CallToolRequestSchema } from '../../src/gen/fabric/v1/tool_pb.js';
import type { AgentRecord } from '../../src/lifecycle/lifecycle-manager.js';
import type { PoolRecord } from '../../src/pools/pool-manager.js';
import { AGENT_SERVICE_DEFINITION } from '../../src/rpc/agent-service.js';
import { TOOL_SERVICE_DEFINITION } from '../../src/rpc/tool-service.js';
import type { TaskRecord } from '../../src/scheduler/task-record.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import { SqliteStore } from '../../src/store/sqlite-store.js';
import { TaskStatus } from '../../src/task.js';
import { grpcClient, unary } from '../fixtures/grpc-client.js';
import {
  agentId,
  agentToken,
  api,
  closeSidecar,
  DEFAULT_ALLOW,
  httpClient,
  INIT,
  startTestSidecar,
  tempDir,
  text,
  until,
} from '../fixtures/gateway/harness.js';
import { callAsTask } from '../fixtures/gateway/tasks.js';

const HOLD_COUNTER = fileURLToPath(
  new URL('../fixtures/gateway/hold-counter-server.mjs', import.meta.url),
);

/**
 * The `hc` upstream (hold-counter-server, recording each run of `bump` in a file of its own)
 * for `startTestSidecar`; `exclusive` serves one session at a time.
 */
function holdCounter(prefix: string, exclusive = false) {
  const countFile = join(tempDir(prefix), 'ran.txt');
  const upstream = {
    command: process.execPath,
    args: [HOLD_COUNTER],
    env: { COUNT_FILE: countFile },
    stderr: 'ignore' as const,
    ...(exclusive ? { exclusive: true } : {}),
  };
  return { countFile, upstream };
}

/**
 * `agent` takes the exclusive `hc` upstream's turn (its `hold` call asks for sampling) and keeps
 * it until `release()`; `holding` is that call's answer.
 */
async function holdTurn(
  s: Sidecar,
  agent: string,
  clients: { close(): unknown }[],
): Promise<{ release: () => void; holding: Promise<unknown> }> {
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  let held = false;
  const client = await httpClient(s.url!, agentToken(s, agent), { sampling: {} });
  clients.push(client);
  client.setRequestHandler(CreateMessageRequestSchema, async () => {
    held = true;
    await released;
    return { role: 'assistant', model: 'm', content: { type: 'text', text: 'go' } };
  });
  const holding = client.callTool({ name: 'hc__hold', arguments: {} });
  await until(() => held);
  return { release, holding };
}

/**
 * POSTs `body` to `url` with `headers`: the headers go first, and the body only once `between`
 * (run after `token` was authenticated, i.e. the headers were checked) has settled. Resolves
 * with the status, the `mcp-session-id` header and the answer's text.
 */
function postBodyLate(
  url: URL,
  headers: Record<string, string>,
  body: string,
  authenticate: { mock: { calls: unknown[][] } },
  token: string,
  between: () => unknown,
): Promise<{ status: number; sessionId: string | undefined; text: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(
      {
        host: url.hostname,
        port: url.port,
        path: url.pathname,
        method: 'POST',
        headers: { ...headers, 'content-length': Buffer.byteLength(body) },
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (text += d));
        res.on('end', () => {
          const sid = res.headers['mcp-session-id'];
          resolve({
            status: res.statusCode ?? 0,
            sessionId: typeof sid === 'string' ? sid : undefined,
            text,
          });
        });
      },
    );
    req.on('error', reject);
    req.flushHeaders();
    void until(() => authenticate.mock.calls.some((c) => c[0] === token))
      .then(between)
      .then(() => req.end(body), reject);
  });
}

/**
 * What an agent can still do through what it opened before an operator terminated it (its
 * credential revoked). Real sidecar, real upstream process, official SDK, grpc-js and HTTP
 * clients; effects checked on the upstream's own record of what ran.
 */
describe('a terminated agent’s channels opened before', () => {
  let sidecar: Sidecar | undefined;
  const clients: { close(): unknown }[] = [];
  afterEach(async () => {
    for (const c of clients.splice(0)) await c.close();
    await closeSidecar(sidecar);
    sidecar = undefined;
  });

  it('its calls queued behind an exclusive upstream’s turn (gRPC, /api, MCP task) never run', async () => {
    const { countFile, upstream } = holdCounter('revoked-queue', true);
    sidecar = await startTestSidecar({
      upstreams: { hc: upstream },
      policies: [DEFAULT_ALLOW],
      toolCosts: { hc__bump: 1 },
      agents: [{ name: 'alice' }, { name: 'bob' }, { name: 'carol' }],
      grpc: { port: 0 },
    });
    const s = sidecar;
    const reserved = (name: string): number =>
      s.fabric!.budgets.getStatus(agentId(s, name)).costReserved;

    // Each agent's first call of a tool flies alone (its token estimate is unknown): one each
    // now, so the calls below are all authorized at once.
    const bobToken = agentToken(s, 'bob');
    const bob = await httpClient(s.url!, bobToken);
    const carol = await httpClient(s.url!, agentToken(s, 'carol'));
    clients.push(bob, carol);
    for (const [who, c] of [
      ['bob', bob],
      ['carol', carol],
    ] as const) {
      expect(
        text(await c.callTool({ name: 'hc__bump', arguments: { label: `${who}-warm` } })),
      ).toBe(`bumped ${who}-warm`);
    }

    // alice takes the upstream's turn and keeps it until the test answers its sampling request.
    const { release, holding } = await holdTurn(s, 'alice', clients);

    // bob queues one call through each door without a session that ends with him...
    const grpc: GrpcClient = grpcClient(TOOL_SERVICE_DEFINITION, s.grpcAddress!);
    clients.push(grpc);
    const overGrpc = unary(
      grpc,
      'callTool',
      create(CallToolRequestSchema, {
        name: 'hc__bump',
        args: { case: 'argumentsJson', value: Buffer.from('{"label":"bob-grpc"}') },
      }),
      bobToken,
    ).then(
      () => 'ok',
      (e: ServiceError) => `grpc ${e.code}: ${e.details}`,
    );
    const overApi = api(
      s,
      'ToolService/CallTool',
      { name: 'hc__bump', arguments: { label: 'bob-api' } },
      bobToken,
    ).then(async (r) => `${r.status} ${await r.text()}`);
    const task = await callAsTask(bob, 'hc__bump', { label: 'bob-task' });
    expect(task.task.taskId).toBeTruthy();
    // ...each authorized (its cost reserved) and waiting for the turn.
    await until(() => reserved('bob') === 3);

    // carol queues behind him: her call shows the turn passed on.
    const carolCall = carol.callTool({ name: 'hc__bump', arguments: { label: 'carol' } });
    await until(() => reserved('carol') === 1);

    const terminated = await api(s, 'FabricService/TerminateAgent', {
      agentId: agentId(s, 'bob'),
      drainTimeout: '0s',
    });
    expect(terminated.status).toBe(200);

    release();
    expect(text(await holding)).toContain('held until');
    expect(text(await carolCall)).toBe('bumped carol');
    const answers = await Promise.all([overGrpc, overApi]);
    await until(() => reserved('bob') === 0);

    // What ran upstream: carol's call, none of bob's.
    const ran = existsSync(countFile)
      ? readFileSync(countFile, 'utf8').split('\n').filter(Boolean)
      : [];
    expect(ran).toEqual(['bob-warm', 'carol-warm', 'carol']);
    // bob heard why.
    expect(answers[0]).not.toBe('ok');
    expect(answers[1]).not.toMatch(/^200 /);
    expect(answers.join('\n')).toMatch(/FABRIC_ERR_AGENT_UNAVAILABLE|terminated/);
  });
});

describe('an agent’s credential replaced while its session is open', () => {
  let sidecar: Sidecar | undefined;
  const clients: { close(): unknown }[] = [];
  afterEach(async () => {
    for (const c of clients.splice(0)) await Promise.resolve(c.close()).catch(() => undefined);
    await closeSidecar(sidecar);
    sidecar = undefined;
  });

  it('the old credential’s session is closed at once: its queued call never runs, the new one works', async () => {
    const { countFile, upstream } = holdCounter('rotated-queue', true);
    sidecar = await startTestSidecar({
      upstreams: { hc: upstream },
      policies: [DEFAULT_ALLOW],
      toolCosts: { hc__bump: 1 },
      agents: [{ name: 'alice' }, { name: 'bob' }],
    });
    const s = sidecar;
    const bobId = agentId(s, 'bob');
    const oldToken = agentToken(s, 'bob');
    const old = await httpClient(s.url!, oldToken);
    clients.push(old);
    expect(text(await old.callTool({ name: 'hc__bump', arguments: { label: 'old-warm' } }))).toBe(
      'bumped old-warm',
    );

    const { release, holding } = await holdTurn(s, 'alice', clients);

    // The old holder's call is authorized and waits for the turn...
    const queued = old.callTool({ name: 'hc__bump', arguments: { label: 'old-queued' } }).then(
      () => 'answered',
      (e: unknown) => String(e),
    );
    await until(() => s.fabric!.budgets.getStatus(bobId).costReserved === 1);

    // ...when the credential is replaced (as a changed pinned token is at start).
    const newToken = `afk_rotated_${'n'.repeat(40)}`;
    s.fabric!.lifecycle.replaceCredential(bobId, newToken);
    await until(() => ![...s.gateway.sessions].some((x) => x.identity.agentId === bobId));
    expect(await queued).not.toBe('answered');

    release();
    expect(text(await holding)).toContain('held until');
    await until(() => s.fabric!.budgets.getStatus(bobId).costReserved === 0);

    // The old credential opens nothing more; the new one is the same agent.
    const refused = await fetch(s.url!, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${oldToken}`,
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
      },
      body: JSON.stringify(INIT),
    });
    expect(refused.status).toBe(401);
    const fresh = await httpClient(s.url!, newToken);
    clients.push(fresh);
    expect(text(await fresh.callTool({ name: 'hc__bump', arguments: { label: 'new' } }))).toBe(
      'bumped new',
    );
    expect([...s.gateway.sessions].filter((x) => x.identity.agentId === bobId)).toHaveLength(1);

    const ran = readFileSync(countFile, 'utf8').split('\n').filter(Boolean);
    expect(ran).toEqual(['old-warm', 'new']);
  });
});

describe('an initialize whose agent is terminated while its body arrives', () => {
  let sidecar: Sidecar | undefined;
  afterEach(async () => {
    await closeSidecar(sidecar);
    sidecar = undefined;
  });

  it('opens no session: refused 401 once the body is in', async () => {
    sidecar = await startTestSidecar({ policies: [DEFAULT_ALLOW], agents: [{ name: 'late' }] });
    const s = sidecar;
    const token = agentToken(s, 'late');
    const id = agentId(s, 'late');
    const authenticate = vi.spyOn(s.backend, 'authenticate');
    const body = JSON.stringify(INIT);
    const url = new URL(s.url!);
    // The headers are authenticated; the body comes after the agent was terminated.
    const answer = postBodyLate(
      url,
      {
        authorization: `Bearer ${token}`,
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
      },
      body,
      authenticate,
      token,
      () => s.fabric!.terminate(id, { drainTimeoutSeconds: 0 }),
    );
    try {
      const { status, sessionId } = await answer;
      expect(status).toBe(401);
      expect(sessionId).toBeUndefined();
      expect([...s.gateway.sessions].some((x) => x.identity.agentId === id)).toBe(false);
    } finally {
      authenticate.mockRestore();
    }
  });
});

describe('an /api call whose credential is replaced while its body arrives', () => {
  let sidecar: Sidecar | undefined;
  afterEach(async () => {
    await closeSidecar(sidecar);
    sidecar = undefined;
  });

  it('is refused 401 and runs nothing, as over gRPC (checked again once the message is in)', async () => {
    const { countFile, upstream } = holdCounter('rotated-api');
    sidecar = await startTestSidecar({
      upstreams: { hc: upstream },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'rotating' }],
    });
    const s = sidecar;
    const token = agentToken(s, 'rotating');
    const id = agentId(s, 'rotating');
    const authenticate = vi.spyOn(s.fabric!, 'authenticate');
    const body = JSON.stringify({ name: 'hc__bump', arguments: { label: 'old-holder' } });
    const url = new URL('/api/fabric.v1.ToolService/CallTool', s.url!);
    // The headers are authenticated; the body comes after the credential was replaced.
    const answer = postBodyLate(
      url,
      { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body,
      authenticate,
      token,
      () => s.fabric!.lifecycle.replaceCredential(id, `afk_rotated_${'r'.repeat(40)}`),
    );
    try {
      const { status, text: got } = await answer;
      expect(status).toBe(401);
      expect(got).toContain('FABRIC_ERR_UNAUTHENTICATED');
      expect(existsSync(countFile)).toBe(false); // the tool never ran
    } finally {
      authenticate.mockRestore();
    }
  });
});

/** What `answers` settle with, or `'still waiting'` for each when that takes over `ms`. */
function answeredWithin(ms: number, ...answers: Promise<string>[]): Promise<string[]> {
  return Promise.race([
    Promise.all(answers),
    new Promise<string[]>((r) => setTimeout(() => r(answers.map(() => 'still waiting')), ms)),
  ]);
}

/** `e`'s `fabric-error-code` trailer (a gRPC failure) or `''`. */
function fabricCode(e: ServiceError): string {
  return String(e.metadata?.get('fabric-error-code')[0] ?? '');
}

describe('an agent’s credential replaced while its calls from doors without a session wait', () => {
  let sidecar: Sidecar | undefined;
  const clients: { close(): unknown }[] = [];
  afterEach(async () => {
    for (const c of clients.splice(0)) await Promise.resolve(c.close()).catch(() => undefined);
    await closeSidecar(sidecar);
    sidecar = undefined;
  });

  it('its gRPC and /api CallTool queued behind an exclusive upstream’s turn end unauthenticated and never run; the new credential’s call runs', async () => {
    const { countFile, upstream } = holdCounter('rotated-sessionless', true);
    sidecar = await startTestSidecar({
      upstreams: { hc: upstream },
      policies: [DEFAULT_ALLOW],
      toolCosts: { hc__bump: 1 },
      agents: [{ name: 'alice' }, { name: 'bob' }],
      grpc: { port: 0 },
    });
    const s = sidecar;
    const bobId = agentId(s, 'bob');
    const oldToken = agentToken(s, 'bob');
    const reserved = (): number => s.fabric!.budgets.getStatus(bobId).costReserved;
    const grpc: GrpcClient = grpcClient(TOOL_SERVICE_DEFINITION, s.grpcAddress!);
    clients.push(grpc);
    const overGrpc = (label: string, token: string): Promise<string> =>
      unary(
        grpc,
        'callTool',
        create(CallToolRequestSchema, {
          name: 'hc__bump',
          args: { case: 'argumentsJson', value: Buffer.from(JSON.stringify({ label })) },
        }),
        token,
      ).then(
        () => 'ok',
        (e: ServiceError) => `grpc ${e.code} ${fabricCode(e)}: ${e.details}`,
      );
    const overApi = (label: string, token: string): Promise<string> =>
      api(s, 'ToolService/CallTool', { name: 'hc__bump', arguments: { label } }, token).then(
        async (r) => `${r.status} ${await r.text()}`,
      );
    // bob's first call of the tool flies alone (its token estimate is unknown).
    expect(await overGrpc('old-warm', oldToken)).toBe('ok');

    const { release, holding } = await holdTurn(s, 'alice', clients);
    void holding.catch(() => undefined); // awaited below; closed with its client if this fails
    // Under the old credential: one call through each door, authorized and waiting for the turn.
    const oldGrpc = overGrpc('old-grpc', oldToken);
    const oldApi = overApi('old-api', oldToken);
    await until(() => reserved() === 2);

    const newToken = `afk_rotated_${'s'.repeat(40)}`;
    s.fabric!.lifecycle.replaceCredential(bobId, newToken);
    // The old credential's calls end at once, before the turn comes...
    const [grpcAnswer, apiAnswer] = await answeredWithin(5_000, oldGrpc, oldApi);
    expect(grpcAnswer).toMatch(/^grpc 16 FABRIC_ERR_UNAUTHENTICATED: /);
    expect(apiAnswer).toMatch(/^401 /);
    expect(apiAnswer).toContain('FABRIC_ERR_UNAUTHENTICATED');
    await until(() => reserved() === 0);

    // ...while the new credential's calls, made after, wait for the turn and run.
    const newGrpc = overGrpc('new-grpc', newToken);
    const newApi = overApi('new-api', newToken);
    await until(() => reserved() === 2);
    release();
    expect(text(await holding)).toContain('held until');
    expect(await newGrpc).toBe('ok');
    expect(await newApi).toMatch(/^200 /);

    const ran = readFileSync(countFile, 'utf8').split('\n').filter(Boolean);
    expect(ran.slice(0, 1)).toEqual(['old-warm']);
    expect(ran.slice(1).sort()).toEqual(['new-api', 'new-grpc']);
  });

  it('its ClaimTask long-polls (gRPC and /api) end unauthenticated; the task stays queued for the new credential (state file)', async () => {
    const path = join(tempDir('rotated-claim'), 'state.db');
    sidecar = await startTestSidecar({
      agents: [{ name: 'worker' }],
      grpc: { port: 0 },
      state: { path },
    } as never);
    const s = sidecar;
    const id = agentId(s, 'worker');
    const oldToken = agentToken(s, 'worker');
    const grpc: GrpcClient = grpcClient(AGENT_SERVICE_DEFINITION, s.grpcAddress!);
    clients.push(grpc);
    const claimed = vi.spyOn(s.fabric!.scheduler, 'claim');
    const oldGrpc = unary<ClaimTaskResponse>(
      grpc,
      'claimTask',
      create(ClaimTaskRequestSchema, { waitSeconds: 3 }),
      oldToken,
    ).then(
      (r) => (r.task === undefined ? 'no task' : `task ${r.task.taskId}`),
      (e: ServiceError) => `grpc ${e.code} ${fabricCode(e)}: ${e.details}`,
    );
    const oldApi = api(s, 'AgentService/ClaimTask', { waitSeconds: 3 }, oldToken).then(
      async (r) => `${r.status} ${await r.text()}`,
    );
    // Both wait for a task.
    await until(() => claimed.mock.calls.length === 2);

    s.fabric!.lifecycle.replaceCredential(id, `afk_rotated_${'c'.repeat(40)}`);
    const task = await s.fabric!.schedule({ agentId: id, taskType: 't', payload: { n: 1 } });
    const [grpcAnswer, apiAnswer] = await answeredWithin(2_000, oldGrpc, oldApi);
    expect(grpcAnswer).toMatch(/^grpc 16 FABRIC_ERR_UNAUTHENTICATED: /);
    expect(apiAnswer).toMatch(/^401 /);
    expect(apiAnswer).toContain('FABRIC_ERR_UNAUTHENTICATED');
    // Nobody got it: queued, nothing running on the agent.
    expect((await s.fabric!.getTask(task.id)).status).toBe(TaskStatus.PENDING);
    expect(s.fabric!.scheduler.agentLoad(id).runningTasks).toBe(0);

    // The new credential's claim gets it, as its first attempt.
    const fresh = await unary<ClaimTaskResponse>(
      grpc,
      'claimTask',
      create(ClaimTaskRequestSchema, { waitSeconds: 3 }),
      `afk_rotated_${'c'.repeat(40)}`,
    );
    expect(fresh.task?.taskId).toBe(task.id);
    expect(fresh.task?.attempt).toBe(1);
    claimed.mockRestore();
    await closeSidecar(sidecar);
    sidecar = undefined;
    const store = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(path);
    try {
      const rec = store.tasks.get(task.id);
      expect(rec?.status).toBe(TaskStatus.RUNNING);
      expect(rec?.attempt).toBe(1);
    } finally {
      await store.close();
    }
  });
});
