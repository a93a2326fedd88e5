/**
 * Vouch answers are authenticated: a sidecar asked about a report from an agent it does not know
 * takes only an answer MACed under the key the sidecars of the namespace share
 * (`nats.sidecarKey`), over the fresh nonce of its request. A NATS client that answers the vouch
 * subject without the key (the forgery of `.diag/review-nats/vouch-forgery.test.ts`) changes
 * nothing; sidecars with different keys do not vouch for each other; without a key a sidecar
 * neither asks nor answers and refuses such reports at once. A nats-server per test.
 */
import { expect, it } from 'vitest';
import { connect, Empty, headers } from '@nats-io/transport-node';

import { AgentFabric } from '../../src/fabric.js';
import { NatsWorker } from '../../src/transport/nats/nats-worker.js';
import { natsNames } from '../../src/transport/nats/subjects.js';
import type { ReportKind, TaskMessage } from '../../src/transport/nats/wire.js';
import { decodeJson, encodeJson } from '../../src/transport/nats/wire.js';

import { TaskStatus } from '../../src/task.js';
import { describeNats, startNatsServer } from '../fixtures/nats-server.js';
import { holdMessage, request } from '../fixtures/nats/ready-fabric.js';

const KEY = 'vouch-auth-test-key-0123456789abcdefghij';
const OTHER_KEY = 'another-sidecar-key-0123456789abcdefghij';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitFor(cond: () => boolean | Promise<boolean>, ms = 10_000): Promise<boolean> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await cond()) return true;
    await sleep(20);
  }
  return false;
}

/**
 * A client without any credential that reads every task message (core subscription, as the
 * NATS permissions of a careless deployment allow) and answers every vouch request `ok` for
 * pool `p` at once — without a MAC, with a made-up one, and as "no responders".
 */
async function forger(url: string, ns: string) {
  const nc = await connect({ servers: url });
  const seen: TaskMessage[] = [];
  nc.subscribe(`fabric.${ns}.task.>`, {
    callback: (_e, m) => void seen.push(decodeJson(m.data) as TaskMessage),
  });
  const vouches: unknown[] = [];
  nc.subscribe(natsNames(ns).vouch, {
    callback: (_e, m) => {
      vouches.push(decodeJson(m.data));
      m.respond(encodeJson({ ok: true, poolId: 'p' }));
      m.respond(encodeJson({ ok: true, poolId: 'p', mac: 'A'.repeat(43) }));
      m.respond(Empty, { headers: headers(503, 'No Responders') });
    },
  });
  await nc.flush();
  const message = async (taskId: string): Promise<TaskMessage> => {
    expect(await waitFor(() => seen.some((t) => t.taskId === taskId))).toBe(true);
    return seen.find((t) => t.taskId === taskId)!;
  };
  return { nc, vouches, message };
}

/** Sidecar `a` with agent x of pool p, sidecar `b` scheduling to p through a dispatch slot. */
async function twoSidecars(url: string, ns: string, keyA?: string, keyB?: string) {
  const a = new AgentFabric(
    { heartbeatIntervalSeconds: 60 },
    { nats: { url, namespace: ns, ...(keyA === undefined ? {} : { sidecarKey: keyA }) } },
  );
  const b = new AgentFabric(
    { heartbeatIntervalSeconds: 60 },
    { nats: { url, namespace: ns, ...(keyB === undefined ? {} : { sidecarKey: keyB }) } },
  );
  await a.start();
  await b.start();
  await a.createPool({ poolId: 'p', model: 'm', executor: 'nats', minAgents: 0 });
  const x = await a.spawn({ name: 'x', model: 'm', executor: 'nats', poolId: 'p' });
  await b.createPool({ poolId: 'p', model: 'm', executor: 'nats', minAgents: 0 });
  await b.spawn({ name: 'slot', model: 'm', executor: 'nats', poolId: 'p', heartbeat: 'auto' });
  await a.natsExecutor!.consumersReady();
  await b.natsExecutor!.consumersReady();
  return { a, b, x };
}

/**
 * Runs `body` over {@link twoSidecars} on a server of its own (all closed after): `hold()`
 * schedules a task on B's pool and holds its message as a worker would.
 */
async function withTwoSidecars(
  ns: string,
  keyA: string | undefined,
  keyB: string | undefined,
  body: (s: {
    server: { url: string };
    a: AgentFabric;
    b: AgentFabric;
    x: Awaited<ReturnType<typeof twoSidecars>>['x'];
    hold: () => Promise<Awaited<ReturnType<typeof holdMessage>> & { taskId: string }>;
  }) => Promise<void>,
): Promise<void> {
  const server = await startNatsServer();
  const { a, b, x } = await twoSidecars(server.url, ns, keyA, keyB);
  try {
    await body({
      server,
      a,
      b,
      x,
      hold: async () => {
        const task = await b.scheduleToPool('p', 't', 1);
        const held = await holdMessage(
          server.url,
          natsNames(ns).stream,
          natsNames(ns).poolConsumer('p'),
        );
        expect(held.msg.taskId).toBe(task.id);
        return { ...held, taskId: task.id };
      },
    });
  } finally {
    await a.close();
    await b.close();
    await server.close();
  }
}

const refused = { ok: false, code: 'FABRIC_ERR_PERMISSION_DENIED' };

describeNats('NATS: vouch answers are authenticated with the sidecar key', () => {
  it('a forged vouch answer (no MAC, a wrong MAC, a made-up "no responders") is ignored: the ghost report is refused', async () => {
    const server = await startNatsServer();
    const ns = 'vauth1';
    const nats = { url: server.url, namespace: ns, sidecarKey: KEY };
    const b = new AgentFabric({ heartbeatIntervalSeconds: 60 }, { nats });
    try {
      await b.start();
      await b.createPool({ poolId: 'p', model: 'm', executor: 'nats', minAgents: 0 });
      const x = await b.spawn({ name: 'x', model: 'm', executor: 'nats', poolId: 'p' });
      await b.natsExecutor!.consumersReady();
      const evil = await forger(server.url, ns);
      await b.heartbeat(x.id);
      const task = await b.scheduleToPool('p', 'job', 1);
      const msg = await evil.message(task.id);
      const ghost = (kind: ReportKind, extra: object) => ({
        kind,
        taskId: msg.taskId,
        attempt: msg.attempt,
        lease: msg.lease,
        agentId: 'ghost-agent-nobody-spawned',
        proof: 'not-a-proof',
        take: 'g',
        counter: 1,
        ...extra,
      });
      // A made-up take-up's start (it would count the real worker's as lost) and an outcome.
      // The sidecar asked once, ignored the forger's answers (an accepted one would have let
      // the report through) and refused when no sidecar answered.
      expect(await request(evil.nc, msg.replyTo, ghost('start', { take: 'g' }))).toMatchObject(
        refused,
      );
      expect(evil.vouches).toHaveLength(1);
      expect(evil.vouches[0]).toMatchObject({ agentId: 'ghost-agent-nobody-spawned' });
      expect((evil.vouches[0] as { nonce: string }).nonce.length).toBeGreaterThanOrEqual(16);
      expect(
        await request(evil.nc, msg.replyTo, ghost('complete', { result: 'FORGED' })),
      ).toMatchObject(refused);
      expect(await b.getTask(task.id)).toMatchObject({ status: TaskStatus.SCHEDULED });
      expect((await b.getTask(task.id)).result).toBeUndefined();
      // The real worker runs the task; the task is its own.
      const worker = await NatsWorker.connect({
        nats: { url: server.url, namespace: ns },
        agentId: x.id,
        credential: x.credential,
        poolId: 'p',
      });
      const stop = new AbortController();
      const running = worker.run({ job: () => 'real result' }, { signal: stop.signal });
      const done = await b.waitForTask(task.id, { timeoutSeconds: 10 });
      expect(done).toMatchObject({ status: TaskStatus.COMPLETED, result: 'real result' });
      expect(done.attempt).toBe(1);
      stop.abort();
      await running;
      await worker.close();
      await evil.nc.close();
    } finally {
      await b.close();
      await server.close();
    }
  });

  it('two sidecars with the same key share a pool, whoever answers the vouch subject first', async () => {
    await withTwoSidecars('vauth2', KEY, KEY, async ({ server, b, x, hold }) => {
      const evil = await forger(server.url, 'vauth2');
      const { nc, m, report, signed, taskId } = await hold();
      // The forger answers every vouch first; A's answer (MACed) is the one that counts.
      expect(await report(signed(x.id, x.credential, 'start', { take: 't' }))).toEqual({
        ok: true,
        mac: expect.any(String),
      });
      expect(await report(signed(x.id, x.credential, 'complete', { result: 'x' }))).toEqual({
        ok: true,
        mac: expect.any(String),
      });
      expect(evil.vouches.length).toBeGreaterThanOrEqual(2);
      expect(await b.waitForTask(taskId, { timeoutSeconds: 5 })).toMatchObject({
        status: TaskStatus.COMPLETED,
        result: 'x',
      });
      m.ack();
      await nc.close();
      await evil.nc.close();
    });
  });

  it("two sidecars with different keys refuse each other's agents' reports", async () => {
    await withTwoSidecars('vauth3', KEY, OTHER_KEY, async ({ b, x, hold }) => {
      const { nc, m, report, signed, taskId } = await hold();
      // x's own valid proof: A answers, but under its key, which B does not take.
      expect(await report(signed(x.id, x.credential, 'start', { take: 't' }))).toMatchObject(
        refused,
      );
      expect(await report(signed(x.id, x.credential, 'complete', { result: 'x' }))).toMatchObject(
        refused,
      );
      expect(await b.getTask(taskId)).toMatchObject({ status: TaskStatus.SCHEDULED });
      expect((await b.getTask(taskId)).result).toBeUndefined();
      m.nak();
      await nc.close();
    });
  });

  it("without a sidecar key a foreign agent's report is refused at once, and nobody is asked", async () => {
    const ns = 'vauth4';
    await withTwoSidecars(ns, undefined, undefined, async ({ server, b, x, hold }) => {
      const spy = await connect({ servers: server.url });
      const asked: unknown[] = [];
      spy.subscribe(natsNames(ns).vouch, { callback: (_e, m) => void asked.push(m.data) });
      await spy.flush();
      const { nc, m, msg, report, signed, taskId } = await hold();
      const answer = (await report(signed(x.id, x.credential, 'start', { take: 't' }))) as {
        message: string;
      };
      expect(answer).toMatchObject(refused);
      expect(answer.message).toContain(x.id);
      expect(answer.message).toContain('cross-sidecar pool reports need nats.sidecarKey');
      // Neither B asked (a vouch it sent before refusing reaches the spy before this flush's
      // answer) nor would A answer: a vouch request sent by hand gets no answer.
      await spy.flush();
      expect(asked).toEqual([]);
      const vouch = {
        agentId: x.id,
        kind: 'start',
        taskId: msg.taskId,
        attempt: msg.attempt,
        proof: signed(x.id, x.credential, 'start').proof,
        nonce: 'n'.repeat(24),
      };
      const answers = await spy.requestMany(natsNames(ns).vouch, encodeJson(vouch), {
        strategy: 'timer',
        maxWait: 500,
      });
      const got: unknown[] = [];
      for await (const r of answers) if (r.data.length > 0) got.push(r.data);
      expect(got).toEqual([]);
      expect(await b.getTask(taskId)).toMatchObject({ status: TaskStatus.SCHEDULED });
      m.nak();
      await nc.close();
      await spy.close();
    });
  });
});
