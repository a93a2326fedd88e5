/**
 * The real `agent-fabric serve` with a SQLite state file and a hook store: while it is stopped,
 * someone who can write the store's repository moves `refs/fabric/hooks` to a commit adding a
 * PENDING hook for the sidecar's agent. At the next start the sidecar does not hand that hook
 * out: the forged head is quarantined, the ref is back at the last genuine commit, an error is
 * logged naming what happened (without the key). Started with `state: memory` (no key) on that
 * signed store, it refuses to start rather than write commits the next durable start would
 * quarantine with their hook changes.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import { HOOK_STATE_KEY, QUARANTINE_REF_PREFIX } from '../../src/hooks/index.js';
import { SqliteStore } from '../../src/store/sqlite-store.js';
import { tempDir, until } from '../fixtures/gateway/harness.js';
import { forgePendingHook } from '../fixtures/hooks/forge-state.js';
import { git, stateHead } from '../fixtures/hooks/temp-store.js';
import {
  adminApi,
  cleanUp,
  serve,
  spawnServe,
  stop,
  type Running,
} from '../fixtures/state/serve.js';

afterAll(cleanUp);

const ADMIN = `fab_admin_${'Hk3m'.repeat(8)}`;

function call(r: Running, method: string, body: unknown): Promise<Record<string, unknown>> {
  return adminApi(r, ADMIN, method, body);
}

/** Writes `<dir>/fabric.json`: one agent, the hook store in `<dir>/hooks`, state `state`. */
function writeConfig(dir: string, state: unknown): void {
  writeFileSync(
    join(dir, 'fabric.json'),
    JSON.stringify({
      http: { host: '127.0.0.1', port: 0 },
      adminToken: ADMIN,
      state,
      hooks: { storagePath: join(dir, 'hooks'), useGitWorktree: false },
      agents: [{ name: 'worker' }],
    }),
  );
}

/**
 * A sidecar with the state file `<dir>/state.db` creates `count` hooks for its agent and stops;
 * `heads` are the state ref's head after each.
 */
async function createHooks(
  dir: string,
  count = 1,
): Promise<{ agentId: string; hookId: string; heads: string[] }> {
  writeConfig(dir, { path: join(dir, 'state.db') });
  const first = await serve(dir);
  const { agents } = (await call(first, 'FabricService/ListAgents', {})) as {
    agents: { agentId: string }[];
  };
  const agentId = agents[0]!.agentId;
  const hookIds: string[] = [];
  const heads: string[] = [];
  for (let i = 0; i < count; i++) {
    const { hook } = (await call(first, 'FabricService/CreateHook', {
      agentId,
      workItem: `w${i}`,
    })) as {
      hook: { hookId: string };
    };
    hookIds.push(hook.hookId);
    heads.push(stateHead(join(dir, 'hooks')));
  }
  expect(await stop(first, 'SIGTERM')).toBe(0);
  return { agentId, hookId: hookIds[0]!, heads };
}

/** `agent_fabric_hook_store_quarantined_heads_total` as the sidecar's /metrics shows it. */
async function quarantinedHeads(r: Running): Promise<number> {
  const metrics = await (
    await fetch(`${new URL(r.url).origin}/metrics`, {
      headers: { authorization: `Bearer ${ADMIN}` },
    })
  ).text();
  const m = /^agent_fabric_hook_store_quarantined_heads_total (\d+)$/m.exec(metrics);
  expect(m, metrics).not.toBeNull();
  return Number(m![1]);
}

/** The sidecar's log lines that mention the state ref. */
function stateRefLines(r: Running): { level: number; msg: string }[] {
  return r
    .err()
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as { level: number; msg: string })
    .filter((e) => e.msg.includes('state ref'));
}

describe('sidecar start after the hook state was forged while it was down', () => {
  it('quarantines the forged head, hands out no forged hook, and logs an error', async () => {
    const dir = tempDir('hook-forgery');
    const storagePath = join(dir, 'hooks');
    const statePath = join(dir, 'state.db');
    const { agentId, hookId } = await createHooks(dir);
    const hook = { hookId };
    const genuine = stateHead(storagePath);
    const forged = forgePendingHook(storagePath, hook.hookId, agentId, dir);

    const r = await serve(dir);
    const { hooks } = (await call(r, 'FabricService/ListHooks', {})) as {
      hooks: { hookId: string }[];
    };
    expect(hooks.map((h) => h.hookId)).toEqual([hook.hookId]);
    expect(stateHead(storagePath)).toBe(genuine);
    const quarantined = git(storagePath, 'for-each-ref', '--format=%(refname) %(objectname)');
    expect(quarantined).toContain(`${QUARANTINE_REF_PREFIX}`);
    expect(quarantined).toContain(forged.commit);
    // Counted for an alert, though it happened before /metrics could listen for events.
    expect(await quarantinedHeads(r)).toBe(1);
    expect(await stop(r, 'SIGTERM')).toBe(0);

    const logged = stateRefLines(r);
    expect(logged, r.err()).toHaveLength(1);
    expect(logged[0]!.level).toBe(50);
    expect(logged[0]!.msg).toContain(forged.commit);
    expect(logged[0]!.msg).toContain(genuine);
    expect(logged[0]!.msg).toContain(QUARANTINE_REF_PREFIX);
    const store = await SqliteStore.open(statePath);
    const key = store.getMeta(HOOK_STATE_KEY);
    await store.close();
    expect(key).toMatch(/^[0-9a-f]{64}$/);
    expect(r.err()).not.toContain(key);
    expect(r.err()).not.toContain(ADMIN);
  }, 120_000);
});

describe('sidecar start after the hook state ref was moved back while it was down', () => {
  it('puts the recorded state back, keeps the old head, and logs an error', async () => {
    const dir = tempDir('hook-rollback');
    const storagePath = join(dir, 'hooks');
    const { heads } = await createHooks(dir, 2);
    const [older, genuine] = heads as [string, string];
    git(storagePath, 'update-ref', 'refs/fabric/hooks', older);

    const r = await serve(dir);
    const { hooks } = (await call(r, 'FabricService/ListHooks', {})) as {
      hooks: { hookId: string }[];
    };
    expect(hooks).toHaveLength(2);
    expect(stateHead(storagePath)).toBe(genuine);
    expect(
      git(storagePath, 'for-each-ref', '--format=%(objectname)', 'refs/fabric/quarantine/'),
    ).toBe(older);
    expect(await stop(r, 'SIGTERM')).toBe(0);
    const logged = stateRefLines(r);
    expect(logged, r.err()).toHaveLength(1);
    expect(logged[0]!.level).toBe(50);
    expect(logged[0]!.msg).toContain(`${older} is a genuine commit from before the state`);
    expect(logged[0]!.msg).toContain(`loaded from ${genuine}`);
  }, 120_000);
});

/**
 * Starts the sidecar in `dir` with `state: memory`, expects it to exit 1 with
 * FABRIC_ERR_HOOK_STORE_SIGNED before listening, and returns the error's line.
 */
async function refusedMemoryStart(dir: string): Promise<string> {
  writeConfig(dir, 'memory');
  const memory = spawnServe(dir);
  await until(() => memory.child.exitCode !== null, 30_000);
  expect(memory.child.exitCode, memory.err()).toBe(1);
  const last = memory.err().trim().split('\n').at(-1)!;
  expect(last).toMatch(/^agent-fabric: FABRIC_ERR_HOOK_STORE_SIGNED: /);
  expect(memory.out()).not.toContain('"mcpServers"');
  return last;
}

describe('sidecar with state: memory on a signed hook store', () => {
  it('refuses to start (exit 1, FABRIC_ERR_HOOK_STORE_SIGNED) and writes nothing; the durable sidecar then loses nothing', async () => {
    const dir = tempDir('hook-memory');
    const storagePath = join(dir, 'hooks');
    const { hookId } = await createHooks(dir);
    const genuine = stateHead(storagePath);

    expect(await refusedMemoryStart(dir)).toContain(genuine);
    expect(stateHead(storagePath)).toBe(genuine);

    writeConfig(dir, { path: join(dir, 'state.db') });
    const r = await serve(dir);
    const { hooks } = (await call(r, 'FabricService/ListHooks', {})) as {
      hooks: { hookId: string }[];
    };
    expect(hooks.map((h) => h.hookId)).toEqual([hookId]);
    expect(await quarantinedHeads(r)).toBe(0);
    expect(await stop(r, 'SIGTERM')).toBe(0);
    expect(git(storagePath, 'for-each-ref', 'refs/fabric/quarantine/')).toBe('');
  }, 120_000);

  it('refuses an unsigned head on top of signed history too (left by an earlier version), moving nothing; the durable start sets those commits aside, says how to take them back, and they can be', async () => {
    // Before, only the head was checked: this start opened and built on the unsigned commit,
    // and the next durable start quarantined them all with their hook changes.
    const dir = tempDir('hook-memory-unsigned-head');
    const storagePath = join(dir, 'hooks');
    const statePath = join(dir, 'state.db');
    const { agentId, hookId } = await createHooks(dir);
    const genuine = stateHead(storagePath);
    // What an earlier version's memory sidecar left: an unsigned commit with a hook change.
    const unsigned = forgePendingHook(storagePath, hookId, agentId, dir);
    const refs = git(storagePath, 'for-each-ref', '--format=%(refname) %(objectname)');
    const objects = git(storagePath, 'count-objects', '-v');

    const last = await refusedMemoryStart(dir);
    expect(last).toContain(`${genuine}, 1 commit before the head ${unsigned.commit}`);
    expect(last).toContain('state: memory of an earlier version');
    expect(git(storagePath, 'for-each-ref', '--format=%(refname) %(objectname)')).toBe(refs);
    expect(git(storagePath, 'count-objects', '-v')).toBe(objects);

    // The durable start sets the unsigned commit aside and says what it holds and how to take it.
    writeConfig(dir, { path: statePath });
    const r = await serve(dir);
    const listed = async (s: Running): Promise<string[]> =>
      ((await call(s, 'FabricService/ListHooks', {})) as { hooks: { hookId: string }[] }).hooks
        .map((h) => h.hookId)
        .sort();
    expect(await listed(r)).toEqual([hookId]);
    expect(await stop(r, 'SIGTERM')).toBe(0);
    const logged = stateRefLines(r);
    expect(logged, r.err()).toHaveLength(1);
    expect(logged[0]!.level).toBe(50);
    expect(logged[0]!.msg).toContain(`git log ${genuine}..${unsigned.commit}`);
    expect(logged[0]!.msg).toContain('state: memory');
    expect(logged[0]!.msg).toContain(`git update-ref refs/fabric/hooks ${unsigned.commit}`);
    expect(stateHead(storagePath)).toBe(genuine);

    // Taken back knowingly, as the log says: the hook change is in the state again, signed.
    git(storagePath, 'update-ref', 'refs/fabric/hooks', unsigned.commit);
    const db = new Database(statePath);
    db.prepare("DELETE FROM meta WHERE key IN ('hooks.signedSince', 'hooks.stateHead')").run();
    db.close();
    const taken = await serve(dir);
    expect(await listed(taken)).toEqual([hookId, unsigned.hookId].sort());
    expect(await stop(taken, 'SIGTERM')).toBe(0);
    expect(stateRefLines(taken)).toEqual([]);
    expect(git(storagePath, 'rev-parse', `${stateHead(storagePath)}^`)).toBe(unsigned.commit);
  }, 120_000);
});
