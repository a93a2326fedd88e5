/**
 * The plugin contract. A plugin is data plus a function: a manifest (name, version, kind,
 * dependencies, the fabric versions it supports) and `create(options, context)`, which returns
 * what its kind plugs in. First-party plugins in `plugins/` load exactly like a user's file.
 *
 * Kinds:
 * - `policy`: returns a {@link PolicyProvider}; it joins every policy decision.
 * - `executor`: returns a {@link TaskExecutor}; agents (and pools) name it to run their tasks —
 *   how a pool's agents come to life.
 *
 * @module
 */
import type { AgentFabric } from '../fabric.js';
import type { PolicyProvider } from '../policy/policy-engine.js';
import type { TaskExecutor } from '../scheduler/executor.js';

/** What each plugin kind provides. */
export interface PluginKinds {
  policy: PolicyProvider;
  executor: TaskExecutor;
}

/** The plugin kinds. */
export type PluginKind = keyof PluginKinds;

/** The kinds, for validation. */
export const PLUGIN_KINDS: readonly PluginKind[] = ['policy', 'executor'];

/** What a plugin declares about itself. */
export interface PluginManifest<K extends PluginKind = PluginKind> {
  /** Unique name, e.g. `secret-guard` or `@acme/policy-pii`. */
  name: string;
  /** The plugin's own version (semver). */
  version: string;
  kind: K;
  /**
   * Fabric versions the plugin works with: `*`, `x.y.z`, `^x.y.z`, `~x.y.z` or `>=x.y.z`.
   * @default '*'
   */
  fabric?: string;
  /** Names of plugins that must be loaded before this one. */
  dependencies?: readonly string[];
}

/** What `create` receives besides its options. */
export interface PluginContext {
  readonly fabric: AgentFabric;
  /** Aborted when start-up runs out of time; long set-up should stop then. */
  readonly signal: AbortSignal;
}

/** What a plugin's `create` may return: the provided thing, with an optional `close`. */
export type PluginInstance<K extends PluginKind> = PluginKinds[K] & {
  close?(): Promise<void> | void;
};

/** A plugin: its manifest and its factory. */
export interface Plugin<K extends PluginKind = PluginKind> extends PluginManifest<K> {
  create(options: unknown, context: PluginContext): PluginInstance<K> | Promise<PluginInstance<K>>;
}

/**
 * Declares a plugin. The function only checks types; the loader validates the manifest.
 *
 * @example
 * export default definePlugin({ name: 'no-shell', version: '1.0.0', kind: 'policy' }, () => ({
 *   name: 'no-shell',
 *   decide: (ctx) => (ctx.tool.startsWith('shell') ? { action: 'deny', reason: 'no shells' } : undefined),
 * }));
 */
export function definePlugin<K extends PluginKind>(
  manifest: PluginManifest<K>,
  create: Plugin<K>['create'],
): Plugin<K> {
  return { ...manifest, create };
}
