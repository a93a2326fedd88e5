/**
 * Hooks (GUPP): git-backed work that survives agents, sidecars and machines restarting.
 *
 * @module
 */
export {
  HookManager,
  HOOK_LOCK_FILE,
  MAX_AGENT_ID_LENGTH,
  MAX_NOTE_LENGTH,
} from './hook-manager.js';
export {
  DEFAULT_HOOK_AUTHOR,
  DEFAULT_MAINTENANCE_INTERVAL_SECONDS,
  DEFAULT_MAX_REASSIGNMENTS,
  DEFAULT_MAX_WORK_ITEM_BYTES,
  DEFAULT_PATROL_INTERVAL_SECONDS,
  DEFAULT_PROGRESS_COMMIT_INTERVAL_MS,
  DEFAULT_STALE_AFTER_SECONDS,
  DEFAULT_WORKTREE_DIR,
  parseHookManagerOptions,
} from './hook-manager-options.js';
export { HookStatus, HOOK_TRANSITIONS, canTransition, isOpenStatus } from './hook-status.js';
export { HOOK_ID_PATTERN, isHookId } from './hook-id.js';
export { branchNameProblem, checkBranchName, MAX_BRANCH_NAME_LENGTH } from './ref-name.js';
export { HookRecordSchema } from './hook.js';
export {
  HOOKS_REF,
  HOOK_STORE_FORMAT_VERSION,
  QUARANTINE_REF_PREFIX,
  SIGNED_ANCESTOR_LOOKBACK,
  STATE_MAC_TRAILER,
} from './state-store.js';
export {
  HOOK_SIGNED_SINCE,
  HOOK_STATE_HEAD,
  HOOK_STATE_KEY,
  stateSigningFrom,
} from './state-signing.js';
export { isAgentLiveness } from './liveness.js';

export type {
  AgentPicker,
  AsAgent,
  CreateHookRequest,
  HookFailure,
  ListHooksFilter,
  RecoverOptions,
  RecoveryReport,
} from './hook-manager.js';
export type {
  GitIdentity,
  HookManagerOptions,
  ResolvedHookManagerOptions,
} from './hook-manager-options.js';
export type { Hook, HookErrorInfo, PatrolHook, WorktreeInfo } from './hook.js';
export type {
  HookEventMap,
  HookEventName,
  HookListener,
  HookProgressEvent,
  HookReassignedEvent,
  HookStaleEvent,
  HookTransitionEvent,
  LockLostEvent,
  WorktreeKeptEvent,
  LockRestoredEvent,
  MaintenanceEvent,
  ObjectCounts,
  PatrolErrorEvent,
  RefLockRemovedEvent,
  RefMovedEvent,
  StateQuarantinedEvent,
} from './hook-events.js';
export type { StateSigning } from './state-store.js';
export type { SigningSource } from './state-signing.js';
export type { AgentLiveness } from './liveness.js';
export type { JsonValue } from './json-value.js';
export type { LockHolder } from './store-lock.js';
