/**
 * A worker written before reports carried a take-up `counter` (or that leaves out its `take`)
 * signs its reports without one, and the sidecar took them: such a worker's `progress` had no
 * replay protection, so a client reading `fabric.<ns>.res.>` replayed an earlier progress after a
 * later one, exactly as read off the wire, and set the task's stored progress back.
 *
 * Now every report must carry `take` and `counter` (every worker the repo ships sends both): a
 * report without them is refused `FABRIC_ERR_INVALID_ARGUMENT` naming the missing field, under
 * the lease it carries (its worker can check the refusal), and changes nothing — the message
 * stays with the worker, which, upgraded, still starts and finishes the task.
 * Real nats-server, real sidecar on a SQLite state file (read back from disk), a raw NATS worker.
 */
import { join } from 'node:path';
import type { NatsConnection } from '@nats-io/transport-node';
import { expect, it } from 'vitest';
import { TaskStatus } from '../../src/task.js';
import { genuineReportAnswer } from '../../src/transport/nats/wire.js';
import { tempDir } from '../fixtures/gateway/harness.js';
import { describeNats, natsServerPerSuite } from '../fixtures/nats-server.js';
import { holdMessage, openNatsFabricOn, readyNatsAgent } from '../fixtures/nats/ready-fabric.js';
import { readReports, type Body } from '../fixtures/nats/report-reader.js';

/** `answer` as its worker reads it: its MAC under the report's lease checked. */
function checked(answer: unknown, report: Body) {
  return genuineReportAnswer(answer, report as Parameters<typeof genuineReportAnswer>[1]);
}

describeNats('NATS: a report without a take-up counter', () => {
  const server = natsServerPerSuite();

  it('is refused naming the field; a replay of it off the wire changes nothing on disk', async () => {
    const ns = 'nocounter';
    const path = join(tempDir('nats-counterless'), 'state.db');
    const nats = { url: server().url, namespace: ns };
    let fabric = await openNatsFabricOn(path, nats);
    let worker: NatsConnection | undefined;
    let evil: NatsConnection | undefined;
    try {
      const agent = await readyNatsAgent(fabric);
      const names = fabric.natsExecutor!.names;
      const reader = await readReports(nats.url, ns, fabric.natsExecutor!.sidecarId);
      evil = reader.nc;
      const task = await fabric.schedule({ agentId: agent.id, taskType: 't', payload: 1 });
      // An older worker (any language) holds the task's message and signs its reports validly,
      // without a counter.
      const held = await holdMessage(nats.url, names.stream, names.agentConsumer(agent.id));
      worker = held.nc;
      expect(held.msg.taskId).toBe(task.id);
      const as = (kind: 'start' | 'progress', extra: object) =>
        held.signed(agent.id, agent.credential, kind, {
          take: 'old.1',
          counter: undefined,
          ...extra,
        });
      const start = as('start', { seq: held.m.seq, nonce: 's' });
      const p10 = as('progress', { nonce: 'p1', progress: { pct: 10 } });
      const p90 = as('progress', { nonce: 'p2', progress: { pct: 90 } });
      const refused = {
        ok: false,
        code: 'FABRIC_ERR_INVALID_ARGUMENT',
        message: expect.stringMatching(/^report\.counter is required: /),
      };
      for (const r of [start, p10, p90]) {
        expect(JSON.parse(JSON.stringify(r))).not.toHaveProperty('counter');
        expect(checked(await held.report(r), r)).toEqual(refused);
      }
      // Without its take-up as well: both named.
      const { take: _t, ...noTake } = p10;
      expect(checked(await held.report(noTake), noTake)).toEqual({
        ...refused,
        message: expect.stringMatching(/^report\.take and report\.counter is required: /),
      });
      // The attacker replays the earlier progress exactly as read off the wire: refused too.
      await evil.flush();
      const seen = reader.seen.filter((r) => r.kind === 'progress' && r.take === 'old.1');
      expect(seen.map((r) => r.progress)).toEqual([{ pct: 10 }, { pct: 90 }]);
      expect(await reader.send(seen[0]!)).toMatchObject(refused);
      expect(fabric.natsExecutor!.stats.reportsOutOfOrder).toBe(0);
      const untouched = { status: TaskStatus.SCHEDULED, attempt: 1, progress: undefined };
      expect(await fabric.getTask(task.id)).toMatchObject(untouched);

      // Read back from the state file: nothing of it was kept.
      await fabric.close();
      fabric = await openNatsFabricOn(path, nats);
      await fabric.natsExecutor!.consumersReady();
      expect(await fabric.getTask(task.id)).toMatchObject(untouched);

      // Nothing was lost: the message is still the worker's, and upgraded (numbering its
      // reports) it starts and finishes the task, once.
      const up = (kind: 'start' | 'progress' | 'complete', counter: number, extra: object) =>
        held.signed(agent.id, agent.credential, kind, { take: 'new.1', counter, ...extra });
      expect(await held.report(up('start', 1, { seq: held.m.seq }))).toMatchObject({ ok: true });
      expect(await held.report(up('progress', 2, { progress: { pct: 50 } }))).toMatchObject({
        ok: true,
      });
      expect(await held.report(up('complete', 3, { result: 'done' }))).toMatchObject({ ok: true });
      const done = await fabric.waitForTask(task.id, { timeoutSeconds: 10 });
      expect(done).toMatchObject({ status: TaskStatus.COMPLETED, attempt: 1, result: 'done' });
    } finally {
      await evil?.close();
      await worker?.close();
      await fabric.close();
    }
  }, 60_000);
});
