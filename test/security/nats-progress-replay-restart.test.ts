/**
 * The report `counter` after the sidecar restarted on its state file while a take-up ran: the
 * sidecar keeps take-ups in memory only, so before the fix it learnt none from the progress
 * reports it heard after the restart (only a `start` recorded one) and a reader of `res.>` could
 * replay any earlier progress of that take-up after a later one, setting the progress back.
 * Real nats-server, real worker transport, real SQLite state file (read back after a restart).
 */
import { join } from 'node:path';
import type { NatsConnection } from '@nats-io/transport-node';
import { expect, it } from 'vitest';
import { TaskStatus } from '../../src/task.js';
import { NatsWorkerTransport } from '../../src/transport/nats/nats-worker-transport.js';
import { tempDir } from '../fixtures/gateway/harness.js';
import { describeNats, natsServerPerSuite } from '../fixtures/nats-server.js';
import { openNatsFabricOn } from '../fixtures/nats/ready-fabric.js';
import { readReports } from '../fixtures/nats/report-reader.js';

describeNats('NATS: a progress replayed after a sidecar restart', () => {
  const server = natsServerPerSuite();

  it('is refused once the restarted sidecar heard a later report of the take-up', async () => {
    const ns = 'replayrestart';
    const path = join(tempDir('nats-progress-replay-restart'), 'state.db');
    const nats = { url: server().url, namespace: ns };
    let fabric = await openNatsFabricOn(path, nats);
    let transport: NatsWorkerTransport | undefined;
    let evil: NatsConnection | undefined;
    try {
      const agent = await fabric.spawn({ name: 'w', model: 'm', executor: 'nats' });
      await fabric.natsExecutor!.consumersReady();
      transport = await NatsWorkerTransport.connect({
        nats,
        agentId: agent.id,
        credential: agent.credential,
      });
      await transport.heartbeat();
      const task = await fabric.schedule({ agentId: agent.id, taskType: 't', payload: 1 });
      const held = await transport.claim(5);
      expect(held?.taskId).toBe(task.id);

      // The sidecar restarts on its state file; the worker goes on with its take-up.
      await fabric.close();
      fabric = await openNatsFabricOn(path, nats);
      await fabric.natsExecutor!.consumersReady();
      const reader = await readReports(nats.url, ns, fabric.natsExecutor!.sidecarId);
      evil = reader.nc;
      await transport.reportProgress(held!, { pct: 10 });
      await transport.reportProgress(held!, { pct: 90 });
      await evil.flush();
      const progress = reader.seen.filter((r) => r.kind === 'progress');
      expect(progress.map((r) => [r.progress, r.counter])).toEqual([
        [{ pct: 10 }, 2],
        [{ pct: 90 }, 3],
      ]);
      expect((await fabric.getTask(task.id)).progress).toEqual({ pct: 90 });

      // The earlier progress, replayed exactly as read: refused, the stored progress stands.
      const replay = await reader.send(progress[0]!);
      expect(replay).toMatchObject({ ok: false, code: 'FABRIC_ERR_TASK_STATE' });
      expect(fabric.natsExecutor!.stats.reportsOutOfOrder).toBe(1);
      expect((await fabric.getTask(task.id)).progress).toEqual({ pct: 90 });
      // The last one re-sent: ok, nothing changes; the worker's result is taken once.
      expect(await reader.send(progress[1]!)).toMatchObject({ ok: true });
      await transport.complete(held!, { done: true });
      expect(await fabric.waitForTask(task.id, { timeoutSeconds: 10 })).toMatchObject({
        status: TaskStatus.COMPLETED,
        attempt: 1,
        result: { done: true },
      });
      await transport.close();
      transport = undefined;
      await fabric.close();
      fabric = await openNatsFabricOn(path, nats); // what is on disk
      expect(await fabric.getTask(task.id)).toMatchObject({
        status: TaskStatus.COMPLETED,
        attempt: 1,
        progress: { pct: 90 },
        result: { done: true },
      });
    } finally {
      await evil?.close();
      await transport?.close();
      await fabric.close();
    }
  }, 60_000);
});
