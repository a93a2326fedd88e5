/**
 * A client that reads `fabric.<ns>.res.>` replays a worker's earlier `progress` report exactly
 * as it was sent (its proof valid: the same take-up, nonce and content) after a later one landed.
 * The sidecar kept no report nonces, so the replay set the running attempt's stored progress
 * back to the earlier value. Now each report of a take-up carries a `counter` under its proof
 * (1 for the start, one more for each later report): a report whose counter is below the last
 * accepted one of its take-up (overtaken: a replay, or the worker's own late re-send) is
 * answered ok, counted, and changes nothing; the last one re-sent (a worker whose answer was
 * lost) is answered ok and changes nothing.
 * The same after the sidecar restarted on its state file while the take-up ran.
 * Real nats-server, real worker transport, real SQLite state file (read back after a restart).
 */
import { join } from 'node:path';
import type { NatsConnection } from '@nats-io/transport-node';
import { expect, it } from 'vitest';
import type { AgentFabric } from '../../src/fabric.js';
import { TaskStatus } from '../../src/task.js';
import { NatsWorkerTransport } from '../../src/transport/nats/nats-worker-transport.js';
import type { HeldTask } from '../../src/worker/worker-transport.js';
import { tempDir } from '../fixtures/gateway/harness.js';
import { describeNats, natsServerPerSuite } from '../fixtures/nats-server.js';
import { openNatsFabricOn } from '../fixtures/nats/ready-fabric.js';
import { readReports } from '../fixtures/nats/report-reader.js';

/** A nats agent of `fabric`, its worker (`transport`), and a task of it the worker claimed. */
async function claimedTask(fabric: AgentFabric, nats: { url: string; namespace: string }) {
  const agent = await fabric.spawn({ name: 'w', model: 'm', executor: 'nats' });
  await fabric.natsExecutor!.consumersReady();
  const transport = await NatsWorkerTransport.connect({
    nats,
    agentId: agent.id,
    credential: agent.credential,
  });
  await transport.heartbeat();
  const task = await fabric.schedule({ agentId: agent.id, taskType: 't', payload: 1 });
  const held = await transport.claim(5);
  expect(held?.taskId).toBe(task.id);
  return { transport, task, held: held! };
}

/**
 * The worker completes `held`, once; then the sidecar is restarted on its state file (`at`) and
 * the task read back from disk, with `progress` the last one taken. Closes `transport`; returns
 * the restarted sidecar.
 */
async function completedOnDisk(
  fabric: AgentFabric,
  transport: NatsWorkerTransport,
  held: HeldTask,
  at: { path: string; nats: { url: string; namespace: string } },
  progress: unknown,
): Promise<AgentFabric> {
  await transport.complete(held, { done: true });
  const done = { status: TaskStatus.COMPLETED, attempt: 1, result: { done: true } };
  expect(await fabric.waitForTask(held.taskId, { timeoutSeconds: 10 })).toMatchObject(done);
  await transport.close();
  await fabric.close();
  const again = await openNatsFabricOn(at.path, at.nats); // what is on disk
  expect(await again.getTask(held.taskId)).toMatchObject({ ...done, progress });
  return again;
}

describeNats('NATS: an earlier progress report replayed after a later one', () => {
  const server = natsServerPerSuite();

  it('changes nothing (answered ok: a late re-send looks the same) and does not set the stored progress back', async () => {
    const ns = 'replayprog';
    const path = join(tempDir('nats-progress-replay'), 'state.db');
    const nats = { url: server().url, namespace: ns };
    let fabric = await openNatsFabricOn(path, nats);
    let transport: NatsWorkerTransport | undefined;
    let evil: NatsConnection | undefined;
    try {
      // The attacker reads every report sent to any sidecar (alone or batched).
      const reader = await readReports(nats.url, ns, fabric.natsExecutor!.sidecarId);
      evil = reader.nc;
      const { seen, send } = reader;
      let task, held;
      ({ transport, task, held } = await claimedTask(fabric, nats));
      await transport.reportProgress(held, { pct: 10 });
      await transport.reportProgress(held, { pct: 90 });
      await evil.flush();
      const progress = seen.filter((r) => r.kind === 'progress');
      expect(progress.map((r) => r.progress)).toEqual([{ pct: 10 }, { pct: 90 }]);
      expect((await fabric.getTask(task.id)).progress).toEqual({ pct: 90 });

      // The earlier progress, replayed exactly as read: ignored, the stored progress stands. It
      // is answered ok, as the worker's own late re-send of it would be (overtaken).
      const replay = await send(progress[0]!);
      expect(await fabric.getTask(task.id)).toMatchObject({
        status: TaskStatus.RUNNING,
        attempt: 1,
        progress: { pct: 90 },
      });
      expect(replay).toMatchObject({ ok: true });
      expect(fabric.natsExecutor!.stats.reportsOutOfOrder).toBe(1);
      // How: the worker numbers its take-up's reports under their proofs — start 1, then 2, 3.
      expect(seen.slice(0, 3).map((r) => [r.kind, r.counter])).toEqual([
        ['start', 1],
        ['progress', 2],
        ['progress', 3],
      ]);
      // The later one re-sent (as a worker whose answer was lost does): ok, nothing changes.
      expect(await send(progress[1]!)).toMatchObject({ ok: true });
      expect(fabric.natsExecutor!.stats.reportsOutOfOrder).toBe(1);
      // Its counter cannot be stripped: a report without one is refused, naming it (see
      // nats-counterless-report.test.ts), and with another the proof does not verify.
      const { counter: _c, ...stripped } = progress[0]!;
      expect(await send(stripped)).toMatchObject({
        ok: false,
        code: 'FABRIC_ERR_INVALID_ARGUMENT',
      });
      expect(await send({ ...progress[0]!, counter: 9 })).toMatchObject({
        ok: false,
        code: 'FABRIC_ERR_PERMISSION_DENIED',
      });
      expect((await fabric.getTask(task.id)).progress).toEqual({ pct: 90 });

      // The worker goes on: a third progress is taken, then its result, once.
      await transport.reportProgress(held, { pct: 95 });
      expect((await fabric.getTask(task.id)).progress).toEqual({ pct: 95 });
      expect(await send(progress[1]!)).toMatchObject({ ok: true });
      expect((await fabric.getTask(task.id)).progress).toEqual({ pct: 95 });
      expect(fabric.natsExecutor!.stats.reportsOutOfOrder).toBe(2);
      fabric = await completedOnDisk(fabric, transport, held, { path, nats }, { pct: 95 });
      transport = undefined;
    } finally {
      await evil?.close();
      await transport?.close();
      await fabric.close();
    }
  }, 60_000);

  // The sidecar keeps take-ups in memory only: restarted on its state file while a take-up ran,
  // it learnt none from the progress reports it heard next (only a start recorded one), so any
  // earlier progress replayed after a later one set the progress back for the rest of the
  // attempt. It now takes the first take-up it hears reporting as the attempt's own.
  it('changes nothing after a sidecar restart too, once a later report of the take-up came', async () => {
    const ns = 'replayrestart';
    const path = join(tempDir('nats-progress-replay-restart'), 'state.db');
    const nats = { url: server().url, namespace: ns };
    let fabric = await openNatsFabricOn(path, nats);
    let transport: NatsWorkerTransport | undefined;
    let evil: NatsConnection | undefined;
    try {
      let task, held;
      ({ transport, task, held } = await claimedTask(fabric, nats));

      // The sidecar restarts on its state file; the worker goes on with its take-up.
      await fabric.close();
      fabric = await openNatsFabricOn(path, nats);
      await fabric.natsExecutor!.consumersReady();
      const reader = await readReports(nats.url, ns, fabric.natsExecutor!.sidecarId);
      evil = reader.nc;
      await transport.reportProgress(held, { pct: 10 });
      await transport.reportProgress(held, { pct: 90 });
      await evil.flush();
      const progress = reader.seen.filter((r) => r.kind === 'progress');
      expect(progress.map((r) => [r.progress, r.counter])).toEqual([
        [{ pct: 10 }, 2],
        [{ pct: 90 }, 3],
      ]);
      expect((await fabric.getTask(task.id)).progress).toEqual({ pct: 90 });

      // The earlier progress, replayed exactly as read: ignored, the stored progress stands.
      const replay = await reader.send(progress[0]!);
      expect(replay).toMatchObject({ ok: true });
      expect(fabric.natsExecutor!.stats.reportsOutOfOrder).toBe(1);
      expect((await fabric.getTask(task.id)).progress).toEqual({ pct: 90 });
      // The last one re-sent: ok, nothing changes.
      expect(await reader.send(progress[1]!)).toMatchObject({ ok: true });
      fabric = await completedOnDisk(fabric, transport, held, { path, nats }, { pct: 90 });
      transport = undefined;
    } finally {
      await evil?.close();
      await transport?.close();
      await fabric.close();
    }
  }, 60_000);
});
