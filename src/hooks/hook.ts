/**
 * The shape of a hook, as returned by the HookManager and as stored (one JSON blob per hook) on
 * the state ref. The zod schema checks what is read back from git: the repository is outside
 * input like any other.
 *
 * @module
 */
import { z } from 'zod';
import { HOOK_ID_PATTERN } from './hook-id.js';
import { HookStatus } from './hook-status.js';
import { isJsonValue, type JsonValue } from './json-value.js';

/** The message of a task or hook failure reported without one (empty or only whitespace). */
export const EMPTY_FAILURE_MESSAGE = 'failed';

/** Why a hook failed, as recorded by `failHook`. */
export interface HookErrorInfo {
  readonly message: string;
  /** A machine-readable code, when the error had one (e.g. a `FABRIC_ERR_*` code). */
  readonly code: string | null;
  /** The error's class name, when it was an Error. */
  readonly name: string | null;
}

/** A unit of work on an agent's hook. Immutable: every transition yields a new object. */
export interface Hook {
  /** Generated id, `hk-<time>-<random>`; see {@link HOOK_ID_PATTERN}. */
  readonly hookId: string;
  /** The agent that must run it now. */
  readonly agentId: string;
  readonly status: HookStatus;
  /** What to do, as given to `createHook` (plain JSON, frozen). */
  readonly workItem: JsonValue;
  /** Git branch of the hook's worktree; `null` when the hook has none. */
  readonly branch: string | null;
  /** Absolute path of the hook's git worktree; `null` when worktrees are not used. */
  readonly worktreePath: string | null;
  /** Commit the worktree branch was created from (or found at); `null` without a worktree. */
  readonly baseCommit: string | null;
  /** Epoch ms. */
  readonly createdAt: number;
  /** Epoch ms of the last committed change. */
  readonly updatedAt: number;
  /**
   * Epoch ms of the last progress report (or assignment); the patrol's staleness clock. Like
   * `progressNote`, the HookManager's copy may be ahead of the committed one by the reports held
   * in memory (see `progressCommitIntervalMs`).
   */
  readonly lastProgressAt: number;
  /** Note of the last progress report. */
  readonly progressNote: string | null;
  /** How many agents have been given this hook (1 + reassignments). */
  readonly attempts: number;
  /** How many times it was reassigned (bounded by `maxReassignments`). */
  readonly reassignments: number;
  /** Agents that held it before the current one, oldest first. */
  readonly previousAgents: readonly string[];
  /** What `completeHook` reported; `null` until then. */
  readonly result: JsonValue;
  /** The last failure (`failHook`); kept across reassignment so the next agent can see it. */
  readonly error: HookErrorInfo | null;
  /** Why it was last abandoned; kept across reassignment. */
  readonly abandonReason: string | null;
  /** Number of committed changes to this hook (creation is 1). */
  readonly version: number;
}

/** A hook as reported by the patrol (`checkPendingHooks`). */
export interface PatrolHook extends Hook {
  /** PENDING or ACTIVE with no progress for longer than `staleAfterSeconds`. */
  readonly stale: boolean;
}

/** What `inspectWorktree` found on disk. Never throws for a dirty or missing worktree. */
export interface WorktreeInfo {
  readonly hookId: string;
  /** Where the worktree should be; `null` when the hook has none. */
  readonly path: string | null;
  /** The directory exists. */
  readonly exists: boolean;
  /** The directory is a git worktree of the hook store (its own top level). */
  readonly valid: boolean;
  /** It has uncommitted changes or untracked files. */
  readonly dirty: boolean;
  /** Branch checked out there (`null` when detached, missing or invalid). */
  readonly branch: string | null;
  /** Commit checked out there (`null` when missing or invalid). */
  readonly head: string | null;
}

const jsonSchema = z.custom<JsonValue>((v) => isJsonValue(v), { message: 'must be JSON' });
const timeSchema = z.number().int().nonnegative();

/** Schema of a stored hook record (`hooks/<shard>/<hookId>.json` on the state ref). */
export const HookRecordSchema = z
  .object({
    hookId: z.string().regex(HOOK_ID_PATTERN),
    agentId: z.string().min(1),
    status: z.enum(HookStatus),
    workItem: jsonSchema,
    branch: z.string().nullable(),
    worktreePath: z.string().nullable(),
    baseCommit: z.string().nullable(),
    createdAt: timeSchema,
    updatedAt: timeSchema,
    lastProgressAt: timeSchema,
    progressNote: z.string().nullable(),
    attempts: z.number().int().positive(),
    reassignments: z.number().int().nonnegative(),
    previousAgents: z.array(z.string()),
    result: jsonSchema,
    error: z
      .object({ message: z.string(), code: z.string().nullable(), name: z.string().nullable() })
      .strict()
      .nullable(),
    abandonReason: z.string().nullable(),
    version: z.number().int().positive(),
  })
  .strict() satisfies z.ZodType<Hook>;
