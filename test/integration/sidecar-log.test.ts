/**
 * The log of the real `agent-fabric serve` (child process; stderr is a pipe, so JSON lines):
 * every line is a pino JSON object; a stdio upstream's stderr arrives line by line with the
 * upstream's name; and no credential reaches it — not the admin token, not a pinned or a
 * generated agent token, not an upstream's secret arguments, environment or printed bearer
 * token, not a secret an agent sends as a tool argument — even at `--log-level debug`.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { EVERYTHING_BIN, tempDir, text, until } from '../fixtures/gateway/harness.js';
import { cleanUp, connect, serve, stop } from '../fixtures/state/serve.js';

afterAll(cleanUp);

const LEAKY = new URL('../fixtures/log/leaky-upstream.mjs', import.meta.url).pathname;
const ADMIN = `fab_admin_${'Lq8v'.repeat(8)}`;
const PINNED = 'pin_Wb3Nc8Xd2Ve7Rf4Tg9Yh1Uj6Ik5Ol0PaS';
const SECRETS = {
  apiKeyArg: 'AKIAsecretvalue99',
  tokenArg: 'tok_zzzzzzzzzzzz',
  tokenEnv: 'lt_abcdefgh12345',
  password: 'hunter2hunter2',
  bearer: 'sk-live-0123456789abcdef',
  query: 'qwertyuiop123',
  toolArgument: 'ghp_ToolArgSecret0123456789',
  issuedAdmin: 'afa_Q2hvb3NlIGFuIGFkbWluIHRva2VuIGZyb20gYSBmaWxl0123',
};

describe('sidecar log', () => {
  it('is JSON lines with each upstream stderr line named, and carries no secret', async () => {
    const dir = tempDir('sidecar-log');
    writeFileSync(
      join(dir, 'fabric.json'),
      JSON.stringify({
        http: { host: '127.0.0.1', port: 0 },
        adminToken: ADMIN,
        state: 'memory',
        upstreams: {
          ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'] },
          leaky: {
            command: process.execPath,
            args: [LEAKY, `--api-key=${SECRETS.apiKeyArg}`, '--token', SECRETS.tokenArg],
            env: { LEAKY_TOKEN: SECRETS.tokenEnv, DB_PASSWORD: SECRETS.password },
            required: false,
          },
        },
        policies: [{ name: 'all', rules: [{ tool: '*', action: 'allow' }] }],
        agents: [{ name: 'generated' }, { name: 'pinned', credential: PINNED }],
      }),
    );
    const r = await serve(dir, {}, ['--log-level', 'debug']);
    const agent = await connect(r.url, r.token);
    const echoed = await agent.callTool({
      name: 'ev__echo',
      arguments: { message: `token=${SECRETS.toolArgument}`, password: SECRETS.toolArgument },
    });
    expect(text(echoed)).toContain('Echo:');
    // An unauthenticated request with a bearer token in it is refused (and maybe logged).
    await fetch(r.url, { method: 'POST', headers: { authorization: `Bearer ${PINNED}x` } });
    await until(() => r.err().includes('"upstream":"leaky","stream":"stderr"'), 30_000);
    expect(await stop(r, 'SIGTERM')).toBe(0);

    const lines = r
      .err()
      .split('\n')
      .filter((l) => l.trim() !== '');
    expect(lines.length).toBeGreaterThan(3);
    const entries = lines.map((l) => JSON.parse(l) as Record<string, unknown>);
    for (const e of entries) {
      expect(typeof e.level).toBe('number');
      expect(typeof e.time).toBe('number');
      expect(typeof e.msg).toBe('string');
    }
    const stderrLines = entries.filter((e) => e.upstream === 'leaky' && e.stream === 'stderr');
    expect(stderrLines.map((e) => e.msg)).toEqual(
      expect.arrayContaining([
        'argv: --api-key=[redacted] --token [redacted]',
        'env LEAKY_TOKEN=[redacted]',
        'using key [redacted] and token [redacted]',
        'admin [redacted] set',
        'connecting to db with [redacted]',
      ]),
    );
    expect(
      entries.some((e) => e.upstream === 'ev' || e.msg === 'SIGTERM received, shutting down'),
    ).toBe(true);
    const log = r.err();
    for (const secret of [ADMIN, PINNED, r.token, ...Object.values(SECRETS)]) {
      expect(log).not.toContain(secret);
    }
  }, 120_000);
});
