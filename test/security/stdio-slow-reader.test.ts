/**
 * `agent-fabric mcp --in-process` (a real child process, server-everything upstream) with an
 * MCP client that stops reading the process's stdout. Node buffers every write a pipe cannot
 * take, without limit, so what the gateway holds for such a client must be bounded by the
 * gateway itself, as over Streamable HTTP (`http.maxStreamBacklogBytes`):
 *
 * - a progress flood (server-everything's `trigger-long-running-operation`, one notification a
 *   step) while the client reads nothing: every notification waited in the process (11.2 MB for
 *   100 calls of 1,000 steps), and no call ended, each waiting for its last progress
 *   notification to be handed over; now notifications past the backlog are dropped and said so
 *   on stderr, the calls end, and every response arrives;
 * - requests sent while the client reads nothing: the gateway read and answered them all, each
 *   answer waiting in the process; now it stops reading stdin while its output waits, and the
 *   client's requests wait in its own pipe.
 *
 * What waited is measured by reading it all once the work is done: everything read then was
 * held by the gateway (or the pipe's 64 KiB).
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import {
  CLI_MAIN,
  EVERYTHING_BIN,
  INIT,
  tempDir,
  TSX,
  until,
} from '../fixtures/gateway/harness.js';

const BACKLOG = 64 * 1024;
/** Calls of the flood and progress steps of each: ~13 MB of notifications in all. */
const FLOOD_CALLS = 100;
const FLOOD_STEPS = 1_000;
/** What the OS pipe holds beside what the process holds. */
const PIPE_BYTES = 64 * 1024;

interface Gateway {
  readonly child: ChildProcessWithoutNullStreams;
  readonly auditPath: string;
  stderr: string;
  /** Bytes of stdout read so far (only once `read()` was called). */
  bytes: number;
  /** Ids of the responses read so far. */
  readonly results: Set<unknown>;
  /** Progress notifications read so far. */
  progress: number;
  read(): void;
  send(message: object): boolean;
  /** Audit lines written so far (one per tool call that ended). */
  audited(): number;
}

const running: Gateway[] = [];

afterEach(() => {
  for (const g of running.splice(0)) g.child.kill('SIGKILL');
});

/** Starts the in-process gateway and initializes its session (reading the answer), then stops reading. */
async function startGateway(): Promise<Gateway> {
  const dir = tempDir('stdio-slow');
  const auditPath = join(dir, 'audit.jsonl');
  const configFile = join(dir, 'fabric.yaml');
  writeFileSync(
    configFile,
    `http: { maxStreamBacklogBytes: ${BACKLOG} }
audit: { path: '${auditPath}', flushIntervalMs: 0 }
upstreams:
  ev:
    command: '${process.execPath}'
    args: ['${EVERYTHING_BIN}', 'stdio']
    stderr: ignore
policies:
  - name: allow
    rules:
      - { tool: '*', action: allow }
agents:
  - name: slow-reader
`,
  );
  const child = spawn(
    process.execPath,
    ['--import', TSX, CLI_MAIN, 'mcp', '--in-process', '--config', configFile],
    {
      env: { ...process.env, FABRIC_STATE: 'memory', FABRIC_LOG_FORMAT: 'json' },
      stdio: ['pipe', 'pipe', 'pipe'],
    },
  );
  const g: Gateway = {
    child,
    auditPath,
    stderr: '',
    bytes: 0,
    results: new Set(),
    progress: 0,
    read: () => {
      let rest = '';
      child.stdout.setEncoding('utf8');
      child.stdout.on('data', (c: string) => {
        g.bytes += Buffer.byteLength(c);
        const lines = (rest + c).split('\n');
        rest = lines.pop()!;
        for (const line of lines) {
          if (line === '') continue;
          const m = JSON.parse(line) as { id?: unknown; method?: string; result?: unknown };
          if (m.result !== undefined) g.results.add(m.id);
          else if (m.method === 'notifications/progress') g.progress++;
        }
      });
      child.stdout.resume();
    },
    send: (message) => child.stdin.write(`${JSON.stringify(message)}\n`),
    audited: () => {
      try {
        return readFileSync(auditPath, 'utf8')
          .split('\n')
          .filter((l) => l !== '').length;
      } catch {
        return 0;
      }
    },
  };
  running.push(g);
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (c: string) => (g.stderr += c));
  // The session is up once initialize is answered.
  let first = '';
  const initialized = new Promise<void>((resolve) => {
    const onData = (c: Buffer): void => {
      first += c.toString();
      if (first.includes('\n')) {
        child.stdout.off('data', onData);
        child.stdout.pause();
        resolve();
      }
    };
    child.stdout.on('data', onData);
  });
  g.send(INIT);
  await initialized;
  g.send({ jsonrpc: '2.0', method: 'notifications/initialized' });
  return g;
}

describe('agent-fabric mcp --in-process with a client that does not read stdout', () => {
  it('drops notifications past the backlog, says so, and loses no response', async () => {
    const g = await startGateway();
    for (let i = 0; i < FLOOD_CALLS; i++) {
      g.send({
        jsonrpc: '2.0',
        id: 100 + i,
        method: 'tools/call',
        params: {
          name: 'ev__trigger-long-running-operation',
          arguments: { duration: 0, steps: FLOOD_STEPS },
          _meta: { progressToken: `p${i}` },
        },
      });
    }
    // Every call ran to its end (all its progress sent) while nobody read. (Before, a call
    // waited for its last progress notification to leave, so none ended until the client read.)
    const ended = await until(() => g.audited() === FLOOD_CALLS, 60_000).then(
      () => true,
      () => false,
    );

    // What waited in the process (and the pipe) comes out now.
    g.read();
    await until(() => g.results.size === FLOOD_CALLS, 60_000);
    const progress = g.progress;
    // Before, every progress notification waited (99,588 of them, 11.2 MB), and no call ended
    // while the client did not read, nor answered within a minute of its reading again.
    expect(g.bytes).toBeLessThan(BACKLOG + PIPE_BYTES + 256 * 1024);
    expect(progress).toBeLessThan(FLOOD_CALLS * FLOOD_STEPS);
    expect(ended).toBe(true);
    // Said so: when dropping started, and how many once the client caught up (the upstream
    // sends a few progress notifications after its answer, which nobody forwards).
    expect(g.stderr).toContain('the MCP client is not reading stdout');
    await until(() => /notifications to it were dropped meanwhile/.test(g.stderr), 10_000);
    const dropped = Number(/read what waited on stdout; (\d+) notifications/.exec(g.stderr)?.[1]);
    expect(dropped).toBeGreaterThan(0);
    expect(dropped + progress).toBeLessThanOrEqual(FLOOD_CALLS * FLOOD_STEPS);
    expect(dropped + progress).toBeGreaterThan(FLOOD_CALLS * FLOOD_STEPS * 0.99);
  }, 180_000);

  it('stops reading requests while its answers wait, and answers them all once read', async () => {
    const g = await startGateway();
    const REQUESTS = 2_000;
    let written = 0;
    const allWritten = new Promise<void>((resolve) => {
      const more = (): void => {
        while (written < REQUESTS) {
          written++;
          if (!g.send({ jsonrpc: '2.0', id: 1000 + written, method: 'tools/list' })) break;
        }
        if (written < REQUESTS) g.child.stdin.once('drain', more);
        else resolve();
      };
      more();
    });
    // Waited for the writes, or for a while once the gateway stopped taking them.
    await Promise.race([allWritten, new Promise((resolve) => setTimeout(resolve, 3000))]);
    // Before, the gateway read all 2,000 and held every answer (a tools/list each).
    expect(written).toBeLessThan(REQUESTS);

    g.read();
    await allWritten;
    await until(() => g.results.size === REQUESTS, 60_000);
  }, 120_000);
});
