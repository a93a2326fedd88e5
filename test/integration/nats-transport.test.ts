/**
 * The NATS transport against a real nats-server: connection errors, heartbeats with credential
 * proofs, and JetStream dispatch to a worker.
 */
import { expect, it } from 'vitest';
import { connect } from '@nats-io/transport-node';
import { AgentFabric } from '../../src/fabric.js';
import { NatsUnavailableError } from '../../src/errors.js';
import { NatsWorker } from '../../src/transport/nats/nats-worker.js';
import { natsNames } from '../../src/transport/nats/subjects.js';
import {
  encodeJson,
  heartbeatAnswerMac,
  heartbeatProof,
  decodeJson,
} from '../../src/transport/nats/wire.js';
import { hashCredential } from '../../src/lifecycle/lifecycle-manager.js';
import { TaskStatus } from '../../src/task.js';
import { AgentStatus } from '../../src/agent.js';
import { describeNats, freePort, natsServerPerSuite } from '../fixtures/nats-server.js';

describeNats('NATS transport', () => {
  const suiteServer = natsServerPerSuite();

  it('start fails with NatsUnavailableError naming the URL when nothing listens', async () => {
    const url = `nats://127.0.0.1:${await freePort()}`;
    const fabric = new AgentFabric({}, { nats: { url, connectTimeoutMs: 1000 } });
    const err = await fabric.start().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(NatsUnavailableError);
    expect((err as NatsUnavailableError).message).toContain(url);
    expect((err as NatsUnavailableError).details).toEqual({ url });
    await fabric.close();
  });

  it('never shows a password or token written into the URL', async () => {
    const port = await freePort();
    const urls = [
      `nats://alice:pw-Secret-1@127.0.0.1:${port}`,
      `nats://tok-Secret-2@127.0.0.1:${port}`,
    ];
    const fabric = new AgentFabric({}, { nats: { url: urls, connectTimeoutMs: 1000 } });
    const err = await fabric.start().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(NatsUnavailableError);
    const shown = JSON.stringify({
      message: (err as Error).message,
      details: (err as NatsUnavailableError).details,
    });
    expect(shown).not.toMatch(/Secret|alice/);
    expect((err as NatsUnavailableError).details).toEqual({
      url: `nats://***@127.0.0.1:${port}, nats://***@127.0.0.1:${port}`,
    });
    await fabric.close();
  });

  it('refuses bad nats options with the field named', () => {
    expect(
      () => new AgentFabric({}, { nats: { url: suiteServer().url, namespace: 'a.b' } }),
    ).toThrow(/options\.nats\.namespace/);
    expect(
      () =>
        new AgentFabric(
          {},
          { nats: { url: suiteServer().url, token: 't', user: 'u', password: 'p' } },
        ),
    ).toThrow(/one of token/);
  });

  it('runs a task through JetStream and fences a second report of the attempt', async () => {
    const fabric = new AgentFabric({}, { nats: { url: suiteServer().url, namespace: 'disp' } });
    await fabric.start();
    const agent = await fabric.spawn({ name: 'w', model: 'm', executor: 'nats' });
    await fabric.natsExecutor!.consumersReady();
    const worker = await NatsWorker.connect({
      nats: { url: suiteServer().url, namespace: 'disp' },
      agentId: agent.id,
      credential: agent.credential,
    });
    const stop = new AbortController();
    let runs = 0;
    const running = worker.run(
      {
        echo: async (payload, ctx) => {
          runs++;
          await ctx.progress({ half: true });
          return { echoed: payload, attempt: ctx.attempt };
        },
      },
      { signal: stop.signal },
    );
    const task = await fabric.schedule({ agentId: agent.id, taskType: 'echo', payload: { n: 1 } });
    const done = await fabric.waitForTask(task.id, { timeoutSeconds: 20 });
    expect(done.status).toBe(TaskStatus.COMPLETED);
    expect(done.result).toEqual({ echoed: { n: 1 }, attempt: 1 });
    expect(done.progress).toEqual({ half: true });
    expect(runs).toBe(1);
    stop.abort();
    await running;
    await worker.close();
    await fabric.close();
  });

  it('accepts heartbeats only with the agent credential proof, never replayed', async () => {
    const ns = 'hb';
    const fabric = new AgentFabric(
      { heartbeatIntervalSeconds: 60 },
      { nats: { url: suiteServer().url, namespace: ns } },
    );
    await fabric.start();
    const a = await fabric.spawn({ name: 'a', model: 'm', executor: 'nats' });
    const b = await fabric.spawn({ name: 'b', model: 'm', executor: 'nats' });
    expect(fabric.lifecycle.agentInfo(a.id).status).toBe(AgentStatus.STARTING);
    const nc = await connect({ servers: suiteServer().url });
    const names = natsNames(ns);
    const send = async (agentId: string, key: string, ts: number): Promise<unknown> => {
      const m = await nc.request(
        names.heartbeat(agentId),
        encodeJson({ ts, proof: heartbeatProof(key, agentId, ts) }),
        { timeout: 5000 },
      );
      return decodeJson(m.data);
    };
    // Agent b signs a heartbeat for a with its own credential: refused, a stays STARTING.
    const forged = await send(a.id, hashCredential(b.credential), Date.now());
    expect(forged).toMatchObject({ ok: false, code: 'FABRIC_ERR_UNAUTHENTICATED' });
    expect(fabric.lifecycle.agentInfo(a.id).status).toBe(AgentStatus.STARTING);
    // The stored hash is the key: a's own proof is accepted.
    const ts = Date.now();
    // With the MAC the worker checks: under the credential's hash, over this heartbeat.
    const healthy = { ok: true as const, status: AgentStatus.HEALTHY, poolId: null };
    expect(await send(a.id, hashCredential(a.credential), ts)).toEqual({
      ...healthy,
      mac: heartbeatAnswerMac(hashCredential(a.credential), a.id, ts, healthy),
    });
    expect(fabric.lifecycle.agentInfo(a.id).status).toBe(AgentStatus.HEALTHY);
    // The same heartbeat again (a replay) is refused.
    expect(await send(a.id, hashCredential(a.credential), ts)).toMatchObject({
      ok: false,
      code: 'FABRIC_ERR_UNAUTHENTICATED',
    });
    // A heartbeat for an agent this fabric does not know gets no answer from it.
    await expect(
      nc.request(names.heartbeat('nobody'), encodeJson({ ts: 1, proof: 'x' }), { timeout: 300 }),
    ).rejects.toThrow();
    // The worker client heartbeats with its proof.
    const worker = await NatsWorker.connect({
      nats: { url: suiteServer().url, namespace: ns },
      agentId: b.id,
      credential: b.credential,
    });
    expect(await worker.heartbeat()).toEqual({
      ok: true,
      status: AgentStatus.HEALTHY,
      poolId: null,
    });
    expect(fabric.natsHeartbeats!.stats.accepted).toBe(2);
    await worker.close();
    await nc.close();
    await fabric.close();
  });
});
