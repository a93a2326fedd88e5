/**
 * Forged answers to a worker's requests. Any NATS client may publish on a worker's `_INBOX.*`
 * reply subjects, and a worker took the first answer there for the sidecar's: a forger that
 * answered first could refuse its starts (the handler aborted, the message terminated: the task
 * lost until its timeout), refuse its outcomes, or name another pool in a heartbeat answer (the
 * worker would not serve its own). Now every answer a worker acts on carries a MAC (keyed by the
 * report's lease, or for a heartbeat by the credential's hash, over the request's kind and ids),
 * and a worker ignores one without a right MAC and waits on for the sidecar's.
 *
 * The forger (`fixtures/nats/answer-forger.ts`) answers every report and heartbeat ahead of the
 * sidecar, without a MAC, with a made-up one, with another answer's, and replays genuine answers.
 * What must hold in the fabric: every task completes once, with the worker's result, on its
 * first attempt; each handler ran once; every message was acked.
 */
import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import { TaskStatus } from '../../src/task.js';
import { NatsWorker } from '../../src/transport/nats/nats-worker.js';
import { NatsWorkerTransport } from '../../src/transport/nats/nats-worker-transport.js';
import { natsNames } from '../../src/transport/nats/subjects.js';
import { FabricWorker } from '../../src/worker/fabric-worker.js';
import { until } from '../fixtures/gateway/harness.js';
import { startAnswerForger, type AnswerForger } from '../fixtures/nats/answer-forger.js';
import { describeNats, startNatsServer, type NatsServer } from '../fixtures/nats-server.js';

const POOL = 'p';

/** A sidecar with one `nats` agent of pool {@link POOL}; attempts end after 20 s, one each. */
async function sidecar(server: NatsServer, namespace: string) {
  const nats = { url: server.url, namespace };
  const fabric = new AgentFabric(
    { heartbeatIntervalSeconds: 60, defaultTimeoutSeconds: 20, defaultMaxAttempts: 1 },
    { nats },
  );
  await fabric.start();
  await fabric.createPool({ poolId: POOL, model: 'm', executor: 'nats', minAgents: 0 });
  const agent = await fabric.spawn({ name: 'w', model: 'm', executor: 'nats', poolId: POOL });
  await fabric.natsExecutor!.consumersReady();
  return { nats, fabric, agent };
}

/** A handler that reports progress and doubles its payload; its runs per payload. */
function doubler() {
  const runs = new Map<number, number>();
  const handler = async (p: unknown, ctx: { progress(p: unknown): Promise<unknown> }) => {
    runs.set(p as number, (runs.get(p as number) ?? 0) + 1);
    await ctx.progress({ half: p });
    return (p as number) * 2;
  };
  return { handler, runs };
}

/**
 * Schedules pool and pinned tasks while `forger` answers ahead of the sidecar: each completes
 * once, with its result, on attempt 1; each handler ran once; the stream ends empty.
 */
async function completesDespiteForgeries(
  fabric: AgentFabric,
  agentId: string,
  namespace: string,
  url: string,
  forger: AnswerForger,
  runs: Map<number, number>,
): Promise<void> {
  const payloads = [1, 2, 3, 4, 5];
  const tasks = await Promise.all(
    payloads.map((p) =>
      p % 2 === 0
        ? fabric.schedule({ agentId, taskType: 'double', payload: p })
        : fabric.scheduleToPool(POOL, 'double', p),
    ),
  );
  const done = await Promise.all(
    tasks.map((t) => fabric.waitForTask(t.id, { timeoutSeconds: 15 })),
  );
  expect(done.map((t) => [t.status, t.attempt, t.result, t.assignedAgentId])).toEqual(
    payloads.map((p) => [TaskStatus.COMPLETED, 1, p * 2, agentId]),
  );
  expect([...runs.entries()].sort((a, b) => a[0] - b[0])).toEqual(payloads.map((p) => [p, 1]));
  // The forger was there, ahead of the sidecar, for every kind of request.
  for (const kind of ['hb', 'start', 'progress', 'complete']) {
    expect(forger.forged[kind] ?? 0).toBeGreaterThan(0);
  }
  expect(forger.genuineSeen()).toBeGreaterThan(0);
  // Acked once the outcome was answered: nothing left in the work queue.
  const nc = await connect({ servers: url });
  const jsm = await jetstreamManager(nc);
  const stream = natsNames(namespace).stream;
  await until(async () => (await jsm.streams.info(stream)).state.messages === 0, 10_000);
  await nc.close();
}

/** A worker under test: runs `handler` until `signal` aborts; closes. */
interface Runner {
  run(handler: ReturnType<typeof doubler>['handler'], signal: AbortSignal): Promise<unknown>;
  close(): Promise<unknown>;
}

/**
 * A sidecar, the forger, and the worker `connectWorker` makes (after the forger started: a pool
 * check at connect meets it too): every task completes once, the worker's run never fails, and
 * `also` holds while it runs.
 */
async function underForgery(
  ns: string,
  connectWorker: (s: Awaited<ReturnType<typeof sidecar>>) => Promise<Runner>,
  also: () => Promise<void> = async () => undefined,
): Promise<void> {
  const server = await startNatsServer();
  const s = await sidecar(server, ns);
  const forger = await startAnswerForger(server.url, ns);
  let worker: Runner | undefined;
  const stop = new AbortController();
  let running: Promise<unknown> | undefined;
  try {
    worker = await connectWorker(s);
    const { handler, runs } = doubler();
    let failed: unknown;
    running = worker.run(handler, stop.signal).catch((e: unknown) => (failed = e));
    await also();
    await completesDespiteForgeries(s.fabric, s.agent.id, ns, server.url, forger, runs);
    expect(failed).toBeUndefined();
  } finally {
    stop.abort();
    await running;
    await worker?.close();
    await forger.close();
    await s.fabric.close();
    await server.close();
  }
}

describeNats('NATS: forged answers on a worker’s reply subjects', () => {
  it('NatsWorker acts on none of them: every task completes once, nothing is lost', async () => {
    let worker!: NatsWorker;
    await underForgery(
      'fan',
      async ({ nats, agent }) => {
        worker = await NatsWorker.connect({
          nats,
          agentId: agent.id,
          credential: agent.credential,
          poolId: POOL,
          heartbeatSeconds: 0.2,
        });
        // Its run checks its pool with a heartbeat first: the forged answer names another pool.
        return {
          run: (handler, signal) => worker.run({ double: handler }, { signal }),
          close: () => worker.close(),
        };
      },
      // A heartbeat answer it acts on is the sidecar's, whatever came first.
      async () =>
        expect(await worker.heartbeat()).toEqual({ ok: true, status: 'HEALTHY', poolId: POOL }),
    );
    expect(worker.stats).toMatchObject({ completed: 5, refused: 0 });
  });

  it('FabricWorker over NatsWorkerTransport acts on none of them: every task completes once', async () => {
    await underForgery('fat', async ({ nats, agent }) => {
      // Its pool is checked with a heartbeat at connect: the forged answer names another pool.
      const transport = await NatsWorkerTransport.connect({
        nats,
        agentId: agent.id,
        credential: agent.credential,
        poolId: POOL,
      });
      const worker = FabricWorker.withTransport(transport, {
        heartbeatSeconds: 0.2,
        claimWaitSeconds: 1,
      });
      return {
        run: (handler, signal) => worker.run({ double: handler }, { signal }),
        close: () => worker.close(),
      };
    });
  });
});
