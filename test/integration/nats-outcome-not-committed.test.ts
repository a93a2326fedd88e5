/**
 * A worker's outcome report over NATS whose commit failed (the disk full) is not answered ok
 * until the end is on disk. A worker acks its JetStream message when its outcome is answered
 * ok; before, the answer went out after the commit whether or not it succeeded, so the worker
 * dropped its message while the end was in memory only, and a sidecar stopped before the disk
 * recovered lost it (the task ran again after its timeout). Now the answer is held back: the
 * worker sends the report again, and the repeat is answered once a commit succeeds.
 * Real nats-server, real SQLite state file; the disk is "full" for this test process alone (its
 * file size limit set to 0 with `prlimit --pid`, lifted in `finally`; the nats-server is another
 * process).
 */
import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterEach, expect, it } from 'vitest';
import type { AgentFabric } from '../../src/fabric.js';
import { TaskStatus } from '../../src/task.js';
import type { Answer } from '../../src/transport/nats/wire.js';
import { tempDir, until } from '../fixtures/gateway/harness.js';
import { describeNats, natsServerPerSuite } from '../fixtures/nats-server.js';
import { natsAgentSide, openNatsFabricOn, readyNatsAgent } from '../fixtures/nats/ready-fabric.js';
import { tasksIn } from '../fixtures/state/disk-full.js';

function diskFull(full: boolean): void {
  execFileSync('prlimit', [`--pid=${process.pid}`, `--fsize=${full ? 0 : 'unlimited'}:`]);
}

/** The task's status in the state file, read when called (`unreadable` when it cannot be). */
function statusOnDisk(path: string, id: string): string {
  try {
    return tasksIn(path).find((t) => t.id === id)?.status ?? 'absent';
  } catch {
    return 'unreadable';
  }
}

describeNats('an outcome reported over NATS while the state cannot be written', () => {
  const server = natsServerPerSuite();
  let fabric: AgentFabric | undefined;
  let nc: NatsConnection | undefined;
  afterEach(async () => {
    diskFull(false);
    await nc?.close();
    await fabric?.close();
    nc = fabric = undefined;
  });

  /**
   * A sidecar on the state file `path` (namespace `namespace`) with one task, started by a
   * worker's link (reports answered within 0.5 s, else sent again).
   */
  const started = async (path: string, namespace: string) => {
    const f = (fabric = await openNatsFabricOn(path, { url: server().url, namespace }));
    nc = await connect({ servers: server().url });
    const agent = await readyNatsAgent(f);
    const task = await f.schedule({ agentId: agent.id, taskType: 't', payload: 1 });
    const { link, consumer } = await natsAgentSide(nc, f, agent, 500);
    const message = link.parse((await consumer.next({ expires: 5000 }))!)!;
    expect((await link.report(message, 'start', { take: 'w1.1' }))?.ok).toBe(true);
    return { f, task, link, message };
  };

  for (const kind of ['complete', 'fail'] as const) {
    it(`a ${kind} is answered ok only once the task's end is on disk`, async () => {
      const path = join(tempDir(`nats-outcome-not-committed-${kind}`), 'state.db');
      const { f, task, link, message } = await started(path, `onc${kind}`);
      expect(statusOnDisk(path, task.id)).toBe(TaskStatus.RUNNING);

      let answer: Answer | undefined;
      let onDiskAtAnswer: string | undefined;
      try {
        diskFull(true);
        const outcome =
          kind === 'complete'
            ? { result: { done: true } }
            : { error: { code: 'E_WORK', message: 'broke' } };
        void link.report(message, kind, outcome).then((a) => {
          // What the worker would ack its message on: read the file at that moment.
          onDiskAtAnswer = statusOnDisk(path, task.id);
          answer = a;
        });
        // The sidecar applied it (in memory) and its commit failed …
        const ended = kind === 'complete' ? TaskStatus.COMPLETED : TaskStatus.FAILED;
        await until(async () => (await f.getTask(task.id)).status === ended, 10_000);
        // … and the worker's sends of it (its first, then repeats every ~0.5 s) go unanswered.
        await until(() => f.natsExecutor!.stats.answersWithheld >= 3, 20_000);
        expect(answer).toBeUndefined();
      } finally {
        diskFull(false);
      }
      // Space is back: the store's retry writes the end, and the next repeat is answered.
      await until(() => answer !== undefined, 20_000);
      expect(answer?.ok).toBe(true);
      expect(onDiskAtAnswer).toBe(kind === 'complete' ? TaskStatus.COMPLETED : TaskStatus.FAILED);
      expect(f.natsExecutor!.stats.reportsRejected).toBe(0);
      await link.close(false);
    }, 60_000);
  }

  it('a sidecar stopped before its disk recovered takes the outcome again from the worker that still holds it', async () => {
    const path = join(tempDir('nats-outcome-not-committed-stop'), 'state.db');
    const first = await started(path, 'oncstop');
    const { task, link, message } = first;
    let f = first.f;

    let answer: Answer | undefined;
    try {
      diskFull(true);
      void link.report(message, 'complete', { result: 42 }).then((a) => (answer = a));
      await until(() => f.natsExecutor!.stats.answersWithheld >= 1, 20_000);
      // Stopped with the end in memory only (the stop says so and exits uncleanly).
      await f.close().catch(() => undefined);
      fabric = undefined;
    } finally {
      diskFull(false);
    }
    expect(answer).toBeUndefined();
    expect(statusOnDisk(path, task.id)).toBe(TaskStatus.RUNNING);

    // Restarted on its file: the worker's next send of the outcome is taken and answered.
    f = fabric = await openNatsFabricOn(path, { url: server().url, namespace: 'oncstop' });
    await until(() => answer !== undefined, 30_000);
    expect(answer?.ok).toBe(true);
    const done = await f.getTask(task.id);
    expect(done.status).toBe(TaskStatus.COMPLETED);
    expect(done.result).toBe(42);
    expect(done.attempt).toBe(1);
    await link.close(false);
  }, 90_000);
});
