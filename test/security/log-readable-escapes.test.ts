/**
 * Found in review: the readable log form (`--log-format pretty`, and `auto` on a terminal — an
 * operator watching `agent-fabric serve` in a shell) wrote message and field strings raw
 * (src/server/logger.ts `readable`). An upstream's stderr line is logged as a message, and
 * upstreams echo what an agent asked for; so an agent's tool argument put ESC/OSC sequences into
 * the operator's terminal and forged whole log lines with `\r`. The readable form now escapes
 * control characters and bidirectional controls; one entry is one line. Real sidecar, a real
 * stdio upstream that echoes its argument to stderr, the official SDK client.
 */
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { createSidecarLog } from '../../src/server/logger.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  httpClient,
  startTestSidecar,
  until,
} from '../fixtures/gateway/harness.js';

const SERVER = fileURLToPath(new URL('../fixtures/log/stderr-echo-server.mjs', import.meta.url));
// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/;

let sidecar: Sidecar | undefined;
afterEach(async () => {
  await closeSidecar(sidecar);
  sidecar = undefined;
});

function terminal(): { stream: Writable & { isTTY: true }; text: () => string } {
  let out = '';
  const stream = Object.assign(
    new Writable({
      write(chunk: Buffer, _enc, done) {
        out += chunk.toString();
        done();
      },
    }),
    { isTTY: true as const },
  );
  return { stream, text: () => out };
}

describe('readable log and agent-influenced text', () => {
  it('an agent argument echoed on an upstream stderr cannot put control characters into the log', async () => {
    const term = terminal();
    const log = createSidecarLog({ format: 'auto', stream: term.stream });
    sidecar = await startTestSidecar(
      {
        policies: [DEFAULT_ALLOW],
        agents: [{ name: 'a' }],
        upstreams: { fs: { command: process.execPath, args: [SERVER] } },
      },
      { logger: log.write },
    );
    const client = await httpClient(sidecar.url!, agentToken(sidecar, 'a'));
    const path =
      '/tmp/x\u001b]0;pwned\u0007\u001b[2K\r12:00:00.000 ERROR admin token rotated: see /tmp/evil';
    await client.callTool({ name: 'fs__open', arguments: { path } });
    await until(() => term.text().includes('no such file'));
    await client.close();
    const line = term
      .text()
      .split('\n')
      .find((l) => l.includes('no such file'))!;
    expect(line).not.toMatch(CONTROL);
    // Still readable, on one line: the forged entry is part of the real one.
    expect(line).toContain('/tmp/x\\x1b]0;pwned\\x07\\x1b[2K\\x0d12:00:00.000 ERROR admin');
  });

  it('escapes messages, field names and values, nested ones included; one entry, one line', () => {
    const term = terminal();
    const log = createSidecarLog({ format: 'pretty', stream: term.stream });
    log.write({
      level: 'warn',
      msg: 'first\nsecond\r\u009b2J',
      upstream: 'up\u001b[31m',
      'k\u0007': 'v\u202ev\u00ad\u{e0072}',
      nested: { s: '\u007f\u0085' },
    } as never);
    const text = term.text();
    expect(text.split('\n')).toEqual([expect.any(String), '']);
    expect(text).not.toMatch(CONTROL);
    expect(text).toContain('[up\\x1b[31m] first\\x0asecond\\x0d\\x9b2J');
    expect(text).toContain('k\\x07=v\\u{202e}v\\xad\\u{e0072}');
    expect(text).toContain('nested={"s":"\\x7f\\x85"}');
  });
});
