/**
 * A client that reads `fabric.<ns>.res.>` keeps a worker's earlier `progress` report. The
 * sidecar is killed and started again on its state file while the take-up runs, and the
 * replayed report is the first of the take-up it hears: it kept take-ups and their counters in
 * memory only, so it took the replay as the take-up's latest and set the stored progress back
 * (to stay there if the worker's next report was its result). Now the take-up and counter of the
 * last progress applied are written with the task (`report_mark`, in the same write as the
 * progress): after the restart, the replay is below it — answered ok, nothing changes — and a
 * report of another take-up of the attempt is stale.
 * Real nats-server, the real `agent-fabric serve` on a SQLite state file (SIGKILLed, started
 * again on it), the real worker transport; the progress read from the file.
 */
import Database from 'better-sqlite3';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, expect, it } from 'vitest';
import { hashCredential } from '../../src/lifecycle/lifecycle-manager.js';
import type { NatsWorkerTransport } from '../../src/transport/nats/nats-worker-transport.js';
import { reportProof } from '../../src/transport/nats/wire.js';
import { natsNames } from '../../src/transport/nats/subjects.js';
import { until } from '../fixtures/gateway/harness.js';
import { describeNats, natsServerPerSuite } from '../fixtures/nats-server.js';
import {
  api,
  connectWhenAnswered,
  natsSidecarWithAgent,
  onDisk,
} from '../fixtures/nats/state-sidecar.js';
import { cleanUp, serve, stop } from '../fixtures/state/serve.js';

afterAll(cleanUp);

/** The stored progress and report mark of task `id` (read beside the sidecar). */
function storedProgress(path: string, id: string): { progress: unknown; mark: unknown } {
  const db = new Database(path, { readonly: true, fileMustExist: true });
  try {
    const row = db.prepare('SELECT progress, report_mark FROM tasks WHERE id = ?').get(id) as {
      progress: string | null;
      report_mark: string | null;
    };
    return {
      progress: row.progress === null ? undefined : (JSON.parse(row.progress) as unknown),
      mark: row.report_mark,
    };
  } finally {
    db.close();
  }
}

describeNats('NATS: an earlier progress replayed to a sidecar restarted on its state file', () => {
  const server = natsServerPerSuite();

  it('changes nothing when it is the first report of the take-up the restarted sidecar hears', async () => {
    const nats = { url: server().url, namespace: 'replayfirst' };
    const set = await natsSidecarWithAgent({
      nats,
      ackWaitSeconds: 30,
      fabric: { heartbeatIntervalSeconds: 60 },
    });
    const { dir, statePath, agentId, credential } = set;
    let sidecar = set.sidecar;
    let transport: NatsWorkerTransport | undefined;
    let evil: NatsConnection | undefined;
    try {
      // The attacker reads every report sent to any sidecar of the namespace.
      evil = await connect({ servers: nats.url });
      const seen: { subject: string; body: Record<string, unknown> }[] = [];
      evil.subscribe(natsNames(nats.namespace).results('*'), {
        callback: (_e, m) => {
          const body = m.json<Record<string, unknown>>();
          const all = Array.isArray(body.reports) ? (body.reports as (typeof body)[]) : [body];
          for (const b of all) seen.push({ subject: m.subject, body: b });
        },
      });
      await evil.flush();

      transport = await connectWhenAnswered({ nats, agentId, credential });
      await transport.heartbeat();
      const { task } = await api<{ task: { taskId: string } }>(
        sidecar.url,
        'FabricService/ScheduleTask',
        { agentId, taskType: 't', payload: 1 },
      );
      const held = (await transport.claim(5))!;
      expect(held.taskId).toBe(task.taskId);
      await transport.reportProgress(held, { pct: 10 });
      await transport.reportProgress(held, { pct: 90 });
      await evil.flush();
      const progress = seen.filter((s) => s.body.kind === 'progress');
      expect(progress.map((s) => [s.body.progress, s.body.counter])).toEqual([
        [{ pct: 10 }, 2],
        [{ pct: 90 }, 3],
      ]);
      // On disk with the progress: the take-up's attempt, counter and id.
      expect(storedProgress(statePath, task.taskId)).toEqual({
        progress: { pct: 90 },
        mark: `1:3:${String(progress[1]!.body.take)}`,
      });

      expect(await stop(sidecar, 'SIGKILL')).toBeNull();
      sidecar = await serve(dir);

      /** Sends `body` to the restarted sidecar once it listens; its answer. */
      const send = async (body: Record<string, unknown>) => {
        let answer: Record<string, unknown> | undefined;
        await until(async () => {
          try {
            const m = await evil!.request(progress[0]!.subject, JSON.stringify(body), {
              timeout: 2000,
            });
            answer = m.json<Record<string, unknown>>();
            return true;
          } catch {
            return false; // not subscribed yet
          }
        }, 20_000);
        return answer;
      };
      // A progress of another take-up of the attempt (signed with the agent's credential) is
      // the first report the restarted sidecar hears: not the take-up that ran it, so stale.
      const other: Record<string, unknown> = {
        ...progress[1]!.body,
        take: 'another-take',
        counter: 9,
        progress: { pct: 1 },
      };
      delete other.proof;
      const signed = { ...other, proof: reportProof(hashCredential(credential), other as never) };
      expect(await send(signed)).toMatchObject({ ok: false, code: 'FABRIC_ERR_TASK_STATE' });
      expect(storedProgress(statePath, task.taskId).progress).toEqual({ pct: 90 });

      // The earlier progress, replayed exactly as read: answered ok (as a late re-send is),
      // nothing changes.
      expect(await send(progress[0]!.body)).toMatchObject({ ok: true });
      expect(storedProgress(statePath, task.taskId).progress).toEqual({ pct: 90 });
      const { task: read } = await api<{ task: { status: string; progress: unknown } }>(
        sidecar.url,
        'FabricService/GetTask',
        { taskId: task.taskId },
      );
      expect(read).toMatchObject({ status: 'TASK_STATUS_RUNNING', progress: { pct: 90 } });

      // The worker goes on with its take-up: its result lands, the progress stands.
      await transport.complete(held, { done: true });
      await until(() => onDisk(statePath).get(task.taskId)?.status === 'COMPLETED', 20_000);
      expect(onDisk(statePath).get(task.taskId)).toMatchObject({
        attempt: 1,
        result: { done: true },
      });
      expect(storedProgress(statePath, task.taskId).progress).toEqual({ pct: 90 });
    } finally {
      await evil?.close();
      await transport?.close();
      await stop(sidecar, 'SIGTERM');
    }
  }, 90_000);
});
