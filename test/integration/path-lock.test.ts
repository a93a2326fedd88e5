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
  metricValue,
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
        // A short late window (`callTimeoutSeconds`) for a call the gateway gave up on.
        xc: { ...slowUpstream(ran('xc')), callTimeoutSeconds: 20, paths },
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
    // A first call made: the others do not wait for the estimate of the tool's first result.
    expect(await slow('x', 'w1', 0).done).toBe('slept w1');
    const a = slow('x', 'a1', 15_000);
    await until(() => log('x').includes('start a1'));
    expect(lock('x').state).toEqual({ shared: 0, exclusive: true, waiting: 0 });
    const b = slow('x', 'b1', 0);
    await until(() => lock('x').state.waiting === 1);
    expect(log('x')).not.toContain('start b1'); // held back, not sent
    b.abort.abort();
    expect(await b.done).toBeInstanceOf(Error);
    await until(() => lock('x').state.waiting === 0);
    expect(lock('x').state.exclusive).toBe(true); // a1 still holds it
    expect(await a.done).toBe('slept a1');
    await until(() => !lock('x').state.exclusive);
    expect(lock('x').state).toEqual(FREE);
    expect(await slow('x', 'c1', 0).done).toBe('slept c1');
    expect(log('x')).not.toContain('start b1');
    expect(lock('x').state).toEqual(FREE);
  });

  it('calls of a tool declared as keeping names are in flight at once', async () => {
    const a = slow('sh', 'a2', 15_000);
    const b = slow('sh', 'b2', 15_000);
    await until(() => log('sh').includes('start a2') && log('sh').includes('start b2'));
    expect(await a.done).toBe('slept a2');
    expect(await b.done).toBe('slept b2');
    // Both arrived upstream before either answered: they were in flight at once.
    const lines = log('sh').trim().split('\n');
    expect(lines.slice(0, 2).sort()).toEqual(['start a2', 'start b2']);
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
    const hold = slow('x', 'a4', 15_000);
    await until(() => log('x').includes('start a4'));
    const res = await callApi(sidecar.url!, 'ApprovalService/Approve', { id }, ADMIN_TOKEN);
    expect(res.status).toBe(200);
    // Approved: it waits for the lock, and is not sent while another call holds it.
    await until(() => lock('x').state.waiting === 1);
    expect(log('x')).not.toContain('start appr1');
    expect(await hold.done).toBe('slept a4');
    expect(await parked.done).toBe('slept appr1');
    await until(() => lock('x').state.exclusive === false);
    expect(lock('x').state).toEqual(FREE);
  });

  it('on an exclusive upstream, a call takes the lock, then waits for its turn, and runs once the turn is its', async () => {
    const other = await httpClient(sidecar.url!, agentToken(sidecar, 'a'));
    try {
      const a = slow('ex', 'a5', 15_000); // this session's turn, and the lock (shared)
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
      expect(await a.done).toBe('slept a5');
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

  it('a call the gateway gave up on keeps the lock while the upstream may still work on it', async () => {
    const a = slow('xc', 'a8', LONG);
    await until(() => log('xc').includes('start a8'));
    const series = 'agent_fabric_request_duration_seconds_count{outcome="cancelled"}';
    const cancelled = (await metricValue(sidecar, series)) || 0;
    a.abort.abort();
    expect(await a.done).toBeInstanceOf(Error);
    // The gateway ended the call (its client's promise rejects before the cancel arrives).
    await until(async () => (await metricValue(sidecar, series)) === cancelled + 1);
    // The upstream goes on with it (it ignores the cancel; the SDK then sends no answer) and may
    // still resolve its paths: the lock stays taken until its late window ends.
    expect(lock('xc').state.exclusive).toBe(true);
    await until(() => !lock('xc').state.exclusive, 60_000);
    expect(lock('xc').state).toEqual(FREE);
  }, 90_000);
});
