/**
 * Upstream tool server declarations: the zod schema (source of the types) and defaults.
 *
 * @module
 */
import { z } from 'zod';
import { timerMs, timerSeconds } from '../config-durations.js';

/** Default of {@link UpstreamSpec.callTimeoutSeconds}. */
export const DEFAULT_CALL_TIMEOUT_SECONDS = 60;
/** Default of {@link UpstreamSpec.startTimeoutSeconds}. */
export const DEFAULT_START_TIMEOUT_SECONDS = 30;
/** Default first restart delay after an upstream dies. */
export const DEFAULT_RESTART_INITIAL_DELAY_MS = 100;
/** Default cap of the exponential restart delay. */
export const DEFAULT_RESTART_MAX_DELAY_MS = 30_000;
/** Default of {@link UpstreamSpec.maxMessageBytes}: 64 MiB. */
export const DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024;
/**
 * Largest {@link UpstreamSpec.maxMessageBytes}: a stdio line is joined into one string, and V8
 * refuses strings past 2^29 - 24 characters (the join would throw).
 */
export const MAX_MAX_MESSAGE_BYTES = 256 * 1024 * 1024;
/** Longest tool name MCP clients accept (Claude and others cap names at 64 characters). */
export const MAX_TOOL_NAME_LENGTH = 64;

const restartSchema = z
  .object({
    /** First delay before restarting a dead upstream. @default 100 */
    initialDelayMs: timerMs().int().positive().default(DEFAULT_RESTART_INITIAL_DELAY_MS),
    /** Cap of the doubling delay. @default 30000 */
    maxDelayMs: timerMs().int().positive().default(DEFAULT_RESTART_MAX_DELAY_MS),
  })
  .strict();

const absolutePath = z
  .string()
  .refine((p) => p.startsWith('/'), { error: 'must be an absolute path' })
  .refine((p) => !p.includes('\0'), { error: 'must not contain a NUL byte' });

const pathsSchema = z
  .object({
    /**
     * Directories relative paths are resolved against, in the upstream's own order
     * (server-filesystem: its allowed directories). @default []
     */
    roots: z.array(absolutePath).default([]),
    /** What `~` means to the upstream. @default the child's HOME (stdio); unknown (remote) */
    home: absolutePath.optional(),
    /** Resolve symlinks on our disk. @default true (stdio), false (remote) */
    realpath: z.boolean().optional(),
    /**
     * What a path to a file with more than one hard link matches, with `realpath`: `closed` —
     * every `deny`/`require_approval` condition with a path pattern on it (its other names, one
     * maybe under a denied folder, cannot be known); `named` — only by the name it is called by
     * and the names it went by (trees of hard links the operator trusts: a pnpm store's
     * `node_modules`). @default closed
     */
    hardLinks: z.enum(['closed', 'named']).default('closed'),
    /**
     * Parameter names this upstream's tools take as paths beyond the built-in name pattern
     * (`path`, `file`, `dir`, `source`, `target` …), e.g. `output`, `to`; matched exactly, at
     * any depth. @default []
     */
    params: z.array(z.string().min(1)).default([]),
    /**
     * This upstream's tools (names as the upstream lists them, or `resources/read`,
     * `resources/subscribe`, `prompts/get`, `completion/complete`; `*`: all of them) that never
     * rename, move, link or remove a name on disk. A call carrying paths takes the upstream's
     * path lock from before its paths are checked until the upstream answers: shared for these
     * tools, alone (exclusive) for every other tool, so no call that may redirect a path runs
     * between another call's check and its answer (see path-lock.ts). @default [] (every
     * path-carrying call alone)
     */
    keepNames: z.array(z.string().min(1)).default([]),
  })
  .strict();

const commonShape = {
  /**
   * How downstream names are formed: `prefix` (default `<upstream>__`, or `prefix` when given)
   * or `none` (names pass through unchanged).
   */
  namespace: z.enum(['prefix', 'none']).default('prefix'),
  /** Custom prefix used when `namespace` is `prefix`. @default `<upstream>__` */
  prefix: z.string().min(1).optional(),
  /**
   * Per-call timeout, also the upper bound of a hung call, and of the agent client's answer to a
   * `sampling/createMessage` the upstream sends it. @default 60
   */
  callTimeoutSeconds: timerSeconds().positive().default(DEFAULT_CALL_TIMEOUT_SECONDS),
  /**
   * Bound of the start-up handshake and first catalog load (a server launched with `npx` may
   * take far longer to start than any single call should). @default 30
   */
  startTimeoutSeconds: timerSeconds().positive().default(DEFAULT_START_TIMEOUT_SECONDS),
  restart: restartSchema.default({
    initialDelayMs: DEFAULT_RESTART_INITIAL_DELAY_MS,
    maxDelayMs: DEFAULT_RESTART_MAX_DELAY_MS,
  }),
  /**
   * Declare the `roots` capability upstream and forward `roots/list` to the calling agent's
   * client. Off by default: a server such as server-filesystem replaces its allowed folders
   * with the client's roots, so forwarding would let an agent widen its own sandbox. The
   * connection that was given an agent's roots serves that agent alone until it restarts (the
   * upstream may keep them): other agents' requests are refused (`Upstream.rootsHolder`).
   * @default false
   */
  forwardRoots: z.boolean().default(false),
  /**
   * Serve one agent session's requests at a time on this upstream (other sessions wait their
   * turn), so requests the upstream sends back — sampling, elicitation, roots — always reach the
   * session that caused them. For upstreams that call back; it costs concurrency across agents.
   * Without it a callback while several sessions have calls in flight is refused with
   * `FABRIC_ERR_ROUTING`.
   * @default false
   */
  exclusive: z.boolean().default(false),
  /**
   * Longest message the upstream may send: a stdio line (counted in UTF-16 units, never more
   * than its bytes), one event of an SSE stream (bytes since the last blank line), a whole JSON
   * response body. A longer one is dropped as it arrives, never held whole; the call it answered
   * fails (see process-stdio-transport.ts and bounded-body.ts). @default 67108864 (64 MiB)
   */
  maxMessageBytes: z
    .number()
    .int()
    .min(1024)
    .max(MAX_MAX_MESSAGE_BYTES)
    .default(DEFAULT_MAX_MESSAGE_BYTES),
  /** Start-up is refused when an `required` upstream fails to connect. @default true */
  required: z.boolean().default(true),
  /**
   * How this upstream resolves path parameters, so policy matches what it will touch (see
   * `path-resolver.ts` and the README's "Path resolution"). Defaults: no roots; `home` the
   * child's HOME for stdio, unknown for remote; `realpath` true for stdio, false for remote.
   */
  paths: pathsSchema.optional(),
};

/** An upstream reached by spawning a command and speaking MCP over its stdin/stdout. */
export const stdioUpstreamSchema = z
  .object({
    transport: z.literal('stdio').default('stdio'),
    command: z.string().min(1),
    args: z.array(z.string()).default([]),
    /** Extra environment; merged over a minimal safe inherited set (PATH, HOME …). */
    env: z.record(z.string(), z.string()).default({}),
    cwd: z.string().optional(),
    /**
     * Where the child's stderr goes: `log` — each line into the gateway's log with the
     * upstream's name (dropped when the gateway has no logger); `inherit` — the sidecar's own
     * stderr, unmarked; `ignore`; `pipe` — left to the caller (`ProcessStdioTransport.stderr`).
     * @default 'log'
     */
    stderr: z.enum(['log', 'inherit', 'ignore', 'pipe']).default('log'),
    ...commonShape,
  })
  .strict();

/** An upstream reached over Streamable HTTP (`http`) or the legacy HTTP+SSE transport (`sse`). */
export const remoteUpstreamSchema = z
  .object({
    transport: z.enum(['http', 'sse']).default('http'),
    url: z.url(),
    headers: z.record(z.string(), z.string()).default({}),
    ...commonShape,
  })
  .strict();

/** One upstream declaration (stdio when it has `command`, remote when it has `url`). */
export const upstreamSpecSchema = z.union([stdioUpstreamSchema, remoteUpstreamSchema]);

/** A parsed upstream declaration. */
export type UpstreamSpec = z.output<typeof upstreamSpecSchema>;
/** What a caller may write for an upstream declaration. */
export type UpstreamSpecInput = z.input<typeof upstreamSpecSchema>;
/** A parsed stdio upstream declaration. */
export type StdioUpstreamSpec = z.output<typeof stdioUpstreamSchema>;

/** The downstream prefix of an upstream ('' for `namespace: none`). */
export function upstreamPrefix(name: string, spec: UpstreamSpec): string {
  return spec.namespace === 'none' ? '' : (spec.prefix ?? `${name}__`);
}
