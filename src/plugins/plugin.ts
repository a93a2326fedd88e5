/**
 * The plugin contract. A plugin is data plus a function: a manifest (name, version, kind,
 * dependencies, the fabric versions it supports, the schema of its options) and
 * `create(options, context)`, which returns what its kind plugs in. First-party plugins in
 * `plugins/` load exactly like a user's file.
 *
 * Kinds:
 * - `policy`: returns a {@link PolicyProvider}; it joins every policy decision.
 * - `executor`: returns a {@link TaskExecutor}: how *tasks* reach the agents that name it.
 * - `pool`: returns a {@link PoolProvider}: how a pool's *agents* start, are health-checked and
 *   stop (it names the executor they use — the two are separate concepts, see
 *   `pools/pool-provider.ts`).
 * - `hook`: returns a {@link HookStore}: where GUPP work hooks persist (git by default,
 *   `plugins/hook-git`).
 *
 * A plugin never receives the fabric: it gets a {@link PluginContext} — read-only views of
 * agents and pools, a logger, the sidecar's endpoints — versioned by {@link PLUGIN_API_VERSION}.
 *
 * @module
 */
import type { AgentInfo, AgentStatus } from '../agent.js';
import type { HookStore } from '../hooks/hook-store.js';
import type { PolicyProvider } from '../policy/policy-engine.js';
import type { PoolInfo } from '../pools/pool-manager.js';
import type { PoolProvider } from '../pools/pool-provider.js';
import type { TaskExecutor } from '../scheduler/executor.js';

/** What each plugin kind provides. */
export interface PluginKinds {
  policy: PolicyProvider;
  executor: TaskExecutor;
  pool: PoolProvider;
  hook: HookStore;
}

/** The plugin kinds. */
export type PluginKind = keyof PluginKinds;

/** The kinds, for validation. */
export const PLUGIN_KINDS: readonly PluginKind[] = ['policy', 'executor', 'pool', 'hook'];

/**
 * The version of {@link PluginContext}. 1 handed plugins the whole fabric; 2 is the narrow
 * context. A manifest's `api` says which one a plugin was written for.
 */
export const PLUGIN_API_VERSION = 2;

/**
 * A schema for a plugin's options: zod's (`z.object({...})`) or anything with the same
 * `safeParse`. The loader validates options with it and hands `create` the parsed value.
 */
export interface PluginOptionsSchema<T = unknown> {
  safeParse(input: unknown):
    | { success: true; data: T }
    | {
        success: false;
        error: { issues: readonly { path: readonly PropertyKey[]; message: string }[] };
      };
}

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
  /** The {@link PLUGIN_API_VERSION} the plugin was written for. @default PLUGIN_API_VERSION */
  api?: number;
  /** Names of plugins that must be loaded before this one. */
  dependencies?: readonly string[];
  /** Validates the options; errors name the plugin and the option. */
  options?: PluginOptionsSchema;
}

/** Log lines of a plugin; the host adds the plugin's name. */
export interface PluginLogger {
  info(msg: string, fields?: Readonly<Record<string, unknown>>): void;
  warn(msg: string, fields?: Readonly<Record<string, unknown>>): void;
  error(msg: string, fields?: Readonly<Record<string, unknown>>): void;
}

/** Where the sidecar serves (known once it listens). */
export interface PluginEndpoints {
  /** The MCP endpoint, e.g. `http://127.0.0.1:8765/mcp` (workers connect here). */
  readonly mcpUrl?: string;
  /** The gRPC address, e.g. `127.0.0.1:8766`, when gRPC is served. */
  readonly grpcAddress?: string;
}

/** What `create` receives besides its options: what a plugin may read and do. */
export interface PluginContext {
  /** {@link PLUGIN_API_VERSION} of this context. */
  readonly apiVersion: number;
  /** The running fabric's version. */
  readonly fabricVersion: string;
  /** The plugin's own name, as loaded. */
  readonly pluginName: string;
  /**
   * Aborted when start-up fails or runs out of time, and when the plugin is unloaded. An abort
   * listener that throws is logged with the plugin's name (it cannot end the process).
   */
  readonly signal: AbortSignal;
  readonly log: PluginLogger;
  /** Resolves once the sidecar listens (at once, with nothing, in a library fabric). */
  endpoints(): Promise<PluginEndpoints>;
  /** Read-only views of agents. */
  readonly agents: {
    get(agentId: string): AgentInfo | undefined;
    list(filter?: { status?: AgentStatus; poolId?: string }): AgentInfo[];
    /**
     * Status changes; the subscription ends when the plugin is unloaded (or fails to start).
     * A listener that throws (or returns a promise that rejects) is logged with the plugin's
     * name; the status change and the other listeners go on.
     */
    onStatus(listener: (agent: AgentInfo, previous: AgentStatus) => void): () => void;
  };
  /** Read-only views of pools. */
  readonly pools: {
    get(poolId: string): PoolInfo | undefined;
  };
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
