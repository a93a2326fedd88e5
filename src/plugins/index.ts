/**
 * Plugins: the contract and the loader.
 *
 * @module
 */
export { definePlugin, PLUGIN_API_VERSION, PLUGIN_KINDS } from './plugin.js';
export { epochOf } from './epoch-of.js';
export {
  DEFAULT_PLUGIN_INIT_TIMEOUT_MS,
  FABRIC_VERSION,
  FIRST_PARTY_PLUGINS_DIR,
  PluginHost,
} from './plugin-host.js';
export { isValidRange, satisfies } from './version-range.js';

export type {
  Plugin,
  PluginContext,
  PluginEndpoints,
  PluginInstance,
  PluginKind,
  PluginKinds,
  PluginLogger,
  PluginManifest,
  PluginOptionsSchema,
} from './plugin.js';
export type {
  LoadedPlugin,
  PluginHostOptions,
  PluginLogEntry,
  SkippedPlugin,
} from './plugin-host.js';
