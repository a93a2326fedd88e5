/**
 * The gateway's task store on its own (fake timers): ttl bound and expiry, ownership, restore
 * from a store, the approval hand-back a restored task relies on, and the status an upstream
 * reports for a passed-through task.
 */
import { ErrorCode, McpError, type Result } from '@modelcontextprotocol/sdk/types.js';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ConfigError } from '../../src/errors.js';
import {
  parseToolTasksOptions,
  ToolTasks,
  type ToolTaskRecord,
  type ToolTaskRun,
} from '../../src/gateway/tool-tasks.js';
import { ApprovalManager } from '../../src/policy/approval-manager.js';
import { MemoryCollection } from '../../src/store/memory-store.js';

const never = (task: ToolTaskRun): Promise<Result> =>
  new Promise((_resolve, reject) =>
    task.signal.addEventListener('abort', () => reject(new Error('aborted'))),
  );

function code(fn: () => unknown): number | undefined {
  try {
    fn();
  } catch (error) {
    return error instanceof McpError ? error.code : -1;
  }
  return undefined;
}

describe('ToolTasks', () => {
  let tasks: ToolTasks;
  beforeEach(() => {
    vi.useFakeTimers();
    vi.setSystemTime(new Date('2026-12-02T10:00:00Z'));
  });
  afterEach(() => {
    tasks?.close();
    vi.useRealTimers();
  });

  it('rejects bad options by name', () => {
    expect(() => parseToolTasksOptions({ maxTtlMs: 0 })).toThrow(ConfigError);
    expect(() => parseToolTasksOptions({ defaultTtlMs: 10, maxTtlMs: 5 })).toThrow(
      /tasks.defaultTtlMs/,
    );
    expect(parseToolTasksOptions({ maxTtlMs: 1000 }).defaultTtlMs).toBe(1000);
  });

  it('forgets a task at its ttl and aborts its call', async () => {
    tasks = new ToolTasks({ maxTtlMs: 60_000 });
    let signal: AbortSignal | undefined;
    const { task } = tasks.create({ agentId: 'a' }, 't', { ttl: 10 ** 12 }, (run) => {
      signal = run.signal;
      return never(run);
    });
    expect(task.ttl).toBe(60_000);
    await vi.advanceTimersByTimeAsync(59_000);
    expect(tasks.get('a', task.taskId).status).toBe('working');
    await vi.advanceTimersByTimeAsync(2_000);
    expect(code(() => tasks.get('a', task.taskId))).toBe(ErrorCode.InvalidParams);
    expect(signal?.aborted).toBe(true);
    expect(tasks.list('a').tasks).toEqual([]);
  });

  it('counts a ttl as elapsed time: a wall-clock step neither forgets tasks nor keeps them', async () => {
    const store = new MemoryCollection<ToolTaskRecord>();
    tasks = new ToolTasks({ maxTtlMs: 60_000 }, store);
    let signal: AbortSignal | undefined;
    const { task } = tasks.create({ agentId: 'a' }, 't', { ttl: 60_000 }, (run) => {
      signal = run.signal;
      return never(run);
    });
    // The wall clock jumps a day ahead (no time passes), and a sweep runs.
    vi.setSystemTime(Date.now() + 86_400_000);
    await vi.advanceTimersByTimeAsync(1_000);
    expect(tasks.get('a', task.taskId).status).toBe('working');
    expect(signal?.aborted).toBe(false);
    expect(store.get(task.taskId)).toBeDefined();
    // Then two days back: the task still ends a minute after it was made, its call aborted.
    vi.setSystemTime(Date.now() - 2 * 86_400_000);
    await vi.advanceTimersByTimeAsync(59_001);
    expect(signal?.aborted).toBe(true);
    expect(code(() => tasks.get('a', task.taskId))).toBe(ErrorCode.InvalidParams);
    expect(store.get(task.taskId)).toBeUndefined();
  });

  it('pages tasks/list on: a cursor outlives the task it was given after', async () => {
    tasks = new ToolTasks({ maxPerAgent: 101 });
    const ids: string[] = [];
    for (let i = 0; i < 101; i++) {
      // The 100th ends at once; the others run on.
      const run = i === 99 ? (): Promise<Result> => Promise.resolve({ content: [] }) : never;
      ids.push(tasks.create({ agentId: 'a' }, 't', {}, run).task.taskId);
      vi.advanceTimersByTime(1); // one a millisecond: listed in the order they were made
    }
    await vi.advanceTimersByTimeAsync(0);
    const first = tasks.list('a');
    expect(first.tasks.map((t) => t.taskId)).toEqual(ids.slice(0, 100));
    expect(first.nextCursor).toBeDefined();
    // At the cap, a new task makes room by forgetting the finished one the cursor came after.
    const newest = tasks.create({ agentId: 'a' }, 't', {}, never).task.taskId;
    expect(code(() => tasks.get('a', ids[99]))).toBe(ErrorCode.InvalidParams);
    const second = tasks.list('a', first.nextCursor);
    expect(second.tasks.map((t) => t.taskId)).toEqual([ids[100], newest]);
    expect(second.nextCursor).toBeUndefined();
  });

  it("pages another agent's cursor (or a forged one) through the caller's own tasks only", () => {
    tasks = new ToolTasks({ maxPerAgent: 300 });
    const mine: string[] = [];
    const theirs: string[] = [];
    for (let i = 0; i < 101; i++) {
      theirs.push(tasks.create({ agentId: 'owner' }, 't', {}, never).task.taskId);
      mine.push(tasks.create({ agentId: 'intruder' }, 't', {}, never).task.taskId);
      vi.advanceTimersByTime(1);
    }
    const given = tasks.list('owner').nextCursor!;
    const page = tasks.list('intruder', given);
    // Its own tasks made after the owner's 100th: its 100th (made just after it) and 101st.
    expect(page.tasks.map((t) => t.taskId)).toEqual(mine.slice(99));
    const forged = Buffer.from(`0:tt_${'0'.repeat(8)}-0000-4000-8000-${'0'.repeat(12)}`).toString(
      'base64url',
    );
    const all = [
      ...tasks.list('intruder', forged).tasks,
      ...tasks.list('intruder', tasks.list('intruder', forged).nextCursor).tasks,
    ];
    expect(all.map((t) => t.taskId)).toEqual(mine);
    expect(all.some((t) => theirs.includes(t.taskId))).toBe(false);
  });

  it('pages on to a task made after the wall clock stepped back between the pages', () => {
    // Found in review: the list was sorted by createdAt, so a task made after a step back sorted
    // before the cursor and the paging client never saw it.
    tasks = new ToolTasks({ maxPerAgent: 300 });
    const made: string[] = [];
    for (let i = 0; i < 101; i++) {
      made.push(tasks.create({ agentId: 'a' }, 't', {}, never).task.taskId);
      vi.advanceTimersByTime(1);
    }
    const first = tasks.list('a');
    expect(first.tasks).toHaveLength(100);
    vi.setSystemTime(Date.now() - 3_600_000);
    const later = tasks.create({ agentId: 'a' }, 't', {}, never).task;
    // It says when it was made, by the stepped clock; it is listed after the ones made before.
    expect(Date.parse(later.createdAt)).toBe(Date.now());
    const second = tasks.list('a', first.nextCursor);
    expect(second.tasks.map((t) => t.taskId)).toEqual([made[100], later.taskId]);
    expect(second.nextCursor).toBeUndefined();
  });

  it('lists tasks made in the same millisecond in the order they were made', () => {
    tasks = new ToolTasks({ maxPerAgent: 300 });
    const made = Array.from(
      { length: 150 },
      () => tasks.create({ agentId: 'a' }, 't', {}, never).task.taskId,
    );
    const first = tasks.list('a');
    const listed = [...first.tasks, ...tasks.list('a', first.nextCursor).tasks];
    expect(listed.map((t) => t.taskId)).toEqual(made);
  });

  it('refuses a tasks/list cursor it did not give, by the same rule for every agent', () => {
    tasks = new ToolTasks();
    const { task } = tasks.create({ agentId: 'owner' }, 't', {}, never);
    tasks.create({ agentId: 'intruder' }, 't', {}, never);
    for (const cursor of [task.taskId, 'tt_nope', '', 'x'.repeat(100_000), 5, {}, null]) {
      let error: unknown;
      try {
        tasks.list('intruder', cursor);
      } catch (e) {
        error = e;
      }
      expect(error).toBeInstanceOf(McpError);
      expect((error as McpError).code).toBe(ErrorCode.InvalidParams);
      // Said once, not as the SDK's "MCP error -32602: " prefix doubled on the client's side.
      expect((error as McpError).message).not.toMatch(/^MCP error/);
      expect((error as McpError).message.length).toBeLessThan(300);
    }
  });

  it("answers another agent's task id exactly like an unknown one", () => {
    tasks = new ToolTasks();
    const { task } = tasks.create({ agentId: 'owner' }, 't', {}, never);
    const stranger = (): unknown => tasks.get('intruder', task.taskId);
    const unknown = (): unknown => tasks.get('intruder', 'tt_nope');
    expect(code(stranger)).toBe(ErrorCode.InvalidParams);
    expect(code(() => tasks.cancel('intruder', task.taskId))).toBe(ErrorCode.InvalidParams);
    let a = '';
    let b = '';
    try {
      stranger();
    } catch (e) {
      a = (e as Error).message.replace(task.taskId, 'ID');
    }
    try {
      unknown();
    } catch (e) {
      b = (e as Error).message.replace('tt_nope', 'ID');
    }
    expect(a).toBe(b);
    expect(tasks.get('owner', task.taskId).status).toBe('working');
  });

  it('restores from its store: finished tasks keep their result, forwarded ones fail, parked ones wait to resume', async () => {
    const store = new MemoryCollection<ToolTaskRecord>();
    const now = Date.now();
    const base = { agentId: 'a', tool: 't', createdAt: now, updatedAt: now, ttl: 60_000 };
    store.put('tt_done', {
      ...base,
      taskId: 'tt_done',
      status: 'completed',
      result: { content: [] },
    });
    store.put('tt_fwd', { ...base, taskId: 'tt_fwd', status: 'working' });
    store.put('tt_park', {
      ...base,
      taskId: 'tt_park',
      status: 'input_required',
      approvalId: 'apr_1',
      arguments: { x: 1 },
    });
    store.put('tt_old', {
      ...base,
      taskId: 'tt_old',
      status: 'completed',
      createdAt: now - 70_000,
    });
    tasks = new ToolTasks({}, store);
    expect(store.get('tt_old')).toBeUndefined();
    expect(tasks.get('a', 'tt_fwd')).toMatchObject({ status: 'failed' });
    expect(tasks.get('a', 'tt_fwd').statusMessage).toContain('whether the tool ran is unknown');
    expect(tasks.get('a', 'tt_park').status).toBe('input_required');
    const seen: Array<{ args: unknown; approvalId: string | undefined }> = [];
    tasks.resume(async (record, run) => {
      seen.push({ args: record.arguments, approvalId: run.approvalId });
      return { content: [{ type: 'text', text: 'ran' }] };
    });
    await vi.advanceTimersByTimeAsync(0);
    expect(seen).toEqual([{ args: { x: 1 }, approvalId: 'apr_1' }]);
    expect(tasks.get('a', 'tt_park').status).toBe('completed');
    const result = await tasks.result('a', 'tt_done', new AbortController().signal);
    expect(result._meta).toEqual({ 'io.modelcontextprotocol/related-task': { taskId: 'tt_done' } });
  });

  it('a cap lowered across a restart holds: a new task makes room down to it, oldest first', () => {
    const store = new MemoryCollection<ToolTaskRecord>();
    const now = Date.now();
    for (let i = 0; i < 5; i++) {
      store.put(`tt_${i}`, {
        taskId: `tt_${i}`,
        agentId: 'a',
        tool: 't',
        status: 'completed',
        result: { content: [] },
        createdAt: now - 5 + i,
        updatedAt: now,
        ttl: 60_000,
      });
    }
    tasks = new ToolTasks({ maxPerAgent: 2 }, store);
    const { task } = tasks.create({ agentId: 'a' }, 't', {}, never);
    expect(tasks.list('a').tasks.map((t) => t.taskId)).toEqual(['tt_4', task.taskId]);
    expect([...store.values()]).toHaveLength(2);
  });

  it("takes only the mapped upstream's non-terminal status, and tells the owner", async () => {
    const told: Array<[string, string, string | undefined]> = [];
    tasks = new ToolTasks({}, undefined, {
      onStatus: (agentId, task) => told.push([agentId, task.status, task.statusMessage]),
    });
    let run: ToolTaskRun | undefined;
    const { task } = tasks.create({ agentId: 'a' }, 't', {}, (r) => {
      run = r;
      return never(r);
    });
    await vi.advanceTimersByTimeAsync(0);
    const at = '2026-01-01T00:00:00.000Z';
    run!.relayed('up', 'u-1', at);
    expect(tasks.linkOf('a', task.taskId)?.upstream).toEqual({
      name: 'up',
      taskId: 'u-1',
      createdAt: at,
    });
    expect(code(() => tasks.linkOf('b', task.taskId))).toBe(ErrorCode.InvalidParams);
    // Another upstream's task of the same id, an unknown id, a bad status, the same id made at
    // another time (a restarted upstream's) or at an unknown time: nothing changes.
    tasks.relayStatus('other', 'u-1', 'input_required', 'x', at);
    tasks.relayStatus('up', 'u-2', 'input_required', 'x', at);
    tasks.relayStatus('up', { id: 'u-1' }, 'input_required', 'x', at);
    tasks.relayStatus('up', 'u-1', 'bogus', 'x', at);
    tasks.relayStatus('up', 'u-1', 'input_required', 'x', '2026-01-01T00:00:09.000Z');
    tasks.relayStatus('up', 'u-1', 'input_required', 'x', undefined);
    // A terminal status does not end the task: its call's result does.
    tasks.relayStatus('up', 'u-1', 'completed', 'done', at);
    expect(tasks.get('a', task.taskId).status).toBe('working');
    expect(told).toEqual([]);
    tasks.relayStatus('up', 'u-1', 'input_required', 'm'.repeat(10_000), at);
    const parked = tasks.get('a', task.taskId);
    expect(parked.status).toBe('input_required');
    expect(parked.statusMessage).toHaveLength(500);
    expect(told).toEqual([['a', 'input_required', 'm'.repeat(500)]]);
  });

  it('restores a passed-through task for resuming, with its upstream task', () => {
    const store = new MemoryCollection<ToolTaskRecord>();
    const now = Date.now();
    const base = {
      agentId: 'a',
      tool: 't',
      status: 'working' as const,
      createdAt: now,
      updatedAt: now,
    };
    store.put('tt_1', {
      ...base,
      taskId: 'tt_1',
      ttl: 60_000,
      upstream: { name: 'up', taskId: 'u' },
    });
    store.put('tt_2', { ...base, taskId: 'tt_2', ttl: 60_000, fabricTaskId: 'f-1' });
    store.put('tt_3', { ...base, taskId: 'tt_3', ttl: 60_000 });
    tasks = new ToolTasks({}, store);
    expect(tasks.get('a', 'tt_3').status).toBe('failed');
    const resumed: Array<Pick<ToolTaskRun, 'upstreamTask' | 'fabricTaskId'>> = [];
    tasks.resume(async (_record, run) => {
      resumed.push({ upstreamTask: run.upstreamTask, fabricTaskId: run.fabricTaskId });
      return never(run);
    });
    return vi.advanceTimersByTimeAsync(0).then(() => {
      expect(resumed).toEqual([
        { upstreamTask: { name: 'up', taskId: 'u' }, fabricTaskId: undefined },
        { upstreamTask: undefined, fabricTaskId: 'f-1' },
      ]);
      expect(tasks.get('a', 'tt_1').status).toBe('working');
    });
  });
});

describe('ApprovalManager.resume', () => {
  it('hands an approval back only to the same agent, tool, rule and params', () => {
    const approvals = new ApprovalManager();
    const request = { agentId: 'a', tool: 't', params: { m: 1 }, policy: 'p', rule: 0 };
    const created = approvals.create(request);
    approvals.orphan(created.id);
    expect(approvals.resume(created.id, { ...request, agentId: 'b' })).toBeUndefined();
    expect(approvals.resume(created.id, { ...request, tool: 'u' })).toBeUndefined();
    expect(approvals.resume(created.id, { ...request, params: { m: 2 } })).toBeUndefined();
    expect(approvals.resume(created.id, { ...request, rule: 1 })).toBeUndefined();
    expect(approvals.resume('apr_unknown', request)).toBeUndefined();
    expect(approvals.getApproval(created.id)?.orphaned).toBe(true);
    const resumed = approvals.resume(created.id, request);
    expect(resumed?.id).toBe(created.id);
    expect(resumed?.orphaned).toBeUndefined();
    approvals.close();
  });
});
