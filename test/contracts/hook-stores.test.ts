import { copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { HookStore } from '../../src/hooks/hook-store.js';
import { FIRST_PARTY, loadPlugin } from './load-plugin.js';
import { runHookStoreContract } from './hook-store.contract.js';

/** Loads a hook plugin through a PluginHost, then takes the store back from that fabric. */
async function loadStore(source: string, options?: unknown) {
  const p = await loadPlugin<'hook'>(source, options);
  const store: HookStore = p.instance;
  p.fabric.detachHookStore(store);
  await p.fabric.close();
  return store;
}

runHookStoreContract({
  name: 'plugins/hook-git',
  durable: true,
  create: async () => {
    const dir = mkdtempSync(join(tmpdir(), 'hook-git-contract-'));
    // Every timing option its schema takes, as the sidecar's `hooks:` section does.
    const options = {
      storagePath: join(dir, 'hooks'),
      useGitWorktree: false,
      progressCommitIntervalMs: 1000,
      maintenanceIntervalSeconds: 600,
    };
    const store = await loadStore(FIRST_PARTY('hook-git'), options);
    return {
      store,
      reopen: () => loadStore(FIRST_PARTY('hook-git'), options),
      cleanup: async () => {
        await store.close();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  },
});

// A user's plugin, outside the repository, importing only the published package.
runHookStoreContract({
  name: 'user plugin from a temp dir (in-memory hooks)',
  durable: false,
  create: async () => {
    const dir = mkdtempSync(join(tmpdir(), 'user-hook-plugin-'));
    const file = join(dir, 'memory-hooks.mjs');
    copyFileSync(
      fileURLToPath(new URL('../fixtures/plugins/memory-hooks.mjs', import.meta.url)),
      file,
    );
    const store = await loadStore(file);
    return {
      store,
      cleanup: async () => {
        await store.close();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  },
});
