/**
 * The path lock's behaviour through a real sidecar and the official SDK client, on the slow
 * upstream (test/fixtures/gateway/slow-server.mjs: it writes `start <label>` to a file when a
 * call arrives). Its `label` is declared path-like (`paths.params`), so its calls carry paths.
 * Everything is proved by what is in flight and on disk, never by how long something took.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import { fileURLToPath } from 'node:url';
import { callApi, listApprovals } from '../fixtures/api.js';
import { callAsTask } from '../fixtures/gateway/tasks.js';
import {
  ADMIN_TOKEN,
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  httpClient,
  slowUpstream,
  startTestSidecar,
  tempDir,
  text,
  until,
} from '../fixtures/gateway/harness.js';

const LONG = 600_000;
const TASK_SERVER = fileURLToPath(new URL('../fixtures/gateway/task-server.mjs', import.meta.url));

describe('path lock', () => {
  const dir = tempDir('pathlock-slow');
  const ran = (name: string) => join(dir, `${name}.log`);
  const log = (name: string): string => {
    try {
      return readFileSync(ran(name), 'utf8');
    } catch {
      return '';
    }
  };
  let sidecar: Sidecar;
  let client: Client;
  const lock = (name: string) => sidecar.gateway.upstreams.get(name)!.pathLock;
  const FREE = { shared: 0, exclusive: false, waiting: 0 };
  /** Starts `u__slow` with `label`, cancelled by the returned controller. */
  const slow = (u: string, label: string, ms: number) => {
    const abort = new AbortController();
    const done = client
      .callTool({ name: `${u}__slow`, arguments: { label, ms } }, undefined, {
        signal: abort.signal,
        timeout: LONG,
      })
      .then(
        (r) => text(r),
        (e: unknown) => e,
      );
    return { abort, done };
  };

  beforeAll(async () => {
    const paths = { roots: [dir], params: ['label'] };
    sidecar = await startTestSidecar({
      upstreams: {
        // Nothing declared: every call carrying paths takes the lock alone.
        x: { ...slowUpstream(ran('x')), callTimeoutSeconds: 900, paths },
        // `slow` declared as keeping names: its calls share the lock.
        sh: {
          ...slowUpstream(ran('sh')),
          callTimeoutSeconds: 900,
          paths: { ...paths, keepNames: ['slow'] },
        },
        // One session's calls at a time (`exclusive`), and the path lock: taken in one order.
        ex: {
          ...slowUpstream(ran('ex')),
          callTimeoutSeconds: 900,
          exclusive: true,
          paths: { ...paths, keepNames: ['slow'] },
        },
        // A task receiver: its `message` is path-like; nothing declared (every call alone).
        tk: {
          command: process.execPath,
          args: [TASK_SERVER],
          stderr: 'ignore' as const,
          paths: { roots: [dir], params: ['message'] },
        },
        // `label` is not path-like here: no lock.
        np: { ...slowUpstream(ran('np')), callTimeoutSeconds: 900 },
      },
      policies: [
        {
          name: 'ask',
          priority: 100,
          rules: [
            {
              tool: 'x__slow',
              action: 'require_approval',
              conditions: { label: `${dir}/appr*` },
            },
          ],
        },
        DEFAULT_ALLOW,
      ],
      agents: [{ name: 'a' }],
      gateway: { tasks: { maxTtlSeconds: 120 }, shutdownGraceSeconds: 0 },
    });
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'a'));
  });

  afterAll(async () => {
    await client?.close();
    await closeSidecar(sidecar);
  });

  it('a call of a tool not declared as keeping names runs alone; a cancelled waiter forwards nothing and leaves the lock free', async () => {
    const a = slow('x', 'a1', LONG);
    await until(() => log('x').includes('start a1'));
    expect(lock('x').state).toEqual({ shared: 0, exclusive: true, waiting: 0 });
    const b = slow('x', 'b1', 0);
    await until(() => lock('x').state.waiting === 1);
    expect(log('x')).not.toContain('start b1'); // held back, not sent
    b.abort.abort();
    expect(await b.done).toBeInstanceOf(Error);
    await until(() => lock('x').state.waiting === 0);
    expect(lock('x').state.exclusive).toBe(true); // a1 still holds it
    a.abort.abort(); // the gateway gives up on a1: the lock goes with it
    await a.done;
    await until(() => !lock('x').state.exclusive);
    expect(lock('x').state).toEqual(FREE);
    expect(await slow('x', 'c1', 0).done).toBe('slept c1');
    expect(log('x')).not.toContain('start b1');
    expect(lock('x').state).toEqual(FREE);
  });

  it('calls of a tool declared as keeping names are in flight at once', async () => {
    const a = slow('sh', 'a2', LONG);
    const b = slow('sh', 'b2', LONG);
    await until(() => log('sh').includes('start a2') && log('sh').includes('start b2'));
    expect(lock('sh').state).toEqual({ shared: 2, exclusive: false, waiting: 0 });
    a.abort.abort();
    b.abort.abort();
    await Promise.all([a.done, b.done]);
    await until(() => lock('sh').state.shared === 0);
    expect(lock('sh').state).toEqual(FREE);
  });

  it('a call without path-like values takes no lock', async () => {
    const a = slow('np', 'a3', LONG);
    await until(() => log('np').includes('start a3'));
    expect(lock('np').state).toEqual(FREE);
    a.abort.abort();
    await a.done;
  });

  it('a call waiting for a human does not hold the lock; approved, it takes it again before it is re-checked and sent', async () => {
    const parked = slow('x', 'appr1', 0);
    let id = '';
    await until(async () => {
      const pending = await listApprovals(sidecar.url!, ADMIN_TOKEN, 'pending');
      // The approval records the call as policy saw it: its label resolved.
      id =
        pending.find((p) => (p.params as { label?: unknown }).label === join(dir, 'appr1'))?.id ??
        '';
      return id !== '';
    });
    expect(lock('x').state).toEqual(FREE);
    // Another call of the upstream runs meanwhile, and holds the lock alone.
    const hold = slow('x', 'a4', LONG);
    await until(() => log('x').includes('start a4'));
    const res = await callApi(sidecar.url!, 'ApprovalService/Approve', { id }, ADMIN_TOKEN);
    expect(res.status).toBe(200);
    // Approved: it waits for the lock, and is not sent while another call holds it.
    await until(() => lock('x').state.waiting === 1);
    expect(log('x')).not.toContain('start appr1');
    hold.abort.abort();
    await hold.done;
    expect(await parked.done).toBe('slept appr1');
    await until(() => lock('x').state.exclusive === false);
    expect(lock('x').state).toEqual(FREE);
  });

  it('on an exclusive upstream, a call takes the lock, then waits for its turn, and runs once the turn is its', async () => {
    const other = await httpClient(sidecar.url!, agentToken(sidecar, 'a'));
    try {
      const a = slow('ex', 'a5', LONG); // this session's turn, and the lock (shared)
      await until(() => log('ex').includes('start a5'));
      const abort = new AbortController();
      const b = other
        .callTool({ name: 'ex__slow', arguments: { label: 'b5', ms: 0 } }, undefined, {
          signal: abort.signal,
          timeout: LONG,
        })
        .then((r) => text(r));
      // The other session's call took the lock beside a5 and waits for its turn.
      await until(() => lock('ex').state.shared === 2);
      expect(log('ex')).not.toContain('start b5');
      a.abort.abort();
      await a.done;
      expect(await b).toBe('slept b5');
      await until(() => lock('ex').state.shared === 0);
      expect(lock('ex').state).toEqual(FREE);
    } finally {
      await other.close();
    }
  });

  it('a task passed through holds the lock until the upstream answers the call that made it, not while the task runs', async () => {
    const { task } = await callAsTask(client, 'tk__slow_echo', { message: 'm6', hold: true });
    const waiting = async (): Promise<string[]> => {
      const r = await client.callTool({ name: 'tk__upstream_tasks', arguments: {} });
      return (JSON.parse(text(r)) as { waiting: string[] }).waiting;
    };
    await until(async () => (await waiting()).includes('m6')); // the upstream's task is held
    expect(lock('tk').state).toEqual(FREE);
    // Another call of the upstream, alone on the lock, runs meanwhile.
    const other = await client.callTool({ name: 'tk__plain_echo', arguments: { message: 'm7' } });
    expect(text(other)).toContain('m7');
    await client.callTool({ name: 'tk__release', arguments: { message: 'm6' } });
    await until(
      async () => (await client.experimental.tasks.getTask(task.taskId)).status === 'completed',
    );
    expect(lock('tk').state).toEqual(FREE);
  });
});
