/**
 * Found in review: only requests reusing an in-flight id had a bound on their audit lines. Every
 * other refusal that runs nothing — a `tools/call` of an unknown tool, one whose params do not
 * fit MCP's schema or whose arguments are past the input limits, a malformed `resources/read`,
 * a `resources/subscribe` past the session's limit or with a URI past its limit — wrote one
 * line each with no bound: one agent token, batch after batch of 100 such requests (each costs
 * the agent nothing), could fill the audit log and rotate the other agents' lines away.
 *
 * Now each kind is bounded as reused ids are: an agent writes at most 100 lines of a kind a
 * minute, the rest counted in one summary line of that kind (`tool` `(invalid requests)`,
 * `(unknown tools)` …, `suppressed: n`) when the minute ends or the session closes; the lines
 * not written are counted in `agent_fabric_audit_lines_suppressed_total` at once, and still in
 * the calls' own metrics. Nothing is silently lost: lines plus summaries are every refusal.
 *
 * Real parts: `agent-fabric serve` as a child process, a raw stdio upstream and the SDK file
 * resource server, raw Streamable HTTP POSTs (batches), the audit file on disk, /metrics.
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
import { cleanUp, freePort, serve, stop } from '../fixtures/state/serve.js';

afterAll(cleanUp);

const fixture = (name: string): string =>
  fileURLToPath(new URL(`../fixtures/gateway/${name}`, import.meta.url));
const ADMIN = `fab_admin_${'Qz7p'.repeat(8)}`;

type Line = AuditLine;

/** Every line of the audit file, each parsed (a line that is not JSON fails the test). */
const lines = (path: string): Line[] => auditFileLines(path) as unknown as Line[];

let nextId = 1;
const call = (method: string, params: unknown) => ({
  jsonrpc: '2.0',
  id: nextId++,
  method,
  params,
});

/** The requests of each kind, and the summary `tool` they are counted under. */
const KINDS: { summary: string; request: (i: number) => unknown }[] = [
  { summary: '(unknown tools)', request: (i) => call('tools/call', { name: `nope__t${i}` }) },
  // Malformed for MCP's schema, and past the input limits (maxArgumentNodes 8), and a
  // malformed resources/read: all three are invalid requests.
  { summary: '(invalid requests)', request: () => call('tools/call', { name: 5 }) },
  {
    summary: '(invalid requests)',
    request: (i) =>
      call('tools/call', {
        name: 'rec__work',
        arguments: Object.fromEntries(Array.from({ length: 20 }, (_, k) => [`k${k}`, i])),
      }),
  },
  { summary: '(invalid requests)', request: () => call('resources/read', { uri: 5 }) },
  {
    summary: '(subscription URIs past the limit)',
    request: (i) => call('resources/subscribe', { uri: `file:///${'x'.repeat(100)}${i}` }),
  },
  {
    summary: '(subscriptions past the limit)',
    request: (i) => call('resources/subscribe', { uri: `file:///tmp/s${i}` }),
  },
];

describe('audit: refusals that ran nothing cannot flood the audit log', () => {
  it('an agent writes at most 100 lines of each kind a minute, the rest counted in /metrics and in one summary line per kind', async () => {
    const dir = tempDir('sec-audit-refusals');
    const auditPath = join(dir, 'audit.jsonl');
    const port = await freePort();
    writeFileSync(
      join(dir, 'fabric.json'),
      JSON.stringify({
        http: { host: '127.0.0.1', port },
        adminToken: ADMIN,
        state: 'memory',
        upstreams: {
          rec: {
            command: process.execPath,
            args: [fixture('notification-recorder-server.mjs')],
            stderr: 'ignore',
          },
          files: {
            command: process.execPath,
            args: [fixture('file-resource-server.mjs')],
            stderr: 'ignore',
          },
        },
        policies: [{ name: 'default-allow', rules: [{ tool: '*', action: 'allow' }] }],
        agents: [{ name: 'worker' }],
        audit: { path: auditPath, flushIntervalMs: 0 },
        gateway: {
          shutdownGraceSeconds: 0,
          maxArgumentNodes: 8,
          maxSubscriptionsPerSession: 1,
          maxSubscriptionUriLength: 64,
        },
      }),
    );
    const running = await serve(dir);
    const send = await rawHttpSession(running.url, running.token);
    // The session's one subscription: the rest of its subscribes are past the limit.
    const first = await send(call('resources/subscribe', { uri: 'file:///tmp/first' }));
    expect(await first.text()).toContain('"result"');
    await until(() => lines(auditPath).some((l) => l.tool === 'resources/subscribe'));
    const linesBefore = lines(auditPath).length;

    const sent = new Map<string, number>();
    for (const kind of KINDS) {
      for (let b = 0; b < 3; b++) {
        const res = await send(Array.from({ length: 100 }, (_, i) => kind.request(b * 100 + i)));
        const answers = JSON.parse(await res.text()) as { error?: unknown; result?: unknown }[];
        // Each refused (an error, or an unknown tool's error result), none run.
        expect(answers).toHaveLength(100);
        for (const a of answers) expect(a.error ?? a.result).toBeDefined();
      }
      sent.set(kind.summary, (sent.get(kind.summary) ?? 0) + 300);
    }
    // 1800 refusals: at most 100 lines a kind while the session lives.
    const kinds = [...sent.keys()];
    await until(() => lines(auditPath).length >= linesBefore + 100 * kinds.length);
    const during = lines(auditPath).slice(linesBefore);
    expect(during).toHaveLength(100 * kinds.length);
    expect(during.filter((l) => l.suppressed !== undefined)).toEqual([]);

    // The lines not written are counted at once.
    const metrics = await (
      await fetch(running.url.replace(/\/mcp$/, '/metrics'), {
        headers: { authorization: `Bearer ${ADMIN}` },
      })
    ).text();
    expect(metrics).toContain('# TYPE agent_fabric_audit_lines_suppressed_total counter');
    expect(metrics).toMatch(/^agent_fabric_audit_lines_suppressed_total 1400$/m);

    // Closing the session writes one summary a kind: every refusal is accounted for.
    expect((await send({}, 'DELETE')).status).toBe(200);
    await until(() => lines(auditPath).filter((l) => l.suppressed !== undefined).length >= 4);
    await stop(running, 'SIGTERM');
    const all = lines(auditPath).slice(linesBefore);
    const summaries = all.filter((l) => l.suppressed !== undefined);
    expect(summaries.map((l) => l.tool).sort()).toEqual([...kinds].sort());
    for (const s of summaries) {
      expect(s).toMatchObject({ agent: during[0]!.agent, outcome: 'error' });
    }
    const counted = (summary: string, line: (l: Line) => boolean): number =>
      all.filter(line).length + summaries.find((s) => s.tool === summary)!.suppressed!;
    expect(counted('(unknown tools)', (l) => l.code === 'FABRIC_ERR_TOOL_NOT_FOUND')).toBe(301);
    expect(
      counted(
        '(invalid requests)',
        (l) => l.decision === 'invalid' && l.code !== 'FABRIC_ERR_SUBSCRIPTION_LIMIT',
      ),
    ).toBe(901);
    expect(
      counted(
        '(subscription URIs past the limit)',
        (l) => l.decision === 'invalid' && l.code === 'FABRIC_ERR_SUBSCRIPTION_LIMIT',
      ),
    ).toBe(301);
    expect(
      counted(
        '(subscriptions past the limit)',
        (l) => l.decision === 'none' && l.code === 'FABRIC_ERR_SUBSCRIPTION_LIMIT',
      ),
    ).toBe(301);
  }, 120_000);
});
