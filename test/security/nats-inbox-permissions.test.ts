/**
 * The NATS permission the README gives for forged report answers. An answer's MAC is keyed by the
 * attempt's lease, and a worker of another agent of the same pool reads leases as a matter of
 * course (it pulls the pool's consumer): no read permission keeps it from forging an answer, only
 * being denied publishing on other clients' inboxes. The README says to allow publishing on
 * `_INBOX.>` to the sidecars only, and that workers need not publish there.
 *
 * Against a real nats-server with that authorization: a `NatsWorker` connected as a worker user
 * runs its pool's tasks to completion (nothing it needs is denied), while a fellow pool worker
 * (the same permissions) that pulled a message — so holds its lease and can sign a refusal of
 * its start — cannot get a signed answer onto any inbox.
 */
import { jetstream } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import { TaskStatus } from '../../src/task.js';
import { NatsWorker } from '../../src/transport/nats/nats-worker.js';
import { natsNames } from '../../src/transport/nats/subjects.js';
import type { TaskMessage } from '../../src/transport/nats/wire.js';
import { decodeJson, encodeJson, signedReportAnswer } from '../../src/transport/nats/wire.js';
import { until } from '../fixtures/gateway/harness.js';
import { describeNats, startNatsServer } from '../fixtures/nats-server.js';

const NS = 'perm';
const POOL = 'p';
const AUTHORIZATION = `
authorization {
  users = [
    { user: sidecar, password: sidecar-pass }
    { user: worker, password: worker-pass, permissions: { publish: { deny: ["_INBOX.>"] } } }
  ]
}
`;

describeNats('NATS: workers denied publishing on inboxes', () => {
  it('run their tasks, and a fellow pool worker holding a lease cannot answer for the sidecar', async () => {
    const server = await startNatsServer({ config: AUTHORIZATION });
    const url = server.url;
    const asWorker = { url, namespace: NS, user: 'worker', password: 'worker-pass' };
    const fabric = new AgentFabric(
      { heartbeatIntervalSeconds: 60, defaultTimeoutSeconds: 20 },
      { nats: { url, namespace: NS, user: 'sidecar', password: 'sidecar-pass' } },
    );
    const observer = await connect({ servers: url, user: 'sidecar', pass: 'sidecar-pass' });
    const mate = await connect({ servers: url, user: 'worker', pass: 'worker-pass' });
    let worker: NatsWorker | undefined;
    const stop = new AbortController();
    let running: Promise<unknown> | undefined;
    try {
      await fabric.start();
      await fabric.createPool({ poolId: POOL, model: 'm', executor: 'nats', minAgents: 0 });
      const agent = await fabric.spawn({ name: 'w', model: 'm', executor: 'nats', poolId: POOL });
      const other = await fabric.spawn({ name: 'o', model: 'm', executor: 'nats', poolId: POOL });
      await fabric.natsExecutor!.consumersReady();
      await fabric.heartbeat(other.id);

      // The fellow pool worker takes the pool's first task up, for its lease, and gives it back.
      const first = await fabric.scheduleToPool(POOL, 'double', 1);
      const consumer = await jetstream(mate).consumers.get(
        natsNames(NS).stream,
        natsNames(NS).poolConsumer(POOL),
      );
      const m = await consumer.next({ expires: 5000 });
      expect(m).not.toBeNull();
      const msg = decodeJson(m!.data) as TaskMessage;
      expect(msg.taskId).toBe(first.id);
      m!.nak();
      // What it would answer a start with, signed under the lease: to no inbox it may publish on.
      const seen: string[] = [];
      observer.subscribe('_INBOX.forged.>', { callback: (_e, x) => void seen.push(x.subject) });
      await observer.flush();
      const forged = signedReportAnswer(
        {
          kind: 'start',
          agentId: agent.id,
          taskId: msg.taskId,
          attempt: msg.attempt,
          lease: msg.lease,
        },
        { ok: false, code: 'FABRIC_ERR_TASK_STATE', message: 'forged' },
      );
      mate.publish('_INBOX.forged.mate', encodeJson(forged));
      await mate.flush();
      observer.publish('_INBOX.forged.sidecar', encodeJson({}));
      await observer.flush();
      expect(seen).toEqual(['_INBOX.forged.sidecar']);

      // The worker, with the same permissions, runs the pool's tasks: nothing it needs is denied.
      worker = await NatsWorker.connect({
        nats: asWorker,
        agentId: agent.id,
        credential: agent.credential,
        poolId: POOL,
        heartbeatSeconds: 0.5,
      });
      running = worker.run({ double: (p) => (p as number) * 2 }, { signal: stop.signal });
      const second = await fabric.scheduleToPool(POOL, 'double', 2);
      const done = await Promise.all(
        [first, second].map((t) => fabric.waitForTask(t.id, { timeoutSeconds: 15 })),
      );
      expect(done.map((t) => [t.status, t.result])).toEqual([
        [TaskStatus.COMPLETED, 2],
        [TaskStatus.COMPLETED, 4],
      ]);
      // Its outcomes' answers reached it (the worker counts them once they come).
      await until(() => worker!.stats.completed === 2, 10_000);
      expect(worker.stats.refused).toBe(0);
    } finally {
      stop.abort();
      await running;
      await worker?.close();
      await mate.close();
      await observer.close();
      await fabric.close();
      await server.close();
    }
  });
});
