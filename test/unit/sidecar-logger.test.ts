/**
 * The sidecar log's level and formats, and the redactor on its own: secret-named fields,
 * known secrets and secret-looking text are replaced; counts under secret-like names are kept.
 */
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/errors.js';
import { LogRedactor, REDACTED } from '../../src/server/log-redaction.js';
import { createSidecarLog } from '../../src/server/logger.js';

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
});
