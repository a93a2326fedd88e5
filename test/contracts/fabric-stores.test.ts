import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll } from 'vitest';
import { InMemoryBudgetStore } from '../../src/budget/budget-store.js';
import { MemoryStore } from '../../src/store/memory-store.js';
import { SqliteStore } from '../../src/store/sqlite-store.js';
import { tempDir } from '../fixtures/gateway/harness.js';
import { runFabricStoreContract, type StoreUnderTest } from './fabric-store.contract.js';

runFabricStoreContract({
  name: 'MemoryStore (+ InMemoryBudgetStore)',
  create: async () =>
    Object.assign(new MemoryStore(), { budgets: new InMemoryBudgetStore() }) as never,
});

const dir = tempDir('sqlite-contract');
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;

runFabricStoreContract({
  name: 'SqliteStore',
  create: async () =>
    (await SqliteStore.open(join(dir, `state-${n++}.db`))) as unknown as StoreUnderTest,
  reopen: async (store) => {
    const path = (store as unknown as SqliteStore).path;
    await store.close();
    return (await SqliteStore.open(path)) as unknown as StoreUnderTest;
  },
});
