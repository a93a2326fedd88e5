/**
 * `FabricWorker.run()` over the NATS transport across a restart of its sidecar (a real
 * nats-server; the real `agent-fabric serve` with a SQLite state file, SIGKILLed and started again
 * on it): what found no sidecar answering used to end `run()` — the first heartbeat of a run
 * started while the sidecar is down (nobody subscribes the heartbeat subject: "no responders"),
 * and a task's report given up once the task's timeout passed with the sidecar still down
 * (`FABRIC_ERR_NATS_UNAVAILABLE`). Both now count as the sidecar unreachable: `run()` waits and
 * goes on, and takes the tasks scheduled once the sidecar is back; the state file says each
 * ended as it should. So does a heartbeat that times out (another sidecar of the namespace
 * listens, not knowing the agent), whether or not the agent's own sidecar had answered the
 * transport yet; a wrong credential, which its sidecar refuses under a MAC the worker cannot
 * check, still ends `run()`. A restart of the nats-server alone never ended
 * `run()` (its connection reconnects): checked too.
 */
import { connect } from '@nats-io/transport-node';
import { afterAll, expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import { TaskStatus } from '../../src/task.js';
import { NatsWorkerTransport } from '../../src/transport/nats/nats-worker-transport.js';
import { natsNames } from '../../src/transport/nats/subjects.js';
import { FabricWorker, type WorkerHandler } from '../../src/worker/fabric-worker.js';
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

/**
 * Starts `worker.run(handlers)`: its stop, how it ended so far (undefined while it runs,
 * `'resolved'`, or what it rejected with) and its end.
 */
function startRun(
  worker: FabricWorker,
  handlers: Readonly<Record<string, WorkerHandler>>,
): { stop: AbortController; ended: () => unknown; done: Promise<unknown> } {
  const stop = new AbortController();
  let ended: unknown;
  const done = worker.run(handlers, { signal: stop.signal }).then(
    () => (ended = 'resolved'),
    (err: unknown) => (ended = err),
  );
  return { stop, ended: () => ended, done };
}

/**
 * Starts the sidecar again on `dir`'s state file and schedules a `double` of `n` for `agentId`
 * there; checks that `run` completes it once (on disk), then stops `run` (which must end
 * resolved) and returns the restarted sidecar.
 */
async function takesTaskAfterRestart(
  dir: string,
  statePath: string,
  agentId: string,
  run: ReturnType<typeof startRun>,
  n: number,
) {
  const sidecar = await serve(dir);
  const { task } = await api<{ task: { taskId: string } }>(
    sidecar.url,
    'FabricService/ScheduleTask',
    { agentId, taskType: 'double', payload: n },
  );
  await until(() => onDisk(statePath).get(task.taskId)?.status === 'COMPLETED', 30_000);
  expect(onDisk(statePath).get(task.taskId)).toMatchObject({ attempt: 1, result: 2 * n });
  run.stop.abort();
  await run.done;
  expect(run.ended()).toBe('resolved');
  return sidecar;
}

describeNats('FabricWorker.run() over NATS when its sidecar restarts', () => {
  const suiteServer = natsServerPerSuite();

  it('survives the sidecar down at its start and while a report waits, and takes work after', async () => {
    const nats = { url: suiteServer().url, namespace: 'wsr' };
    const set = await natsSidecarWithAgent({
      nats,
      ackWaitSeconds: 30,
      fabric: { heartbeatIntervalSeconds: 60 },
    });
    const { dir, statePath, agentId, credential } = set;
    const schedule = async (url: string, taskType: string, n: number, timeout?: string) => {
      const { task } = await api<{ task: { taskId: string } }>(url, 'FabricService/ScheduleTask', {
        agentId,
        taskType,
        payload: n,
        ...(timeout === undefined ? {} : { options: { timeout } }),
      });
      return task.taskId;
    };
    const status = (id: string) => onDisk(statePath).get(id);
    // Its JetStream consumers are made: the worker binds them with the sidecar down.
    await until(async () => {
      try {
        await (await NatsWorkerTransport.connect({ nats, agentId, credential })).close();
        return true;
      } catch {
        return false;
      }
    }, 20_000);
    expect(await stop(set.sidecar, 'SIGKILL')).toBeNull();

    // Started while no sidecar listens.
    const transport = await NatsWorkerTransport.connect({ nats, agentId, credential });
    const worker = FabricWorker.withTransport(transport, {
      heartbeatSeconds: 0.5,
      claimWaitSeconds: 1,
    });
    /** What the handlers ran, by payload. */
    const runs: string[] = [];
    let release: (() => void) | undefined;
    const held = new Promise<void>((r) => (release = r));
    let holding = false;
    const run = startRun(worker, {
      double: (p) => {
        runs.push(`double ${String(p)}`);
        return (p as number) * 2;
      },
      slow: async (p) => {
        runs.push(`slow ${String(p)}`);
        holding = true;
        await held;
        return p;
      },
    });
    // Long enough for the first heartbeat to have found nobody, and tried again.
    await new Promise((r) => setTimeout(r, 1500));
    expect(run.ended()).toBeUndefined();

    let sidecar = await serve(dir);
    const first = await schedule(sidecar.url, 'double', 21);
    await until(() => status(first)?.status === 'COMPLETED', 30_000);
    expect(status(first)).toMatchObject({ attempt: 1, result: 42 });

    // A task whose report finds the sidecar gone, for longer than the task's timeout: the
    // worker gives the report up (its attempt is over) and goes on.
    const slow = await schedule(sidecar.url, 'slow', 7, '2s');
    await until(() => holding, 30_000);
    expect(await stop(sidecar, 'SIGKILL')).toBeNull();
    release!();
    // The report is tried until the task's timeout passed since it was taken up.
    await new Promise((r) => setTimeout(r, 3000));
    expect(run.ended()).toBeUndefined();

    sidecar = await serve(dir);
    // The restarted sidecar ends the attempt whose outcome never came at its timeout.
    await until(() => status(slow)?.status === 'TIMEOUT', 30_000);
    const after = await schedule(sidecar.url, 'double', 50);
    await until(() => status(after)?.status === 'COMPLETED', 30_000);
    expect(status(after)).toMatchObject({ attempt: 1, result: 100 });
    // Each ran once.
    expect(runs).toEqual(['double 21', 'slow 7', 'double 50']);
    expect(run.ended()).toBeUndefined();
    run.stop.abort();
    await run.done;
    expect(run.ended()).toBe('resolved');
    await worker.close();
    expect(await stop(sidecar, 'SIGTERM')).toBe(0);
  }, 120_000);

  it('goes on across a restart of the nats-server alone (its connection reconnects)', async () => {
    const nats = { url: suiteServer().url, namespace: 'wsrn' };
    const fabric = new AgentFabric({ heartbeatIntervalSeconds: 60 }, { nats });
    await fabric.start();
    const agent = await fabric.spawn({ name: 'w', model: 'm', executor: 'nats' });
    await fabric.natsExecutor!.consumersReady();
    const transport = await NatsWorkerTransport.connect({
      nats,
      agentId: agent.id,
      credential: agent.credential,
    });
    const worker = FabricWorker.withTransport(transport, {
      heartbeatSeconds: 0.5,
      claimWaitSeconds: 1,
    });
    const run = startRun(worker, { double: (p) => (p as number) * 2 });
    const before = await fabric.schedule({ agentId: agent.id, taskType: 'double', payload: 1 });
    expect(await fabric.waitForTask(before.id, { timeoutSeconds: 20 })).toMatchObject({
      status: TaskStatus.COMPLETED,
      result: 2,
    });
    await suiteServer().stop();
    await new Promise((r) => setTimeout(r, 2000));
    await suiteServer().restart();
    const after = await fabric.schedule({ agentId: agent.id, taskType: 'double', payload: 2 });
    expect(await fabric.waitForTask(after.id, { timeoutSeconds: 60 })).toMatchObject({
      status: TaskStatus.COMPLETED,
      result: 4,
    });
    expect(run.ended()).toBeUndefined();
    run.stop.abort();
    await run.done;
    expect(run.ended()).toBe('resolved');
    await worker.close();
    await fabric.close();
  }, 120_000);

  // Before, a heartbeat that timed out ended the `run()` of a transport none of whose heartbeats
  // had been answered yet: silence then could not be told from a wrong credential. Now a wrong
  // credential is told by the refusal its sidecar sends (under a MAC the worker cannot check).
  it("a new transport's run() waits while its own sidecar is down and another is up; a wrong credential its sidecar refuses still ends it", async () => {
    const nats = { url: suiteServer().url, namespace: 'wsrnew' };
    const set = await natsSidecarWithAgent({
      nats,
      ackWaitSeconds: 30,
      fabric: { heartbeatIntervalSeconds: 60 },
    });
    const { dir, statePath, agentId, credential } = set;
    // A second real sidecar of the namespace: it hears every heartbeat, and answers none of an
    // agent it does not know.
    const other = new AgentFabric({ heartbeatIntervalSeconds: 60 }, { nats });
    await other.start();
    const options = { nats, agentId, reportTimeoutMs: 300 };
    const transport = await connectWhenAnswered({ ...options, credential });
    await transport.close();
    // A wrong credential, its sidecar up: refused, and the run ends saying so.
    const wrong = FabricWorker.withTransport(
      await NatsWorkerTransport.connect({ ...options, credential: `${credential}x` }),
    );
    await expect(wrong.run({}, { signal: new AbortController().signal })).rejects.toMatchObject({
      code: 'FABRIC_ERR_NATS_UNAVAILABLE',
      message: expect.stringMatching(/refused under a MAC its credential does not verify/),
    });
    await wrong.close();

    // The agent's own sidecar down; a new transport (never answered) starts its run.
    expect(await stop(set.sidecar, 'SIGKILL')).toBeNull();
    const worker = FabricWorker.withTransport(
      await NatsWorkerTransport.connect({ ...options, credential }),
      { heartbeatSeconds: 0.2, claimWaitSeconds: 1 },
    );
    const spy = await connect({ servers: nats.url });
    let beats = 0;
    spy.subscribe(natsNames(nats.namespace).heartbeat(agentId), {
      callback: () => {
        beats++;
      },
    });
    await spy.flush();
    const run = startRun(worker, { double: (p) => (p as number) * 2 });
    // Its heartbeats time out (the other sidecar listens, silent), one after another: the run
    // goes on.
    await until(() => beats >= 3 || run.ended() !== undefined, 30_000);
    expect(run.ended()).toBeUndefined();

    // Its sidecar back on its state file: the run takes the task scheduled there.
    const sidecar = await takesTaskAfterRestart(dir, statePath, agentId, run, 5);
    await worker.close();
    await spy.close();
    await other.close();
    expect(await stop(sidecar, 'SIGTERM')).toBe(0);
  }, 120_000);

  it('waits out a heartbeat no sidecar answers in time once its own sidecar answered it; a wrong credential still ends run()', async () => {
    const nats = { url: suiteServer().url, namespace: 'wsrt' };
    const set = await natsSidecarWithAgent({
      nats,
      ackWaitSeconds: 30,
      fabric: { heartbeatIntervalSeconds: 60 },
    });
    const { dir, statePath, agentId, credential } = set;
    const options = { nats, agentId, reportTimeoutMs: 500 };
    const transport = await connectWhenAnswered({ ...options, credential });
    const worker = FabricWorker.withTransport(transport, {
      heartbeatSeconds: 0.5,
      claimWaitSeconds: 1,
    });
    await worker.heartbeat();
    // A wrong credential: its sidecar's refusal cannot be checked under it, and that ends the
    // run (a misconfiguration, not a sidecar away).
    const wrong = FabricWorker.withTransport(
      await NatsWorkerTransport.connect({ ...options, credential: `${credential}x` }),
    );
    await expect(wrong.run({}, { signal: new AbortController().signal })).rejects.toMatchObject({
      code: 'FABRIC_ERR_NATS_UNAVAILABLE',
    });
    await wrong.close();
    // Another sidecar of the namespace listens for heartbeats but does not know the agent: with
    // its own sidecar down, the heartbeat times out instead of finding no responders.
    const other = await connect({ servers: nats.url });
    other.subscribe(natsNames(nats.namespace).heartbeats);
    await other.flush();
    expect(await stop(set.sidecar, 'SIGKILL')).toBeNull();

    const run = startRun(worker, { double: (p) => (p as number) * 2 });
    // Long enough for the first heartbeat to have timed out, and been tried again.
    await new Promise((r) => setTimeout(r, 2000));
    expect(run.ended()).toBeUndefined();

    const sidecar = await takesTaskAfterRestart(dir, statePath, agentId, run, 8);
    await worker.close();
    await other.close();
    expect(await stop(sidecar, 'SIGTERM')).toBe(0);
  }, 120_000);
});
