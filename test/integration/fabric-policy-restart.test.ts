/**
 * The library's policy API (`fabric.policies`) over a real SQLite state file, across restarts
 * (a fresh `SqliteStore` and `AgentFabric` on the same file): what `restorePolicies` applies on
 * top of the start-up policies, in which order, and what it writes.
 */
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import type { AgentRecord } from '../../src/lifecycle/lifecycle-manager.js';
import type { PoolRecord } from '../../src/pools/pool-manager.js';
import type { TaskRecord } from '../../src/scheduler/task-record.js';
import { StateStoreError } from '../../src/errors.js';
import { MemoryStore } from '../../src/store/memory-store.js';
import { SqliteStore } from '../../src/store/sqlite-store.js';
import { tempDir } from '../fixtures/gateway/harness.js';

const open: AgentFabric[] = [];
afterEach(async () => {
  for (const f of open.splice(0)) await f.close().catch(() => undefined);
});

const CONFIG = [
  { name: 'a', rules: [{ tool: 'a', action: 'deny' }] },
  { name: 'b', rules: [{ tool: 'b', action: 'deny' }] },
  { name: 'c', rules: [{ tool: 'c', action: 'deny' }] },
] as const;

/** A fabric on the state file with the "config" policies added, then restorePolicies. */
async function start(path: string, config: ReadonlyArray<{ name: string }> = CONFIG) {
  const store = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(path);
  const fabric = new AgentFabric({}, { store });
  open.push(fabric);
  for (const p of config) fabric.policies.addPolicy(p);
  const applied = fabric.restorePolicies();
  return { fabric, store, applied };
}

function names(f: AgentFabric): string[] {
  return f.policies.listPolicies().map((p) => p.name);
}

function rows(path: string): Record<string, { change: string; seq: number }> {
  const db = new Database(path, { readonly: true });
  try {
    const all = db
      .prepare<[], { id: string; data: string }>(
        "SELECT id, data FROM records WHERE kind = 'policy'",
      )
      .all();
    return Object.fromEntries(all.map((r) => [r.id, JSON.parse(r.data)]));
  } finally {
    db.close();
  }
}

describe('fabric.policies over a durable store', () => {
  it('re-applies run-time changes in order on top of the start-up policies', async () => {
    const path = join(tempDir('fabric-policy'), 'state.db');
    const one = await start(path);
    expect(one.applied).toEqual([]);
    const p = one.fabric.policies;
    p.addPolicy({ name: 'x', rules: [{ tool: 'x', action: 'deny' }] });
    p.removePolicy('a'); // config: tombstone
    p.addPolicy({ name: 'a', rules: [{ tool: 'a2', action: 'allow' }] }); // back, at the end
    p.addPolicy({ name: 'b', rules: [{ tool: 'b2', action: 'deny' }] }, { replace: true });
    p.addPolicy({ name: 'y', rules: [{ tool: 'y', action: 'deny' }] });
    p.addPolicy({ name: 'x', rules: [{ tool: 'x2', action: 'deny' }] }, { replace: true });
    p.addPolicy({ name: 'gone', rules: [{ tool: 'g', action: 'deny' }] });
    p.removePolicy('gone'); // not a config policy: no record left
    p.removePolicy('c');
    const live = names(one.fabric);
    expect(live).toEqual(['b', 'x', 'a', 'y']);
    expect(Object.keys(rows(path)).sort()).toEqual(['a', 'b', 'c', 'x', 'y']);
    expect(rows(path)['c']!.change).toBe('removed');
    await one.fabric.close();

    const two = await start(path);
    expect(names(two.fabric)).toEqual(live);
    expect(two.fabric.policies.getPolicy('x')!.rules[0]!.tool).toBe('x2');
    expect(two.fabric.policies.getPolicy('a')!.rules[0]!.tool).toBe('a2');
    expect(two.fabric.policies.getPolicy('b')!.rules[0]!.tool).toBe('b2');
    expect(two.applied.map((c) => `${c.name}:${c.effect}`).sort()).toEqual(
      ['a:replaced', 'b:replaced', 'c:removed', 'x:added', 'y:added'].sort(),
    );
    // Decided by the restored rules.
    expect(two.fabric.policies.evaluateSync({ agentId: 'z', tool: 'x2', params: {} }).action).toBe(
      'deny',
    );
    expect(two.fabric.policies.evaluateSync({ agentId: 'z', tool: 'c', params: {} }).policy).toBe(
      null,
    );
    // Nothing was written by the restore itself.
    await two.fabric.close();

    // The config drops `c`: its tombstone is forgotten (a later `c` in the config applies).
    const three = await start(path, CONFIG.slice(0, 2));
    expect(three.applied.find((c) => c.name === 'c')?.effect).toBe('dropped');
    expect(Object.keys(rows(path))).not.toContain('c');
    await three.fabric.close();
    const four = await start(path);
    expect(names(four.fabric)).toContain('c');
  });

  it('a config policy edited, added or dropped after its run-time change wins over it', async () => {
    const path = join(tempDir('fabric-policy-edited'), 'state.db');
    const one = await start(path);
    one.fabric.policies.removePolicy('a'); // tombstone of the config's `a`
    one.fabric.policies.addPolicy(
      { name: 'b', rules: [{ tool: 'b2', action: 'deny' }] },
      {
        replace: true,
      },
    );
    one.fabric.policies.addPolicy(
      { name: 'c', rules: [{ tool: 'c2', action: 'deny' }] },
      {
        replace: true,
      },
    );
    one.fabric.policies.addPolicy({ name: 'z', rules: [{ tool: 'z', action: 'deny' }] });
    await one.fabric.close();

    // The operator then tightens `a` in the config, adds a `z` of its own, drops `c`; `b` is
    // left as it was.
    const edited = [
      { name: 'a', rules: [{ tool: 'a-tight', action: 'deny' }] },
      CONFIG[1],
      { name: 'z', rules: [{ tool: 'z-config', action: 'deny' }] },
    ];
    const two = await start(path, edited);
    expect(two.applied.map((c) => `${c.name}:${c.effect}`).sort()).toEqual(
      ['a:superseded', 'b:replaced', 'c:superseded', 'z:superseded'].sort(),
    );
    expect(two.fabric.policies.getPolicy('a')!.rules[0]!.tool).toBe('a-tight');
    expect(two.fabric.policies.getPolicy('b')!.rules[0]!.tool).toBe('b2'); // still the run-time one
    expect(two.fabric.policies.getPolicy('c')).toBeUndefined();
    expect(two.fabric.policies.getPolicy('z')!.rules[0]!.tool).toBe('z-config');
    expect(Object.keys(rows(path))).toEqual(['b']); // the superseded records are forgotten
    await two.fabric.close();

    // And stay so: the next start with the same config applies only `b`'s change.
    const three = await start(path, edited);
    expect(three.applied.map((c) => `${c.name}:${c.effect}`)).toEqual(['b:replaced']);
    expect(three.fabric.policies.getPolicy('a')!.rules[0]!.tool).toBe('a-tight');
  });

  it(
    'a change the store cannot write is refused and takes no effect',
    { timeout: 60_000 },
    async () => {
      const dir = tempDir('fabric-policy-ro');
      const path = join(dir, 'state.db');
      const { fabric, store } = await start(path);
      fabric.policies.addPolicy({ name: 'kept', rules: [{ tool: 'k', action: 'deny' }] });
      // Another connection holds the write lock: commits fail (SQLITE_BUSY after the busy
      // timeout), as on a failing disk.
      const db = new Database(path);
      db.exec('BEGIN EXCLUSIVE'); // holds the write lock: commits fail with SQLITE_BUSY
      try {
        expect(() =>
          fabric.policies.addPolicy({ name: 'new', rules: [{ tool: 'n', action: 'deny' }] }),
        ).toThrow(StateStoreError);
        expect(() => fabric.policies.removePolicy('kept')).toThrow(StateStoreError);
      } finally {
        db.exec('ROLLBACK');
        db.close();
      }
      expect(names(fabric)).toEqual(['a', 'b', 'c', 'kept']);
      store.flush();
      expect(Object.keys(rows(path))).toEqual(['kept']);
    },
  );

  it('an in-memory store keeps nothing and restorePolicies does nothing', async () => {
    const fabric = new AgentFabric({}, { store: new MemoryStore() });
    open.push(fabric);
    fabric.policies.addPolicy({ name: 'm', rules: [{ tool: 'm', action: 'deny' }] });
    expect(fabric.restorePolicies()).toEqual([]);
    fabric.policies.removePolicy('m');
    expect(names(fabric)).toEqual([]);
  });
});
