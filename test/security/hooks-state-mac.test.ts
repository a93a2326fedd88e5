/**
 * A hook state forged while no sidecar runs: anyone who can write the hook store's repository
 * (an agent in a worktree shares its git directory) points `refs/fabric/hooks` at a commit of
 * their own that adds a PENDING hook for an agent. With a durable state file the store signs
 * its commits with a key kept there, so at the next start the forged head is quarantined and
 * the ref goes back to the last genuine commit; a genuine restart and an upgrade from an
 * unsigned store keep every hook. The MAC cannot tell an older genuine commit from the newest:
 * the state file records the current commit, so a ref moved back (a finished hook PENDING
 * again, to be handed out twice) is undone the same way. A store without the key refuses a
 * signed store rather than write commits the next start would quarantine. Real git
 * repositories, a real SQLite state file, the real fabric.
 */
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { HookStateRollbackError, HookStoreError, HookStoreSignedError } from '../../src/errors.js';
import { AgentFabric } from '../../src/fabric.js';
import {
  HOOK_SIGNED_SINCE,
  HOOK_STATE_HEAD,
  HOOKS_REF,
  HookManager,
  HookStatus,
  QUARANTINE_REF_PREFIX,
  SIGNED_ANCESTOR_LOOKBACK,
  STATE_MAC_TRAILER,
  type RefMovedEvent,
  type StateQuarantinedEvent,
} from '../../src/hooks/index.js';
import { SqliteStore } from '../../src/store/sqlite-store.js';
import { forgeChain, forgePendingHook } from '../fixtures/hooks/forge-state.js';
import { git, stateHead, tempDir, type TempDir } from '../fixtures/hooks/temp-store.js';

let dir: TempDir;
let storagePath: string;
let statePath: string;
let fabric: AgentFabric | undefined;

beforeEach(async () => {
  dir = await tempDir('hooks-state-mac-');
  storagePath = join(dir.path, 'hooks');
  statePath = join(dir.path, 'state.db');
});

afterEach(async () => {
  await fabric?.close();
  fabric = undefined;
  await dir.cleanup();
});

/** Starts the fabric on the state file and hook store; returns what it quarantined at start. */
async function start(): Promise<{ fabric: AgentFabric; quarantined: StateQuarantinedEvent[] }> {
  const f = new AgentFabric(
    {},
    {
      store: (await SqliteStore.open(statePath)) as never,
      hooks: { storagePath, useGitWorktree: false, fsync: false },
    },
  );
  fabric = f;
  const quarantined: StateQuarantinedEvent[] = [];
  f.hooks!.on('store.state_quarantined', (e) => quarantined.push(e));
  await f.start();
  return { fabric: f, quarantined };
}

async function stop(): Promise<void> {
  await fabric?.close();
  fabric = undefined;
}

function quarantineRefs(): Map<string, string> {
  const out = git(
    storagePath,
    'for-each-ref',
    '--format=%(refname) %(objectname)',
    'refs/fabric/quarantine/',
  );
  return new Map(
    out
      .split('\n')
      .filter(Boolean)
      .map((l) => l.split(' ') as [string, string]),
  );
}

async function marker(): Promise<string | undefined> {
  const store = await SqliteStore.open(statePath);
  try {
    return store.getMeta(HOOK_SIGNED_SINCE);
  } finally {
    await store.close();
  }
}

/** The state commit the state file records as current (read beside a running fabric). */
function recorded(): string | undefined {
  const db = new Database(statePath, { readonly: true });
  try {
    const row = db.prepare('SELECT value FROM meta WHERE key = ?').get(HOOK_STATE_HEAD) as
      { value: string } | undefined;
    return row?.value;
  } finally {
    db.close();
  }
}

/** Sets (or with undefined, deletes) the state file's record of the current state commit. */
function setRecorded(oid: string | undefined): void {
  const db = new Database(statePath);
  try {
    if (oid === undefined) db.prepare('DELETE FROM meta WHERE key = ?').run(HOOK_STATE_HEAD);
    else db.prepare('UPDATE meta SET value = ? WHERE key = ?').run(oid, HOOK_STATE_HEAD);
  } finally {
    db.close();
  }
}

/** One completed and one ACTIVE genuine hook. */
async function genuineHooks(f: AgentFabric): Promise<{ done: string; active: string }> {
  const done = await f.hooks!.createHook({ agentId: 'worker-1', workItem: 1, branch: 'agent/one' });
  await f.hooks!.activateHook(done.hookId);
  await f.hooks!.completeHook(done.hookId, 'ok');
  const active = await f.hooks!.createHook({
    agentId: 'worker-2',
    workItem: 2,
    branch: 'agent/two',
  });
  await f.hooks!.activateHook(active.hookId);
  return { done: done.hookId, active: active.hookId };
}

describe('hook state forged while the sidecar is down', () => {
  it('is quarantined at start: the forged hook is not loaded nor handed out, the ref is back at the last genuine commit, the forgery is kept and reported', async () => {
    const first = await start();
    const { done, active } = await genuineHooks(first.fabric);
    await stop();
    const genuine = stateHead(storagePath);
    const forged = forgePendingHook(storagePath, done, 'victim', dir.path);
    expect(stateHead(storagePath)).toBe(forged.commit);

    const { fabric: f, quarantined } = await start();
    expect(await f.hooks!.hookFor('victim')).toBeUndefined();
    await expect(f.hooks!.getHook(forged.hookId)).rejects.toThrow();
    expect((await f.hooks!.listHooks()).map((h) => h.hookId).sort()).toEqual([done, active].sort());
    expect(stateHead(storagePath)).toBe(genuine);
    const refs = quarantineRefs();
    expect([...refs.values()]).toEqual([forged.commit]);
    const [ref] = [...refs.keys()];
    expect(ref!.startsWith(QUARANTINE_REF_PREFIX)).toBe(true);
    expect(quarantined).toEqual([
      { found: forged.commit, restored: genuine, quarantineRef: ref, reason: 'unsigned' },
    ]);
    // The store goes on from the genuine state, and its next restart is clean.
    await f.hooks!.completeHook(active, 'done');
    await stop();
    const again = await start();
    expect(again.quarantined).toEqual([]);
    expect((await again.fabric.hooks!.getHook(active)).status).toBe(HookStatus.COMPLETED);
  });

  it('quarantines a head whose MAC was made without the key, going back past every forged commit', async () => {
    const first = await start();
    const { done } = await genuineHooks(first.fabric);
    await stop();
    const genuine = stateHead(storagePath);
    // Two commits on top of the genuine head: the walk goes back past both.
    forgePendingHook(storagePath, done, 'victim', dir.path);
    const forged = forgePendingHook(
      storagePath,
      done,
      'victim',
      dir.path,
      `${STATE_MAC_TRAILER}: ${'ab'.repeat(32)}`,
    );
    const { fabric: f, quarantined } = await start();
    expect(await f.hooks!.hookFor('victim')).toBeUndefined();
    expect(stateHead(storagePath)).toBe(genuine);
    expect(quarantined.map((e) => [e.found, e.reason])).toEqual([[forged.commit, 'bad-mac']]);
  });

  it('goes back past a forged chain longer than one read of commits (1,100 commits)', async () => {
    const first = await start();
    const { done } = await genuineHooks(first.fabric);
    await stop();
    const genuine = stateHead(storagePath);
    forgeChain(storagePath, 1_100);
    const forged = forgePendingHook(storagePath, done, 'victim', dir.path);
    const { fabric: f, quarantined } = await start();
    expect(await f.hooks!.hookFor('victim')).toBeUndefined();
    expect(stateHead(storagePath)).toBe(genuine);
    expect(quarantined.map((e) => [e.found, e.restored])).toEqual([[forged.commit, genuine]]);
  });

  it('a genuine restart keeps every hook, and the head carries a MAC', async () => {
    const first = await start();
    const { done, active } = await genuineHooks(first.fabric);
    await stop();
    const head = stateHead(storagePath);
    expect(git(storagePath, 'log', '-1', '--format=%B', HOOKS_REF)).toMatch(
      new RegExp(`\\n${STATE_MAC_TRAILER}: [0-9a-f]{64}$`),
    );
    expect(await marker()).toMatch(/^\d{4}-\d\d-\d\dT/);
    const { fabric: f, quarantined } = await start();
    expect(quarantined).toEqual([]);
    expect(stateHead(storagePath)).toBe(head);
    expect((await f.hooks!.getHook(done)).status).toBe(HookStatus.COMPLETED);
    expect((await f.hooks!.getHook(active)).status).toBe(HookStatus.ACTIVE);
    expect((await f.hooks!.hookFor('worker-2'))?.hookId).toBe(active);
  });

  it('an unsigned store is taken once and signed at once; a forgery after that is quarantined', async () => {
    // An existing store written without signing (as before this change, or with state: memory).
    const legacy = await HookManager.open({ storagePath, useGitWorktree: false, fsync: false });
    const old = await legacy.createHook({ agentId: 'worker-1', workItem: 1, branch: 'agent/one' });
    await legacy.activateHook(old.hookId);
    await legacy.close();
    const legacyHead = stateHead(storagePath);
    expect(await marker()).toBeUndefined();

    const { fabric: f, quarantined } = await start();
    expect(quarantined).toEqual([]);
    expect((await f.hooks!.getHook(old.hookId)).status).toBe(HookStatus.ACTIVE);
    // Signed at start, not at the first transition: the legacy head is taken only this once.
    const adopted = stateHead(storagePath);
    expect(git(storagePath, 'rev-parse', `${adopted}^`)).toBe(legacyHead);
    expect(git(storagePath, 'rev-parse', `${adopted}^{tree}`)).toBe(
      git(storagePath, 'rev-parse', `${legacyHead}^{tree}`),
    );
    await stop();
    expect(await marker()).toBeDefined();

    const forged = forgePendingHook(storagePath, old.hookId, 'victim', dir.path);
    const next = await start();
    expect(await next.fabric.hooks!.hookFor('victim')).toBeUndefined();
    expect(stateHead(storagePath)).toBe(adopted);
    expect(next.quarantined.map((e) => e.found)).toEqual([forged.commit]);
    expect((await next.fabric.hooks!.getHook(old.hookId)).status).toBe(HookStatus.ACTIVE);
  });

  /** The genuine store's history replaced on the ref by an unrelated unsigned one. */
  async function replaceHistory(): Promise<string> {
    const other = join(dir.path, 'other');
    const legacy = await HookManager.open({
      storagePath: other,
      useGitWorktree: false,
      fsync: false,
    });
    await legacy.createHook({ agentId: 'victim', workItem: 'evil', branch: 'agent/evil' });
    await legacy.close();
    git(storagePath, 'fetch', '-q', other, `+${HOOKS_REF}:${HOOKS_REF}`);
    return stateHead(storagePath);
  }

  it('puts the recorded commit back when no commit of the head verifies (the history was replaced)', async () => {
    const first = await start();
    const { done, active } = await genuineHooks(first.fabric);
    await stop();
    const genuine = stateHead(storagePath);
    const replaced = await replaceHistory();
    const { fabric: f, quarantined } = await start();
    expect(await f.hooks!.hookFor('victim')).toBeUndefined();
    expect((await f.hooks!.listHooks()).map((h) => h.hookId).sort()).toEqual([done, active].sort());
    expect(stateHead(storagePath)).toBe(genuine);
    expect([...quarantineRefs().values()]).toEqual([replaced]);
    expect(quarantined.map((e) => [e.found, e.restored, e.reason])).toEqual([
      [replaced, genuine, 'unsigned'],
    ]);
  });

  it('refuses to open when no commit of the head verifies and the state file records none (from before the record)', async () => {
    const first = await start();
    await genuineHooks(first.fabric);
    await stop();
    setRecorded(undefined);
    const replaced = await replaceHistory();
    await expect(start()).rejects.toThrow(HookStoreError);
    // Nothing was moved or kept: the operator decides.
    expect(stateHead(storagePath)).toBe(replaced);
    expect(quarantineRefs().size).toBe(0);
  });
});

describe('hook state moved back to an earlier genuine commit (a rollback)', () => {
  /**
   * A hook created (its PENDING state committed: `pending`), then activated and completed; the
   * state ref's head at the end is `genuine`.
   */
  async function finishedHook(f: AgentFabric): Promise<{ hookId: string; pending: string }> {
    const h = await f.hooks!.createHook({ agentId: 'worker-1', workItem: 1, branch: 'agent/one' });
    const pending = stateHead(storagePath);
    await f.hooks!.activateHook(h.hookId);
    await f.hooks!.completeHook(h.hookId, 'ok');
    return { hookId: h.hookId, pending };
  }

  /**
   * A finished hook, the sidecar stopped, and the attacker's move: the ref back at `pending`, a
   * genuine signed commit from before the hook was done (`genuine`: the head it replaced).
   */
  async function rolledBack(): Promise<{ hookId: string; pending: string; genuine: string }> {
    const first = await start();
    const { hookId, pending } = await finishedHook(first.fabric);
    await stop();
    const genuine = stateHead(storagePath);
    git(storagePath, 'update-ref', HOOKS_REF, pending);
    return { hookId, pending, genuine };
  }

  it('while the sidecar is down: the finished hook is not PENDING again, the ref is back at the recorded commit, the old head is kept and reported', async () => {
    const { hookId, pending, genuine } = await rolledBack();

    const { fabric: f, quarantined } = await start();
    expect((await f.hooks!.getHook(hookId)).status).toBe(HookStatus.COMPLETED);
    expect(await f.hooks!.hookFor('worker-1')).toBeUndefined();
    expect(stateHead(storagePath)).toBe(genuine);
    const refs = quarantineRefs();
    expect([...refs.values()]).toEqual([pending]);
    expect(quarantined).toEqual([
      { found: pending, restored: genuine, quarantineRef: [...refs.keys()][0], reason: 'rollback' },
    ]);
    expect(recorded()).toBe(genuine);
    // The store goes on from there, and records its commits.
    const next = await f.hooks!.createHook({ agentId: 'worker-2', workItem: 2, branch: 'b/two' });
    expect(recorded()).toBe(stateHead(storagePath));
    expect(git(storagePath, 'rev-parse', `${HOOKS_REF}^`)).toBe(genuine);
    await stop();
    const again = await start();
    expect(again.quarantined).toEqual([]);
    expect((await again.fabric.hooks!.getHook(next.hookId)).status).toBe(HookStatus.PENDING);
  });

  it('puts the recorded commit back, not an older one, when a forged commit sits on an older genuine one', async () => {
    const { hookId, pending, genuine } = await rolledBack();
    const forged = forgePendingHook(storagePath, hookId, 'victim', dir.path);
    expect(git(storagePath, 'rev-parse', `${forged.commit}^`)).toBe(pending);
    const { fabric: f, quarantined } = await start();
    expect(stateHead(storagePath)).toBe(genuine);
    expect((await f.hooks!.getHook(hookId)).status).toBe(HookStatus.COMPLETED);
    expect(quarantined.map((e) => [e.found, e.restored, e.reason])).toEqual([
      [forged.commit, genuine, 'unsigned'],
    ]);
  });

  it('puts the recorded commit back when the ref was deleted (no hook lost)', async () => {
    const first = await start();
    const { hookId } = await finishedHook(first.fabric);
    await stop();
    const genuine = stateHead(storagePath);
    git(storagePath, 'update-ref', '-d', HOOKS_REF);
    const { fabric: f, quarantined } = await start();
    expect(stateHead(storagePath)).toBe(genuine);
    expect((await f.hooks!.getHook(hookId)).status).toBe(HookStatus.COMPLETED);
    expect(quarantined).toEqual([
      { found: null, restored: genuine, quarantineRef: null, reason: 'rollback' },
    ]);
    expect(quarantineRefs().size).toBe(0);
  });

  it('takes a signed descendant of the recorded commit (the store stopped between its ref update and the record) and records it', async () => {
    const first = await start();
    const { hookId, pending } = await finishedHook(first.fabric);
    await stop();
    const genuine = stateHead(storagePath);
    // As if the process died after the last commits' ref update, before their record.
    setRecorded(pending);
    const { fabric: f, quarantined } = await start();
    expect(quarantined).toEqual([]);
    expect(stateHead(storagePath)).toBe(genuine);
    expect((await f.hooks!.getHook(hookId)).status).toBe(HookStatus.COMPLETED);
    expect(recorded()).toBe(genuine);
    expect(quarantineRefs().size).toBe(0);
  });

  it('refuses to open, moving nothing, when the recorded commit is gone from the repository', async () => {
    const { pending, genuine } = await rolledBack();
    const objects = git(
      storagePath,
      'rev-parse',
      '--path-format=absolute',
      '--git-path',
      'objects',
    );
    rmSync(join(objects, genuine.slice(0, 2), genuine.slice(2)));
    const err = await start().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(HookStateRollbackError);
    expect((err as HookStateRollbackError).code).toBe('FABRIC_ERR_HOOK_STATE_ROLLBACK');
    expect((err as Error).message).toContain(genuine);
    expect((err as Error).message).toContain(pending);
    expect((err as HookStateRollbackError).details).toMatchObject({
      found: pending,
      recorded: genuine,
    });
    expect(stateHead(storagePath)).toBe(pending);
    expect(quarantineRefs().size).toBe(0);
    expect(recorded()).toBe(genuine);
  });

  it('a state file from before the record takes the head as it verifies, records it, and catches a rollback after that', async () => {
    const first = await start();
    const { hookId, pending } = await finishedHook(first.fabric);
    await stop();
    const genuine = stateHead(storagePath);
    setRecorded(undefined); // as an earlier version left it: signed, nothing recorded
    const upgraded = await start();
    expect(upgraded.quarantined).toEqual([]);
    expect(recorded()).toBe(genuine);
    await stop();
    git(storagePath, 'update-ref', HOOKS_REF, pending);
    const { fabric: f, quarantined } = await start();
    expect(stateHead(storagePath)).toBe(genuine);
    expect((await f.hooks!.getHook(hookId)).status).toBe(HookStatus.COMPLETED);
    expect(quarantined.map((e) => e.reason)).toEqual(['rollback']);
  });

  it('while the sidecar runs: its next commit goes on its own head, not the old one; moved back again before it stops, the next start puts it back', async () => {
    const { fabric: f } = await start();
    const moved: RefMovedEvent[] = [];
    f.hooks!.on('store.ref_moved', (e) => moved.push(e));
    const { hookId, pending } = await finishedHook(f);
    const genuine = stateHead(storagePath);
    git(storagePath, 'update-ref', HOOKS_REF, pending);
    const other = await f.hooks!.createHook({ agentId: 'worker-2', workItem: 2, branch: 'b/two' });
    const head = stateHead(storagePath);
    expect(git(storagePath, 'rev-parse', `${head}^`)).toBe(genuine);
    expect(moved).toEqual([{ found: pending, restored: head }]);
    expect(recorded()).toBe(head);
    // Moved back again, and the sidecar stops before it commits anything.
    git(storagePath, 'update-ref', HOOKS_REF, pending);
    await stop();
    const next = await start();
    expect(stateHead(storagePath)).toBe(head);
    expect((await next.fabric.hooks!.getHook(hookId)).status).toBe(HookStatus.COMPLETED);
    expect((await next.fabric.hooks!.getHook(other.hookId)).status).toBe(HookStatus.PENDING);
    expect(next.quarantined.map((e) => [e.found, e.restored, e.reason])).toEqual([
      [pending, head, 'rollback'],
    ]);
  });
});

describe('a hook store opened without the key', () => {
  it('refuses a store whose head is signed, writing nothing', async () => {
    const first = await start();
    await genuineHooks(first.fabric);
    await stop();
    const head = stateHead(storagePath);
    const err = await HookManager.open({ storagePath, useGitWorktree: false, fsync: false }).then(
      async (m) => {
        await m.close();
        return undefined;
      },
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(HookStoreSignedError);
    expect((err as HookStoreSignedError).code).toBe('FABRIC_ERR_HOOK_STORE_SIGNED');
    expect((err as Error).message).toContain(head);
    expect(stateHead(storagePath)).toBe(head);
    // The lock was released: the store opens with the key.
    const again = await start();
    expect(again.quarantined).toEqual([]);
  });

  /** HookManager.open without the key: the error, or undefined once it opened (closed again). */
  async function openWithoutKey(): Promise<unknown> {
    return HookManager.open({ storagePath, useGitWorktree: false, fsync: false }).then(
      async (m) => {
        await m.close();
        return undefined;
      },
      (e: unknown) => e,
    );
  }

  it('refuses an unsigned head on top of signed history (left by an earlier version without the key), moving nothing', async () => {
    // Before, only the head was checked: the store opened and built on the unsigned commits,
    // which the next start with the key quarantined with everything built on them.
    const first = await start();
    await genuineHooks(first.fabric);
    await stop();
    const signed = stateHead(storagePath);
    const head = forgeChain(storagePath, 3);
    const refs = git(storagePath, 'for-each-ref', '--format=%(refname) %(objectname)');
    const err = await openWithoutKey();
    expect(err).toBeInstanceOf(HookStoreSignedError);
    expect((err as HookStoreSignedError).code).toBe('FABRIC_ERR_HOOK_STORE_SIGNED');
    expect((err as Error).message).toContain(`${signed}, 3 commits before the head ${head}`);
    expect((err as HookStoreSignedError).details).toMatchObject({ head, signed });
    expect(git(storagePath, 'for-each-ref', '--format=%(refname) %(objectname)')).toBe(refs);
    // With the key the unsigned commits are set aside, nothing built on them.
    const again = await start();
    expect(again.quarantined.map((e) => [e.found, e.restored, e.reason])).toEqual([
      [head, signed, 'unsigned'],
    ]);
  });

  it(`looks back at most SIGNED_ANCESTOR_LOOKBACK (${SIGNED_ANCESTOR_LOOKBACK}) commits for a signed one`, async () => {
    const first = await start();
    await genuineHooks(first.fabric);
    await stop();
    const signed = stateHead(storagePath);
    forgeChain(storagePath, SIGNED_ANCESTOR_LOOKBACK);
    expect(await openWithoutKey()).toMatchObject({
      code: 'FABRIC_ERR_HOOK_STORE_SIGNED',
      details: { signed },
    });
    forgeChain(storagePath, 1);
    expect(await openWithoutKey()).toBe(undefined);
  });

  it('opens a store never signed', async () => {
    const m = await HookManager.open({ storagePath, useGitWorktree: false, fsync: false });
    try {
      for (let i = 0; i < 3; i++) {
        await m.createHook({ agentId: 'worker-1', workItem: i, branch: `agent/${i}` });
      }
    } finally {
      await m.close();
    }
    expect(await openWithoutKey()).toBe(undefined);
  });
});
