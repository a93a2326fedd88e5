/**
 * The sidecar's configuration file (YAML or JSON): schema, variable substitution, environment
 * overrides, and errors that name the key path and the line.
 *
 * @module
 */
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isNode, LineCounter, parseDocument, Parser, visit, type Document } from 'yaml';
import { z } from 'zod';
import { timerMs, timerSeconds } from '../config-durations.js';
import { ConfigFileError, type ConfigFileProblem } from '../errors.js';
import { MAX_ARGUMENT_DEPTH_LIMIT } from '../gateway/input-bounds.js';
import { MAX_USAGE_AMOUNT } from '../budget/budget-manager.js';
import {
  DEFAULT_MAX_BATCH_MESSAGES,
  DEFAULT_MAX_INFLIGHT_PER_AGENT,
  DEFAULT_MAX_SESSIONS_PER_AGENT,
} from '../gateway/downstream-http.js';
import { DEFAULT_MAX_STREAM_BACKLOG_BYTES } from '../gateway/downstream-http-transport.js';
import { DEFAULT_BODY_TIMEOUT_MS } from '../gateway/http-body.js';
import { upstreamSpecSchema } from '../gateway/upstream-config.js';
import {
  DEFAULT_MAX_APPROVAL_PARAMS_BYTES,
  DEFAULT_MAX_PENDING_APPROVALS_PER_AGENT,
} from '../policy/approval-manager.js';
import { escapeGlob } from '../policy/glob.js';
import { THREADS_POOL_PROVIDER } from '../pools/thread-pool-provider.js';
import {
  DEFAULT_API_MAX_STREAMS,
  MAX_API_BUFFERED_BYTES,
  MAX_API_BUFFERED_MESSAGES,
  MAX_API_STREAMS,
} from '../rpc/http-door.js';
import {
  DEFAULT_MAX_BUFFERED_STREAM_BYTES,
  DEFAULT_MAX_BUFFERED_STREAM_MESSAGES,
} from '../rpc/rpc-call.js';
import {
  DEFAULT_BUDGET_LEASE_PERCENT,
  DEFAULT_STATE_SYNCHRONOUS,
  MAX_BUDGET_LEASE_PERCENT,
} from '../store/sqlite-store.js';
import { HostGuard } from './host-guard.js';
import { pinnedCredentialProblem } from './pinned-credential.js';
import { natsOptionsSchema } from '../transport/nats/nats-options.js';

/** Default HTTP port of the sidecar. */
export const DEFAULT_HTTP_PORT = 8765;
/** Default HTTP host (loopback: a sidecar is not a public service by default). */
export const DEFAULT_HTTP_HOST = '127.0.0.1';
/** Default time a client has to send a request's headers: 10 s (Node's own is 60 s). */
export const DEFAULT_HEADERS_TIMEOUT_MS = 10_000;
/** Default time a client has to send a whole request: 60 s (Node's own is 300 s). */
export const DEFAULT_REQUEST_TIMEOUT_MS = 60_000;

/** Checks `http.allowedHosts` / `http.allowedOrigins` entries the way the server parses them. */
function allowList(which: 'hosts' | 'origins') {
  return (list: string[], ctx: z.RefinementCtx): void => {
    try {
      new HostGuard({
        bindHost: DEFAULT_HTTP_HOST,
        ...(which === 'hosts' ? { allowedHosts: list } : { allowedOrigins: list }),
      });
    } catch (error) {
      ctx.addIssue({ code: 'custom', message: (error as Error).message });
    }
  };
}

const budgetSchema = z
  .object({
    maxTokensPerHour: z.number().positive().optional(),
    maxCostPerDay: z.number().positive().optional(),
    warnAtPercent: z.number().gt(0).max(100).optional(),
  })
  .strict();

/** An agent spawned by the sidecar (config `agents:` and the admin API). */
export const agentSchema = z
  .object({
    name: z.string().min(1),
    model: z.string().min(1).default('mcp-client'),
    poolId: z.string().min(1).optional(),
    labels: z.record(z.string(), z.string()).optional(),
    capabilities: z.array(z.string()).optional(),
    budget: budgetSchema.optional(),
    /**
     * How the agent gets its tasks: `remote` (it claims them over MCP or gRPC) or `nats` (its
     * worker pulls them from JetStream; needs the `nats:` section). @default 'remote'
     */
    executor: z.enum(['remote', 'nats']).optional(),
  })
  .strict();

/**
 * An agent of the config's `agents:` list: an {@link agentSchema} that may pin its credential
 * (`credential: ${env:AGENT_TOKEN}`) instead of taking the one the sidecar makes.
 */
export const startupAgentSchema = agentSchema
  .extend({
    /**
     * The agent's token, chosen by the deployment (at least 32 printable characters, not
     * guessable; see `pinnedCredentialProblem`). Never printed or logged. Changing it replaces
     * the stored hash at the next start (the old token stops working).
     */
    credential: z
      .string()
      .superRefine((value, ctx) => {
        const problem = pinnedCredentialProblem(value);
        if (problem !== undefined) ctx.addIssue({ code: 'custom', message: problem });
      })
      .optional(),
  })
  .strict();

/**
 * TLS files (PEM paths, relative to the working directory; `${CONFIG_DIR}` names the config's
 * folder) of a listener. With `ca`, clients must present a certificate it issued (mutual TLS).
 */
const tlsSchema = z
  .object({ cert: z.string().min(1), key: z.string().min(1), ca: z.string().min(1).optional() })
  .strict();

/** `{ line }` when known. */
function withLine(line: number | undefined): { line?: number } {
  return line === undefined ? {} : { line };
}

/** The whole configuration file. Every section is optional. */
export const sidecarConfigSchema = z
  .object({
    http: z
      .object({
        host: z.string().min(1).default(DEFAULT_HTTP_HOST),
        port: z.number().int().min(0).max(65535).default(DEFAULT_HTTP_PORT),
        /** Path of the MCP endpoint. */
        path: z.string().startsWith('/').default('/mcp'),
        keepAliveSeconds: timerSeconds().positive().default(15),
        /** Sessions idle this long (no request, no open stream) are closed; 0 = never. */
        sessionIdleSeconds: z.number().min(0).default(1800),
        /** Host names served besides loopback and the bind address (DNS rebinding check). */
        allowedHosts: z.array(z.string().min(1)).default([]).superRefine(allowList('hosts')),
        /** Exact origins allowed besides http(s) origins on allowed hosts. */
        allowedOrigins: z.array(z.string().min(1)).default([]).superRefine(allowList('origins')),
        maxSessionsPerAgent: z.number().int().positive().default(DEFAULT_MAX_SESSIONS_PER_AGENT),
        maxInflightPerAgent: z.number().int().positive().default(DEFAULT_MAX_INFLIGHT_PER_AGENT),
        maxBatchMessages: z.number().int().positive().default(DEFAULT_MAX_BATCH_MESSAGES),
        /** Unread bytes a response stream may hold before notifications to it are dropped. */
        maxStreamBacklogBytes: z.number().int().min(0).default(DEFAULT_MAX_STREAM_BACKLOG_BYTES),
        headersTimeoutSeconds: z
          .number()
          .positive()
          .default(DEFAULT_HEADERS_TIMEOUT_MS / 1000),
        requestTimeoutSeconds: z
          .number()
          .positive()
          .default(DEFAULT_REQUEST_TIMEOUT_MS / 1000),
        bodyTimeoutSeconds: timerSeconds()
          .positive()
          .default(DEFAULT_BODY_TIMEOUT_MS / 1000),
        /**
         * Operator API (`/api/`) server streams open at once (EventService/Watch,
         * ApprovalService/Watch); one more is refused with 429 FABRIC_ERR_STREAM_LIMIT.
         */
        apiMaxStreams: z
          .number()
          .int()
          .min(1)
          .max(MAX_API_STREAMS)
          .default(DEFAULT_API_MAX_STREAMS),
        /**
         * Messages one operator API stream may hold unread; beyond, the stream ends with
         * FABRIC_ERR_STREAM_OVERFLOW.
         */
        apiMaxBufferedMessages: z
          .number()
          .int()
          .min(1)
          .max(MAX_API_BUFFERED_MESSAGES)
          .default(DEFAULT_MAX_BUFFERED_STREAM_MESSAGES),
        /**
         * Bytes (of their lines) one operator API stream may hold unread; beyond, the stream ends
         * with FABRIC_ERR_STREAM_OVERFLOW (`details.unit` `bytes`).
         */
        apiMaxBufferedBytes: z
          .number()
          .int()
          .min(1024)
          .max(MAX_API_BUFFERED_BYTES)
          .default(DEFAULT_MAX_BUFFERED_STREAM_BYTES),
        /** HTTPS with these files (else the top-level `tls`, else plain HTTP). */
        tls: tlsSchema.optional(),
        /** Serve plain HTTP beyond loopback (start-up refuses it otherwise). */
        allowInsecure: z.boolean().default(false),
      })
      .strict()
      .refine((h) => h.headersTimeoutSeconds <= h.requestTimeoutSeconds, {
        path: ['headersTimeoutSeconds'],
        message: 'must be ≤ requestTimeoutSeconds',
      })
      // Every key's default applies when the section is left out.
      .prefault({}),
    /** Admin bearer token (prefer FABRIC_ADMIN_TOKEN). A random one is made when unset. */
    adminToken: z.string().min(16).optional(),
    /**
     * Where agents, their credential hashes, pools, tasks, budget usage, approvals and the
     * generated admin token's hash persist: `{ path, synchronous, budgetLeasePercent }` (an
     * embedded SQLite file; `budgetLeasePercent`: see SqliteStoreOptions — the most a crash can
     * over-count a budget scope's usage, as a percentage of its limit) or `memory` (nothing
     * survives a restart). A relative path is taken from the working directory.
     * @default { path: '${CWD}/.fabric/state.db' }
     */
    state: z
      .union([
        z.literal('memory'),
        z
          .object({
            path: z.string().min(1),
            synchronous: z.enum(['NORMAL', 'FULL']).default(DEFAULT_STATE_SYNCHRONOUS),
            budgetLeasePercent: z
              .number()
              .min(0)
              .max(MAX_BUDGET_LEASE_PERCENT)
              .default(DEFAULT_BUDGET_LEASE_PERCENT),
          })
          .strict(),
      ])
      .optional(),
    /** Let requests without a token act as a built-in dev agent. Never in production. */
    allowAnonymous: z.boolean().default(false),
    /** AgentFabric options (maxConcurrentAgents, heartbeatIntervalSeconds …). */
    fabric: z.record(z.string(), z.number()).default({}),
    upstreams: z.record(z.string(), upstreamSpecSchema).default({}),
    /** Policies as in the Fabric Guide (validated by the PolicyEngine). */
    policies: z
      .array(
        z
          .object({
            name: z.string().min(1),
            rules: z.array(z.record(z.string(), z.unknown())),
          })
          .catchall(z.unknown()),
      )
      .default([]),
    /** Budget applied to every agent the sidecar spawns, unless the agent sets its own. */
    budget: budgetSchema.optional(),
    /** Tool-name glob → cost of one call. */
    toolCosts: z.record(z.string(), z.number().min(0).max(MAX_USAGE_AMOUNT)).default({}),
    /**
     * Tool-name glob → tokens reserved for an agent's first call of a matching tool, until its
     * results teach the estimate (first match wins; others use DEFAULT_TOKEN_ESTIMATE).
     */
    tokenEstimates: z.record(z.string(), z.number().min(0).max(MAX_USAGE_AMOUNT)).default({}),
    pools: z
      .array(
        z
          .object({
            id: z.string().min(1),
            name: z.string().min(1).optional(),
            model: z.string().min(1).default('mcp-client'),
            minAgents: z.number().int().min(0).default(0),
            maxAgents: z.number().int().positive().optional(),
            /** Executor of the pool's agents (see `agents[].executor`). @default 'remote' */
            executor: z.enum(['remote', 'nats']).optional(),
            /**
             * A pool provider (a `pool` plugin) that starts the pool's agents; it names their
             * executor, so it excludes `executor`.
             */
            provider: z.string().min(1).optional(),
          })
          .strict(),
      )
      .default([]),
    /** Agents spawned at start-up; their credentials are printed once. */
    agents: z
      .array(startupAgentSchema)
      .default([])
      .superRefine((agents, ctx) => {
        const names = new Map<string, number>();
        const pinned = new Map<string, number>();
        for (const [i, a] of agents.entries()) {
          const sameName = names.get(a.name);
          if (sameName !== undefined) {
            ctx.addIssue({
              code: 'custom',
              path: [i, 'name'],
              message: `is the name of agents.${sameName} too; names must be unique`,
            });
          }
          names.set(a.name, i);
          if (a.credential === undefined) continue;
          const same = pinned.get(a.credential);
          if (same !== undefined) {
            ctx.addIssue({
              code: 'custom',
              path: [i, 'credential'],
              message: `is the credential of agents.${same} too; each agent needs its own`,
            });
          }
          pinned.set(a.credential, i);
        }
      }),
    audit: z
      .union([
        z.literal(false),
        z
          .object({
            path: z.string().min(1),
            maxBytes: z.number().int().positive().optional(),
            maxFiles: z.number().int().min(0).optional(),
            flushIntervalMs: z.number().int().min(0).max(60_000).optional(),
            /**
             * The `argsDigest` HMAC key (a secret: write `${env:NAME}`, not the key). Without
             * it, the state file's (random per process with `state: memory`).
             */
            digestKey: z
              .string()
              .regex(
                /^[\x20-\x7e]{32,64}$/,
                'must be 32 to 64 printable ASCII characters (the value is not shown: it is a secret; e.g. `openssl rand -hex 32`)',
              )
              .optional(),
          })
          .strict(),
      ])
      .default(false),
    /**
     * `timeoutSeconds`: how long a `require_approval` call waits for a human. It is also the
     * approval's TTL: nobody decided by then, the approval expires and the call is refused as
     * expired. `maxPendingPerAgent`: approvals one agent may have waiting at once.
     */
    approvals: z
      .object({
        timeoutSeconds: timerSeconds().positive().default(300),
        /** Pending approvals one agent may have at once (beyond: FABRIC_ERR_APPROVAL_LIMIT). */
        maxPendingPerAgent: z
          .number()
          .int()
          .positive()
          .default(DEFAULT_MAX_PENDING_APPROVALS_PER_AGENT),
        /** Largest call arguments (JSON bytes) that may wait for a human (beyond: refused). */
        maxParamsBytes: z.number().int().min(2).default(DEFAULT_MAX_APPROVAL_PARAMS_BYTES),
      })
      .strict()
      .default({
        timeoutSeconds: 300,
        maxPendingPerAgent: DEFAULT_MAX_PENDING_APPROVALS_PER_AGENT,
        maxParamsBytes: DEFAULT_MAX_APPROVAL_PARAMS_BYTES,
      }),
    gateway: z
      .object({
        hideDeniedTools: z.boolean().default(true),
        fabricTools: z.boolean().default(true),
        /** Serve `fabric__schedule_task`: agents queue work to their own pool. */
        poolScheduling: z.boolean().default(false),
        shutdownGraceSeconds: timerSeconds().min(0).default(5),
        /** Input bounds of every call (see gateway/input-bounds.ts); unset: the defaults. */
        maxArgumentDepth: z.number().int().min(1).max(MAX_ARGUMENT_DEPTH_LIMIT).optional(),
        maxArgumentNodes: z.number().int().positive().optional(),
        /** Resource subscriptions one session may hold (unset: 256). */
        maxSubscriptionsPerSession: z.number().int().positive().optional(),
        /** Longest URI (characters) a session may subscribe to (unset: 8192). */
        maxSubscriptionUriLength: z.number().int().positive().optional(),
        /**
         * Longest wait of a call that in-flight calls keep out of its budget (or that waits for
         * the first result of a tool new to its agent); 0 = refuse at once.
         */
        budgetWaitSeconds: z.number().min(0).max(300).default(5),
        /**
         * Task-augmented tool calls (MCP tasks): a task's lifetime when the client asks for none,
         * the longest it may ask for, the tasks one agent may hold and the bytes their results may
         * hold; `false`: off.
         */
        tasks: z
          .union([
            z.literal(false),
            z
              .object({
                defaultTtlSeconds: timerSeconds().int().positive().optional(),
                maxTtlSeconds: timerSeconds().int().positive().optional(),
                maxPerAgent: z.number().int().positive().optional(),
                maxResultBytesPerAgent: z.number().int().positive().optional(),
              })
              .strict(),
          ])
          .optional(),
      })
      .strict()
      .default({
        hideDeniedTools: true,
        fabricTools: true,
        poolScheduling: false,
        shutdownGraceSeconds: 5,
        budgetWaitSeconds: 5,
      }),
    /**
     * Longest a shutdown (SIGINT, SIGTERM, SIGHUP) may take, from the signal: past it the
     * process logs what was still pending and exits 1. Unset: `gateway.shutdownGraceSeconds` +
     * {@link DEFAULT_SHUTDOWN_MARGIN_SECONDS}; set, it must exceed the grace.
     */
    shutdownTimeoutSeconds: timerSeconds().positive().optional(),
    /** Folder created at start (the default filesystem upstream serves it). */
    sandbox: z.string().min(1).optional(),
    /**
     * GUPP work hooks persisted in a git repository (created if missing). Agents read and run
     * them through the `fabric__*_hook` tools; a lost agent's hooks move to its pool.
     */
    /**
     * TLS files shared by the listeners (HTTP and gRPC) that have no `tls` of their own. A
     * listener beyond loopback without TLS refuses to start unless it is `allowInsecure`.
     */
    tls: tlsSchema.optional(),
    /**
     * The gRPC services (proto/fabric/v1: AgentService, ToolService, FabricService and the admin services,
     * plus health and reflection); off unless configured.
     */
    grpc: z
      .object({
        host: z.string().min(1).default(DEFAULT_HTTP_HOST),
        port: z.number().int().min(0).max(65535).default(8766),
        /** TLS with these files (else the top-level `tls`, else plaintext). */
        tls: tlsSchema.optional(),
        /** Serve plaintext beyond loopback (start-up refuses it otherwise). */
        allowInsecure: z.boolean().default(false),
        /** Serve gRPC server reflection (v1 and v1alpha). */
        reflection: z.boolean().default(true),
        /**
         * Unary calls one agent may have in flight over gRPC (until their answers are out);
         * one more is RESOURCE_EXHAUSTED.
         */
        maxInflightPerAgent: z.number().int().positive().default(DEFAULT_MAX_INFLIGHT_PER_AGENT),
        /**
         * Server streams (EventService/Watch, ApprovalService/Watch) open at once over gRPC; one
         * more is RESOURCE_EXHAUSTED (FABRIC_ERR_STREAM_LIMIT).
         */
        maxStreams: z.number().int().min(1).max(MAX_API_STREAMS).default(DEFAULT_API_MAX_STREAMS),
      })
      .strict()
      .optional(),
    /**
     * Plugins loaded at start, in order: `module` is a path (`./…`, `../…` or absolute; `${PLUGINS}`
     * is the first-party folder), a `file:` URL, a first-party plugin's name (`policy-rate-limit`)
     * or an npm package name. `options` are checked by the plugin's schema; an `optional` plugin
     * that fails to load is logged as an error and the sidecar starts without it.
     */
    plugins: z
      .array(
        z
          .object({
            module: z.string().min(1),
            options: z.unknown().optional(),
            optional: z.boolean().default(false),
          })
          .strict(),
      )
      .default([]),
    /**
     * A NATS server with JetStream (see the README, "NATS"): heartbeats on core subjects and
     * JetStream dispatch for agents with `executor: 'nats'`. Off unless configured; start-up
     * fails (FABRIC_ERR_NATS_UNAVAILABLE, naming the URL) when the server cannot be reached.
     */
    nats: natsOptionsSchema.optional(),
    /**
     * OpenTelemetry traces (see telemetry/tracing.ts): on only with an OTLP endpoint, from here
     * or from the standard `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`.
     */
    telemetry: z
      .object({
        serviceName: z.string().min(1).max(256).default('agent-fabric'),
        otlp: z
          .object({
            /** Base URL; spans go to `<endpoint>/v1/traces` (OTLP/HTTP, JSON). */
            endpoint: z.url({ protocol: /^https?$/ }).optional(),
            /** Full traces URL (wins over `endpoint`). */
            tracesEndpoint: z.url({ protocol: /^https?$/ }).optional(),
            headers: z.record(z.string().min(1), z.string()).optional(),
            /** Longest wait before buffered spans are exported. */
            scheduledDelayMs: z.number().int().min(10).max(60_000).default(5000),
          })
          .strict()
          .optional(),
      })
      .strict()
      .default({ serviceName: 'agent-fabric' }),
    hooks: z
      .object({
        storagePath: z.string().min(1),
        useGitWorktree: z.boolean().default(true),
        baseBranch: z.string().min(1).optional(),
        autoReassign: z.boolean().default(true),
        patrolIntervalSeconds: timerSeconds().positive().optional(),
        staleAfterSeconds: z.number().positive().optional(),
        /**
         * Fewest ms between two progress commits of one hook (HookManager default 1000): reports
         * in between are held in memory and go to git with the hook's next commit.
         */
        progressCommitIntervalMs: timerMs().positive().optional(),
        /**
         * How often (at most) the hook store's git repository gets `git gc --auto` (HookManager
         * default 600; 0: never): only after hooks were committed, never two runs at once.
         */
        maintenanceIntervalSeconds: timerSeconds().min(0).optional(),
        maxReassignments: z.number().int().min(0).optional(),
        /**
         * Finished (COMPLETED, FAILED) hooks kept (HookManager default 10000; 0: none): the oldest
         * finished beyond it leave memory and the state tree; `git log` of the ref keeps them.
         */
        finishedRetention: z.number().int().min(0).optional(),
        /**
         * Remove a COMPLETED hook's worktree folder when it is clean and on the hook's branch
         * (HookManager default true; its branch stays, ignored files go); a dirty one, one on a
         * detached HEAD or another branch, and a FAILED hook's, are kept.
         */
        removeCompletedWorktrees: z.boolean().optional(),
      })
      .strict()
      .optional(),
  })
  .strict()
  .superRefine((c, ctx) => {
    // The grace of the calls in flight is part of the shutdown: a bound within it would cut
    // calls the grace promised to let finish.
    if (
      c.shutdownTimeoutSeconds !== undefined &&
      c.shutdownTimeoutSeconds <= c.gateway.shutdownGraceSeconds
    ) {
      ctx.addIssue({
        code: 'custom',
        path: ['shutdownTimeoutSeconds'],
        message: `must be greater than gateway.shutdownGraceSeconds (${c.gateway.shutdownGraceSeconds}): the shutdown includes that grace`,
      });
    }
    // A pool provider names its agents' executor itself.
    for (const [i, p] of c.pools.entries()) {
      // `threads` agents run task handlers registered in code (`registerHandler`), and a
      // sidecar registers none: every task of such a pool would fail.
      if (p.provider === THREADS_POOL_PROVIDER) {
        ctx.addIssue({
          code: 'custom',
          path: ['pools', i, 'provider'],
          message:
            'threads runs handlers registered in code (library use only); a sidecar pool uses ' +
            'executor remote or nats, or a provider such as pool-process',
        });
      }
      if (p.provider === undefined || p.executor === undefined) continue;
      ctx.addIssue({
        code: 'custom',
        path: ['pools', i, 'executor'],
        message: 'cannot be set with provider (the pool provider names its executor)',
      });
    }
    // An agent or pool on the `nats` executor needs the NATS connection to get any work.
    if (c.nats !== undefined) return;
    for (const key of ['agents', 'pools'] as const) {
      for (const [i, a] of c[key].entries()) {
        if (a.executor !== 'nats') continue;
        ctx.addIssue({
          code: 'custom',
          path: [key, i, 'executor'],
          message: "is 'nats' but no nats: section is configured",
        });
      }
    }
  });

/** A parsed sidecar configuration. */
export type SidecarConfig = z.output<typeof sidecarConfigSchema>;

/**
 * What an unset `shutdownTimeoutSeconds` gives the shutdown beyond `gateway.shutdownGraceSeconds`:
 * room for the bounded steps after the grace (upstream processes get 2 s before SIGKILL, each
 * plugin's close 10 s, the NATS drain 5 s, the last spans 5 s).
 */
export const DEFAULT_SHUTDOWN_MARGIN_SECONDS = 30;

/** The bound of a shutdown of `config`'s sidecar, in ms (see `shutdownTimeoutSeconds`). */
export function shutdownTimeoutMs(config: SidecarConfig): number {
  const seconds =
    config.shutdownTimeoutSeconds ??
    config.gateway.shutdownGraceSeconds + DEFAULT_SHUTDOWN_MARGIN_SECONDS;
  return seconds * 1000;
}
/** What may be written in a configuration file. */
export type SidecarConfigInput = z.input<typeof sidecarConfigSchema>;

/** Where the shipped example config lives (used when no config is given). */
export function defaultConfigPath(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  // src/server or dist/server → <package>/examples/fabric.yaml
  return resolve(here, '..', '..', 'examples', 'fabric.yaml');
}

/** Variables available as `${NAME}` in string values of the config. */
export function configVariables(file: string, cwd = process.cwd()): Record<string, string> {
  const require = createRequire(import.meta.url);
  const vars: Record<string, string> = {
    NODE: process.execPath,
    CONFIG_DIR: dirname(resolve(file)),
    CWD: cwd,
    SANDBOX: join(cwd, '.fabric', 'sandbox'),
    FABRIC_HOME: join(cwd, '.fabric'),
    // src/server or dist/server → <package>/plugins
    PLUGINS: resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', 'plugins'),
  };
  for (const [key, pkg] of [
    ['FILESYSTEM_SERVER_BIN', '@modelcontextprotocol/server-filesystem/dist/index.js'],
    ['EVERYTHING_SERVER_BIN', '@modelcontextprotocol/server-everything/dist/index.js'],
  ] as const) {
    try {
      vars[key] = require.resolve(pkg);
    } catch {
      // not installed (server-everything is a dev dependency)
    }
  }
  return vars;
}

/**
 * Where a string is a glob (`policies[].rules[].tool`, any string under
 * `policies[].rules[].conditions`): a substituted value is pasted escaped there, so a folder
 * named `report [final]` or `app{v2}` stays a literal part of `${SANDBOX}/protected/**`.
 */
function isGlobPosition(path: readonly string[]): boolean {
  return (
    path.length >= 5 &&
    path[0] === 'policies' &&
    path[2] === 'rules' &&
    ((path.length === 5 && path[4] === 'tool') || path[4] === 'conditions')
  );
}

/**
 * Replaces `${NAME}` (config variables) and `${env:NAME}` (the environment `env`: the one the
 * overrides are read from) in every string; in glob positions ({@link isGlobPosition}) the
 * values are glob-escaped. A `__proto__` key anywhere is a problem of the file
 * (`onProblem`) and is left out: the schema's records (`upstreams`, `labels`, `toolCosts`, a
 * rule's `conditions` …) drop that key without a word, so an upstream, a label or a condition
 * written under it would silently not exist.
 */
function substitute(
  value: unknown,
  vars: Record<string, string>,
  env: NodeJS.ProcessEnv,
  path: string[],
  onProblem: (path: string[], message: string) => void,
): unknown {
  if (typeof value === 'string') {
    return value.replace(
      /\$\{(env:)?([A-Za-z_][A-Za-z0-9_]*)\}/g,
      (_m, fromEnv: string | undefined, name: string) => {
        const v = fromEnv ? env[name] : vars[name];
        if (v === undefined)
          onProblem(path, `unknown variable \${${fromEnv ? 'env:' : ''}${name}}`);
        return v === undefined ? '' : isGlobPosition(path) ? escapeGlob(v) : v;
      },
    );
  }
  if (Array.isArray(value))
    return value.map((v, i) => substitute(v, vars, env, [...path, String(i)], onProblem));
  if (value && typeof value === 'object') {
    const entries: [string, unknown][] = [];
    for (const [k, v] of Object.entries(value)) {
      if (k === '__proto__') {
        onProblem(
          [...path, k],
          'is a key the configuration cannot hold (JavaScript objects drop it): use another name',
        );
        continue;
      }
      entries.push([k, substitute(v, vars, env, [...path, k], onProblem)]);
    }
    return Object.fromEntries(entries);
  }
  return value;
}

/** Default state file, relative to the working directory. */
export const DEFAULT_STATE_PATH = join('.fabric', 'state.db');

/** Environment overrides: ports and secrets. */
export const ENV_OVERRIDES = {
  FABRIC_STATE: 'state',
  FABRIC_HTTP_PORT: 'http.port',
  FABRIC_HTTP_HOST: 'http.host',
  FABRIC_ADMIN_TOKEN: 'adminToken',
  FABRIC_ALLOW_ANONYMOUS: 'allowAnonymous',
  FABRIC_AUDIT_PATH: 'audit.path',
  OTEL_EXPORTER_OTLP_ENDPOINT: 'telemetry.otlp.endpoint',
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'telemetry.otlp.tracesEndpoint',
  OTEL_SERVICE_NAME: 'telemetry.serviceName',
} as const;

/** A value set outside the file: an environment variable or a `serve` flag. */
interface Override {
  /** Key path it sets. */
  path: readonly string[];
  /** `env FABRIC_HTTP_PORT`, `--port`. */
  source: string;
}

/** Options of {@link parseSidecarConfig} and {@link loadSidecarConfig}. */
export interface SidecarConfigOptions {
  /**
   * The environment: what `${env:NAME}` reads and the overrides (`FABRIC_HTTP_PORT`, …) come
   * from. @default process.env
   */
  env?: NodeJS.ProcessEnv;
  /** Working directory relative paths are taken from. @default process.cwd() */
  cwd?: string;
  /** `serve --port` / `--host`: override `http.port` / `http.host`, and the environment. */
  flags?: { port?: string; host?: string };
}

/** Applies the environment overrides, then the flags; returns what each one set. */
function applyOverrides(
  raw: Record<string, unknown>,
  env: NodeJS.ProcessEnv,
  flags: NonNullable<SidecarConfigOptions['flags']>,
): Override[] {
  const applied: Override[] = [];
  const section = (key: string): Record<string, unknown> => {
    const v = raw[key];
    if (v !== null && typeof v === 'object' && !Array.isArray(v)) {
      return v as Record<string, unknown>;
    }
    return (raw[key] = {});
  };
  const set = (path: [string, ...string[]], value: unknown, source: string): void => {
    if (path.length === 1) raw[path[0]] = value;
    else section(path[0])[path[1]!] = value;
    applied.push({ path, source });
  };
  if (env.FABRIC_HTTP_PORT !== undefined) {
    set(['http', 'port'], Number(env.FABRIC_HTTP_PORT), 'env FABRIC_HTTP_PORT');
  }
  if (env.FABRIC_HTTP_HOST !== undefined) {
    set(['http', 'host'], env.FABRIC_HTTP_HOST, 'env FABRIC_HTTP_HOST');
  }
  if (env.FABRIC_ADMIN_TOKEN !== undefined) {
    set(['adminToken'], env.FABRIC_ADMIN_TOKEN, 'env FABRIC_ADMIN_TOKEN');
  }
  if (env.FABRIC_STATE !== undefined) {
    const state = env.FABRIC_STATE === 'memory' ? 'memory' : { path: env.FABRIC_STATE };
    set(['state'], state, 'env FABRIC_STATE');
  }
  if (env.FABRIC_ALLOW_ANONYMOUS !== undefined) {
    const on = env.FABRIC_ALLOW_ANONYMOUS === '1' || env.FABRIC_ALLOW_ANONYMOUS === 'true';
    set(['allowAnonymous'], on, 'env FABRIC_ALLOW_ANONYMOUS');
  }
  if (env.FABRIC_AUDIT_PATH !== undefined) {
    // `audit: false` in the file becomes an audit log at that path.
    if (raw.audit === false) raw.audit = {};
    set(['audit', 'path'], env.FABRIC_AUDIT_PATH, 'env FABRIC_AUDIT_PATH');
  }
  for (const [name, key] of [
    ['OTEL_EXPORTER_OTLP_ENDPOINT', 'endpoint'],
    ['OTEL_EXPORTER_OTLP_TRACES_ENDPOINT', 'tracesEndpoint'],
  ] as const) {
    const value = env[name];
    if (value === undefined || value === '') continue;
    const telemetry = section('telemetry');
    const otlp = telemetry.otlp;
    const o =
      otlp !== null && typeof otlp === 'object' && !Array.isArray(otlp)
        ? (otlp as Record<string, unknown>)
        : (telemetry.otlp = {});
    o[key] = value;
    applied.push({ path: ['telemetry', 'otlp', key], source: `env ${name}` });
  }
  if (env.OTEL_SERVICE_NAME !== undefined && env.OTEL_SERVICE_NAME !== '') {
    set(['telemetry', 'serviceName'], env.OTEL_SERVICE_NAME, 'env OTEL_SERVICE_NAME');
  }
  // A port that is not a whole number stays a string so the schema names it.
  if (flags.port !== undefined) {
    const port = /^\d+$/.test(flags.port) ? Number(flags.port) : flags.port;
    set(['http', 'port'], port, '--port');
  }
  if (flags.host !== undefined) set(['http', 'host'], flags.host, '--host');
  return applied;
}

/**
 * The line of a syntax error at `offset`: an error found at the end of the text (an unclosed
 * bracket or quote) is on the last line that has content, not on the empty line after it.
 */
function syntaxLine(text: string, lines: LineCounter, offset: number): number {
  const end = text.trimEnd().length;
  return lines.linePos(Math.min(offset, Math.max(0, end - 1))).line;
}

/**
 * yaml's messages that quote the file: a block scalar header's rest of the line, a tag, an
 * alias's name, an escape sequence, a duplicate key. A value there is often a secret (an
 * unquoted `password: *x9…` is read as an alias, `token: |abc…` as a block scalar header), so
 * a problem says what yaml found up to the quote, never the quote.
 */
const QUOTING_MESSAGE =
  /^(?:Block scalar header includes extra characters|Could not resolve tag|Not a valid tag|Unresolved tag|Ordered maps must not include duplicate keys|Unresolved alias \(the anchor must be set before the alias\)|Invalid escape sequence|Verbatim tags aren't resolved|Unresolved plain scalar|Unknown directive|Unsupported YAML version)(?![A-Za-z])/;

/** The first line of one of yaml's messages without any text of the file it may quote. */
export function yamlMessage(message: string): string {
  const first = message.split('\n')[0] ?? '';
  if (/^The .* tag has no suffix$/s.test(first)) return 'A tag has no suffix';
  const quoting = QUOTING_MESSAGE.exec(first);
  if (quoting !== null) return `${quoting[0]} (the text is not shown: it may be a secret)`;
  return first || 'syntax error';
}

/**
 * The document as plain values. yaml throws while it does so for an alias that names no anchor
 * before it (`password: *x9…`: an unquoted value starting with `*`), an alias count past its
 * bound or an invalid `!!omap`; that is a problem of the file at the alias's line.
 */
function documentValue(doc: Document, file: string, lines: LineCounter): unknown {
  try {
    return doc.toJS();
  } catch (error) {
    let line: number | undefined;
    visit(doc, {
      Alias(_key, node) {
        if (node.resolve(doc) !== undefined || !node.range) return undefined;
        line = lines.linePos(node.range[0]).line;
        return visit.BREAK;
      },
    });
    // No cause: its message quotes the alias.
    throw new ConfigFileError(file, '', yamlMessage((error as Error).message), line);
  }
}

/** Deepest nesting of mappings and sequences a configuration file may have. */
export const MAX_CONFIG_DEPTH = 256;

/**
 * The line of the first mapping or sequence of YAML or JSON `text` nested deeper than
 * {@link MAX_CONFIG_DEPTH} levels, or `undefined` when there is none. Measured on yaml's tokens
 * (its parser keeps its own stack) with a stack of our own, before anything recurses: composing
 * the document, and every walk after it, recurse per level. yaml turns the stack overflow of a
 * file thousands of levels deep into a "Maximum call stack size exceeded" problem, but when V8
 * compiles a regular expression at that depth the process ends instead (a fatal "RegExpCompiler
 * Allocation failed"; seen when a process parsed such a file a second time).
 */
export function configTooDeep(text: string): number | undefined {
  const lines = new LineCounter();
  const stack: [unknown, number][] = [];
  for (const token of new Parser(lines.addNewLine).parse(text)) stack.push([token, 0]);
  while (stack.length > 0) {
    const [node, depth] = stack.pop()!;
    if (node === null || typeof node !== 'object') continue;
    const t = node as {
      type?: string;
      offset?: number;
      value?: unknown;
      items?: readonly { key?: unknown; value?: unknown }[];
    };
    if (t.type === 'document') {
      stack.push([t.value, depth]);
    } else if (t.type === 'block-map' || t.type === 'block-seq' || t.type === 'flow-collection') {
      if (depth + 1 > MAX_CONFIG_DEPTH) return lines.linePos(t.offset ?? 0).line;
      for (const item of t.items ?? []) stack.push([item.key, depth + 1], [item.value, depth + 1]);
    }
  }
  return undefined;
}

/**
 * Parses configuration text (YAML or JSON), substitutes variables, applies environment
 * overrides (then `flags`) and validates it.
 *
 * @param file Used in error messages and to resolve `${CONFIG_DIR}`.
 * @throws ConfigFileError listing every problem found: its key path and its line, or for a value
 *   set by the environment or a flag, that variable or flag instead of a line. Syntax errors
 *   stop before the schema is checked (the file's content is unknown then).
 */
export function parseSidecarConfig(
  text: string,
  file: string,
  options: SidecarConfigOptions = {},
): SidecarConfig {
  const tooDeep = configTooDeep(text);
  if (tooDeep !== undefined) {
    throw new ConfigFileError(
      file,
      '',
      `nests deeper than ${MAX_CONFIG_DEPTH} levels of mappings and sequences`,
      tooDeep,
    );
  }
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false });
  const lineOf = (path: readonly PropertyKey[]): number | undefined => {
    for (let n = path.length; n >= 0; n--) {
      const node = doc.getIn(path.slice(0, n), true);
      if (isNode(node) && node.range) return lineCounter.linePos(node.range[0]).line;
    }
    return undefined;
  };
  if (doc.errors.length > 0) {
    throw ConfigFileError.of(
      file,
      doc.errors.map((e) => ({
        path: '',
        message: yamlMessage(e.message),
        line: syntaxLine(text, lineCounter, e.pos[0]),
      })),
    );
  }
  const raw: unknown = documentValue(doc, file, lineCounter) ?? {};
  if (!raw || typeof raw !== 'object' || Array.isArray(raw)) {
    throw new ConfigFileError(file, '', 'must be a mapping of sections', 1);
  }
  const vars = configVariables(file, options.cwd);
  const problems: ConfigFileProblem[] = [];
  const env = options.env ?? process.env;
  const substituted = substitute(raw, vars, env, [], (path, message) => {
    problems.push({
      path: path.join('.'),
      message,
      ...withLine(lineOf(path)),
    });
  }) as Record<string, unknown>;
  if (problems.length > 0) throw ConfigFileError.of(file, problems);
  const overrides = applyOverrides(substituted, env, options.flags ?? {});
  const parsed = sidecarConfigSchema.safeParse(substituted);
  if (!parsed.success) {
    for (const issue of parsed.error.issues) {
      const keys = issue.code === 'unrecognized_keys' ? issue.keys : [undefined];
      for (const key of keys) {
        const path = issue.path.map(String);
        if (key !== undefined) path.push(key);
        const message = key !== undefined ? 'is not a known key' : issue.message;
        const from = overrides.find((o) => o.path.every((k, i) => path[i] === k));
        problems.push(
          from !== undefined
            ? { path: path.join('.'), message, source: from.source }
            : { path: path.join('.'), message, ...withLine(lineOf(path)) },
        );
      }
    }
    // In file order; values set by the environment or a flag (no line) last.
    problems.sort((a, b) => (a.line ?? Infinity) - (b.line ?? Infinity));
    throw ConfigFileError.of(file, problems);
  }
  const cwd = options.cwd ?? process.cwd();
  const state = parsed.data.state ?? {
    path: DEFAULT_STATE_PATH,
    synchronous: DEFAULT_STATE_SYNCHRONOUS,
    budgetLeasePercent: DEFAULT_BUDGET_LEASE_PERCENT,
  };
  const tls = <T extends { cert: string; key: string; ca?: string | undefined }>(
    t: T | undefined,
  ): T | undefined =>
    t === undefined
      ? undefined
      : {
          ...t,
          cert: resolve(cwd, t.cert),
          key: resolve(cwd, t.key),
          ...(t.ca === undefined ? {} : { ca: resolve(cwd, t.ca) }),
        };
  const { http, grpc } = parsed.data;
  return {
    ...parsed.data,
    state: state === 'memory' ? state : { ...state, path: resolve(cwd, state.path) },
    tls: tls(parsed.data.tls),
    http: { ...http, tls: tls(http.tls) },
    grpc: grpc === undefined ? undefined : { ...grpc, tls: tls(grpc.tls) },
  };
}

/**
 * Reads and parses a configuration file.
 * @throws ConfigFileError when the file cannot be read or is invalid.
 */
export function loadSidecarConfig(file: string, options: SidecarConfigOptions = {}): SidecarConfig {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    throw new ConfigFileError(file, '', `cannot be read: ${(error as Error).message}`, undefined, {
      cause: error,
    });
  }
  return parseSidecarConfig(text, file, options);
}
