/**
 * Seeded hostile input on the gateway over stdio (`agent-fabric mcp --in-process`, the path with
 * the fast path's own line handling), server-everything behind it, durable state and the audit
 * log: the messages of `mcp-input-fuzz` (plausible requests with a field gone wrong, junk, wrong
 * ids, answers nobody asked for), plus cut-off lines, blank lines, bytes that are not UTF-8 and
 * batches, written as fast as the pipe takes them. What must hold: each request answered once
 * under its id, no InternalError of the gateway's own, nothing on stderr that is a stack trace;
 * afterwards the process still answers, and exits 0 when its stdin ends.
 *
 * Written as a standing check after the hardening rounds; it found nothing on the code it was
 * written against (`FUZZ_SEED`, `FUZZ_SCALE` explore further).
 */
import { spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { expect, it } from 'vitest';
import { Fuzz, fuzzCount, fuzzSeed } from '../fixtures/fuzz.js';
import {
  checkReplies,
  type JsonSchema,
  MCP_LEARNED,
  mcpMessage,
  requestIds,
} from '../fixtures/fuzz-mcp.js';
import { CLI_MAIN, EVERYTHING_BIN, INIT, tempDir, TSX } from '../fixtures/gateway/harness.js';

it('stdio: answers every request once, never with a server fault, and goes on serving', async () => {
  const dir = tempDir('stdio-fuzz');
  const config = join(dir, 'fabric.json');
  writeFileSync(
    config,
    JSON.stringify({
      upstreams: { ev: { command: '${NODE}', args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' } },
      agents: [{ name: 'a' }],
      gateway: { poolScheduling: true },
      audit: { path: join(dir, 'audit.log') },
      policies: [{ name: 'allow', rules: [{ tool: '*', action: 'allow' }] }],
    }),
  );
  const { FABRIC_AGENT_TOKEN: _t, FABRIC_URL: _u, ...env } = process.env;
  const child = spawn(
    process.execPath,
    ['--import', TSX, CLI_MAIN, 'mcp', '--in-process', '--config', config],
    { env: { ...env, FABRIC_STATE: join(dir, 'state.db') } },
  );
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (c: string) => (stderr += c));
  const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));

  // Every line the gateway writes, and who waits for which id.
  const lines: unknown[] = [];
  const waiting = new Map<string, () => void>();
  createInterface({ input: child.stdout }).on('line', (line) => {
    const m = JSON.parse(line) as { id?: unknown };
    lines.push(m);
    waiting.get(JSON.stringify(m.id))?.();
  });
  const answerTo = (id: string): Promise<void> =>
    new Promise((resolve) => waiting.set(id, resolve));
  const send = (text: string | Uint8Array): void => void child.stdin.write(text);

  let init = answerTo('1');
  send(
    `${JSON.stringify({ ...INIT, params: { ...INIT.params, protocolVersion: '2025-03-26' } })}\n`,
  );
  await init;
  send('{"jsonrpc":"2.0","method":"notifications/initialized"}\n');
  init = answerTo('"list"');
  send('{"jsonrpc":"2.0","id":"list","method":"tools/list"}\n');
  await init;
  const listed = lines.at(-1) as { result: { tools: { name: string; inputSchema: JsonSchema }[] } };
  const tools = new Map(listed.result.tools.map((t) => [t.name, t.inputSchema]));

  const fuzz = new Fuzz(fuzzSeed(20261205));
  // Ids are unique across the run (a stdio session is one stream): each send's answers are
  // picked out of all lines by its ids at the end.
  const usedIds = new Set<string>(['1', '"list"']);
  const sends: { ids: string[]; what: string }[] = [];
  for (let i = fuzzCount(800); i > 0; i--) {
    const sent: unknown = fuzz.chance(0.15)
      ? [mcpMessage(fuzz, tools), mcpMessage(fuzz, tools)]
      : mcpMessage(fuzz, tools);
    const ids = requestIds(sent);
    const all = (Array.isArray(sent) ? sent : [sent]) as Record<string, unknown>[];
    if (ids === undefined || all.some((m) => 'id' in m && usedIds.has(JSON.stringify(m.id)))) {
      continue;
    }
    for (const m of all) if ('id' in m) usedIds.add(JSON.stringify(m.id));
    let raw = JSON.stringify(sent);
    const r = fuzz.next();
    if (r < 0.03) {
      // A cut-off line: its requests are not requests.
      raw = raw.slice(0, Math.floor(fuzz.next() * raw.length));
      send(`${raw.replace(/\n/g, '')}\n`);
      continue;
    }
    if (r < 0.05) send('\n   \n');
    if (r > 0.98) send(new Uint8Array([0xff, 0xfe, 0x0a]));
    send(`${raw}\n`);
    sends.push({ ids, what: raw.slice(0, 300) });
  }
  // The last request answered means every earlier one was read.
  const last = answerTo('"last"');
  send('{"jsonrpc":"2.0","id":"last","method":"ping"}\n');
  await last;
  // Calls still running upstream (long operations) finish within their own time.
  const pending = sends
    .flatMap((s) => s.ids)
    .filter((id) => !lines.some((l) => JSON.stringify((l as { id?: unknown }).id) === id));
  await Promise.all(
    pending.map((id) => Promise.race([answerTo(id), new Promise((r) => setTimeout(r, 30_000))])),
  );

  const faults: string[] = [];
  let answered = 0;
  for (const { ids, what } of sends) {
    const replies = lines.filter((l) => ids.includes(JSON.stringify((l as { id?: unknown }).id)));
    answered += checkReplies(ids, replies, what, faults);
  }
  for (const l of lines) fuzz.learn(JSON.stringify(l), MCP_LEARNED);
  expect(faults).toEqual([]);
  expect(answered).toBeGreaterThan(200);
  expect(stderr).not.toMatch(/\n\s+at .+:\d+:\d+\)?\n/);

  const after = answerTo('"after"');
  send(
    '{"jsonrpc":"2.0","id":"after","method":"tools/call","params":{"name":"ev__echo","arguments":{"message":"after"}}}\n',
  );
  await after;
  expect(JSON.stringify(lines.at(-1))).toContain('Echo: after');
  child.stdin.end();
  expect(await exited).toBe(0);
}, 180_000);
