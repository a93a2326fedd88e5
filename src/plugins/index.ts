/**
 * Plugins: the contract and the loader.
 *
 * @module
 */
export { definePlugin, PLUGIN_KINDS } from './plugin.js';
export { DEFAULT_PLUGIN_INIT_TIMEOUT_MS, FABRIC_VERSION, PluginHost } from './plugin-host.js';
export { isValidRange, satisfies } from './version-range.js';

export type {
  Plugin,
  PluginContext,
  PluginInstance,
  PluginKind,
  PluginKinds,
  PluginManifest,
} from './plugin.js';
export type { LoadedPlugin, PluginHostOptions } from './plugin-host.js';
