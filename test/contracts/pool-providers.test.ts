import { copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll } from 'vitest';
import type { AgentFabric } from '../../src/fabric.js';
import { PluginHost } from '../../src/plugins/plugin-host.js';
import { FIRST_PARTY } from './load-plugin.js';
import { runPoolProviderContract } from './pool-provider.contract.js';

async function load(fabric: AgentFabric, source: string, options?: unknown) {
  const host = new PluginHost(fabric);
  const loaded = await host.load(source, options);
  return { provider: host.instanceOf<'pool'>(loaded.name)!, unload: () => host.close() };
}

runPoolProviderContract({
  name: 'plugins/pool-process',
  load: (fabric) =>
    load(fabric, FIRST_PARTY('pool-process'), {
      command: process.execPath,
      args: ['-e', 'setInterval(() => {}, 1000)'],
      stopTimeoutMs: 2000,
    }),
});

const dir = mkdtempSync(join(tmpdir(), 'user-pool-plugin-'));
copyFileSync(
  fileURLToPath(new URL('../fixtures/plugins/timer-pool.mjs', import.meta.url)),
  join(dir, 'timer-pool.mjs'),
);
afterAll(() => rmSync(dir, { recursive: true, force: true }));

runPoolProviderContract({
  name: 'user plugin from a temp dir (timer agents)',
  load: (fabric) => load(fabric, join(dir, 'timer-pool.mjs')),
});

runPoolProviderContract({
  name: 'plugins/pool-threads',
  load: (fabric) => load(fabric, FIRST_PARTY('pool-threads')),
});
