/**
 * Loads a plugin the way the sidecar does — through a real PluginHost — and hands back what it
 * plugged in, so contract suites run against the loaded thing, not a hand-made object.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AgentFabric } from '../../src/fabric.js';
import type { PluginInstance, PluginKind } from '../../src/plugins/plugin.js';
import { PluginHost } from '../../src/plugins/plugin-host.js';

export interface LoadedForTest<K extends PluginKind> {
  instance: PluginInstance<K>;
  host: PluginHost;
  fabric: AgentFabric;
  close(): Promise<void>;
}

export async function loadPlugin<K extends PluginKind>(
  source: string,
  options?: unknown,
  fabric: AgentFabric = new AgentFabric(),
): Promise<LoadedForTest<K>> {
  const host = new PluginHost(fabric);
  const loaded = await host.load(source, options);
  return {
    instance: host.instanceOf<K>(loaded.name)!,
    host,
    fabric,
    close: async () => {
      await host.close();
      await fabric.close();
    },
  };
}

/** Writes `files` into a new temporary folder (a user's plugin, outside the repository). */
export function userPluginDir(files: Record<string, string>): { dir: string; remove(): void } {
  const dir = mkdtempSync(join(tmpdir(), 'fabric-user-plugin-'));
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

export const FIRST_PARTY = (name: string): string =>
  new URL(`../../plugins/${name}/index.js`, import.meta.url).pathname;
