/**
 * A worker's outcome sent again for the same attempt. When the sidecar that committed a
 * `complete` is killed before its answer leaves, the worker retries the report to the restarted
 * sidecar — which used to answer it as stale (the attempt had ended), so the worker counted a
 * refusal for a task that ended with its own result (`nats-sidecar-kill` failed on that count
 * under load). The same outcome of the same attempt is now answered ok and changes nothing; a
 * different outcome, or another attempt's, is still refused. Real nats-server, reports signed
 * as a worker signs them.
 */
import { expect, it } from 'vitest';
import { TaskStatus } from '../../src/task.js';
import { natsNames } from '../../src/transport/nats/subjects.js';
import { describeNats, startNatsServer } from '../fixtures/nats-server.js';
import { holdMessage, readyNatsFabric } from '../fixtures/nats/ready-fabric.js';

describeNats('NATS: the same outcome reported again', () => {
  it('is answered ok and changes nothing; another outcome or attempt is refused', async () => {
    const server = await startNatsServer();
    const ns = 'again';
    const { fabric, agent } = await readyNatsFabric(server.url, ns);
    try {
      const task = await fabric.schedule({ agentId: agent.id, taskType: 't', payload: 1 });
      const names = natsNames(ns);
      const { nc, m, report, signed } = await holdMessage(
        server.url,
        names.stream,
        names.agentConsumer(agent.id),
      );
      const as = (kind: 'start' | 'complete' | 'fail', extra: object = {}) =>
        report(signed(agent.id, agent.credential, kind, extra));
      expect(await as('start', { take: 'k' })).toEqual({ ok: true, mac: expect.any(String) });
      expect(await as('complete', { take: 'k', result: 'first' })).toEqual({
        ok: true,
        mac: expect.any(String),
      });
      expect(await fabric.getTask(task.id)).toMatchObject({
        status: TaskStatus.COMPLETED,
        result: 'first',
      });
      // Again, as a retry after a lost answer: ok, and the stored result is the first one.
      expect(await as('complete', { result: 'first' })).toEqual({
        ok: true,
        mac: expect.any(String),
      });
      expect(await as('complete', { result: 'other' })).toEqual({
        ok: true,
        mac: expect.any(String),
      });
      expect((await fabric.getTask(task.id)).result).toBe('first');
      // Another outcome of that attempt, or another attempt: stale.
      expect(await as('fail', { error: { code: 'X', message: 'late' } })).toMatchObject({
        ok: false,
        code: 'FABRIC_ERR_TASK_STATE',
      });
      expect(
        await report({
          ...signed(agent.id, agent.credential, 'complete', { result: 'x' }),
          attempt: 2,
        }),
      ).toMatchObject({ ok: false });
      expect(await fabric.getTask(task.id)).toMatchObject({
        status: TaskStatus.COMPLETED,
        result: 'first',
      });
      m.ack();
      await nc.close();
    } finally {
      await fabric.close();
      await server.close();
    }
  });
});
