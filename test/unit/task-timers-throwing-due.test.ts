/**
 * A due handler that throws (a `task.finished` listener of the embedding program throwing inside
 * a task's timeout, deadline or release) must not stop the scheduler's other timers: before, the
 * throw left the timer loop before it armed the next timer, so every later timeout, deadline and
 * `notBefore` never fired — tasks stayed RUNNING past their timeout for good. The throw still
 * reaches the program (listener errors propagate), once; the timers fire on.
 */
import { afterEach, expect, it, vi } from 'vitest';
import { NOT_IN_HEAP } from '../../src/scheduler/indexed-heap.js';
import type { TaskRecord } from '../../src/scheduler/task-record.js';
import { TaskTimers } from '../../src/scheduler/task-timers.js';

afterEach(() => {
  vi.useRealTimers();
});

/** The fields the timers read of a task's record. */
const rec = (id: string): TaskRecord =>
  ({ id, timerAt: Number.POSITIVE_INFINITY, tIndex: NOT_IN_HEAP }) as unknown as TaskRecord;

it('a throwing due handler leaves the other timers armed, on both clocks', () => {
  vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'Date', 'performance'] });
  const seen: string[] = [];
  const timers = new TaskTimers((t) => {
    seen.push(t.id);
    if (t.id.startsWith('throws')) throw new Error(`listener of ${t.id}`);
  });
  try {
    // Two due at once (the first throws), one later; on the monotonic and the wall clock.
    timers.setIn(rec('throws-mono'), 10);
    timers.setIn(rec('mono-same-time'), 10);
    timers.setIn(rec('mono-later'), 50);
    timers.set(rec('throws-wall'), Date.now() + 10);
    timers.set(rec('wall-later'), Date.now() + 3000);
    expect(() => vi.advanceTimersByTime(5000)).toThrow(/listener of throws-/);
    expect(seen.sort()).toEqual([
      'mono-later',
      'mono-same-time',
      'throws-mono',
      'throws-wall',
      'wall-later',
    ]);
  } finally {
    timers.close();
  }
});
