/**
 * A worker's report proof replayed by a client that reads `fabric.<ns>.res.>` (other workers'
 * reports). The proof was HMAC(key, `<kind>:<agentId>:<taskId>:<attempt>`): it covered neither
 * the take-up, nor the report's nonce, nor its content. So such a client could (a) take a
 * worker's `start` and send a start of another take-up under its proof — the sidecar counted the
 * running attempt lost and queued the task again (run twice) — and (b) take one `progress` and
 * send any progress of that attempt, stored as the task's.
 *
 * Now the proof covers the take-up, the copy taken up, the nonce and a digest of the content:
 * both forgeries are refused (`FABRIC_ERR_PERMISSION_DENIED`, "its proof is wrong") and change
 * nothing; a worker still signing the old way is refused with that code and told why. The
 * attacker holds no credential: it only reads `res.>` (with the leases in the reports) and
 * publishes there. Real nats-server, real SQLite state file (read back after the fabric closes).
 */
import { createHmac } from 'node:crypto';
import { join } from 'node:path';
import type { NatsConnection } from '@nats-io/transport-node';
import { expect, it } from 'vitest';
import { hashCredential } from '../../src/lifecycle/lifecycle-manager.js';
import { TaskStatus } from '../../src/task.js';
import { NatsWorkerTransport } from '../../src/transport/nats/nats-worker-transport.js';
import { tempDir } from '../fixtures/gateway/harness.js';
import { describeNats, startNatsServer } from '../fixtures/nats-server.js';
import { openNatsFabricOn } from '../fixtures/nats/ready-fabric.js';
import { readReports } from '../fixtures/nats/report-reader.js';

describeNats("NATS: a report's proof replayed with another take-up or content", () => {
  it('a start of another take-up and a forged progress under a read proof are refused and change nothing', async () => {
    const server = await startNatsServer();
    const ns = 'proof';
    const path = join(tempDir('nats-proof'), 'state.db');
    const nats = { url: server.url, namespace: ns };
    let fabric = await openNatsFabricOn(path, nats);
    let transport: NatsWorkerTransport | undefined;
    let evil: NatsConnection | undefined;
    try {
      const agent = await fabric.spawn({ name: 'w', model: 'm', executor: 'nats' });
      await fabric.natsExecutor!.consumersReady();

      // The attacker reads every report sent to any sidecar (alone or batched).
      const reader = await readReports(server.url, ns, fabric.natsExecutor!.sidecarId);
      evil = reader.nc;
      const { seen, send } = reader;
      const refused = { ok: false, code: 'FABRIC_ERR_PERMISSION_DENIED' };

      transport = await NatsWorkerTransport.connect({
        nats,
        agentId: agent.id,
        credential: agent.credential,
      });
      await transport.heartbeat(); // the agent is up: its task is dispatched
      const task = await fabric.schedule({
        agentId: agent.id,
        taskType: 't',
        payload: 1,
        maxAttempts: 3,
      });
      const held = await transport.claim(5);
      expect(held?.taskId).toBe(task.id);
      await evil.flush();
      const start = seen.find((r) => r.kind === 'start')!;
      expect(start).toMatchObject({ taskId: task.id, attempt: 1, agentId: agent.id });

      // (a) The worker's start as another take-up's (a fresh take and nonce, as a second take-up
      // after AckWait would send): it used to end attempt 1 as lost and queue attempt 2.
      expect(await send({ ...start, take: 'evil-take', nonce: 'evil-1' })).toMatchObject(refused);
      expect(await send({ ...start, take: 'evil-take' })).toMatchObject(refused);
      // Another copy of the message (another stream sequence) under the same proof: refused too.
      expect(await send({ ...start, seq: (start.seq as number) + 1 })).toMatchObject(refused);
      let t = await fabric.getTask(task.id);
      expect(t).toMatchObject({ status: TaskStatus.RUNNING, attempt: 1 });

      // (b) One genuine progress, then other progress under its proof (the same take-up and
      // nonce, and a fresh nonce): refused, the stored progress is the worker's.
      await transport.reportProgress(held!, { step: 1 });
      await evil.flush();
      const progress = seen.find((r) => r.kind === 'progress')!;
      expect(progress.progress).toEqual({ step: 1 });
      expect(await send({ ...progress, progress: { step: 'forged' } })).toMatchObject(refused);
      expect(await send({ ...progress, progress: { step: 1, extra: true } })).toMatchObject(
        refused,
      );
      expect(await send({ ...progress, nonce: 'evil-2', progress: 100 })).toMatchObject(refused);
      // Nor can it turn the progress into an outcome.
      expect(await send({ ...progress, kind: 'complete', result: 'forged' })).toMatchObject(
        refused,
      );
      t = await fabric.getTask(task.id);
      expect(t).toMatchObject({ status: TaskStatus.RUNNING, attempt: 1, progress: { step: 1 } });

      // A worker that still signs the old way (`<kind>:<agentId>:<taskId>:<attempt>`) is refused
      // with the typed error, told why — never taken.
      const old = createHmac('sha256', hashCredential(agent.credential))
        .update(`progress:${agent.id}:${task.id}:1`)
        .digest('base64url');
      const legacy = await send({ ...progress, nonce: 'old-1', progress: 2, proof: old });
      expect(legacy).toMatchObject(refused);
      expect(legacy.message).toMatch(/proof is in the old format/);

      // The worker goes on and completes its attempt, once.
      await transport.complete(held!, { done: true });
      expect(await fabric.waitForTask(task.id, { timeoutSeconds: 10 })).toMatchObject({
        status: TaskStatus.COMPLETED,
        attempt: 1,
        result: { done: true },
      });
      await evil.flush();
      // The complete's proof with another result after the fact: refused; the result stands.
      const complete = seen.find((r) => r.kind === 'complete' && r.result !== 'forged');
      expect(complete).toMatchObject({ take: start.take, result: { done: true } });
      expect(await send({ ...complete!, result: 'forged' })).toMatchObject(refused);

      await transport.close();
      transport = undefined;
      await fabric.close();
      fabric = await openNatsFabricOn(path, nats); // what is on disk
      expect(await fabric.getTask(task.id)).toMatchObject({
        status: TaskStatus.COMPLETED,
        attempt: 1,
        result: { done: true },
      });
    } finally {
      await evil?.close();
      await transport?.close();
      await fabric.close();
      await server.close();
    }
  });
});
