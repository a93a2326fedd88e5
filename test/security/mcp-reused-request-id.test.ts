/**
 * Found in review: over stdio, a `tools/call` whose JSON-RPC id a call still in flight held
 * replaced that call under the id: `tools/call` id 5 (held upstream, or parked for a human),
 * then id 5 again, then `notifications/cancelled` for 5 cancelled only the second one; the first
 * could no longer be cancelled and ran (if approved) — and the upstream got both. MCP forbids
 * reusing an id in a session. The later request is now refused with JSON-RPC Invalid Request
 * naming the id, unrun, and the earlier one stays cancellable — whichever path (the fast path
 * for a plain call, the SDK's Protocol for a call with `_meta` or any other request) holds the
 * id and whichever takes the new request.
 *
 * Real parts: `agent-fabric mcp --in-process` as a child process spoken to in raw JSON-RPC lines
 * (the SDK client never reuses an id), a real sidecar spoken to in raw Streamable HTTP POSTs
 * (whose transport refuses such a request itself), and a raw upstream that holds `work` calls and tells how
 * many it received and which notifications (the cancellations forwarded to it) it read.
 *
 * Also found in review: the refused request left no audit line (every other refusal has one).
 * Each refused `tools/call` now has its line (`decision: "invalid"`, `FABRIC_ERR_INVALID_ARGUMENT`,
 * the digest of its arguments), as has a refused `resources/read` (its method as `tool`); a refused
 * `ping` has none, as a served one has none. Checked in the audit file on disk.
 */
import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inProcessChild } from '../fixtures/cli-process.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  auditFileLines,
  auditLines,
  closeSidecar,
  DEFAULT_ALLOW,
  INIT,
  startTestSidecar,
  tempDir,
  until,
} from '../fixtures/gateway/harness.js';

const RECORDER = fileURLToPath(
  new URL('../fixtures/gateway/notification-recorder-server.mjs', import.meta.url),
);

interface Answer {
  id?: unknown;
  result?: { isError?: boolean; content?: { text?: string }[] };
  error?: { code: number; message: string };
}

const refusal = (id: number) => ({
  jsonrpc: '2.0',
  id,
  error: {
    code: -32600,
    message: expect.stringContaining(`id ${id} is already used by a request in flight`) as unknown,
  },
});

const cancellations = (lines: string[]): number =>
  lines.filter((l) => l.includes('notifications/cancelled')).length;

/** The line a refused duplicate gets. */
const DUPLICATE_LINE = {
  decision: 'invalid',
  outcome: 'error',
  code: 'FABRIC_ERR_INVALID_ARGUMENT',
};

describe('stdio: a request id already in flight is refused, the call holding it stays cancellable', () => {
  const dir = tempDir('sec-reused-id');
  const auditPath = join(dir, 'audit.jsonl');
  let child: ChildProcessWithoutNullStreams;
  /** Every answer read, in order. */
  const answers: Answer[] = [];
  let nextId = 1000;

  const send = (message: unknown): void => void child.stdin.write(`${JSON.stringify(message)}\n`);
  const work = (id: number, label: string, meta = false): void =>
    send({
      jsonrpc: '2.0',
      id,
      method: 'tools/call',
      params: { name: 'rec__work', arguments: { label }, ...(meta ? { _meta: {} } : {}) },
    });
  const answersTo = (id: number): Answer[] => answers.filter((a) => a.id === id);
  /** What the upstream received: `work` calls, and the notification lines it read. */
  const seen = async (): Promise<{ held: number; lines: string[] }> => {
    const id = nextId++;
    send({ jsonrpc: '2.0', id, method: 'tools/call', params: { name: 'rec__seen' } });
    await until(() => answersTo(id).length === 1);
    return JSON.parse(answersTo(id)[0]!.result!.content![0]!.text!) as {
      held: number;
      lines: string[];
    };
  };

  beforeAll(async () => {
    const configFile = join(dir, 'fabric.yaml');
    writeFileSync(
      configFile,
      `upstreams:
  rec:
    command: '\${NODE}'
    args: ['${RECORDER}']
    stderr: ignore
agents:
  - name: worker
audit:
  path: '${auditPath}'
  flushIntervalMs: 0
policies:
  - name: allow
    rules:
      - { tool: '*', action: allow }
`,
    );
    child = inProcessChild(configFile, 'memory');
    createInterface({ input: child.stdout }).on('line', (line) => {
      answers.push(JSON.parse(line) as Answer);
    });
    send(INIT);
    await until(() => answersTo(1).length === 1, 30_000);
    send({ jsonrpc: '2.0', method: 'notifications/initialized' });
  }, 60_000);

  afterAll(async () => {
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    await exited;
  });

  it('a plain call (fast path) holding id 5: a second call and a ping with id 5 are refused', async () => {
    work(5, 'X');
    await until(async () => (await seen()).held === 1);

    work(5, 'Y');
    await until(() => answersTo(5).length === 1);
    expect(answersTo(5)[0]).toEqual(refusal(5));
    send({ jsonrpc: '2.0', id: 5, method: 'ping' }); // a request the SDK would answer
    await until(() => answersTo(5).length === 2);
    expect(answersTo(5)[1]).toEqual(refusal(5));
    expect((await seen()).held).toBe(1); // the upstream never got Y
    // The refused call has its audit line (the held one has none yet: it has not ended); the
    // refused ping none.
    await until(() => auditFileLines(auditPath).some((l) => l.tool === 'rec__work'));
    const lines = auditFileLines(auditPath).filter((l) => l.tool === 'rec__work');
    expect(lines).toEqual([expect.objectContaining(DUPLICATE_LINE)]);
    expect(lines[0]!.argsDigest).toMatch(/^[0-9a-f]{64}$/);
    expect(auditFileLines(auditPath).filter((l) => l.tool === 'ping')).toEqual([]);

    // The cancellation reaches the call that holds the id: the upstream is told.
    send({ jsonrpc: '2.0', method: 'notifications/cancelled', params: { requestId: 5 } });
    await until(async () => cancellations((await seen()).lines) === 1);
    // Once it is done, the id is free again.
    let asked = answersTo(5).length;
    await until(async () => {
      send({ jsonrpc: '2.0', id: 5, method: 'ping' });
      asked++;
      await until(() => answersTo(5).length === asked);
      return answersTo(5).at(-1)!.result !== undefined;
    });
    expect(answersTo(5).at(-1)).toEqual({ jsonrpc: '2.0', id: 5, result: {} });
  }, 60_000);

  it('a call with _meta (the SDK path) holding id 6: a plain call with id 6 is refused, and the other way round', async () => {
    const before = (await seen()).held;
    work(6, 'X', true);
    await until(async () => (await seen()).held === before + 1);
    work(6, 'Y');
    await until(() => answersTo(6).length === 1);
    expect(answersTo(6)[0]).toEqual(refusal(6));

    work(7, 'X');
    await until(async () => (await seen()).held === before + 2);
    work(7, 'Y', true);
    await until(() => answersTo(7).length === 1);
    expect(answersTo(7)[0]).toEqual(refusal(7));
    expect((await seen()).held).toBe(before + 2); // neither Y reached the upstream
    // Each refusal has its line, whichever path refused it.
    const refusedBefore = 1; // the first test's
    await until(
      () =>
        auditFileLines(auditPath).filter((l) => l.tool === 'rec__work' && l.decision === 'invalid')
          .length ===
        refusedBefore + 2,
    );

    const cancelledBefore = cancellations((await seen()).lines);
    send({ jsonrpc: '2.0', method: 'notifications/cancelled', params: { requestId: 6 } });
    send({ jsonrpc: '2.0', method: 'notifications/cancelled', params: { requestId: 7 } });
    await until(async () => cancellations((await seen()).lines) === cancelledBefore + 2);
    // Cancelled calls get no answer: only the refusals were sent under 6 and 7.
    expect(answersTo(6)).toHaveLength(1);
    expect(answersTo(7)).toHaveLength(1);
  }, 60_000);
});

describe('Streamable HTTP: a request id already in flight is refused, the call holding it stays cancellable', () => {
  const auditPath = join(tempDir('sec-reused-id-http'), 'audit.jsonl');
  let sidecar: Sidecar;
  let session = '';
  let nextId = 1000;

  const post = (body: unknown): Promise<Response> =>
    fetch(sidecar.url!, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
        authorization: `Bearer ${agentToken(sidecar, 'worker')}`,
        ...(session === '' ? {} : { 'mcp-session-id': session }),
      },
      body: JSON.stringify(body),
    });
  /** The JSON-RPC answer of a POST (plain JSON, or the last data line of its SSE stream). */
  const answerOf = async (res: Response): Promise<Answer> => {
    const body = await res.text();
    if (!(res.headers.get('content-type') ?? '').startsWith('text/event-stream')) {
      return JSON.parse(body) as Answer;
    }
    const data = body.split('\n').filter((l) => l.startsWith('data: ') && l.length > 6);
    return JSON.parse(data.at(-1)!.slice(6)) as Answer;
  };
  const seen = async (): Promise<{ held: number; lines: string[] }> => {
    const answer = await answerOf(
      await post({
        jsonrpc: '2.0',
        id: nextId++,
        method: 'tools/call',
        params: { name: 'rec__seen' },
      }),
    );
    return JSON.parse(answer.result!.content![0]!.text!) as { held: number; lines: string[] };
  };

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstreams: { rec: { command: process.execPath, args: [RECORDER], stderr: 'ignore' } },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'worker' }],
      audit: { path: auditPath, flushIntervalMs: 0 },
    });
    const init = await post(INIT);
    expect(init.status).toBe(200);
    session = init.headers.get('mcp-session-id')!;
    await init.text();
    expect((await post({ jsonrpc: '2.0', method: 'notifications/initialized' })).status).toBe(202);
  }, 60_000);

  afterAll(async () => closeSidecar(sidecar));

  it('a second tools/call with id 5 gets Invalid Request; the cancellation reaches the first', async () => {
    const first = post({
      jsonrpc: '2.0',
      id: 5,
      method: 'tools/call',
      params: { name: 'rec__work', arguments: { label: 'X' } },
    });
    await until(async () => (await seen()).held === 1);
    const second = await post({
      jsonrpc: '2.0',
      id: 5,
      method: 'tools/call',
      params: { name: 'rec__work', arguments: { label: 'Y' } },
    });
    expect(second.status).toBe(400);
    expect(await answerOf(second)).toEqual(refusal(5));
    expect((await seen()).held).toBe(1); // the upstream never got Y
    // Audited, as a refused resources/read under the same id is (its method as `tool`).
    await until(() => auditLines(sidecar, auditPath, 'worker', 'rec__work').length === 1);
    expect(auditLines(sidecar, auditPath, 'worker', 'rec__work')).toEqual([
      expect.objectContaining(DUPLICATE_LINE),
    ]);
    const read = await post({
      jsonrpc: '2.0',
      id: 5,
      method: 'resources/read',
      params: { uri: 'file:///x' },
    });
    expect(read.status).toBe(400);
    expect(await answerOf(read)).toEqual(refusal(5));
    await until(() => auditLines(sidecar, auditPath, 'worker', 'resources/read').length === 1);
    expect(auditLines(sidecar, auditPath, 'worker', 'resources/read')).toEqual([
      expect.objectContaining(DUPLICATE_LINE),
    ]);

    const cancel = await post({
      jsonrpc: '2.0',
      method: 'notifications/cancelled',
      params: { requestId: 5 },
    });
    expect(cancel.status).toBe(202);
    await until(async () => cancellations((await seen()).lines) === 1);
    // The first POST ends without an answer to the cancelled call.
    expect(await (await first).text()).not.toContain('"result"');
  }, 60_000);
});
