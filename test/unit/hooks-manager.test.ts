import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  ClosedError,
  HookNotFoundError,
  HookRetryLimitError,
  HookStateError,
  HookWorkItemTooLargeError,
  InvalidArgumentError,
} from '../../src/errors.js';
import {
  HOOKS_REF,
  HookManager,
  HookStatus,
  type AgentLiveness,
  type Hook,
  type HookManagerOptions,
  type HookTransitionEvent,
} from '../../src/hooks/index.js';
import { git, tempDir, type TempDir } from '../fixtures/hooks/temp-store.js';

let dir: TempDir;
const open: HookManager[] = [];

beforeEach(async () => {
  dir = await tempDir();
});

afterEach(async () => {
  vi.useRealTimers();
  await Promise.all(open.splice(0).map((m) => m.close()));
  await dir.cleanup();
});

function manager(options: Partial<HookManagerOptions> = {}): HookManager {
  const m = new HookManager({ storagePath: dir.path, useGitWorktree: false, ...options });
  open.push(m);
  return m;
}

/** Subjects of the commits on the state ref, oldest first. */
function auditTrail(): string[] {
  return git(dir.path, 'log', '--reverse', '--format=%s', HOOKS_REF).split('\n');
}

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error('expected a rejection');
}

describe('HookManager transitions', () => {
  it('runs create → activate → complete, one commit per transition, with events', async () => {
    const hooks = manager();
    const events: string[] = [];
    for (const name of ['hook.created', 'hook.activated', 'hook.completed'] as const) {
      hooks.on(name, (e: HookTransitionEvent) => events.push(`${name}:${e.from}->${e.to}`));
    }
    // No open(): the first call initialises the store (the guide's usage).
    const hook = await hooks.createHook({
      agentId: 'agent-1',
      workItem: { task: 'refactor', file: 'api.py' },
      branch: 'agent/refactor-123',
    });
    expect(hook).toMatchObject({
      agentId: 'agent-1',
      status: HookStatus.PENDING,
      workItem: { task: 'refactor', file: 'api.py' },
      branch: 'agent/refactor-123',
      worktreePath: null,
      attempts: 1,
      reassignments: 0,
      version: 1,
    });
    expect(Object.isFrozen(hook)).toBe(true);
    expect(Object.isFrozen(hook.workItem)).toBe(true);

    const active = await hooks.activateHook(hook.hookId);
    expect(active.status).toBe(HookStatus.ACTIVE);
    const done = await hooks.completeHook(hook.hookId, { filesChanged: ['api.py'] });
    expect(done).toMatchObject({
      status: HookStatus.COMPLETED,
      result: { filesChanged: ['api.py'] },
    });
    expect(done.version).toBe(3);

    expect(events).toEqual([
      'hook.created:null->PENDING',
      'hook.activated:PENDING->ACTIVE',
      'hook.completed:ACTIVE->COMPLETED',
    ]);
    expect(auditTrail()).toEqual([
      `hook ${hook.hookId}: created -> PENDING`,
      `hook ${hook.hookId}: PENDING -> ACTIVE`,
      `hook ${hook.hookId}: ACTIVE -> COMPLETED`,
    ]);
    // The state of each commit is in its tree, for the audit trail.
    const shard = hook.hookId.slice(14, 16);
    const first = JSON.parse(
      git(dir.path, 'show', `${HOOKS_REF}~2:hooks/${shard}/${hook.hookId}.json`),
    ) as Hook;
    expect(first.status).toBe(HookStatus.PENDING);
    expect(git(dir.path, 'log', '-1', '--format=%an <%ae>', HOOKS_REF)).toBe(
      'agent-fabric <hooks@agent-fabric.local>',
    );
  });

  it('creates the store with an initial commit and leaves user branches alone', async () => {
    const hooks = manager();
    await hooks.open();
    expect(git(dir.path, 'rev-parse', '--abbrev-ref', 'HEAD')).toBe('main');
    expect(git(dir.path, 'log', '--format=%s', 'main')).toBe('agent-fabric: initialise hook store');
    const h = await hooks.createHook({ agentId: 'a', workItem: 1 });
    await hooks.activateHook(h.hookId);
    expect(git(dir.path, 'rev-list', '--count', 'main')).toBe('1');
    expect(git(dir.path, 'status', '--porcelain')).toBe('');
  });

  it('uses an existing repository as is: HEAD, index and working tree untouched', async () => {
    git(dir.path, 'init', '-q', '-b', 'trunk');
    git(
      dir.path,
      '-c',
      'user.name=u',
      '-c',
      'user.email=u@x',
      'commit',
      '-q',
      '--allow-empty',
      '-m',
      'mine',
    );
    await writeFile(join(dir.path, 'staged.txt'), 'staged');
    await writeFile(join(dir.path, 'untracked.txt'), 'untracked');
    git(dir.path, 'add', 'staged.txt');
    const before = {
      head: git(dir.path, 'rev-parse', 'HEAD'),
      status: git(dir.path, 'status', '--porcelain'),
      refs: git(dir.path, 'for-each-ref', '--format=%(refname) %(objectname)', 'refs/heads'),
    };
    const hooks = manager();
    const h = await hooks.createHook({ agentId: 'a', workItem: { x: 1 } });
    await hooks.activateHook(h.hookId);
    await hooks.failHook(h.hookId, new Error('boom'));
    expect({
      head: git(dir.path, 'rev-parse', 'HEAD'),
      status: git(dir.path, 'status', '--porcelain'),
      refs: git(dir.path, 'for-each-ref', '--format=%(refname) %(objectname)', 'refs/heads'),
    }).toEqual(before);
    expect(git(dir.path, 'rev-list', '--count', HOOKS_REF)).toBe('3');
  });

  it('throws HookStateError with from/to on illegal transitions, and commits nothing', async () => {
    const hooks = manager();
    const h = await hooks.createHook({ agentId: 'a', workItem: {} });
    const cases: [Promise<unknown>, string, string][] = [
      [hooks.completeHook(h.hookId, null), 'PENDING', 'COMPLETED'],
      [hooks.failHook(h.hookId, 'x'), 'PENDING', 'FAILED'],
      [hooks.reassignHook(h.hookId, 'b'), 'PENDING', 'PENDING'],
    ];
    for (const [p, from, to] of cases) {
      const err = await rejection(p);
      expect(err).toBeInstanceOf(HookStateError);
      expect((err as HookStateError).details).toMatchObject({ hookId: h.hookId, from, to });
    }
    await hooks.activateHook(h.hookId);
    await hooks.completeHook(h.hookId);
    for (const p of [
      hooks.activateHook(h.hookId),
      hooks.abandonHook(h.hookId, 'gone'),
      hooks.reassignHook(h.hookId, 'b'),
      hooks.recordProgress(h.hookId, 'late'),
    ]) {
      expect(await rejection(p)).toBeInstanceOf(HookStateError);
    }
    expect(auditTrail()).toHaveLength(3);
  });

  it('reports unknown and malformed hook ids with typed errors', async () => {
    const hooks = manager();
    const unknown = 'hk-0000000000-0123456789abcdef';
    for (const p of [
      hooks.getHook(unknown),
      hooks.activateHook(unknown),
      hooks.completeHook(unknown),
      hooks.inspectWorktree(unknown),
    ]) {
      const err = await rejection(p);
      expect(err).toBeInstanceOf(HookNotFoundError);
      expect((err as HookNotFoundError).details.hookId).toBe(unknown);
    }
    for (const bad of ['../../etc', 'hk-x', '']) {
      expect(await rejection(hooks.getHook(bad))).toBeInstanceOf(InvalidArgumentError);
      expect(await rejection(hooks.activateHook(bad))).toBeInstanceOf(InvalidArgumentError);
    }
  });

  it('rejects bad input to createHook without committing anything', async () => {
    const hooks = manager({ maxWorkItemBytes: 64 });
    await hooks.open();
    const bad: [unknown, unknown][] = [
      [{ agentId: '', workItem: {} }, InvalidArgumentError],
      [{ agentId: 'a\nb', workItem: {} }, InvalidArgumentError],
      [{ agentId: 'a', workItem: { f: () => 1 } }, InvalidArgumentError],
      [{ agentId: 'a', workItem: { big: 'x'.repeat(100) } }, HookWorkItemTooLargeError],
      [{ agentId: 'a', workItem: {}, branch: 'bad branch' }, InvalidArgumentError],
      [{ agentId: 'a', workItem: {}, branch: '-x' }, InvalidArgumentError],
      [null, InvalidArgumentError],
    ];
    for (const [request, type] of bad) {
      expect(await rejection(hooks.createHook(request as never))).toBeInstanceOf(type);
    }
    const h = await hooks.createHook({ agentId: 'a', workItem: {} });
    await hooks.activateHook(h.hookId);
    expect(await rejection(hooks.completeHook(h.hookId, 'y'.repeat(100)))).toBeInstanceOf(
      HookWorkItemTooLargeError,
    );
    expect(await rejection(hooks.failHook(h.hookId, 42 as never))).toBeInstanceOf(
      InvalidArgumentError,
    );
    expect(auditTrail()).toHaveLength(2);
    expect((await hooks.getHook(h.hookId)).status).toBe(HookStatus.ACTIVE);
  });

  it('records failures from Errors, strings and coded objects', async () => {
    const hooks = manager();
    const make = async (): Promise<string> => {
      const h = await hooks.createHook({ agentId: 'a', workItem: {} });
      await hooks.activateHook(h.hookId);
      return h.hookId;
    };
    const a = await hooks.failHook(await make(), new TypeError('bad type'));
    expect(a.error).toEqual({ message: 'bad type', code: null, name: 'TypeError' });
    const b = await hooks.failHook(await make(), 'plain');
    expect(b.error).toEqual({ message: 'plain', code: null, name: null });
    const c = await hooks.failHook(await make(), { message: 'coded', code: 'E_X' });
    expect(c.error).toEqual({ message: 'coded', code: 'E_X', name: null });
  });

  it('treats activate of an ACTIVE hook as a no-op and checks the agent', async () => {
    const hooks = manager();
    const h = await hooks.createHook({ agentId: 'a', workItem: {} });
    await hooks.activateHook(h.hookId, { agentId: 'a' });
    const again = await hooks.activateHook(h.hookId, { agentId: 'a' });
    expect(again.version).toBe(2);
    const err = await rejection(hooks.activateHook(h.hookId, { agentId: 'b' }));
    expect(err).toBeInstanceOf(HookStateError);
    expect((err as HookStateError).details).toMatchObject({ agentId: 'a', requestedBy: 'b' });
    expect(auditTrail()).toHaveLength(2);
  });

  it('reassigns ABANDONED and FAILED hooks within maxReassignments', async () => {
    const hooks = manager({ maxReassignments: 2 });
    const seen: string[] = [];
    hooks.on('hook.reassigned', (e) => seen.push(`${e.fromAgentId}->${e.toAgentId}`));
    const h = await hooks.createHook({ agentId: 'a', workItem: {} });
    await hooks.activateHook(h.hookId);
    await hooks.abandonHook(h.hookId, 'agent a died');
    const r1 = await hooks.reassignHook(h.hookId, 'b');
    expect(r1).toMatchObject({
      status: HookStatus.PENDING,
      agentId: 'b',
      attempts: 2,
      reassignments: 1,
      previousAgents: ['a'],
      abandonReason: 'agent a died',
    });
    await hooks.activateHook(h.hookId);
    await hooks.failHook(h.hookId, 'tests failed');
    const r2 = await hooks.reassignHook(h.hookId, 'c');
    expect(r2).toMatchObject({ agentId: 'c', attempts: 3, previousAgents: ['a', 'b'] });
    expect(r2.error?.message).toBe('tests failed');
    await hooks.activateHook(h.hookId);
    await hooks.failHook(h.hookId, 'again');
    const err = await rejection(hooks.reassignHook(h.hookId, 'd'));
    expect(err).toBeInstanceOf(HookRetryLimitError);
    expect((err as HookRetryLimitError).details).toMatchObject({ reassignments: 2, limit: 2 });
    expect(seen).toEqual(['a->b', 'b->c']);
    expect(auditTrail().slice(-3)).toEqual([
      `hook ${h.hookId}: FAILED -> PENDING`,
      `hook ${h.hookId}: PENDING -> ACTIVE`,
      `hook ${h.hookId}: ACTIVE -> FAILED`,
    ]);
  });

  it('answers hookFor, listHooks and getHook', async () => {
    let now = 1_000_000;
    const hooks = manager({ clock: () => now });
    const p1 = await hooks.createHook({ agentId: 'a', workItem: 1 });
    now += 10;
    const p2 = await hooks.createHook({ agentId: 'a', workItem: 2 });
    now += 10;
    const other = await hooks.createHook({ agentId: 'b', workItem: 3 });
    expect(await hooks.hookFor('nobody')).toBeUndefined();
    expect((await hooks.hookFor('a'))?.hookId).toBe(p1.hookId);
    await hooks.activateHook(p2.hookId);
    expect((await hooks.hookFor('a'))?.hookId).toBe(p2.hookId);
    expect((await hooks.listHooks({ agentId: 'a' })).map((h) => h.hookId)).toEqual([
      p1.hookId,
      p2.hookId,
    ]);
    expect((await hooks.listHooks({ status: HookStatus.PENDING })).map((h) => h.hookId)).toEqual([
      p1.hookId,
      other.hookId,
    ]);
    expect(
      await hooks.listHooks({ agentId: 'b', status: [HookStatus.ACTIVE, HookStatus.COMPLETED] }),
    ).toEqual([]);
    expect(await hooks.listHooks()).toHaveLength(3);
    expect(await hooks.getHook(other.hookId)).toEqual(other);
  });

  it('serialises concurrent calls: every transition committed, in one consistent history', async () => {
    const hooks = manager();
    const created = await Promise.all(
      Array.from({ length: 24 }, (_, i) =>
        hooks.createHook({ agentId: `agent-${i % 4}`, workItem: { i } }),
      ),
    );
    await Promise.all(created.map((h) => hooks.activateHook(h.hookId)));
    const finished = await Promise.all(
      created.map((h, i) =>
        i % 3 === 0
          ? hooks.completeHook(h.hookId, { i })
          : i % 3 === 1
            ? hooks.failHook(h.hookId, `f${i}`)
            : hooks.abandonHook(h.hookId, `a${i}`),
      ),
    );
    // Racing calls on one hook: exactly one wins.
    const races = await Promise.allSettled([
      hooks.reassignHook(created[2]!.hookId, 'x'),
      hooks.reassignHook(created[2]!.hookId, 'y'),
    ]);
    expect(races.filter((r) => r.status === 'fulfilled')).toHaveLength(1);
    expect(finished.map((h) => h.version)).toEqual(finished.map(() => 3));
    expect(auditTrail()).toHaveLength(24 * 3 + 1);
    expect(git(dir.path, 'fsck', '--strict', '--no-dangling')).toBe('');

    await hooks.close();
    const reopened = manager();
    const all = await reopened.listHooks();
    expect(all).toHaveLength(24);
    const byId = new Map(all.map((h) => [h.hookId, h]));
    for (const h of finished) {
      if (h.hookId !== created[2]!.hookId) expect(byId.get(h.hookId)?.status).toBe(h.status);
    }
    expect(byId.get(created[2]!.hookId)?.status).toBe(HookStatus.PENDING);
  });
});

describe('HookManager restart', () => {
  it('sees every hook in its last committed state after a restart', async () => {
    const first = manager();
    const a = await first.createHook({ agentId: 'a', workItem: { n: 1 } });
    const b = await first.createHook({ agentId: 'b', workItem: { n: 2 } });
    await first.activateHook(a.hookId);
    await first.recordProgress(a.hookId, 'half way');
    await first.close();

    const second = manager();
    expect(await second.getHook(a.hookId)).toMatchObject({
      status: HookStatus.ACTIVE,
      progressNote: 'half way',
      version: 3,
    });
    expect(await second.getHook(b.hookId)).toEqual(b);
    expect((await second.hookFor('a'))?.hookId).toBe(a.hookId);
    // And keeps writing on top of the same history.
    await second.completeHook(a.hookId, 'ok');
    expect(auditTrail()).toHaveLength(5);
  });

  it('close() waits for queued work, releases the lock and refuses later calls', async () => {
    const hooks = manager();
    const h = await hooks.createHook({ agentId: 'a', workItem: {} });
    const pending = hooks.activateHook(h.hookId);
    const closing = hooks.close();
    await expect(pending).resolves.toMatchObject({ status: HookStatus.ACTIVE });
    await closing;
    await hooks.close();
    expect(await rejection(hooks.getHook(h.hookId))).toBeInstanceOf(ClosedError);
    expect(() => hooks.startPatrol()).toThrow(ClosedError);
    const next = await HookManager.open({ storagePath: dir.path, useGitWorktree: false });
    open.push(next);
    expect((await next.getHook(h.hookId)).status).toBe(HookStatus.ACTIVE);
  });
});

describe('patrol', () => {
  function liveness(dead: Set<string>): AgentLiveness {
    return { isAlive: async (id) => !dead.has(id) };
  }

  it('marks PENDING and ACTIVE hooks of dead agents ABANDONED', async () => {
    const dead = new Set<string>();
    const hooks = manager({ liveness: liveness(dead) });
    const abandoned: string[] = [];
    hooks.on('hook.abandoned', (e) => abandoned.push(`${e.hook.agentId}:${e.from}`));
    const a = await hooks.createHook({ agentId: 'a', workItem: 1 });
    const b = await hooks.createHook({ agentId: 'b', workItem: 2 });
    const c = await hooks.createHook({ agentId: 'c', workItem: 3 });
    const done = await hooks.createHook({ agentId: 'a', workItem: 4 });
    await hooks.activateHook(a.hookId);
    await hooks.activateHook(b.hookId);
    await hooks.activateHook(done.hookId);
    await hooks.completeHook(done.hookId);

    expect((await hooks.checkPendingHooks()).map((h) => h.status)).toEqual([
      HookStatus.ACTIVE,
      HookStatus.ACTIVE,
      HookStatus.PENDING,
    ]);
    dead.add('a').add('c');
    const patrol = await hooks.checkPendingHooks();
    expect(patrol.map((h) => [h.hookId, h.status])).toEqual([
      [a.hookId, HookStatus.ABANDONED],
      [b.hookId, HookStatus.ACTIVE],
      [c.hookId, HookStatus.ABANDONED],
    ]);
    expect(patrol[0]!.abandonReason).toMatch(/agent a is not alive/);
    expect(abandoned.sort()).toEqual(['a:ACTIVE', 'c:PENDING']);
    expect((await hooks.getHook(done.hookId)).status).toBe(HookStatus.COMPLETED);
    // Idempotent: a second patrol changes nothing.
    const commits = auditTrail().length;
    await hooks.checkPendingHooks();
    expect(auditTrail()).toHaveLength(commits);
  });

  it('leaves hooks alone when the liveness source fails, and reports it', async () => {
    const hooks = manager({
      liveness: {
        isAlive: () => {
          throw new Error('lifecycle unavailable');
        },
      },
    });
    const errors: unknown[] = [];
    hooks.on('patrol.error', (e) => errors.push(e.error));
    const h = await hooks.createHook({ agentId: 'a', workItem: 1 });
    await hooks.activateHook(h.hookId);
    const [p] = await hooks.checkPendingHooks();
    expect(p?.status).toBe(HookStatus.ACTIVE);
    expect(errors).toHaveLength(1);
  });

  it('flags hooks without progress for longer than staleAfterSeconds, once per idle spell', async () => {
    let now = 1_700_000_000_000;
    const hooks = manager({ staleAfterSeconds: 60, clock: () => now });
    const stale: string[] = [];
    hooks.on('hook.stale', (e) => stale.push(`${e.hook.hookId}:${e.idleSeconds}`));
    const h = await hooks.createHook({ agentId: 'a', workItem: 1 });
    await hooks.activateHook(h.hookId);
    now += 60_000;
    expect((await hooks.checkPendingHooks())[0]?.stale).toBe(false);
    now += 1_000;
    expect((await hooks.checkPendingHooks())[0]?.stale).toBe(true);
    expect((await hooks.checkPendingHooks())[0]?.stale).toBe(true);
    expect(stale).toEqual([`${h.hookId}:61`]);
    const progressed = await hooks.recordProgress(h.hookId, 'still going');
    expect(progressed.lastProgressAt).toBe(now);
    expect((await hooks.checkPendingHooks())[0]?.stale).toBe(false);
    now += 120_000;
    expect((await hooks.checkPendingHooks())[0]?.stale).toBe(true);
    expect(stale).toHaveLength(2);
  });

  it('runs on an interval with startPatrol (fake timers)', async () => {
    vi.useFakeTimers({ toFake: ['setInterval', 'clearInterval'] });
    const dead = new Set<string>();
    const hooks = manager({ liveness: liveness(dead), patrolIntervalSeconds: 30 });
    const h = await hooks.createHook({ agentId: 'a', workItem: 1 });
    await hooks.activateHook(h.hookId);
    const abandoned = new Promise<HookTransitionEvent>((resolve) =>
      hooks.on('hook.abandoned', resolve),
    );
    hooks.startPatrol();
    hooks.startPatrol(); // idempotent
    expect(hooks.patrolling).toBe(true);
    dead.add('a');
    vi.advanceTimersByTime(29_000);
    expect((await hooks.getHook(h.hookId)).status).toBe(HookStatus.ACTIVE);
    vi.advanceTimersByTime(1_000);
    const event = await abandoned;
    expect(event.hook.hookId).toBe(h.hookId);
    hooks.stopPatrol();
    expect(hooks.patrolling).toBe(false);
    expect(vi.getTimerCount()).toBe(0);
  });

  it('lets the liveness source be wired after construction', async () => {
    const hooks = manager();
    const h = await hooks.createHook({ agentId: 'a', workItem: 1 });
    await hooks.checkPendingHooks();
    expect((await hooks.getHook(h.hookId)).status).toBe(HookStatus.PENDING);
    hooks.setLiveness({ isAlive: () => false });
    await hooks.checkPendingHooks();
    expect((await hooks.getHook(h.hookId)).status).toBe(HookStatus.ABANDONED);
    expect(() => hooks.setLiveness({} as never)).toThrow(InvalidArgumentError);
  });
});

describe('crash recovery', () => {
  it('recoverAbandoned reassigns, skips when no agent, and gives up past the limit', async () => {
    const dead = new Set(['a']);
    const hooks = manager({ maxReassignments: 1, liveness: { isAlive: (id) => !dead.has(id) } });
    const h1 = await hooks.createHook({ agentId: 'a', workItem: 1 });
    const h2 = await hooks.createHook({ agentId: 'a', workItem: 2 });
    const h3 = await hooks.createHook({ agentId: 'live', workItem: 3 });
    await hooks.activateHook(h1.hookId);
    await hooks.activateHook(h2.hookId);
    let calls = 0;
    const report = await hooks.recoverAbandoned({
      pickAgent: (hook) => (hook.hookId === h1.hookId ? `b${++calls}` : undefined),
    });
    expect(report.reassigned).toEqual([{ hookId: h1.hookId, fromAgentId: 'a', toAgentId: 'b1' }]);
    expect(report.skipped).toEqual([{ hookId: h2.hookId, reason: 'no agent available' }]);
    expect(report.exhausted).toEqual([]);
    expect((await hooks.getHook(h3.hookId)).status).toBe(HookStatus.PENDING);

    // b1 dies too; h1 has used its one reassignment.
    dead.add('b1');
    await hooks.activateHook(h1.hookId);
    const second = await hooks.recoverAbandoned({
      pickAgent: () => {
        throw new Error('no pool');
      },
    });
    expect(second.exhausted).toEqual([h1.hookId]);
    expect(second.skipped).toEqual([{ hookId: h2.hookId, reason: 'pickAgent threw: no pool' }]);
    expect(await hooks.getHook(h1.hookId)).toMatchObject({
      status: HookStatus.FAILED,
      error: { code: HookRetryLimitError.code },
    });
    expect(await rejection(hooks.recoverAbandoned({} as never))).toBeInstanceOf(
      InvalidArgumentError,
    );
  });

  it("runs the Fabric Guide's crash-recovery loop as written", async () => {
    const hooks = manager();
    const fabric = { getAvailableAgent: async () => ({ id: 'agent-2' }) };
    const h = await hooks.createHook({ agentId: 'agent-1', workItem: { task: 'x' } });
    await hooks.activateHook(h.hookId);
    await hooks.abandonHook(h.hookId, 'agent-1 crashed');

    const pending = await hooks.checkPendingHooks();
    for (const hook of pending)
      if (hook.status === HookStatus.ABANDONED) {
        const a = await fabric.getAvailableAgent();
        await hooks.reassignHook(hook.hookId, a.id);
      }

    expect(await hooks.hookFor('agent-2')).toMatchObject({
      hookId: h.hookId,
      status: HookStatus.PENDING,
      previousAgents: ['agent-1'],
    });
  });
});

describe('patrol retries abandoned hooks (setAgentPicker)', () => {
  it('retries on each run until an agent is picked; runs without one spend nothing', async () => {
    const dead = new Set(['a']);
    const hooks = manager({ liveness: { isAlive: (id) => !dead.has(id) } });
    const h = await hooks.createHook({ agentId: 'a', workItem: 1 });
    await hooks.activateHook(h.hookId);
    const free: string[] = []; // agents with a free slot
    const asked: string[] = [];
    hooks.setAgentPicker((hook) => {
      asked.push(hook.hookId);
      return free[0];
    });
    for (let i = 0; i < 5; i++) await hooks.checkPendingHooks();
    expect(await hooks.getHook(h.hookId)).toMatchObject({
      status: HookStatus.ABANDONED,
      reassignments: 0,
      attempts: 1,
    });
    expect(asked).toHaveLength(5);
    const commits = auditTrail().length;

    free.push('b');
    const [after] = await hooks.checkPendingHooks();
    expect(after).toMatchObject({ status: HookStatus.PENDING, agentId: 'b', reassignments: 1 });
    expect(auditTrail().slice(commits)).toEqual([`hook ${h.hookId}: ABANDONED -> PENDING`]);
    // Settled: later runs do not ask again.
    await hooks.checkPendingHooks();
    expect(asked).toHaveLength(6);
  });

  it('retries within one interval of the patrol timer (fake timers)', async () => {
    vi.useFakeTimers({ toFake: ['setInterval', 'clearInterval'] });
    const hooks = manager({ patrolIntervalSeconds: 30 });
    const h = await hooks.createHook({ agentId: 'a', workItem: 1 });
    await hooks.abandonHook(h.hookId, 'gone');
    const reassigned = new Promise<string>((resolve) =>
      hooks.on('hook.reassigned', (e) => resolve(e.toAgentId)),
    );
    hooks.setAgentPicker(() => 'b');
    hooks.startPatrol();
    vi.advanceTimersByTime(30_000);
    expect(await reassigned).toBe('b');
    hooks.stopPatrol();
  });

  it('stays bounded by maxReassignments, then FAILED with the retry-limit code', async () => {
    const dead = new Set(['a']);
    const hooks = manager({ maxReassignments: 2, liveness: { isAlive: (id) => !dead.has(id) } });
    const h = await hooks.createHook({ agentId: 'a', workItem: 1 });
    let n = 0;
    hooks.setAgentPicker(() => `b${++n}`);
    for (let i = 0; i < 6; i++) {
      await hooks.checkPendingHooks(); // abandons the dead owner, hands the hook on
      dead.add((await hooks.getHook(h.hookId)).agentId); // …which dies too
    }
    expect(await hooks.getHook(h.hookId)).toMatchObject({
      status: HookStatus.FAILED,
      reassignments: 2,
      previousAgents: ['a', 'b1'],
      error: { code: HookRetryLimitError.code },
    });
    expect(n).toBe(2);
  });

  it('skips a picker that throws or names a malformed agent, and the patrol goes on', async () => {
    const hooks = manager();
    const h1 = await hooks.createHook({ agentId: 'a', workItem: 1 });
    const h2 = await hooks.createHook({ agentId: 'a', workItem: 2 });
    const h3 = await hooks.createHook({ agentId: 'a', workItem: 3 });
    for (const h of [h1, h2, h3]) await hooks.abandonHook(h.hookId, 'gone');
    hooks.setAgentPicker((hook) => {
      if (hook.hookId === h1.hookId) throw new Error('pool lookup failed');
      if (hook.hookId === h2.hookId) return 'bad\nid';
      return 'b';
    });
    const patrol = await hooks.checkPendingHooks();
    expect(patrol.map((h) => h.status)).toEqual([
      HookStatus.ABANDONED,
      HookStatus.ABANDONED,
      HookStatus.PENDING,
    ]);
    expect((await hooks.getHook(h2.hookId)).reassignments).toBe(0);
    expect(() => hooks.setAgentPicker('b' as never)).toThrow(InvalidArgumentError);
    hooks.setAgentPicker(undefined);
    await hooks.checkPendingHooks();
    expect((await hooks.getHook(h1.hookId)).status).toBe(HookStatus.ABANDONED);
  });

  it('moves and counts a hook once under concurrent patrols and recoveries', async () => {
    const hooks = manager({ maxReassignments: 1 });
    const ids: string[] = [];
    for (let i = 0; i < 20; i++) {
      const h = await hooks.createHook({ agentId: 'a', workItem: i });
      await hooks.abandonHook(h.hookId, 'gone');
      ids.push(h.hookId);
    }
    let n = 0;
    // Each call names a different agent, so a double move would show.
    const pick = async (): Promise<string> => `b${++n}`;
    hooks.setAgentPicker(pick);
    const commits = auditTrail().length;
    const runs = await Promise.all([
      hooks.checkPendingHooks(),
      hooks.recoverAbandoned({ pickAgent: pick }),
      hooks.checkPendingHooks(),
      hooks.recoverAbandoned({ pickAgent: pick, patrol: false }),
      hooks.checkPendingHooks(),
    ]);
    expect(runs).toHaveLength(5);
    for (const id of ids) {
      expect(await hooks.getHook(id)).toMatchObject({
        status: HookStatus.PENDING,
        reassignments: 1,
        previousAgents: ['a'],
      });
    }
    expect(auditTrail().slice(commits)).toHaveLength(ids.length);
  });
});
