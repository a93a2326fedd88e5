/**
 * Found in review: each request refused because a request in flight in its session holds its id
 * writes an audit line, with no bound. One agent holding one call could send batch after batch
 * (up to `http.maxBatchMessages`, 100, a POST) of `tools/call`s reusing that id: each costs it
 * nothing (none runs, none takes a slot) and each wrote a line, so it could fill the audit log
 * (and rotate the other agents' lines away).
 *
 * Now an agent writes at most 100 such lines a minute, whatever session they come through; the
 * rest of that minute are counted, and a summary line (`tool: "(reused request ids)"`,
 * `suppressed: n`) says how many were not written — when the minute ends, when one of its
 * sessions closes (DELETE), or at the sidecar's SIGTERM. Nothing is silently lost: the lines plus the summaries' counts are every refusal.
 *
 * Real parts: `agent-fabric serve` as a child process, a raw stdio upstream that holds `work`
 * calls, raw Streamable HTTP POSTs (the SDK client never reuses an id), the audit file on disk.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import {
  auditFileLines,
  rawHttpSession,
  tempDir,
  until,
  type AuditLine,
} from '../fixtures/gateway/harness.js';
import { cleanUp, freePort, serve, stop, type Running } from '../fixtures/state/serve.js';

afterAll(cleanUp);

const RECORDER = fileURLToPath(
  new URL('../fixtures/gateway/notification-recorder-server.mjs', import.meta.url),
);
const ADMIN = `fab_admin_${'Rb5k'.repeat(8)}`;

type Line = AuditLine;

/** Every line of the audit file, each parsed (a line that is not JSON fails the test). */
const lines = (path: string): Line[] => auditFileLines(path) as unknown as Line[];

/** A raw Streamable HTTP session of the sidecar's first agent. */
const session = (r: Running) => rawHttpSession(r.url, r.token);

const work = (id: number, label: string) => ({
  jsonrpc: '2.0',
  id,
  method: 'tools/call',
  params: { name: 'rec__work', arguments: { label } },
});

/** How many refusals the file accounts for: one per line, plus the summaries' counts. */
const accounted = (all: Line[]): number =>
  all
    .filter((l) => l.decision === 'invalid')
    .reduce((n, l) => n + (l.tool === '(reused request ids)' ? l.suppressed! : 1), 0);

/** Holds a call under id 5, then sends `batches` batches of 100 calls reusing id 5. */
async function flood(send: Awaited<ReturnType<typeof session>>, batches: number): Promise<void> {
  const heldBefore = await held(send);
  void send(work(5, 'held')).catch(() => undefined);
  await until(async () => (await held(send)) === heldBefore + 1);
  for (let b = 0; b < batches; b++) {
    const res = await send(Array.from({ length: 100 }, (_, i) => work(5, `dup-${b}-${i}`)));
    // Each refused, unrun, under its id.
    expect((await res.text()).split('is already used by a request in flight').length).toBe(101);
  }
}

let seenId = 1000;

/** The `work` calls the upstream holds (asked with `seen`, under a fresh id). */
async function held(send: Awaited<ReturnType<typeof session>>): Promise<number> {
  const res = await send({
    jsonrpc: '2.0',
    id: seenId++,
    method: 'tools/call',
    params: { name: 'rec__seen' },
  });
  const body = await res.text();
  const json = body.startsWith('{')
    ? body
    : body
        .split('\n')
        .filter((l) => l.startsWith('data: ') && l.length > 6)
        .at(-1)!
        .slice(6);
  const answer = JSON.parse(json) as { result: { content: { text: string }[] } };
  return (JSON.parse(answer.result.content[0]!.text) as { held: number }).held;
}

describe('audit: calls reusing an in-flight id cannot flood the audit log', () => {
  it('an agent writes at most 100 such lines a minute across its sessions, then summaries counting the rest (on DELETE and on SIGTERM)', async () => {
    const dir = tempDir('sec-audit-flood');
    const auditPath = join(dir, 'audit.jsonl');
    writeFileSync(
      join(dir, 'fabric.json'),
      JSON.stringify({
        http: { host: '127.0.0.1', port: await freePort() },
        adminToken: ADMIN,
        state: 'memory',
        upstreams: { rec: { command: process.execPath, args: [RECORDER], stderr: 'ignore' } },
        policies: [{ name: 'default-allow', rules: [{ tool: '*', action: 'allow' }] }],
        agents: [{ name: 'worker' }],
        audit: { path: auditPath, flushIntervalMs: 0 },
        gateway: { shutdownGraceSeconds: 0 },
      }),
    );
    const running = await serve(dir);

    const first = await session(running);
    await flood(first, 5);
    // 500 refused: no more than 100 lines while the session lives.
    await until(() => lines(auditPath).filter((l) => l.decision === 'invalid').length >= 100);
    expect(lines(auditPath).filter((l) => l.decision === 'invalid').length).toBe(100);
    // Closing the session writes the summary: every refusal is accounted for.
    expect((await first({}, 'DELETE')).status).toBe(200);
    await until(() => lines(auditPath).some((l) => l.tool === '(reused request ids)'));
    const afterFirst = lines(auditPath);
    const summaries = afterFirst.filter((l) => l.tool === '(reused request ids)');
    expect(summaries).toEqual([
      expect.objectContaining({
        agent: expect.any(String) as unknown,
        decision: 'invalid',
        outcome: 'error',
        code: 'FABRIC_ERR_INVALID_ARGUMENT',
      }),
    ]);
    expect(afterFirst.filter((l) => l.decision === 'invalid').length).toBe(101);
    expect(accounted(afterFirst)).toBe(500);

    // The bound is the agent's: a session it opens next in the same minute writes no new lines
    // (before, each session had its own 100, so reopening sessions went on flooding); the
    // summary of its refusals is written on SIGTERM.
    const second = await session(running);
    await flood(second, 3);
    await stop(running, 'SIGTERM');
    const all = lines(auditPath);
    const invalid = all.filter((l) => l.decision === 'invalid');
    expect(invalid.length).toBe(102);
    expect(invalid.filter((l) => l.tool === '(reused request ids)')).toHaveLength(2);
    expect(accounted(all)).toBe(800);
  }, 120_000);
});
