/**
 * A hostile agent's `tools/call` line over stdio must not make policy and the upstream read
 * different arguments: duplicate keys (JSON.parse keeps the last, other parsers the first), an
 * own `__proto__`, unicode escapes. The gateway forwards the serialization of the arguments
 * policy decided on — built around the text the audit digest then hashes (args-json.ts) — and
 * never the agent's raw bytes. The upstream here answers with the line it read.
 */
import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inProcessChild } from '../fixtures/cli-process.js';
import { hmacDigest, stateDigestKey } from '../fixtures/audit/digest-key.js';
import { INIT, tempDir, until } from '../fixtures/gateway/harness.js';

const LINE_ECHO = fileURLToPath(
  new URL('../fixtures/gateway/line-echo-server.mjs', import.meta.url),
);

interface Answer {
  id?: unknown;
  result?: { isError?: boolean; content?: { text?: string }[] };
  error?: unknown;
}

describe('stdio: the upstream gets the arguments policy decided on', () => {
  const dir = tempDir('sec-forwarded-args');
  const auditPath = join(dir, 'audit.log');
  const configFile = join(dir, 'fabric.yaml');
  // A state file: it keeps the audit digests' key, which the test reads to check a digest.
  const statePath = join(dir, 'state.db');
  let child: ChildProcessWithoutNullStreams;
  const waiting = new Map<unknown, (a: Answer) => void>();
  let nextId = 10;

  const call = (argsJson: string): Promise<Answer> => {
    const id = nextId++;
    const answer = new Promise<Answer>((resolve) => waiting.set(id, resolve));
    child.stdin.write(
      `{"jsonrpc":"2.0","id":${id},"method":"tools/call","params":{"name":"up__echo","arguments":${argsJson}}}\n`,
    );
    return answer;
  };

  /** The arguments' text inside the line the upstream read (its `params` end the line). */
  const upstreamArgs = (a: Answer): string => {
    const line = a.result!.content![0]!.text!;
    const at = line.indexOf(',"arguments":');
    expect(at).toBeGreaterThan(0);
    return line.slice(at + ',"arguments":'.length, line.lastIndexOf('}}'));
  };

  beforeAll(async () => {
    writeFileSync(
      configFile,
      `upstreams:
  up:
    command: '\${NODE}'
    args: ['${LINE_ECHO}']
    stderr: ignore
agents:
  - name: hostile-agent
audit: { path: '${auditPath}', flushIntervalMs: 0 }
policies:
  - name: guard
    priority: 100
    rules:
      - { tool: up__echo, action: deny, conditions: { message: 'forbidden*' } }
  - name: allow
    rules:
      - { tool: '*', action: allow }
`,
    );
    child = inProcessChild(configFile, statePath);
    createInterface({ input: child.stdout }).on('line', (line) => {
      const m = JSON.parse(line) as Answer;
      waiting.get(m.id)?.(m);
    });
    const init = new Promise<Answer>((resolve) => waiting.set(1, resolve));
    child.stdin.write(`${JSON.stringify(INIT)}\n`);
    await init;
    child.stdin.write('{"jsonrpc":"2.0","method":"notifications/initialized"}\n');
  }, 30_000);

  afterAll(async () => {
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill('SIGTERM');
    await exited;
  });

  it('duplicate keys: policy and upstream both read the last one', async () => {
    const allowed = await call('{"message":"forbidden!","message":"ok"}');
    expect(allowed.result?.isError).toBeFalsy();
    expect(upstreamArgs(allowed)).toBe('{"message":"ok"}');
    const denied = await call('{"message":"ok","message":"forbidden!"}');
    expect(denied.result?.isError).toBe(true);
    expect(denied.result?.content?.[0]?.text).toMatch(/FABRIC_ERR_POLICY_DENIED|denied/i);
  });

  it('escapes are decoded before policy; nested duplicates and __proto__ reach it as parsed', async () => {
    const denied = await call('{"message":"\\u0066orbidden!"}');
    expect(denied.result?.isError).toBe(true);
    const raw = '{"__proto__":{"message":"forbidden!"},"message":"o\\u006b","n":{"a":1,"a":2}}';
    const allowed = await call(raw);
    expect(allowed.result?.isError).toBeFalsy();
    const sent = upstreamArgs(allowed);
    expect(sent).toBe(JSON.stringify(JSON.parse(raw)));
    expect(sent).toBe('{"__proto__":{"message":"forbidden!"},"message":"ok","n":{"a":2}}');
    // The audit digest is of that very text (HMAC-SHA256 under the state's key).
    const digest = hmacDigest(stateDigestKey(statePath)!, sent);
    await until(() => readFileSync(auditPath, 'utf8').includes(digest));
  });
});
