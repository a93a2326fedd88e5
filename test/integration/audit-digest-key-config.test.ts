/**
 * `audit.digestKey`: the key of the audit lines' `argsDigest` HMAC set in the config (as
 * `${env:NAME}`), so deployments without a state file (`state: memory`), or several sidecars,
 * write digests that compare: before, such a sidecar made a random key at each start and its
 * lines correlated with nothing after a restart. Two real `agent-fabric serve` processes — one
 * with `state: memory`, one with a state file — with the same configured key, a real
 * server-everything upstream and the official SDK client, write the same digest for the same
 * arguments, the HMAC of their JSON under the key; the key is in no log line, banner, audit line
 * or state file. A key too short is a config problem naming the key path, not echoing the value.
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { hmacDigest } from '../fixtures/audit/digest-key.js';
import { runCli } from '../fixtures/cli-process.js';
import { EVERYTHING_BIN, tempDir, text } from '../fixtures/gateway/harness.js';
import {
  cleanUp,
  connect,
  serve,
  spawnServe,
  stop,
  type Running,
} from '../fixtures/state/serve.js';

afterAll(cleanUp);

/** 32 characters of a random key (base64url). */
const KEY = randomBytes(24).toString('base64url');

function writeConfig(dir: string, state: 'memory' | undefined): string {
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'fabric.json');
  writeFileSync(
    file,
    JSON.stringify({
      http: { host: '127.0.0.1', port: 0 },
      ...(state === undefined ? {} : { state }),
      upstreams: {
        ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
      },
      policies: [{ name: 'default-allow', rules: [{ tool: '*', action: 'allow' }] }],
      agents: [{ name: 'worker' }],
      audit: {
        path: join(dir, 'audit.log'),
        flushIntervalMs: 0,
        digestKey: '${env:AUDIT_DIGEST_KEY}',
      },
    }),
  );
  return file;
}

/** The echo line's digest the sidecar in `dir` wrote for `message`, once it stopped. */
async function digestOf(r: Running, dir: string, message: string): Promise<string> {
  const client = await connect(r.url, r.token);
  const res = await client.callTool({ name: 'ev__echo', arguments: { message } });
  expect(text(res)).toContain(message);
  expect(await stop(r, 'SIGTERM')).toBe(0);
  const lines = readFileSync(join(dir, 'audit.log'), 'utf8')
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as { tool: string; argsDigest: string });
  const echo = lines.filter((l) => l.tool === 'ev__echo');
  expect(echo).toHaveLength(1);
  return echo[0]!.argsDigest;
}

describe('audit.digestKey from the config', () => {
  const root = tempDir('audit-digest-key');

  it('gives two sidecars (memory and a state file) the same digest; the key is in nothing they wrote', async () => {
    const env = { AUDIT_DIGEST_KEY: KEY };
    const memoryDir = join(root, 'memory');
    const fileDir = join(root, 'file');
    writeConfig(memoryDir, 'memory');
    writeConfig(fileDir, undefined);
    const message = 'the same words';
    const a = await serve(memoryDir, env, ['--log-level', 'debug']);
    const digestA = await digestOf(a, memoryDir, message);
    const b = await serve(fileDir, env, ['--log-level', 'debug']);
    const digestB = await digestOf(b, fileDir, message);

    expect(digestA).toBe(digestB);
    expect(digestA).toBe(hmacDigest(KEY, JSON.stringify({ message })));
    for (const [r, dir] of [
      [a, memoryDir],
      [b, fileDir],
    ] as const) {
      expect(r.out).not.toContain(KEY);
      expect(r.err()).not.toContain(KEY);
      expect(readFileSync(join(dir, 'audit.log'), 'utf8')).not.toContain(KEY);
    }
    expect(readFileSync(join(fileDir, '.fabric', 'state.db')).includes(KEY)).toBe(false);
  });

  it('refuses a key too short, naming audit.digestKey and not the key', async () => {
    const dir = join(root, 'short');
    const file = writeConfig(dir, 'memory');
    const short = 'Short-key-1234567890';
    const check = await runCli(['config', 'check', file], { AUDIT_DIGEST_KEY: short });
    expect(check.code).toBe(1);
    expect(check.err).toMatch(/audit\.digestKey.*must be 32 to 64 printable ASCII characters/);
    expect(check.err + check.out).not.toContain(short);

    const started = spawnServe(dir, { AUDIT_DIGEST_KEY: short });
    const code = await new Promise((resolve) => started.child.once('exit', resolve));
    expect(code).not.toBe(0);
    expect(started.err()).toMatch(/audit\.digestKey.*must be 32 to 64/);
    expect(started.err() + started.out()).not.toContain(short);
  });
});
