/**
 * A running attempt's timeout across a restart after the wall clock moved while the sidecar was
 * down. Attempts on NATS outlive the sidecar (`resumable`): restarted, it counts the attempt's
 * timeout from its start. Before, only the wall clock spanned the gap: with the clock set two
 * hours ahead, an attempt with an hour's timeout that had run a moment timed out at start; set
 * back, it could run two hours past its timeout. Now the start is moved by the step the state
 * file's clock mark tells (the boot-time clock, here the test's monotonic one, moved by
 * nothing). A step the sidecar saw while the attempt ran moved its start then (the mark
 * followed the step, so the next open moves nothing); before, it did not, and a clean restart
 * after a step ahead timed the attempt out at once. Real nats-server, real SQLite state file, the start reported through the worker's
 * link; `Date` and `performance.now` are the test's, timers real.
 */
import { join } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterEach, beforeEach, expect, it, vi } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import type { AgentRecord } from '../../src/lifecycle/lifecycle-manager.js';
import type { PoolRecord } from '../../src/pools/pool-manager.js';
import type { TaskRecord } from '../../src/scheduler/task-record.js';
import { SqliteStore } from '../../src/store/sqlite-store.js';
import type { StoreBootOptions } from '../../src/store/store-clock.js';
import { TaskStatus } from '../../src/task.js';
import { tempDir } from '../fixtures/gateway/harness.js';
import { describeNats, natsServerPerSuite } from '../fixtures/nats-server.js';
import { natsAgentSide, readyNatsAgent } from '../fixtures/nats/ready-fabric.js';

const HOUR = 60 * 60_000;
const T0 = Date.UTC(2026, 2, 2, 10, 0, 0);
const boot: StoreBootOptions = { clock: () => 1e9 + performance.now(), id: 'test-boot' };

describeNats('a running NATS attempt across a restart after the wall clock moved', () => {
  const server = natsServerPerSuite();
  let fabric: AgentFabric | undefined;
  let nc: NatsConnection | undefined;

  beforeEach(() => {
    vi.useFakeTimers({ toFake: ['Date', 'performance'] });
    vi.setSystemTime(T0);
  });
  afterEach(async () => {
    await nc?.close();
    await fabric?.close();
    nc = fabric = undefined;
    vi.useRealTimers();
  });

  const open = async (path: string, namespace: string): Promise<AgentFabric> => {
    const store = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(path, { boot });
    fabric = new AgentFabric(
      { heartbeatIntervalSeconds: 60 },
      { store, nats: { url: server().url, namespace } },
    );
    await fabric.start();
    return fabric;
  };

  /** A task with an hour's timeout, started by a worker on a sidecar over the file at `path`. */
  const started = async (path: string, namespace: string) => {
    const f = await open(path, namespace);
    nc = await connect({ servers: server().url });
    const agent = await readyNatsAgent(f);
    const task = await f.schedule({
      agentId: agent.id,
      taskType: 't',
      payload: 1,
      timeoutSeconds: 3600,
    });
    const { link, consumer } = await natsAgentSide(nc, f, agent, 1000);
    const message = link.parse((await consumer.next({ expires: 5000 }))!)!;
    expect((await link.report(message, 'start', { take: 'w1.1' }))?.ok).toBe(true);
    const running = await f.getTask(task.id);
    expect(running.status).toBe(TaskStatus.RUNNING);
    /** The worker's link closes (the attempt goes on), then the sidecar stops. */
    const stop = async (): Promise<void> => {
      await link.close(false);
      await f.close();
      fabric = undefined;
    };
    return { f, id: task.id, startedAt: running.startedAt!, stop };
  };

  /** {@link started}, then the sidecar stops. */
  const startedThenStopped = async (path: string, namespace: string) => {
    const { id, startedAt, stop } = await started(path, namespace);
    await stop();
    return { id, startedAt };
  };

  it('set ahead while down: the attempt keeps the hour its timeout had left', async () => {
    const path = join(tempDir('nats-clock-ahead'), 'state.db');
    const { id, startedAt } = await startedThenStopped(path, 'clockahead');
    vi.setSystemTime(T0 + 2 * HOUR);
    const f = await open(path, 'clockahead');
    // A timeout already run out fires on the next timer turn: give it a few.
    for (let i = 0; i < 20; i++) await new Promise((r) => setTimeout(r, 5));
    expect(await f.getTask(id)).toMatchObject({
      status: TaskStatus.RUNNING,
      attempt: 1,
      startedAt: startedAt + 2 * HOUR,
    });
  });

  it('set ahead while the sidecar ran, then a clean restart: the attempt keeps the hour its timeout had left', async () => {
    const path = join(tempDir('nats-clock-running'), 'state.db');
    const { f: f0, id, startedAt, stop } = await started(path, 'clockrun');
    // Two hours ahead while it runs; a second passes (the clocks' next check). Running, its
    // timeout counts on the monotonic clock: it goes on.
    vi.setSystemTime(Date.now() + 2 * HOUR);
    vi.advanceTimersByTime(1000);
    for (let i = 0; i < 20; i++) await new Promise((r) => setTimeout(r, 5));
    expect((await f0.getTask(id)).status).toBe(TaskStatus.RUNNING);
    await stop();
    // Restarted on the same boot, no time passed. Before, the mark followed the step and the
    // start did not: the attempt ended TIMEOUT at once.
    const f = await open(path, 'clockrun');
    for (let i = 0; i < 20; i++) await new Promise((r) => setTimeout(r, 5));
    expect(await f.getTask(id)).toMatchObject({
      status: TaskStatus.RUNNING,
      attempt: 1,
      startedAt: startedAt + 2 * HOUR,
    });
  });

  it('set back while down: its timeout still counts from when it really started', async () => {
    const path = join(tempDir('nats-clock-back'), 'state.db');
    const { id, startedAt } = await startedThenStopped(path, 'clockback');
    vi.setSystemTime(T0 - 2 * HOUR);
    const f = await open(path, 'clockback');
    expect(await f.getTask(id)).toMatchObject({
      status: TaskStatus.RUNNING,
      startedAt: startedAt - 2 * HOUR,
    });
  });
});
