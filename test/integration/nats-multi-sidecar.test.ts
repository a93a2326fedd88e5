/**
 * Two fabrics (two sidecars) on one nats-server: a pool's tasks scheduled on one are run by a
 * worker attached through the other, and reports are accepted only with the attempt's lease and
 * from the agent a pinned task belongs to, or from an agent of the pool a pool's task was queued to.
 */
import { expect, it } from 'vitest';
import { connect } from '@nats-io/transport-node';
import { jetstream } from '@nats-io/jetstream';
import { AgentFabric } from '../../src/fabric.js';
import { NatsWorker } from '../../src/transport/nats/nats-worker.js';
import { natsNames } from '../../src/transport/nats/subjects.js';
import type { ReportKind, TaskMessage } from '../../src/transport/nats/wire.js';
import { decodeJson, encodeJson, reportProof } from '../../src/transport/nats/wire.js';
import { hashCredential } from '../../src/lifecycle/lifecycle-manager.js';
import { TaskStatus } from '../../src/task.js';
import { describeNats, natsServerPerSuite } from '../fixtures/nats-server.js';

/** The key the sidecars of a namespace share: vouch answers are MACed with it. */
const sidecarKey = 'multi-sidecar-test-key-0123456789abcdef';

/**
 * Pulls the next message of `consumer` as any NATS client may (it then holds the attempt's
 * lease), with `report` to send a report to the scheduling sidecar and `signed` to make one:
 * `kind` on the message's attempt, proven with `credential` as `agentId`.
 */
async function holdMessage(url: string, stream: string, consumer: string) {
  const nc = await connect({ servers: url });
  const m = await (await jetstream(nc).consumers.get(stream, consumer)).next({ expires: 5000 });
  expect(m).not.toBeNull();
  const msg = decodeJson(m!.data) as TaskMessage;
  const report = async (body: Record<string, unknown>): Promise<unknown> =>
    decodeJson((await nc.request(msg.replyTo, encodeJson(body), { timeout: 10_000 })).data);
  let counter = 0;
  let take = 'take';
  const signed = (
    agentId: string,
    credential: string,
    kind: ReportKind,
    extra: object = {},
    lease = msg.lease,
  ) => {
    // Without a `take` or `counter` in `extra`: the last take-up named (else `take`), the next
    // counter.
    const body = {
      kind,
      taskId: msg.taskId,
      attempt: msg.attempt,
      lease,
      agentId,
      take: (take = (extra as { take?: string }).take ?? take),
      counter: ++counter,
    };
    return {
      proof: reportProof(hashCredential(credential), { ...body, ...extra }),
      ...body,
      ...extra,
    };
  };
  return { nc, m: m!, msg, report, signed };
}

describeNats('NATS: two sidecars on one server', () => {
  const suiteServer = natsServerPerSuite();

  it('a worker attached through A runs a pool task scheduled on B; B sees the result', async () => {
    const nats = { url: suiteServer().url, namespace: 'multi', sidecarKey };
    const a = new AgentFabric({}, { nats });
    const b = new AgentFabric({}, { nats });
    await a.start();
    await b.start();
    expect(a.natsExecutor!.sidecarId).not.toBe(b.natsExecutor!.sidecarId);
    // A: the pool with the agent whose worker runs.
    await a.createPool({ poolId: 'p', model: 'm', executor: 'nats', minAgents: 0 });
    const x = await a.spawn({ name: 'x', model: 'm', executor: 'nats', poolId: 'p' });
    // B: the same pool with a dispatch slot (no worker of its own; B heartbeats for it).
    await b.createPool({ poolId: 'p', model: 'm', executor: 'nats', minAgents: 0 });
    await b.spawn({ name: 'slot', model: 'm', executor: 'nats', poolId: 'p', heartbeat: 'auto' });
    await a.natsExecutor!.consumersReady();
    await b.natsExecutor!.consumersReady();
    const worker = await NatsWorker.connect({
      nats: { url: nats.url, namespace: nats.namespace }, // a worker needs no sidecar key
      agentId: x.id,
      credential: x.credential,
      poolId: 'p',
    });
    const stop = new AbortController();
    const running = worker.run(
      { add: (p) => (p as { a: number; b: number }).a + (p as { a: number; b: number }).b },
      { signal: stop.signal },
    );
    const tasks = await Promise.all(
      Array.from({ length: 20 }, (_, i) => b.scheduleToPool('p', 'add', { a: i, b: 1 })),
    );
    const done = await Promise.all(tasks.map((t) => b.waitForTask(t.id, { timeoutSeconds: 20 })));
    expect(done.map((t) => t.status)).toEqual(tasks.map(() => TaskStatus.COMPLETED));
    expect(done.map((t) => t.result)).toEqual(tasks.map((_, i) => i + 1));
    // A never saw these tasks: its records hold none.
    expect((await a.listTasks()).items).toEqual([]);
    stop.abort();
    await running;
    expect(worker.stats.completed).toBe(20);
    await worker.close();
    await a.close();
    await b.close();
  });

  it("a pool task's report from an agent of another sidecar needs that agent's proof, vouched for by its own sidecar", async () => {
    const ns = 'vouch';
    const nats = { url: suiteServer().url, namespace: ns, sidecarKey };
    const names = natsNames(ns);
    const a = new AgentFabric({}, { nats });
    const b = new AgentFabric({}, { nats });
    await a.start();
    await b.start();
    await a.createPool({ poolId: 'p', model: 'm', executor: 'nats', minAgents: 0 });
    const x = await a.spawn({ name: 'x', model: 'm', executor: 'nats', poolId: 'p' });
    const other = await a.spawn({ name: 'other', model: 'm', executor: 'nats' });
    await b.createPool({ poolId: 'p', model: 'm', executor: 'nats', minAgents: 0 });
    await b.spawn({ name: 'slot', model: 'm', executor: 'nats', poolId: 'p', heartbeat: 'auto' });
    await a.natsExecutor!.consumersReady();
    await b.natsExecutor!.consumersReady();
    const task = await b.scheduleToPool('p', 't', 1);
    const {
      nc,
      m,
      msg,
      report,
      signed: as,
    } = await holdMessage(suiteServer().url, names.stream, names.poolConsumer('p'));
    expect(msg.taskId).toBe(task.id);
    // A genuine message (the lease is right) from an agent not proven: not allowed.
    const refused = { ok: false, code: 'FABRIC_ERR_PERMISSION_DENIED' };
    // x's id with another agent's proof, and an agent no sidecar knows: refused (B asked A).
    expect(await report(as(x.id, other.credential, 'start', { take: 'a' }))).toMatchObject(refused);
    expect(
      await report(
        as('00000000-0000-4000-8000-000000000000', x.credential, 'start', { take: 'a' }),
      ),
    ).toMatchObject(refused);
    expect((await b.getTask(task.id)).status).toBe(TaskStatus.SCHEDULED);
    // x itself, proven to A, vouched to B: accepted.
    expect(await report(as(x.id, x.credential, 'start', { take: 'a' }))).toEqual({
      ok: true,
      mac: expect.any(String),
    });
    expect(
      await report(as(x.id, other.credential, 'complete', { result: 'forged' })),
    ).toMatchObject(refused);
    expect((await b.getTask(task.id)).status).toBe(TaskStatus.RUNNING);
    // x's own proofs with what they did not sign — another take-up, other progress, another
    // result — as a reader of res.> would send them: A, asked about the report B got (its
    // take-up, nonce and content digest), says no, and nothing changes on B.
    const start = as(x.id, x.credential, 'start', { take: 'a', nonce: 's1' });
    expect(await report({ ...start, take: 'b' })).toMatchObject(refused);
    const progress = as(x.id, x.credential, 'progress', { take: 'a', progress: 1, nonce: 'p1' });
    expect(await report(progress)).toMatchObject({ ok: true });
    expect(await report({ ...progress, progress: 99 })).toMatchObject(refused);
    expect(await report({ ...progress, nonce: 'p2' })).toMatchObject(refused);
    const real = as(x.id, x.credential, 'complete', { take: 'a', result: 'real', nonce: 'c1' });
    expect(await report({ ...real, result: 'forged' })).toMatchObject(refused);
    expect(await b.getTask(task.id)).toMatchObject({
      status: TaskStatus.RUNNING,
      attempt: 1,
      progress: 1,
    });
    expect(await report(real)).toEqual({ ok: true, mac: expect.any(String) });
    expect(await b.waitForTask(task.id, { timeoutSeconds: 5 })).toMatchObject({
      status: TaskStatus.COMPLETED,
      result: 'real',
    });
    m.ack();
    await nc.close();
    await a.close();
    await b.close();
  });

  it("refuses reports on a pool's task from agents of another pool, on its sidecar and through the vouch", async () => {
    const ns = 'pools';
    const nats = { url: suiteServer().url, namespace: ns, sidecarKey };
    const names = natsNames(ns);
    const a = new AgentFabric({}, { nats });
    const b = new AgentFabric({ heartbeatIntervalSeconds: 60 }, { nats });
    await a.start();
    await b.start();
    // B schedules to pool p; an agent of pool q lives on each sidecar, and A has p's worker.
    await b.createPool({ poolId: 'p', model: 'm', executor: 'nats', minAgents: 0 });
    await b.spawn({ name: 'slot', model: 'm', executor: 'nats', poolId: 'p', heartbeat: 'auto' });
    await b.createPool({ poolId: 'q', model: 'm', executor: 'nats', minAgents: 0 });
    const qb = await b.spawn({ name: 'qb', model: 'm', executor: 'nats', poolId: 'q' });
    await a.createPool({ poolId: 'q', model: 'm', executor: 'nats', minAgents: 0 });
    const qa = await a.spawn({ name: 'qa', model: 'm', executor: 'nats', poolId: 'q' });
    await a.createPool({ poolId: 'p', model: 'm', executor: 'nats', minAgents: 0 });
    const x = await a.spawn({ name: 'x', model: 'm', executor: 'nats', poolId: 'p' });
    const loner = await a.spawn({ name: 'loner', model: 'm', executor: 'nats' });
    await a.natsExecutor!.consumersReady();
    await b.natsExecutor!.consumersReady();
    const task = await b.scheduleToPool('p', 't', 1);
    // Whoever can pull p's consumer holds the attempt's lease.
    const { nc, m, msg, report, signed } = await holdMessage(
      suiteServer().url,
      names.stream,
      names.poolConsumer('p'),
    );
    expect(msg.taskId).toBe(task.id);
    const as = (agentId: string, credential: string, kind: 'start' | 'complete') =>
      signed(
        agentId,
        credential,
        kind,
        kind === 'start' ? { take: `take-${agentId}` } : { result: `forged by ${agentId}` },
      );
    const refused = { ok: false, code: 'FABRIC_ERR_PERMISSION_DENIED' };
    // Each with its own valid proof and the lease, none of them an agent of p.
    for (const intruder of [qb, qa, loner]) {
      expect(await report(as(intruder.id, intruder.credential, 'start'))).toMatchObject(refused);
      expect(await report(as(intruder.id, intruder.credential, 'complete'))).toMatchObject(refused);
    }
    expect(await b.getTask(task.id)).toMatchObject({ status: TaskStatus.SCHEDULED });
    expect((await b.getTask(task.id)).result).toBeUndefined();
    // p's own worker (vouched for by A, in pool p): accepted.
    expect(await report(as(x.id, x.credential, 'start'))).toEqual({
      ok: true,
      mac: expect.any(String),
    });
    expect(await report(as(x.id, x.credential, 'complete'))).toEqual({
      ok: true,
      mac: expect.any(String),
    });
    expect(await b.waitForTask(task.id, { timeoutSeconds: 5 })).toMatchObject({
      status: TaskStatus.COMPLETED,
      result: `forged by ${x.id}`,
    });
    m.ack();
    await nc.close();
    await a.close();
    await b.close();
  });

  it('refuses reports without the lease, and reports on a pinned task from another agent', async () => {
    const ns = 'hostile';
    const nats = { url: suiteServer().url, namespace: ns, sidecarKey };
    const names = natsNames(ns);
    const b = new AgentFabric({ heartbeatIntervalSeconds: 60 }, { nats });
    const a = new AgentFabric({}, { nats });
    await b.start();
    await a.start();
    const victim = await b.spawn({ name: 'victim', model: 'm', executor: 'nats' });
    const intruder = await b.spawn({ name: 'intruder', model: 'm', executor: 'nats' });
    const foreign = await a.spawn({ name: 'foreign', model: 'm', executor: 'nats' });
    await b.natsExecutor!.consumersReady();
    await b.heartbeat(victim.id);
    const task = await b.schedule({ agentId: victim.id, taskType: 't', payload: 1 });
    // Any NATS client may pull the victim's consumer: it then holds a valid lease.
    const { nc, m, msg, report, signed } = await holdMessage(
      suiteServer().url,
      names.stream,
      names.agentConsumer(victim.id),
    );
    expect(msg.taskId).toBe(task.id);
    const as = (agentId: string, credential: string, lease = msg.lease) =>
      signed(agentId, credential, 'complete', { result: 'forged' }, lease);
    // Not genuine (a wrong lease, not a report): unauthenticated, and a worker terminates it.
    const refused = { ok: false, code: 'FABRIC_ERR_UNAUTHENTICATED' };
    // Genuine, from an agent that may not report on it: a worker gives it back.
    const notAllowed = { ok: false, code: 'FABRIC_ERR_PERMISSION_DENIED' };
    // Another agent of B, with its own valid proof and the lease: not its task.
    expect(await report(as(intruder.id, intruder.credential))).toMatchObject(notAllowed);
    // Claiming to be the victim without its credential.
    expect(await report(as(victim.id, intruder.credential))).toMatchObject(notAllowed);
    // An agent of another sidecar: pinned tasks are not shared.
    expect(await report(as(foreign.id, foreign.credential))).toMatchObject(notAllowed);
    // The victim's proof with a made-up lease.
    expect(await report(as(victim.id, victim.credential, 'x'.repeat(43)))).toMatchObject(refused);
    // Not JSON of the schema at all.
    expect(await report({ kind: 'complete' })).toMatchObject(refused);
    expect((await b.getTask(task.id)).status).toBe(TaskStatus.SCHEDULED);
    expect((await b.getTask(task.id)).result).toBeUndefined();
    // Batches: too many reports, or not a list, are refused whole and change nothing.
    const tooMany = Array.from({ length: 1025 }, () => as(victim.id, victim.credential));
    expect(await report({ v: 1, reports: tooMany })).toMatchObject(refused);
    expect(await report({ v: 1, reports: { 0: as(victim.id, victim.credential) } })).toMatchObject(
      refused,
    );
    expect((await b.getTask(task.id)).status).toBe(TaskStatus.SCHEDULED);
    // In one batch each report is judged alone: the forged one is refused, the victim's own
    // completion is accepted; a second completion of the attempt changes nothing (answered ok,
    // as the retry of an outcome whose answer was lost); its failure is stale.
    expect(
      await report({
        v: 1,
        reports: [
          { ...as(intruder.id, intruder.credential), result: 'forged-in-batch' },
          as(victim.id, victim.credential),
        ],
      }),
    ).toMatchObject({ answers: [notAllowed, { ok: true }] });
    const done = await b.waitForTask(task.id, { timeoutSeconds: 5 });
    expect(done).toMatchObject({ status: TaskStatus.COMPLETED, result: 'forged' });
    expect(
      await report(signed(victim.id, victim.credential, 'complete', { result: 'again' })),
    ).toEqual({ ok: true, mac: expect.any(String) });
    // The victim's proof over another result than the one it signed: not the victim's report.
    expect(await report({ ...as(victim.id, victim.credential), result: 'again' })).toMatchObject(
      notAllowed,
    );
    expect(
      await report(
        signed(victim.id, victim.credential, 'fail', { error: { code: 'X', message: 'x' } }),
      ),
    ).toMatchObject({ ok: false, code: 'FABRIC_ERR_TASK_STATE' });
    expect((await b.getTask(task.id)).result).toBe('forged');
    m.ack();
    await nc.close();
    await a.close();
    await b.close();
  });
});
