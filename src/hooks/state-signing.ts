/**
 * Where the hook store's signing key, "signed since" marker and record of the current state
 * commit come from: a durable state store's secrets and metadata (the SQLite state file), never
 * the git repository — anyone who can write the repository (an agent in a worktree shares its
 * git directory) could otherwise read the key, remove the marker or move the record back with
 * the ref. A store that keeps nothing across restarts (`state:
 * memory`) gives none: a key made anew at each start could verify nothing written before it.
 *
 * @module
 */
import type { StateSigning } from './state-store.js';

/** The state-store entry holding the MAC key (a secret). */
export const HOOK_STATE_KEY = 'hooks.stateKey';
/** The state-store entry set (to the time, ISO 8601) once the hook store wrote a signed commit. */
export const HOOK_SIGNED_SINCE = 'hooks.signedSince';
/**
 * The state-store entry holding the state ref's current commit (its id), written after every
 * state commit: a head older than it at open is a rollback (see {@link StateSigning}).
 */
export const HOOK_STATE_HEAD = 'hooks.stateHead';

/** What a durable state store offers (`SqliteStore`); optional members are absent in memory. */
export interface SigningSource {
  secret?(key: string): string;
  getMeta?(key: string): string | undefined;
  setMeta?(key: string, value: string): void;
}

/**
 * The hook store's signing from a durable state store, or `undefined` when it keeps nothing
 * across restarts.
 *
 * @example
 * const hooks = await HookManager.open({ storagePath, stateSigning: stateSigningFrom(store) });
 */
export function stateSigningFrom(
  store: SigningSource,
  clock: () => number = Date.now,
): StateSigning | undefined {
  const { secret, getMeta, setMeta } = store;
  if (secret === undefined || getMeta === undefined || setMeta === undefined) return undefined;
  return {
    key: secret.call(store, HOOK_STATE_KEY),
    signed: () => getMeta.call(store, HOOK_SIGNED_SINCE) !== undefined,
    markSigned: () => setMeta.call(store, HOOK_SIGNED_SINCE, new Date(clock()).toISOString()),
    recordedHead: () => getMeta.call(store, HOOK_STATE_HEAD),
    recordHead: (oid) => setMeta.call(store, HOOK_STATE_HEAD, oid),
  };
}
