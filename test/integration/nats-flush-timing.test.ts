/**
 * When a sidecar's task publishes leave (`TurnFlush`), against a real nats-server: handed to
 * the connection once the microtask queue they were dispatched in has run — together with
 * everything else dispatched in it, in one write — and not at the end of the event-loop turn,
 * after the turn's other I/O callbacks (observed as: before a `setImmediate` queued earlier);
 * a second flush in the same turn waits for its end; never before the store's commit queued
 * ahead of the dispatch. No timings are asserted, only order.
 */
import { expect, it } from 'vitest';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { NatsExecutor } from '../../src/transport/nats/nats-executor.js';
import { parseNatsOptions } from '../../src/transport/nats/nats-options.js';
import { until } from '../fixtures/gateway/harness.js';
import { describeNats, natsServerPerSuite } from '../fixtures/nats-server.js';

/** Records `label` whenever `nc` is handed a publish whose subject contains `part`. */
function spyPublish(nc: NatsConnection, part: string, order: string[], label: string): void {
  const publish = nc.publish.bind(nc);
  nc.publish = (subject, ...rest) => {
    if (subject.includes(part)) order.push(label);
    publish(subject, ...rest);
  };
}

describeNats('NATS publish flush timing', () => {
  const server = natsServerPerSuite();

  it('publishes the tasks dispatched in one microtask run together, before the turn’s end', async () => {
    const nc = await connect({ servers: server().url });
    const exec = new NatsExecutor(parseNatsOptions({ url: server().url, namespace: 'flush' }), {
      ackWaitMs: 30_000,
    });
    exec.setHost({
      task: () => ({
        attempt: 1,
        dispatched: true,
        started: false,
        dispatchedAt: Date.now(),
        agentId: 'a1',
        poolId: undefined,
        maxAttempts: 3,
      }),
      credentialHash: () => undefined,
      agentPool: () => undefined,
    });
    exec.bind({ complete() {}, fail() {}, started() {}, progress() {} });
    await exec.start(nc);
    // What start() dispatched (nothing) is out, and its turn is over.
    await new Promise((r) => setImmediate(r));
    await new Promise((r) => setImmediate(r));
    const order: string[] = [];
    spyPublish(nc, '.task.', order, 'publish');
    const assignment = (taskId: string) => ({
      taskId,
      attempt: 1,
      agentId: 'a1',
      taskType: 't',
      payload: null,
      deadline: undefined,
      timeoutSeconds: 30,
    });
    setImmediate(() => order.push('immediate'));
    // As the scheduler does: each dispatch from a microtask, after the store's commit of its
    // attempt was queued (the publish must follow the commit).
    queueMicrotask(() => {
      queueMicrotask(() => order.push('commit t1'));
      exec.dispatch([assignment('t1')]);
      void Promise.resolve().then(() => {
        queueMicrotask(() => order.push('commit t2'));
        exec.dispatch([assignment('t2')]);
      });
    });
    await until(() => order.length === 5, 5000);
    expect(order).toEqual(['commit t1', 'commit t2', 'publish', 'publish', 'immediate']);
    await until(() => exec.stats.published === 2, 5000);
    // Dispatched outside a microtask (a timer's callback): still after the commit queued first.
    order.length = 0;
    setTimeout(() => {
      queueMicrotask(() => order.push('commit t3'));
      exec.dispatch([assignment('t3')]);
    }, 0);
    await until(() => order.length === 2, 5000);
    expect(order).toEqual(['commit t3', 'publish']);
    await until(() => exec.stats.published === 3, 5000);

    // A second flush in the same turn (another I/O callback of the same phase, at a high rate)
    // waits for the turn's end, with whatever else that turn dispatches.
    await new Promise((r) => setImmediate(r));
    order.length = 0;
    setImmediate(() => {
      order.push('A');
      exec.dispatch([assignment('t4')]);
    });
    setImmediate(() => {
      order.push('B');
      setImmediate(() => order.push('after B'));
      exec.dispatch([assignment('t5')]);
    });
    await until(() => order.length === 5, 5000);
    expect(order).toEqual(['A', 'publish', 'B', 'after B', 'publish']);
    await until(() => exec.stats.published === 5, 5000);
    await exec.close();
    await nc.close();
  });
});
