/**
 * A hook state forged while no sidecar runs: anyone who can write the hook store's repository
 * (an agent in a worktree shares its git directory) points `refs/fabric/hooks` at a commit of
 * their own that adds a PENDING hook for an agent. With a durable state file the store signs
 * its commits with a key kept there, so at the next start the forged head is quarantined and
 * the ref goes back to the last genuine commit; a genuine restart and an upgrade from an
 * unsigned store keep every hook. Real git repositories, a real SQLite state file, the real
 * fabric.
 */
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { HookStoreError } from '../../src/errors.js';
import { AgentFabric } from '../../src/fabric.js';
import {
  HOOK_SIGNED_SINCE,
  HOOKS_REF,
  HookManager,
  HookStatus,
  QUARANTINE_REF_PREFIX,
  STATE_MAC_TRAILER,
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

  it('refuses to open when no commit of the head verifies (the history was replaced)', async () => {
    const first = await start();
    await genuineHooks(first.fabric);
    await stop();
    // An unrelated unsigned history put on the ref.
    const other = join(dir.path, 'other');
    const legacy = await HookManager.open({
      storagePath: other,
      useGitWorktree: false,
      fsync: false,
    });
    await legacy.createHook({ agentId: 'victim', workItem: 'evil', branch: 'agent/evil' });
    await legacy.close();
    git(storagePath, 'fetch', '-q', other, `+${HOOKS_REF}:${HOOKS_REF}`);
    await expect(start()).rejects.toThrow(HookStoreError);
    // Nothing was moved or kept: the operator decides.
    expect(quarantineRefs().size).toBe(0);
  });
});
