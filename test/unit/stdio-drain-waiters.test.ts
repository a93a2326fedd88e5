/**
 * The stdio downstream's writes while its client does not read: every response written while
 * stdout needs a drain waits for it. Each such wait added its own `drain` listener to stdout,
 * so eleven responses waiting at once (a burst of calls from a client that stopped reading)
 * made Node print a MaxListenersExceededWarning — a false memory-leak alarm on the sidecar's
 * stderr, and a listener per waiting write. Now one listener serves them all.
 *
 * The client is a real child process that does not read its stdin (the transport's stdout)
 * until told to over IPC; the pipe fills as it would for an MCP client that stopped reading.
 */
import { spawn } from 'node:child_process';
import { PassThrough } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { StdioSessionTransport } from '../../src/gateway/downstream-stdio-transport.js';

/** A child that reads nothing from stdin until it gets a message, then counts the lines. */
const CLIENT = `
let lines = 0;
process.once('message', () => {
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', (c) => {
    for (const ch of c) if (ch === '\\n') lines++;
    process.send(lines);
  });
});
`;

const children: ReturnType<typeof spawn>[] = [];
afterEach(() => {
  for (const c of children.splice(0)) c.kill('SIGKILL');
});

describe('StdioSessionTransport writes waiting for a client that does not read', () => {
  it('waits for stdout with one drain listener however many writes wait, and delivers them all', async () => {
    const child = spawn(process.execPath, ['-e', CLIENT], {
      stdio: ['pipe', 'ignore', 'inherit', 'ipc'],
    });
    children.push(child);
    const stdout = child.stdin!;
    stdout.on('error', () => undefined); // EPIPE once the child is killed after the test
    const transport = new StdioSessionTransport(new PassThrough(), stdout, {
      maxBacklogBytes: 64 * 1024 * 1024, // nothing dropped, stdin never held: only drains
    });
    await transport.start();
    const warnings: Error[] = [];
    const onWarning = (w: Error): void => {
      warnings.push(w);
    };
    process.on('warning', onWarning);
    try {
      // One response larger than the pipe takes: stdout needs a drain from here.
      const big = 'x'.repeat(512 * 1024);
      const first = transport.send({ jsonrpc: '2.0', id: 0, result: { big } });
      await new Promise((r) => setImmediate(r));
      expect(stdout.writableNeedDrain).toBe(true);
      const WAITING = 40;
      const waits: Promise<void>[] = [];
      for (let i = 1; i <= WAITING; i++) {
        waits.push(transport.send({ jsonrpc: '2.0', id: i, result: { i } }));
      }
      let settled = 0;
      for (const w of waits) void w.then(() => settled++);
      await new Promise((r) => setImmediate(r));
      // Warnings are emitted on a later tick than the listener that trips them.
      await new Promise((r) => setImmediate(r));
      expect(settled).toBe(0);
      expect(warnings.filter((w) => w.name === 'MaxListenersExceededWarning')).toEqual([]);
      expect(stdout.listenerCount('drain')).toBeLessThanOrEqual(1);

      // The client reads: every write resolves, and every line arrived.
      const allRead = new Promise<void>((resolve) => {
        child.on('message', (n) => {
          if (n === WAITING + 1) resolve();
        });
      });
      child.send('read');
      await Promise.all([first, ...waits]);
      await allRead;
      expect(stdout.listenerCount('drain')).toBe(0);
    } finally {
      process.off('warning', onWarning);
    }
  });
});
