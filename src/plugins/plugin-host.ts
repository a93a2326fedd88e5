/**
 * Loads plugins into a fabric: finds the module (a path, a name in a plugins directory, or an
 * npm package), validates the manifest and the options, checks the fabric version, the plugin
 * API version and the dependencies, starts it within a time limit, plugs in what it provides,
 * and on unload unplugs and closes everything in reverse order. Every failure is a coded error
 * naming the plugin.
 *
 * @module
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { isAbsolute, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { z } from 'zod';
import type { AgentInfo, AgentStatus } from '../agent.js';
import { PluginError, PluginTimeoutError } from '../errors.js';
import type { AgentFabric } from '../fabric.js';
import type {
  Plugin,
  PluginContext,
  PluginEndpoints,
  PluginInstance,
  PluginKind,
  PluginLogger,
  PluginOptionsSchema,
} from './plugin.js';
import { PLUGIN_API_VERSION, PLUGIN_KINDS } from './plugin.js';
import { isValidRange, satisfies } from './version-range.js';

/** Default for {@link PluginHostOptions.initTimeoutMs}. */
export const DEFAULT_PLUGIN_INIT_TIMEOUT_MS = 10_000;

/** The running fabric's version, as plugin manifests' `fabric` ranges see it. */
export const FABRIC_VERSION: string = (
  JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
    version: string;
  }
).version;

/** The folder of the first-party plugins (`<package>/plugins`). */
export const FIRST_PARTY_PLUGINS_DIR: string = fileURLToPath(
  new URL('../../plugins', import.meta.url),
);

/** One log line of the host or of a plugin. */
export interface PluginLogEntry {
  level: 'info' | 'warn' | 'error';
  msg: string;
  plugin: string;
  [field: string]: unknown;
}

/** Options of a {@link PluginHost}. */
export interface PluginHostOptions {
  /** Relative plugin paths and npm package names resolve from it. @default process.cwd() */
  baseDir?: string;
  /**
   * Folders searched, in order, for a plugin given by bare name (`rate-limit` →
   * `<dir>/rate-limit/index.js` or `<dir>/rate-limit.js`) before it is taken as an npm package.
   * @default [FIRST_PARTY_PLUGINS_DIR]
   */
  pluginDirs?: readonly string[];
  /** Longest a plugin module's import, and then its `create`, may each take. @default 10000 */
  initTimeoutMs?: number;
  /**
   * Longest a plugin's `close()` may take when it is unloaded (and when the host closes). A
   * close that runs past it is logged as an error and left behind: unloading goes on, so one
   * stuck plugin cannot keep the sidecar from shutting down. @default initTimeoutMs
   */
  closeTimeoutMs?: number;
  /** Where plugins' log lines (and the host's warnings) go. @default nowhere */
  log?: (entry: PluginLogEntry) => void;
  /** Where the sidecar serves, once it listens. @default resolves to `{}` at once */
  endpoints?: Promise<PluginEndpoints>;
}

/** A loaded plugin. */
export interface LoadedPlugin {
  readonly name: string;
  readonly version: string;
  readonly kind: PluginKind;
}

/** A plugin marked `optional` that failed to load. */
export interface SkippedPlugin {
  readonly source: string;
  readonly error: Error;
}

const manifestSchema = z
  .object({
    name: z.string().min(1).max(214),
    version: z.string().regex(/^\d+\.\d+\.\d+/, 'must be a semver version'),
    kind: z.enum(PLUGIN_KINDS as [PluginKind, ...PluginKind[]]),
    fabric: z
      .string()
      .refine(isValidRange, 'must be *, x.y.z, ^x.y.z, ~x.y.z or >=x.y.z')
      .optional(),
    api: z.number().int().positive().optional(),
    dependencies: z.array(z.string().min(1)).optional(),
    options: z
      .custom<PluginOptionsSchema>(
        (v) =>
          typeof v === 'object' &&
          v !== null &&
          typeof (v as { safeParse?: unknown }).safeParse === 'function',
        'must be a schema with safeParse (e.g. zod)',
      )
      .optional(),
    create: z.custom<Plugin['create']>((v) => typeof v === 'function', 'must be a function'),
  })
  .loose();

interface Entry {
  readonly plugin: LoadedPlugin;
  readonly instance: PluginInstance<PluginKind>;
  /** The instance's `name` when it was plugged in: what it is unplugged by. */
  readonly plugged: string;
  readonly controller: AbortController;
  readonly cleanups: (() => void)[];
  readonly dependencies: readonly string[];
}

function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function isThenable(v: unknown): v is PromiseLike<unknown> {
  return (
    (typeof v === 'object' || typeof v === 'function') &&
    v !== null &&
    typeof (v as { then?: unknown }).then === 'function'
  );
}

/**
 * Runs a plugin's callback (the host calls it from event emitters and timers, where a throw
 * would be uncaught and end the process): a throw, or a rejection of what it returns, goes to
 * `report` instead.
 */
function contained<A extends unknown[]>(
  fn: (...args: A) => unknown,
  report: (err: unknown) => void,
): (this: unknown, ...args: A) => void {
  return function (this: unknown, ...args: A): void {
    try {
      const out = fn.apply(this, args);
      if (isThenable(out)) out.then(undefined, report);
    } catch (err) {
      report(err);
    }
  };
}

type AbortListener =
  ((this: AbortSignal, ev: Event) => unknown) | { handleEvent(ev: Event): unknown };

/**
 * Makes the abort listeners a plugin adds to its signal (`addEventListener`, `onabort`) run
 * {@link contained}: Node rethrows a listener's exception on the next tick, uncaught, so a
 * plugin's faulty abort handler would otherwise end the process when the plugin is unloaded or
 * its start-up times out. The signal stays a real AbortSignal (fetch, timers, events accept it).
 */
function guardSignal(signal: AbortSignal, report: (err: unknown) => void): AbortSignal {
  const wrappers = new WeakMap<object, (ev: Event) => void>();
  const wrap = (l: unknown): unknown => {
    if (typeof l !== 'function' && (typeof l !== 'object' || l === null)) return l;
    let w = wrappers.get(l);
    if (w === undefined) {
      const listener = l as AbortListener;
      w = contained(
        (ev: Event) =>
          typeof listener === 'function' ? listener.call(signal, ev) : listener.handleEvent(ev),
        report,
      );
      wrappers.set(l, w);
    }
    return w;
  };
  const add = signal.addEventListener.bind(signal) as (...a: unknown[]) => void;
  const remove = signal.removeEventListener.bind(signal) as (...a: unknown[]) => void;
  const onabort = Object.getOwnPropertyDescriptor(AbortSignal.prototype, 'onabort');
  let handler: unknown = null;
  Object.defineProperties(signal, {
    addEventListener: {
      value: (type: string, l: unknown, o?: unknown): void => add(type, wrap(l), o),
    },
    removeEventListener: {
      value: (type: string, l: unknown, o?: unknown): void =>
        remove(
          type,
          (typeof l === 'object' || typeof l === 'function') && l !== null
            ? (wrappers.get(l) ?? l)
            : l,
          o,
        ),
    },
    onabort: {
      get: () => handler,
      set: (l: unknown) => {
        handler = typeof l === 'function' ? l : null;
        onabort?.set?.call(signal, handler === null ? null : wrap(handler));
      },
    },
  });
  return signal;
}

/** Loads plugins into one fabric. */
export class PluginHost {
  readonly #fabric: AgentFabric;
  readonly #baseDir: string;
  readonly #dirs: readonly string[];
  readonly #timeoutMs: number;
  readonly #closeTimeoutMs: number;
  readonly #log: (entry: PluginLogEntry) => void;
  readonly #endpoints: Promise<PluginEndpoints>;
  readonly #loaded: Entry[] = [];
  readonly #skipped: SkippedPlugin[] = [];

  constructor(fabric: AgentFabric, options: PluginHostOptions = {}) {
    this.#fabric = fabric;
    this.#baseDir = options.baseDir ?? process.cwd();
    this.#dirs = options.pluginDirs ?? [FIRST_PARTY_PLUGINS_DIR];
    this.#timeoutMs = options.initTimeoutMs ?? DEFAULT_PLUGIN_INIT_TIMEOUT_MS;
    this.#closeTimeoutMs = options.closeTimeoutMs ?? this.#timeoutMs;
    this.#log = options.log ?? (() => undefined);
    this.#endpoints = options.endpoints ?? Promise.resolve({});
  }

  /** The plugins loaded so far, in load order. */
  get plugins(): readonly LoadedPlugin[] {
    return this.#loaded.map((e) => e.plugin);
  }

  /** What the loaded plugin `name` plugged in (a provider, an executor, a store). */
  instanceOf<K extends PluginKind>(name: string): PluginInstance<K> | undefined {
    return this.#loaded.find((e) => e.plugin.name === name)?.instance as
      PluginInstance<K> | undefined;
  }

  /** Optional plugins that failed to load (the fabric runs without them). */
  get skipped(): readonly SkippedPlugin[] {
    return [...this.#skipped];
  }

  /**
   * Loads a plugin: a module path (relative to `baseDir`), a `file:` URL, a bare name (looked up
   * in `pluginDirs`, then as an npm package), or a plugin object. The module's default export
   * (or its `plugin` export) is the plugin. With `optional`, a plugin that fails to load is
   * logged as an error, listed in {@link skipped}, and `undefined` is returned.
   * @throws PluginError (bad module, manifest or options, duplicate name, unmet dependency,
   *   incompatible fabric or plugin API version, `create` failed); PluginTimeoutError.
   */
  async load(source: string | URL | Plugin, options?: unknown): Promise<LoadedPlugin>;
  async load(
    source: string | URL | Plugin,
    options: unknown,
    load: { optional: boolean },
  ): Promise<LoadedPlugin | undefined>;
  async load(
    source: string | URL | Plugin,
    options?: unknown,
    load: { optional: boolean } = { optional: false },
  ): Promise<LoadedPlugin | undefined> {
    const label =
      typeof source === 'object' && !(source instanceof URL)
        ? String(source?.name)
        : String(source);
    try {
      return await this.#load(source, label, options);
    } catch (err) {
      if (!load.optional) throw err;
      const error = err instanceof Error ? err : new Error(String(err));
      this.#skipped.push({ source: label, error });
      this.#log({
        level: 'error',
        plugin: label,
        msg: `OPTIONAL PLUGIN NOT LOADED — the fabric runs WITHOUT it: ${error.message}`,
      });
      return undefined;
    }
  }

  /**
   * Unloads one plugin: unplugs what it registered and closes it.
   * @throws PluginError when it is not loaded or a loaded plugin depends on it.
   */
  async unload(name: string): Promise<void> {
    const i = this.#loaded.findIndex((e) => e.plugin.name === name);
    if (i < 0) throw new PluginError(name, 'is not loaded');
    const dependent = this.#loaded.find((e) => e.dependencies.includes(name));
    if (dependent !== undefined) {
      throw new PluginError(name, `is needed by ${dependent.plugin.name} (unload that first)`);
    }
    const [entry] = this.#loaded.splice(i, 1);
    await this.#unplug(entry!);
  }

  /** Unplugs and closes every plugin, last loaded first. Errors are collected, not thrown early. */
  async close(): Promise<void> {
    const errors: unknown[] = [];
    for (const entry of this.#loaded.splice(0).reverse()) {
      try {
        await this.#unplug(entry);
      } catch (err) {
        errors.push(err);
      }
    }
    if (errors.length > 0) throw new AggregateError(errors, 'some plugins failed to close');
  }

  async #load(
    source: string | URL | Plugin,
    label: string,
    options: unknown,
  ): Promise<LoadedPlugin> {
    const plugin = await this.#resolve(source, label);
    const parsed = manifestSchema.safeParse(plugin);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      throw new PluginError(
        label,
        `${issue?.path.join('.') || 'manifest'} ${issue?.message ?? 'is invalid'}`,
      );
    }
    const m = parsed.data;
    if (this.#loaded.some((e) => e.plugin.name === m.name))
      throw new PluginError(m.name, 'is already loaded');
    if (m.fabric !== undefined && !satisfies(FABRIC_VERSION, m.fabric)) {
      throw new PluginError(m.name, `needs fabric ${m.fabric}, this is ${FABRIC_VERSION}`);
    }
    if (m.api !== undefined && m.api !== PLUGIN_API_VERSION) {
      throw new PluginError(
        m.name,
        `is written for plugin API ${m.api}; this fabric provides plugin API ${PLUGIN_API_VERSION}`,
      );
    }
    for (const dep of m.dependencies ?? []) {
      if (!this.#loaded.some((e) => e.plugin.name === dep)) {
        throw new PluginError(m.name, `depends on ${dep}, which is not loaded (load it first)`);
      }
    }
    let opts = options;
    if (m.options !== undefined) {
      const checked = m.options.safeParse(options ?? {});
      if (!checked.success) {
        const issues = checked.error.issues
          .slice(0, 3)
          .map((i) => `options.${i.path.map(String).join('.') || '(root)'}: ${i.message}`);
        throw new PluginError(m.name, `invalid options: ${issues.join('; ')}`);
      }
      opts = checked.data;
    }
    const controller = new AbortController();
    const cleanups: (() => void)[] = [];
    const context = this.#context(m.name, controller, cleanups);
    let instance: PluginInstance<PluginKind>;
    try {
      instance = await this.#create(plugin as Plugin, m.name, opts, context, controller);
    } catch (err) {
      // Not loaded: what it subscribed to on the way ends, and its signal says so.
      this.#retire(controller, cleanups, err);
      throw err;
    }
    const entry: Entry = {
      plugin: Object.freeze({ name: m.name, version: m.version, kind: m.kind }),
      instance,
      plugged: (instance as { name?: unknown }).name as string,
      controller,
      cleanups,
      dependencies: m.dependencies ?? [],
    };
    try {
      await this.#plugIn(m.kind, instance);
    } catch (err) {
      this.#retire(controller, cleanups, new Error('not plugged in'));
      await this.#closeInstance(m.name, instance).catch(() => undefined);
      throw new PluginError(m.name, `could not be plugged in: ${message(err)}`, { cause: err });
    }
    this.#loaded.push(entry);
    return entry.plugin;
  }

  /** Ends what a plugin subscribed to through its context and aborts its signal. */
  #retire(controller: AbortController, cleanups: (() => void)[], reason: unknown): void {
    if (!controller.signal.aborted) controller.abort(reason);
    for (const c of cleanups.splice(0)) c();
  }

  /**
   * Calls an instance's `close`, bounded by `closeTimeoutMs`: one that runs past it is logged
   * (naming the plugin) and left behind. A close that throws or rejects rejects.
   */
  async #closeInstance(name: string, instance: PluginInstance<PluginKind>): Promise<void> {
    if (typeof instance.close !== 'function') return;
    const closing = Promise.resolve().then(() => instance.close!());
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<'late'>((res) => {
      timer = setTimeout(() => res('late'), this.#closeTimeoutMs);
    });
    try {
      if ((await Promise.race([closing, late])) === 'late') {
        closing.catch(() => undefined);
        this.#log({
          level: 'error',
          plugin: name,
          msg: `close() did not finish within ${this.#closeTimeoutMs} ms; going on without it`,
        });
      }
    } finally {
      clearTimeout(timer);
    }
  }

  #context(name: string, controller: AbortController, cleanups: (() => void)[]): PluginContext {
    const fabric = this.#fabric;
    const write =
      (level: PluginLogEntry['level']) =>
      (msg: string, fields?: Readonly<Record<string, unknown>>): void =>
        this.#log({ ...fields, level, msg, plugin: name });
    const log: PluginLogger = { info: write('info'), warn: write('warn'), error: write('error') };
    // The plugin's own callbacks run inside the fabric's emitters and timers: a fault in one is
    // the plugin's, logged with its name, never the process's.
    const report =
      (what: string) =>
      (err: unknown): void =>
        this.#log({ level: 'error', plugin: name, msg: `${what} failed: ${message(err)}` });
    return Object.freeze({
      apiVersion: PLUGIN_API_VERSION,
      fabricVersion: FABRIC_VERSION,
      pluginName: name,
      signal: guardSignal(controller.signal, report('an abort listener')),
      log,
      endpoints: () => this.#endpoints,
      agents: Object.freeze({
        get: (agentId: string): AgentInfo | undefined =>
          fabric.lifecycle.peek(agentId) === undefined
            ? undefined
            : fabric.lifecycle.agentInfo(agentId),
        list: (filter: { status?: AgentStatus; poolId?: string } = {}): AgentInfo[] =>
          fabric.lifecycle.listAgents(filter),
        onStatus: (listener: (agent: AgentInfo, previous: AgentStatus) => void) => {
          if (typeof listener !== 'function') {
            throw new PluginError(name, 'agents.onStatus needs a function');
          }
          // A plugin that was unloaded, or never loaded (create failed or ran out of time),
          // subscribes to nothing.
          if (controller.signal.aborted) return () => undefined;
          const guarded = contained(listener, report('an agents.onStatus listener'));
          fabric.lifecycle.events.on('agent.status', guarded);
          const off = (): void => void fabric.lifecycle.events.off('agent.status', guarded);
          cleanups.push(off);
          return off;
        },
      }),
      pools: Object.freeze({
        get: (poolId: string) =>
          fabric.pools.peek(poolId) === undefined ? undefined : fabric.pools.getPool(poolId),
      }),
    });
  }

  async #unplug(entry: Entry): Promise<void> {
    const { plugin, instance, plugged } = entry;
    // By the name it was plugged in under: an instance may have renamed itself since.
    switch (plugin.kind) {
      case 'policy':
        this.#fabric.policies.removeProvider(plugged);
        break;
      case 'executor':
        this.#fabric.unregisterExecutor(plugged);
        break;
      case 'pool':
        this.#fabric.unregisterPoolProvider(plugged);
        break;
      case 'hook':
        this.#fabric.detachHookStore(instance as PluginInstance<'hook'>);
        break;
    }
    this.#retire(entry.controller, entry.cleanups, new Error(`plugin ${plugin.name} unloaded`));
    await this.#closeInstance(plugin.name, instance);
  }

  async #resolve(source: string | URL | Plugin, label: string): Promise<unknown> {
    if (typeof source === 'object' && !(source instanceof URL)) return source;
    const href = this.#locate(source, label);
    let mod: { default?: unknown; plugin?: unknown };
    // Importing runs the module's top level, which may await forever: it shares the start-up
    // bound with `create`, so start-up fails instead of never finishing.
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new PluginTimeoutError(label, this.#timeoutMs)),
        this.#timeoutMs,
      );
    });
    try {
      mod = (await Promise.race([import(href), timeout])) as typeof mod;
    } catch (err) {
      if (err instanceof PluginTimeoutError) throw err;
      throw new PluginError(label, `could not be imported: ${message(err)}`, { cause: err });
    } finally {
      clearTimeout(timer);
    }
    const plugin = mod.plugin ?? mod.default;
    if (plugin === undefined)
      throw new PluginError(label, 'exports no plugin (default or "plugin")');
    return plugin;
  }

  /** What to import: a URL, a path, a plugin folder's entry, or an npm package. */
  #locate(source: string | URL, label: string): string {
    if (source instanceof URL) return source.href;
    if (source.startsWith('file:')) return source;
    if (isAbsolute(source) || source.startsWith('./') || source.startsWith('../')) {
      return pathToFileURL(isAbsolute(source) ? source : resolve(this.#baseDir, source)).href;
    }
    // A bare name: a plugins directory first, then an npm package.
    if (/^(@[a-z0-9][\w.-]*\/)?[a-z0-9][\w.-]*(\/[\w.-]+)*$/i.test(source)) {
      for (const dir of this.#dirs) {
        const base = resolve(this.#baseDir, dir, source);
        for (const file of [join(base, 'index.js'), join(base, 'index.mjs'), `${base}.js`]) {
          if (existsSync(file) && statSync(file).isFile()) return pathToFileURL(file).href;
        }
      }
      try {
        return pathToFileURL(createRequire(join(this.#baseDir, 'noop.js')).resolve(source)).href;
      } catch {
        // Not resolvable from baseDir (or ESM-only without a require condition): let import()
        // resolve it from the fabric's own node_modules.
        return source;
      }
    }
    throw new PluginError(
      label,
      'is neither a path (absolute, ./ or ../), a file: URL, nor a plugin or package name',
    );
  }

  async #create(
    plugin: Plugin,
    name: string,
    options: unknown,
    context: PluginContext,
    controller: AbortController,
  ): Promise<PluginInstance<PluginKind>> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        controller.abort(new PluginTimeoutError(name, this.#timeoutMs));
        reject(new PluginTimeoutError(name, this.#timeoutMs));
      }, this.#timeoutMs);
    });
    const created = Promise.resolve().then(() => plugin.create(options, context));
    try {
      const instance = await Promise.race([created, timeout]);
      if (instance === null || typeof instance !== 'object') {
        throw new PluginError(name, 'create() returned nothing to plug in');
      }
      return instance;
    } catch (err) {
      if (err instanceof PluginTimeoutError) {
        // What it makes after all is never plugged in: closed as soon as it exists.
        created.then(
          (late) => {
            if (late === null || typeof late !== 'object') return;
            this.#closeInstance(name, late).catch((e: unknown) =>
              this.#log({
                level: 'warn',
                plugin: name,
                msg: `close() of the instance made after the start-up bound failed: ${message(e)}`,
              }),
            );
          },
          () => undefined,
        );
        throw err;
      }
      if (err instanceof PluginError) throw err;
      throw new PluginError(name, `create() failed: ${message(err)}`, { cause: err });
    } finally {
      clearTimeout(timer);
    }
  }

  async #plugIn(kind: PluginKind, instance: PluginInstance<PluginKind>): Promise<void> {
    switch (kind) {
      case 'policy':
        this.#fabric.policies.addProvider(instance as PluginInstance<'policy'>);
        break;
      case 'executor':
        this.#fabric.registerExecutor(instance as PluginInstance<'executor'>);
        break;
      case 'pool':
        this.#fabric.registerPoolProvider(instance as PluginInstance<'pool'>);
        break;
      case 'hook':
        await this.#fabric.useHookStore(instance as PluginInstance<'hook'>);
        break;
    }
  }
}
