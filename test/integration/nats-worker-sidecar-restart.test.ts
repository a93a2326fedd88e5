/**
 * `FabricWorker.run()` over the NATS transport across a restart of its sidecar (a real
 * nats-server; the real `agent-fabric serve` with a SQLite state file, SIGKILLed and started again
 * on it): what found no sidecar answering used to end `run()` — the first heartbeat of a run
 * started while the sidecar is down (nobody subscribes the heartbeat subject: "no responders"),
 * and a task's report given up once the task's timeout passed with the sidecar still down
 * (`FABRIC_ERR_NATS_UNAVAILABLE`). Both now count as the sidecar unreachable: `run()` waits and
 * goes on, and takes the tasks scheduled once the sidecar is back; the state file says each
 * ended as it should.
 */
import { afterAll, expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import { TaskStatus } from '../../src/task.js';
import { NatsWorkerTransport } from '../../src/transport/nats/nats-worker-transport.js';
import { FabricWorker } from '../../src/worker/fabric-worker.js';
import { until } from '../fixtures/gateway/harness.js';
import { describeNats, natsServerPerSuite } from '../fixtures/nats-server.js';
import { api, natsSidecarWithAgent, onDisk } from '../fixtures/nats/state-sidecar.js';
import { cleanUp, serve, stop } from '../fixtures/state/serve.js';

afterAll(cleanUp);

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
    const stopRun = new AbortController();
    let ended: unknown;
    const running = worker
      .run(
        {
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
        },
        { signal: stopRun.signal },
      )
      .then(
        () => (ended = 'resolved'),
        (err: unknown) => (ended = err),
      );
    // Long enough for the first heartbeat to have found nobody, and tried again.
    await new Promise((r) => setTimeout(r, 1500));
    expect(ended).toBeUndefined();

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
    expect(ended).toBeUndefined();

    sidecar = await serve(dir);
    // The restarted sidecar ends the attempt whose outcome never came at its timeout.
    await until(() => status(slow)?.status === 'TIMEOUT', 30_000);
    const after = await schedule(sidecar.url, 'double', 50);
    await until(() => status(after)?.status === 'COMPLETED', 30_000);
    expect(status(after)).toMatchObject({ attempt: 1, result: 100 });
    // Each ran once.
    expect(runs).toEqual(['double 21', 'slow 7', 'double 50']);
    expect(ended).toBeUndefined();
    stopRun.abort();
    await running;
    expect(ended).toBe('resolved');
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
    const stopRun = new AbortController();
    let ended: unknown;
    const running = worker
      .run({ double: (p) => (p as number) * 2 }, { signal: stopRun.signal })
      .then(
        () => (ended = 'resolved'),
        (err: unknown) => (ended = err),
      );
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
    expect(ended).toBeUndefined();
    stopRun.abort();
    await running;
    expect(ended).toBe('resolved');
    await worker.close();
    await fabric.close();
  }, 120_000);
});
