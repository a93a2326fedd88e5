/**
 * Reports over NATS whose JSON nests too deep for the state store: a `complete` whose result
 * nests deeper than the store keeps fails the task with FABRIC_ERR_INVALID_ARGUMENT, and is
 * answered so (it used to be committed, and the next start of the sidecar refused the state file); a `fail` whose
 * `error.details` cannot be stored is stored without them (it used to be answered ok and never
 * written: after a restart the task was RUNNING again). Real nats-server, real SQLite state
 * file; what a restarted fabric reads back is checked.
 */
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { connect } from '@nats-io/transport-node';
import type { AgentFabric } from '../../src/fabric.js';
import { hashCredential } from '../../src/lifecycle/lifecycle-manager.js';
import { TaskStatus } from '../../src/task.js';
import { decodeJson, reportProof, type TaskMessage } from '../../src/transport/nats/wire.js';
import { tempDir } from '../fixtures/gateway/harness.js';
import { describeNats, natsServerPerSuite } from '../fixtures/nats-server.js';
import { natsAgentSide, openNatsFabricOn, readyNatsAgent } from '../fixtures/nats/ready-fabric.js';

describeNats('NATS reports too deep for the state store', () => {
  const server = natsServerPerSuite();

  it('fails a too-deep result and keeps a failure without its unstorable details, across a restart', async () => {
    const path = join(tempDir('nats-deep'), 'state.db');
    const nats = { url: server().url, namespace: 'deep' };
    const open = (): Promise<AgentFabric> => openNatsFabricOn(path, nats);
    let fabric = await open();
    const nc = await connect({ servers: nats.url });
    try {
      const agent = await readyNatsAgent(fabric);
      const { link, consumer } = await natsAgentSide(nc, fabric, agent, 2000);
      const pull = async () => {
        const m = (await consumer.next({ expires: 5000 }))!;
        const message = link.parse(m)!;
        expect((await link.report(message, 'start', { take: 't1' }))?.ok).toBe(true);
        return { m, message, msg: decodeJson(m.data) as TaskMessage };
      };

      // A result nested deeper than the store keeps, with a run of 16 digits in it.
      const deepTask = await fabric.schedule({ agentId: agent.id, taskType: 't', payload: 1 });
      const one = await pull();
      let result: unknown = 0.1234567890123456;
      for (let i = 0; i < 300; i++) result = [result];
      // The worker is told: refused, with the reason, and the task failed instead.
      const refused = await link.report(one.message, 'complete', { result });
      expect(refused).toMatchObject({ ok: false, code: 'FABRIC_ERR_INVALID_ARGUMENT' });
      expect(refused?.ok === false && refused.message).toMatch(
        /nests deeper than 256 levels.*; the task failed instead$/,
      );
      expect(await fabric.getTask(deepTask.id)).toMatchObject({
        status: TaskStatus.FAILED,
        error: { code: 'FABRIC_ERR_INVALID_ARGUMENT' },
      });
      one.m.ack();

      // A failure whose details nest deeper than JSON.stringify goes (built by hand).
      const failTask = await fabric.schedule({ agentId: agent.id, taskType: 't', payload: 2 });
      const two = await pull();
      const { msg } = two;
      const ids = {
        kind: 'fail' as const,
        taskId: msg.taskId,
        attempt: msg.attempt,
        lease: msg.lease,
        agentId: agent.id,
        take: 't1',
        counter: 2, // after the link's start (1)
      };
      const n = 200_000;
      const error = `{"code":"E","message":"boom","details":{"d":${'['.repeat(n)}${']'.repeat(n)}}}`;
      // The proof covers the error too: its digest is of the canonical JSON of the value read.
      const proof = reportProof(hashCredential(agent.credential), {
        ...ids,
        error: JSON.parse(error) as { code: string; message: string },
      });
      const head = JSON.stringify({ ...ids, proof }).slice(0, -1);
      const body = `${head},"error":${error}}`;
      const reply = await nc.request(msg.replyTo, new TextEncoder().encode(body), {
        timeout: 5000,
      });
      expect(decodeJson(reply.data)).toEqual({ ok: true, mac: expect.any(String) });
      two.m.ack();
      await link.close(false);

      await fabric.close();
      fabric = await open();
      expect(await fabric.getTask(deepTask.id)).toMatchObject({
        status: TaskStatus.FAILED,
        error: { code: 'FABRIC_ERR_INVALID_ARGUMENT' },
      });
      const failed = await fabric.getTask(failTask.id);
      expect(failed).toMatchObject({
        status: TaskStatus.FAILED,
        attempt: 1,
        error: { code: 'E', message: 'boom' },
      });
      expect(failed.error!.details!.notKept).toMatch(/^error\.details were not kept/);
    } finally {
      await fabric.close();
      await nc.close();
    }
  });
});
