/**
 * U+2028 (LINE SEPARATOR) and U+2029 (PARAGRAPH SEPARATOR) in what an agent controls: the tool
 * name of an unknown tool is written to the audit log as sent (cut to 256 characters), and
 * `JSON.stringify` leaves both raw. Valid JSON, but Python's `str.splitlines()` (and many log
 * readers) break a line there: one made-up name split its audit line in two, neither half JSON.
 * Now both are written as `\u` escapes, in the audit log and in the sidecar's JSON log, and every
 * line splits right — checked with Python's own `splitlines()` on the files the sidecar wrote
 * (real sidecar, real MCP client). The Operator API's NDJSON streams (`/api/…/Watch`) write the
 * same escapes: an admin's `EventService/Watch` of tool calls shows the agent's made-up name.
 */
import { execFileSync } from 'node:child_process';
import { createWriteStream, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import { createSidecarLog } from '../../src/server/logger.js';
import { postJson } from '../fixtures/api.js';
import {
  ADMIN_TOKEN,
  agentToken,
  closeSidecar,
  httpClient,
  DEFAULT_ALLOW,
  inMemoryClient,
  startTestSidecar,
  tempDir,
} from '../fixtures/gateway/harness.js';

/** What Python makes of the file at `path`: its lines (`splitlines()`), each parsed as JSON. */
function pythonLines(path: string): Array<Record<string, unknown>> {
  const out = execFileSync(
    'python3',
    [
      '-c',
      [
        'import json, sys',
        "text = open(sys.argv[1], encoding='utf-8').read()",
        'print(json.dumps([json.loads(line) for line in text.splitlines()]))',
      ].join('\n'),
      path,
    ],
    { encoding: 'utf8' },
  );
  return JSON.parse(out) as Array<Record<string, unknown>>;
}

const NAMES = ['evil\u2028{"tool":"forged"}', 'a\u2029b', 'both\u2028\u2029end'];

let sidecar: Sidecar | undefined;

afterEach(async () => {
  await closeSidecar(sidecar);
  sidecar = undefined;
});

describe('U+2028 and U+2029 in JSON lines', () => {
  it('an unknown tool name holding them keeps its audit line one line (Python splitlines)', async () => {
    const audit = join(tempDir('separators'), 'audit.log');
    sidecar = await startTestSidecar(
      { audit: { path: audit }, policies: [DEFAULT_ALLOW], agents: [{ name: 'a' }] },
      { http: false },
    );
    const client = await inMemoryClient(sidecar, agentToken(sidecar, 'a'));
    for (const name of NAMES) {
      await expect(client.callTool({ name, arguments: {} })).rejects.toThrow(/Unknown tool/);
    }
    await client.close();
    await closeSidecar(sidecar);
    sidecar = undefined;
    expect(readFileSync(audit, 'utf8')).not.toMatch(/[\u2028\u2029]/);
    const lines = pythonLines(audit);
    expect(lines.map((l) => l.tool)).toEqual(NAMES);
    for (const l of lines) expect(l).toMatchObject({ code: 'FABRIC_ERR_TOOL_NOT_FOUND' });
  });

  it("the sidecar's JSON log keeps an entry holding them one line (Python splitlines)", async () => {
    const path = join(tempDir('separators-log'), 'sidecar.log');
    const stream = createWriteStream(path);
    const log = createSidecarLog({ format: 'json', stream });
    for (const name of NAMES) log.write({ level: 'warn', msg: `unknown ${name}`, tool: name });
    await new Promise((resolve) => stream.end(resolve));
    const lines = pythonLines(path);
    expect(lines.map((l) => l.tool)).toEqual(NAMES);
    expect(lines.map((l) => l.msg)).toEqual(NAMES.map((n) => `unknown ${n}`));
  });

  it("the Operator API's NDJSON stream keeps a tool call holding them one line (Python splitlines)", async () => {
    sidecar = await startTestSidecar({ policies: [DEFAULT_ALLOW], agents: [{ name: 'a' }] });
    const controller = new AbortController();
    const res = await postJson(
      new URL('/api/fabric.v1.EventService/Watch', sidecar.url),
      { topics: ['EVENT_TOPIC_TOOL_CALLS'] },
      ADMIN_TOKEN,
      {
        headers: { 'content-type': 'application/json', authorization: `Bearer ${ADMIN_TOKEN}` },
        signal: controller.signal,
      },
    );
    expect(res.status).toBe(200);
    let text = '';
    const reading = (async () => {
      const decoder = new TextDecoder();
      try {
        for await (const chunk of res.body!) text += decoder.decode(chunk as Uint8Array);
      } catch {
        // aborted below
      }
    })();
    const calls = sidecar.gateway.toolCalls;
    await expect.poll(() => calls.listenerCount('call.ended')).toBeGreaterThan(0);
    const client = await httpClient(sidecar.url!, agentToken(sidecar, 'a'));
    try {
      for (const name of NAMES) {
        await expect(client.callTool({ name, arguments: {} })).rejects.toThrow(/Unknown tool/);
      }
      await expect.poll(() => text.split('\n').filter((l) => l !== '').length).toBe(3);
    } finally {
      await client.close();
      controller.abort();
      await reading;
    }
    expect(text).not.toMatch(/[\u2028\u2029]/);
    const path = join(tempDir('separators-api'), 'stream.ndjson');
    writeFileSync(path, text);
    const lines = pythonLines(path) as Array<{ message?: { toolCall?: { tool?: string } } }>;
    expect(lines.map((l) => l.message?.toolCall?.tool)).toEqual(NAMES);
  });
});
