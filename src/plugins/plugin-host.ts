/**
 * Loads plugins into a fabric: validates each manifest, checks the fabric version and the
 * dependencies, starts it within a time limit, plugs in what it provides, and closes everything
 * in reverse order. Every failure is a coded error naming the plugin.
 *
 * @module
 */
import { readFileSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { z } from 'zod';
import { PluginError, PluginTimeoutError } from '../errors.js';
import type { AgentFabric } from '../fabric.js';
import type { Plugin, PluginInstance, PluginKind } from './plugin.js';
import { PLUGIN_KINDS } from './plugin.js';
import { isValidRange, satisfies } from './version-range.js';

/** Default for {@link PluginHostOptions.initTimeoutMs}. */
export const DEFAULT_PLUGIN_INIT_TIMEOUT_MS = 10_000;

/** The running fabric's version, as plugin manifests' `fabric` ranges see it. */
export const FABRIC_VERSION: string = (
  JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
    version: string;
  }
).version;

/** Options of a {@link PluginHost}. */
export interface PluginHostOptions {
  /** Relative plugin paths resolve against it. @default process.cwd() */
  baseDir?: string;
  /** Longest a plugin module's import, and then its `create`, may each take. @default 10000 */
  initTimeoutMs?: number;
}

/** A loaded plugin. */
export interface LoadedPlugin {
  readonly name: string;
  readonly version: string;
  readonly kind: PluginKind;
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
    dependencies: z.array(z.string().min(1)).optional(),
    create: z.custom<Plugin['create']>((v) => typeof v === 'function', 'must be a function'),
  })
  .loose();

interface Entry {
  readonly plugin: LoadedPlugin;
  readonly instance: PluginInstance<PluginKind>;
}

/** Loads plugins into one fabric. */
export class PluginHost {
  readonly #fabric: AgentFabric;
  readonly #baseDir: string;
  readonly #timeoutMs: number;
  readonly #loaded: Entry[] = [];

  constructor(fabric: AgentFabric, options: PluginHostOptions = {}) {
    this.#fabric = fabric;
    this.#baseDir = options.baseDir ?? process.cwd();
    this.#timeoutMs = options.initTimeoutMs ?? DEFAULT_PLUGIN_INIT_TIMEOUT_MS;
  }

  /** The plugins loaded so far, in load order. */
  get plugins(): readonly LoadedPlugin[] {
    return this.#loaded.map((e) => e.plugin);
  }

  /**
   * Loads a plugin: a module path (relative to `baseDir`), a `file:` URL, or a plugin object.
   * The module's default export (or its `plugin` export) is the plugin.
   * @throws PluginError (bad module or manifest, duplicate name, unmet dependency, incompatible
   *   fabric version, `create` failed); PluginTimeoutError.
   */
  async load(source: string | URL | Plugin, options?: unknown): Promise<LoadedPlugin> {
    const label =
      typeof source === 'object' && !(source instanceof URL)
        ? String(source?.name)
        : String(source);
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
    for (const dep of m.dependencies ?? []) {
      if (!this.#loaded.some((e) => e.plugin.name === dep)) {
        throw new PluginError(m.name, `depends on ${dep}, which is not loaded (load it first)`);
      }
    }
    const instance = await this.#create(plugin as Plugin, m.name, options);
    try {
      this.#plugIn(m.kind, instance);
    } catch (err) {
      await Promise.resolve(instance.close?.()).catch(() => undefined);
      throw new PluginError(m.name, `could not be plugged in: ${(err as Error).message}`, {
        cause: err,
      });
    }
    const loaded: LoadedPlugin = Object.freeze({ name: m.name, version: m.version, kind: m.kind });
    this.#loaded.push({ plugin: loaded, instance });
    return loaded;
  }

  /** Unplugs and closes every plugin, last loaded first. Errors are collected, not thrown early. */
  async close(): Promise<void> {
    const errors: unknown[] = [];
    for (const { plugin, instance } of this.#loaded.splice(0).reverse()) {
      try {
        if (plugin.kind === 'policy')
          this.#fabric.policies.removeProvider((instance as PluginInstance<'policy'>).name);
        // Executors stay registered with the scheduler, which closes them with the fabric.
        if (plugin.kind !== 'executor') await instance.close?.();
      } catch (err) {
        errors.push(err);
      }
    }
    if (errors.length > 0) throw new AggregateError(errors, 'some plugins failed to close');
  }

  async #resolve(source: string | URL | Plugin, label: string): Promise<unknown> {
    if (typeof source === 'object' && !(source instanceof URL)) return source;
    const href =
      source instanceof URL
        ? source.href
        : source.startsWith('file:')
          ? source
          : pathToFileURL(isAbsolute(source) ? source : resolve(this.#baseDir, source)).href;
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
      throw new PluginError(label, `could not be imported: ${(err as Error).message}`, {
        cause: err,
      });
    } finally {
      clearTimeout(timer);
    }
    const plugin = mod.plugin ?? mod.default;
    if (plugin === undefined)
      throw new PluginError(label, 'exports no plugin (default or "plugin")');
    return plugin;
  }

  async #create(
    plugin: Plugin,
    name: string,
    options: unknown,
  ): Promise<PluginInstance<PluginKind>> {
    const controller = new AbortController();
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        controller.abort(new PluginTimeoutError(name, this.#timeoutMs));
        reject(new PluginTimeoutError(name, this.#timeoutMs));
      }, this.#timeoutMs);
    });
    try {
      const created = Promise.resolve().then(() =>
        plugin.create(options, { fabric: this.#fabric, signal: controller.signal }),
      );
      const instance = await Promise.race([created, timeout]);
      if (instance === null || typeof instance !== 'object') {
        throw new PluginError(name, 'create() returned nothing to plug in');
      }
      return instance;
    } catch (err) {
      if (err instanceof PluginTimeoutError || err instanceof PluginError) throw err;
      throw new PluginError(name, `create() failed: ${(err as Error)?.message ?? String(err)}`, {
        cause: err,
      });
    } finally {
      clearTimeout(timer);
    }
  }

  #plugIn(kind: PluginKind, instance: PluginInstance<PluginKind>): void {
    if (kind === 'policy') this.#fabric.policies.addProvider(instance as PluginInstance<'policy'>);
    else this.#fabric.registerExecutor(instance as PluginInstance<'executor'>);
  }
}
