/**
 * The contract every TaskExecutor must keep. `runExecutorContract({ name, create })` registers the
 * tests; each executor's test file calls it. Handlers used: `echo` (returns its payload) and
 * `boom` (throws an error with code E_BOOM) — `create` must register both.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { ExecutorSink, TaskExecutor } from '../../src/scheduler/executor.js';
import type { TaskAssignment, TaskError } from '../../src/task.js';

type Report =
  | { kind: 'complete'; taskId: string; attempt: number; result: unknown }
  | { kind: 'fail'; taskId: string; attempt: number; error: TaskError; retry: boolean };

class RecordingSink implements ExecutorSink {
  readonly reports: Report[] = [];
  #waiters: (() => void)[] = [];

  complete(taskId: string, attempt: number, result: unknown): void {
    this.reports.push({ kind: 'complete', taskId, attempt, result });
    this.#wake();
  }

  fail(taskId: string, attempt: number, error: TaskError, options?: { retry?: boolean }): void {
    this.reports.push({ kind: 'fail', taskId, attempt, error, retry: options?.retry === true });
    this.#wake();
  }

  started(): void {}
  progress(): void {}

  async waitFor(n: number): Promise<void> {
    while (this.reports.length < n) await new Promise<void>((r) => this.#waiters.push(r));
  }

  #wake(): void {
    for (const w of this.#waiters.splice(0)) w();
  }
}

function assignment(
  taskId: string,
  taskType: string,
  payload: unknown,
  attempt = 1,
): TaskAssignment {
  return {
    taskId,
    attempt,
    agentId: 'agent-1',
    taskType,
    payload,
    deadline: undefined,
    timeoutSeconds: 30,
  };
}

export function runExecutorContract(options: { name: string; create: () => TaskExecutor }): void {
  describe(`TaskExecutor contract: ${options.name}`, () => {
    let executor: TaskExecutor;
    let sink: RecordingSink;

    function setup(): void {
      executor = options.create();
      sink = new RecordingSink();
      executor.bind(sink);
      executor.attachAgent?.('agent-1');
    }

    afterEach(async () => executor?.close());

    it('reports each task of a batch exactly once, with its attempt', async () => {
      setup();
      const batch = Array.from({ length: 25 }, (_, i) =>
        assignment(`t${i}`, 'echo', { i }, 1 + (i % 3)),
      );
      executor.dispatch(batch);
      await sink.waitFor(25);
      expect(sink.reports).toHaveLength(25);
      const byId = new Map(sink.reports.map((r) => [r.taskId, r]));
      for (const a of batch) {
        expect(byId.get(a.taskId)).toMatchObject({
          kind: 'complete',
          attempt: a.attempt,
          result: a.payload,
        });
      }
    });

    it('reports a handler error as a non-retryable failure carrying its code', async () => {
      setup();
      executor.dispatch([assignment('bad', 'boom', {})]);
      await sink.waitFor(1);
      expect(sink.reports[0]).toMatchObject({
        kind: 'fail',
        taskId: 'bad',
        retry: false,
        error: { code: 'E_BOOM' },
      });
    });

    it('reports an unknown task type as FABRIC_ERR_HANDLER_NOT_FOUND instead of throwing', async () => {
      setup();
      expect(() => executor.dispatch([assignment('x', 'no-such-type', {})])).not.toThrow();
      await sink.waitFor(1);
      expect(sink.reports[0]).toMatchObject({
        kind: 'fail',
        error: { code: 'FABRIC_ERR_HANDLER_NOT_FOUND' },
      });
    });

    it('in a batch mixing known and unknown task types, runs the known ones and fails only the others', async () => {
      setup();
      const batch = [
        assignment('k1', 'echo', 1),
        assignment('u1', 'no-such-type', 2),
        assignment('k2', 'echo', 3),
        assignment('u2', 'no-such-type', 4),
      ];
      executor.dispatch(batch);
      await sink.waitFor(4);
      const byId = new Map(sink.reports.map((r) => [r.taskId, r]));
      expect(byId.get('k1')).toMatchObject({ kind: 'complete', result: 1 });
      expect(byId.get('k2')).toMatchObject({ kind: 'complete', result: 3 });
      for (const id of ['u1', 'u2'])
        expect(byId.get(id)).toMatchObject({
          kind: 'fail',
          error: { code: 'FABRIC_ERR_HANDLER_NOT_FOUND' },
        });
    });

    it('accepts aborts of unknown or finished tasks without throwing', async () => {
      setup();
      executor.dispatch([assignment('t', 'echo', 1)]);
      await sink.waitFor(1);
      expect(() => executor.abort('t', 1, { code: 'X', message: 'late' }, 'a1')).not.toThrow();
      expect(() =>
        executor.abort('never', 1, { code: 'X', message: 'unknown' }, 'a1'),
      ).not.toThrow();
    });

    it('reports a positive capacity for an attached agent', () => {
      setup();
      expect(executor.capacity('agent-1')).toBeGreaterThan(0);
    });
  });
}
