/**
 * Found in review: log-redaction.ts documents that a value under a secret-like key is replaced
 * whole, but `LogRedactor.value` replaced it only when it was a string. A secret under such a
 * key as an array or object (a header given as a list, `{ password: { value } }`, a plugin's
 * `log({ credentials: {...} })` — plugin fields reach the sidecar log as given) was written out
 * when nothing in its text looked like a secret. Now anything but a number, boolean or null
 * under a secret-like name is replaced whole.
 */
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { LogRedactor, REDACTED } from '../../src/server/log-redaction.js';
import { createSidecarLog } from '../../src/server/logger.js';

describe('LogRedactor.value under secret-like keys', () => {
  it('replaces a non-string value under a secret-like name whole, at any depth', () => {
    const r = new LogRedactor();
    const out = r.value({
      password: ['hunter2-correct-horse'],
      apiKey: { primary: 'sk9f8e7d6c5b4a3' },
      credentials: { user: 'svc', pass: 'Zq8!vLm#2pR' },
      request: { headers: { authorization: ['opaque-value-123'], cookie: { sid: 'c00k1e5' } } },
    });
    expect(out).toEqual({
      password: REDACTED,
      apiKey: REDACTED,
      credentials: REDACTED,
      request: { headers: { authorization: REDACTED, cookie: REDACTED } },
    });
  });

  it('keeps counts, flags and nulls under such names', () => {
    const r = new LogRedactor();
    expect(
      r.value({
        tokens: 5,
        maxTokensPerHour: 1000n,
        apiKeySet: true,
        token: null,
        secret: undefined,
      }),
    ).toEqual({
      tokens: 5,
      maxTokensPerHour: 1000n,
      apiKeySet: true,
      token: null,
      secret: undefined,
    });
  });

  it('keeps such values out of the sidecar log', () => {
    let out = '';
    const stream = new Writable({
      write(chunk: Buffer, _enc, done) {
        out += chunk.toString();
        done();
      },
    });
    const log = createSidecarLog({ format: 'json', stream });
    log.write({
      level: 'info',
      msg: 'plugin',
      credentials: { user: 'svc', pass: 'Zq8!vLm#2pR' },
    } as never);
    expect(out).toContain('"credentials":"[redacted]"');
    expect(out).not.toContain('Zq8!vLm#2pR');
  });
});
