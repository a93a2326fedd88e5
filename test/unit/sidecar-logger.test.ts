/**
 * The sidecar log's level and formats, and the redactor on its own: secret-named fields,
 * known secrets and secret-looking text are replaced; counts under secret-like names are kept.
 */
import { spawnSync } from 'node:child_process';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/errors.js';
import { LogRedactor, REDACTED } from '../../src/server/log-redaction.js';
import { createSidecarLog } from '../../src/server/logger.js';

const REDACTION_MODULE = fileURLToPath(
  new URL('../../src/server/log-redaction.ts', import.meta.url),
);

function sink(isTTY: boolean): { stream: Writable & { isTTY: boolean }; lines: () => string[] } {
  let out = '';
  const stream = Object.assign(
    new Writable({
      write(chunk: Buffer, _enc, done) {
        out += chunk.toString();
        done();
      },
    }),
    { isTTY },
  );
  return { stream, lines: () => out.split('\n').filter(Boolean) };
}

describe('sidecar log', () => {
  it('writes JSON lines off a terminal, at the chosen level and above', () => {
    const s = sink(false);
    const log = createSidecarLog({ level: 'warn', stream: s.stream });
    log.write({ level: 'info', msg: 'hidden' });
    log.write({ level: 'warn', msg: 'shown', upstream: 'fs' });
    expect(s.lines().map((l) => JSON.parse(l) as unknown)).toEqual([
      { level: 40, time: expect.any(Number), upstream: 'fs', msg: 'shown' },
    ]);
  });

  it('writes readable lines on a terminal (auto) or when asked (pretty)', () => {
    for (const [isTTY, format] of [
      [true, undefined],
      [false, 'pretty'],
    ] as const) {
      const s = sink(isTTY);
      createSidecarLog({ format, stream: s.stream }).write({
        level: 'info',
        msg: 'Secure MCP Filesystem Server running on stdio',
        upstream: 'fs',
        stream: 'stderr',
      });
      expect(s.lines()).toEqual([
        expect.stringMatching(
          /^\d\d:\d\d:\d\d\.\d{3} INFO {2}\[fs\] Secure MCP Filesystem Server running on stdio {2}stream=stderr$/,
        ),
      ]);
    }
  });

  it('refuses an unknown level or format', () => {
    expect(() => createSidecarLog({ level: 'loud' })).toThrow(ConfigError);
    expect(() => createSidecarLog({ format: 'xml' })).toThrow(ConfigError);
  });
});

describe('LogRedactor', () => {
  it('redacts secret-named fields, known secrets and secret-looking text; keeps counts', () => {
    const r = new LogRedactor();
    r.add('s3cr3t-value-known', 'short');
    expect(
      r.value({
        headers: { Authorization: 'Bearer abc', accept: 'json' },
        apiKey: 'k',
        tokens: 1200,
        maxTokensPerHour: 5000,
        note: 'with s3cr3t-value-known inside; short stays',
        list: ['GITHUB_TOKEN=ghp_x1', 'run --password hunter2', 'used tokens: 42'],
        error: new Error('GET https://h/x?access_token=abc&v=1 failed: Bearer eyJhbGciOi.x.y'),
      }),
    ).toEqual({
      headers: { Authorization: REDACTED, accept: 'json' },
      apiKey: REDACTED,
      tokens: 1200,
      maxTokensPerHour: 5000,
      note: `with ${REDACTED} inside; short stays`,
      list: [`GITHUB_TOKEN=${REDACTED}`, `run --password ${REDACTED}`, 'used tokens: 42'],
      error: `GET https://h/x?access_token=${REDACTED}&v=1 failed: Bearer ${REDACTED}`,
    });
    expect(r.text(`agent afk_${'a'.repeat(43)} and fab_admin_${'b'.repeat(32)}`)).toBe(
      `agent ${REDACTED} and ${REDACTED}`,
    );
  });
  it('redacts the values of secret-named flags, headers, variables and query parameters', () => {
    const r = new LogRedactor();
    const cases: [string, string][] = [
      [
        'node server.js --api-key sk-123 --port 3000',
        `node server.js --api-key ${REDACTED} --port 3000`,
      ],
      ['--password=hunter2', `--password=${REDACTED}`],
      ['GITHUB_TOKEN=ghp_abc npm start', `GITHUB_TOKEN=${REDACTED} npm start`],
      ['{"apiKey": "abc", "tokens": 5}', `{"apiKey": "${REDACTED}", "tokens": 5}`],
      ['x-api-key: abc', `x-api-key: ${REDACTED}`],
      ['X-Auth-Token: abc123', `X-Auth-Token: ${REDACTED}`],
      ['DB_PASSWORD: "s3cret"', `DB_PASSWORD: "${REDACTED}"`],
      ['password=hunter2;user=bob', `password=${REDACTED};user=bob`],
      [
        'https://h/x?access_token=abc&v=1&key=zz',
        `https://h/x?access_token=${REDACTED}&v=1&key=${REDACTED}`,
      ],
      // A name that is not a secret's does not hide one after it.
      ['url=https://h/x?token=abc', `url=https://h/x?token=${REDACTED}`],
      ['x=tokenpassword=abc', `x=tokenpassword=${REDACTED}`],
      // Counts and what is redacted already stay.
      ['used tokens: 42 of maxTokensPerHour=5000', 'used tokens: 42 of maxTokensPerHour=5000'],
      [`a --token=${REDACTED} b`, `a --token=${REDACTED} b`],
    ];
    for (const [text, redacted] of cases) expect(r.text(text), text).toBe(redacted);
  });

  // What an agent can get into the log (an upstream's answer to a call it cancelled is logged):
  // the redactor's patterns must run in linear time. The earlier patterns
  // (`[\w-]*(?:token|…)[\w-]*=…`) were cubic in a name of repeated `-token`: 12 KB of it held
  // the event loop for 9 s, these megabytes would hold it for days. Run in a child process, so a
  // regression fails at the child's time limit instead of blocking the test run.
  it('redacts megabytes of hostile text without backtracking', () => {
    const script = `
      import { LogRedactor } from ${JSON.stringify(REDACTION_MODULE)};
      const r = new LogRedactor();
      const out = [];
      for (const unit of ['-token', 'token', '&token', 'token=', '-token ', '"token":', 'x-api_key-']) {
        out.push(r.text(unit.repeat(Math.ceil(1_000_000 / unit.length))).length);
      }
      const spaced = '--token' + ' '.repeat(1_000_000);
      out.push(r.text(spaced) === spaced);
      out.push(r.text('--api-key' + '-token'.repeat(50_000) + '=sk-1').endsWith('=[redacted]'));
      console.log(JSON.stringify(out));
    `;
    const run = spawnSync(
      process.execPath,
      ['--import', 'tsx', '--input-type=module', '-e', script],
      {
        encoding: 'utf8',
        timeout: 60_000,
      },
    );
    expect(run.signal, 'the redactor did not finish within 60 s').toBeNull();
    expect(run.stderr).toBe('');
    const out = JSON.parse(run.stdout) as unknown[];
    expect(out.slice(0, 7).every((n) => typeof n === 'number' && n > 0)).toBe(true);
    expect(out.slice(7)).toEqual([true, true]);
  }, 70_000);
});
