/**
 * The sidecar: wires a config to an AgentFabric, a ToolGateway, the HTTP server, and shuts them
 * down in order.
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { AgentConfig } from '../agent.js';
import { AgentStatus } from '../agent.js';
import { ConfigError, FabricError, ListenError, StartupError, StateStoreError } from '../errors.js';
import { AgentFabric, type FabricOptions } from '../fabric.js';
import type { AdminBackend, AgentIdentity, GatewayBackend } from '../gateway/backend.js';
import { McpHttpEndpoint } from '../gateway/downstream-http.js';
import { messageOf } from '../gateway/map-error.js';
import { ToolGateway, type GatewayLogEntry, type ToolGatewayOptions } from '../gateway/gateway.js';
import { renderMetrics, type MetricFamily } from '../gateway/metrics.js';
import type { SidecarConfig } from './config-file.js';
import { FailureLog } from './failure-log.js';
import { FabricMetrics } from './fabric-metrics.js';
import type { Tracing } from '../telemetry/tracing.js';
import { PluginHost } from '../plugins/plugin-host.js';
import { policyWarnings } from '../policy/conditions.js';
import { validatePolicy } from '../policy/policy-engine.js';
import type { PluginEndpoints } from '../plugins/plugin.js';
import { startGrpcServer, type GrpcServer } from '../rpc/grpc-server.js';
import { HttpDoor } from '../rpc/http-door.js';
import { AuthThrottle } from './auth-throttle.js';
import { Dashboard, type DashboardOptions } from './dashboard.js';
import { fabricServices } from '../rpc/services.js';
import { checkListenerSecurity, readTlsFiles } from './tls.js';
import { checkOwnFiles, ownFiles } from './own-files.js';
import { FabricBackend } from './fabric-backend.js';
import { HostGuard } from './host-guard.js';
import { hashCredential, type AgentRecord } from '../lifecycle/lifecycle-manager.js';
import type { PoolRecord } from '../pools/pool-manager.js';
import type { TaskRecord } from '../scheduler/task-record.js';
import { SqliteStore } from '../store/sqlite-store.js';
import { HOOK_SIGNED_SINCE, HOOK_STATE_HEAD, HOOKS_REF } from '../hooks/index.js';
import {
  startHttpServer,
  type AdminApi,
  type Readiness,
  type StartedHttpServer,
} from './http-server.js';

/** A spawned agent whose credential is shown once at start. */
export interface StartupAgent {
  readonly name: string;
  readonly id: string;
  readonly credential: string;
  /** True when the credential was pinned in the config (`agents[].credential`): never show it. */
  readonly pinned: boolean;
}

/** Options of {@link startSidecar}. */
export interface SidecarOptions {
  config: SidecarConfig;
  /**
   * Use this backend instead of building an AgentFabric (tests, embedders). It must also serve
   * the admin API.
   */
  backend?: GatewayBackend & AdminBackend & AdminApi;
  /** Called to close the injected backend's resources on shutdown. */
  closeBackend?: () => Promise<void>;
  /**
   * Options of the AgentFabric the sidecar builds (ignored with `backend`). The config's admin
   * token is always among its admin credentials; `approvals.defaultTtlSeconds` defaults to the
   * config's `approvals.timeoutSeconds`.
   */
  fabricOptions?: FabricOptions;
  /** Structured log sink. */
  logger?: (entry: GatewayLogEntry) => void;
  /** Skip the HTTP server (stdio mode). */
  http?: boolean;
  /**
   * Told each step of the start-up as it begins (`sandbox`, `tls`, …, `gateway` — the upstreams
   * start there —, `http`, `grpc`): what a shutdown asked for during start-up waits for.
   */
  onStep?: (step: string) => void;
  /**
   * Settings of the dashboard's sessions (tests, embedders): their life, idle time and cap, how
   * often they are checked for their end, and the clock of the sessions and of the bound on
   * failed logins. @default the defaults of server/dashboard.ts and server/auth-throttle.ts
   */
  dashboard?: Pick<
    DashboardOptions,
    'sessionTtlMs' | 'sessionIdleMs' | 'maxSessions' | 'now' | 'sweepMs'
  >;
}

type Closable = { close(): Promise<void> | void };

/** A running sidecar. */
export class Sidecar {
  readonly gateway: ToolGateway;
  readonly backend: GatewayBackend & AdminBackend & AdminApi;
  /** The fabric the sidecar built (undefined when a backend was injected). */
  readonly fabric: AgentFabric | undefined;
  /**
   * The admin token, when it is known to this start: from the config, or generated now. A token
   * generated at an earlier start is kept only as a hash in the state file, so it is undefined.
   */
  readonly adminToken: string | undefined;
  /** The state file, when state is durable. */
  readonly statePath: string | undefined;
  readonly agents: readonly StartupAgent[];
  readonly anonymous: AgentIdentity | undefined;
  readonly #http: StartedHttpServer | undefined;
  readonly #grpc: GrpcServer | undefined;
  readonly #mcp: McpHttpEndpoint | undefined;
  readonly #closeBackend: () => Promise<void>;
  readonly #tracing: Tracing | undefined;
  #closing: Promise<void> | undefined;
  /** The parts of the shutdown still running (see {@link shutdownPending}). */
  readonly #pending = new Set<ShutdownPart>();

  private constructor(parts: {
    gateway: ToolGateway;
    backend: GatewayBackend & AdminBackend & AdminApi;
    fabric: AgentFabric | undefined;
    adminToken: string | undefined;
    statePath: string | undefined;
    agents: StartupAgent[];
    anonymous: AgentIdentity | undefined;
    http: StartedHttpServer | undefined;
    grpc: GrpcServer | undefined;
    mcp: McpHttpEndpoint | undefined;
    closeBackend: () => Promise<void>;
    tracing: Tracing | undefined;
    dashboardUrl: string | undefined;
  }) {
    this.gateway = parts.gateway;
    this.backend = parts.backend;
    this.fabric = parts.fabric;
    this.adminToken = parts.adminToken;
    this.statePath = parts.statePath;
    this.agents = parts.agents;
    this.anonymous = parts.anonymous;
    this.#http = parts.http;
    this.#grpc = parts.grpc;
    this.#mcp = parts.mcp;
    this.#closeBackend = parts.closeBackend;
    this.#tracing = parts.tracing;
    this.dashboardUrl = parts.dashboardUrl;
  }

  /** The web dashboard's URL, when this sidecar serves it (its own fabric, `ui/` installed). */
  readonly dashboardUrl: string | undefined;

  /** The MCP endpoint URL (undefined without HTTP). */
  get url(): string | undefined {
    return this.#http?.url;
  }

  /** `host:port` of the gRPC services (agent protocol and operator services), when configured. */
  get grpcAddress(): string | undefined {
    return this.#grpc?.address;
  }

  /** The bound HTTP port. */
  get port(): number | undefined {
    return this.#http?.port;
  }

  /**
   * Starts everything the config declares.
   * @throws ConfigError / ToolNameError / UpstreamUnavailableError / ListenError / PluginError /
   *   HookStoreLockedError … on a bad setup, and StartupError (naming the step) for any failure
   *   that is not a catalog error — always after closing what was started.
   */
  static async start(options: SidecarOptions): Promise<Sidecar> {
    const { config } = options;
    const log = options.logger ?? (() => undefined);
    const cleanup: Closable[] = [];
    // The step in progress, named by a start-up failure no coded error describes (and by a
    // shutdown that a start-up still running holds past its bound).
    let step = 'sandbox';
    const enter = (next: string): void => {
      step = next;
      options.onStep?.(next);
    };
    options.onStep?.(step);
    try {
      if (config.sandbox) makeSandbox(config.sandbox);
      // Before anything starts: a listener that would expose credentials in plaintext beyond
      // loopback refuses the start (its TLS files are read now, so a bad path fails here too).
      enter('tls');
      const httpTlsFiles = config.http.tls ?? config.tls;
      const httpTls =
        options.http === false || httpTlsFiles === undefined
          ? undefined
          : readTlsFiles('http', httpTlsFiles);
      if (options.http !== false)
        checkListenerSecurity('HTTP', config.http.host, httpTls, config.http.allowInsecure);
      const grpcTlsFiles = config.grpc?.tls ?? config.tls;
      const grpcTls =
        config.grpc === undefined || grpcTlsFiles === undefined
          ? undefined
          : readTlsFiles('grpc', grpcTlsFiles);
      if (config.grpc !== undefined)
        checkListenerSecurity('gRPC', config.grpc.host, grpcTls, config.grpc.allowInsecure);
      enter('telemetry');
      const tracing = await startTracing(config.telemetry);
      if (tracing !== undefined) cleanup.push({ close: () => stopTracing(tracing) });
      enter('state');
      const state = config.state;
      const opensState =
        !options.backend &&
        options.fabricOptions?.store === undefined &&
        state !== undefined &&
        state !== 'memory';
      // Before the state file is made: one an agent could read through an upstream is refused,
      // and so is a policy the fabric would refuse (a start refused for its config makes no file).
      for (const msg of checkOwnFiles(config.upstreams, ownFiles(config, opensState))) {
        log({ level: 'warn', msg });
      }
      if (opensState) for (const p of config.policies) validatePolicy(p);
      let store: DurableStore | undefined;
      if (opensState) {
        store = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(state.path, {
          synchronous: state.synchronous,
          budgetLeasePercent: state.budgetLeasePercent,
          onError: (e) => log({ level: 'error', msg: e.message }),
        });
        cleanup.push(store);
        if (store.orphanPoolBudgetsDropped > 0) {
          log({
            level: 'info',
            msg: `state: dropped the budgets (limits and usage) of ${store.orphanPoolBudgetsDropped} pool(s) that no longer exist, kept by an earlier version when the pools were deleted; a pool created again under such an id starts without them`,
          });
        }
        const step = store.clockStepAtOpen;
        if (step !== undefined && step !== 0) {
          log({
            level: 'warn',
            msg: `state: the wall clock moved ${step > 0 ? 'ahead' : 'back'} by ${Math.round(Math.abs(step) / 1000)} s more than time passed while the sidecar was down; the times of open tasks, pending approvals and MCP tasks were moved by as much, so each keeps the time it had left`,
          });
        }
      }
      enter('fabric');
      // A generated admin token is kept as a hash: it authenticates after a restart, but only the
      // start that made it can show it (it is stored once that start succeeded, see below).
      let adminToken = config.adminToken;
      let generatedToken = false;
      const adminHashes: string[] = [];
      if (adminToken === undefined) {
        const stored = store?.getMeta(ADMIN_TOKEN_HASH);
        if (stored !== undefined) adminHashes.push(stored);
        else {
          adminToken = `fab_admin_${randomBytes(24).toString('base64url')}`;
          generatedToken = true;
        }
      }
      let backend: GatewayBackend & AdminBackend & AdminApi;
      let closeBackend: () => Promise<void>;
      // Plugins learn where the sidecar serves once it listens (pool-process hands it to workers).
      let listen: (endpoints: PluginEndpoints) => void = () => undefined;
      const listening = new Promise<PluginEndpoints>((resolve) => (listen = resolve));
      let fabric: AgentFabric | undefined;
      let fabricMetrics: FabricMetrics | undefined;
      if (options.backend) {
        backend = options.backend;
        closeBackend = options.closeBackend ?? (async () => undefined);
      } else {
        const extra = options.fabricOptions ?? {};
        fabric = new AgentFabric(config.fabric, {
          // An approval lives as long as a call may wait for it, so nobody approves a call that
          // already gave up.
          approvals: {
            defaultTtlSeconds: config.approvals.timeoutSeconds,
            maxPendingPerAgent: config.approvals.maxPendingPerAgent,
            maxParamsBytes: config.approvals.maxParamsBytes,
          },
          ...(config.hooks === undefined ? {} : { hooks: hookOptions(config.hooks) }),
          ...(config.nats === undefined ? {} : { nats: config.nats }),
          ...extra,
          ...(store === undefined ? {} : { store }),
          adminCredentials: [
            ...(adminToken === undefined ? [] : [adminToken]),
            ...(extra.adminCredentials ?? []),
          ],
          adminCredentialHashes: [...adminHashes, ...(extra.adminCredentialHashes ?? [])],
        });
        const f = fabric;
        cleanup.push(f);
        tracing?.followTasks(fabric.scheduler.events);
        // Once per step (the windows then follow the new clock): the operator sees why usage
        // did not roll when the clock jumped ahead, or was not held longer when it went back.
        fabric.budgets.on('clockStep', ({ stepMs }) =>
          log({
            level: 'warn',
            msg: `budgets: the wall clock stepped ${stepMs > 0 ? 'ahead' : 'back'} by ${Math.round(Math.abs(stepMs) / 1000)} s; budget windows keep the elapsed time they had left`,
            stepMs,
          }),
        );
        const plugins = new PluginHost(fabric, {
          log: ({ level, msg, plugin, ...fields }) =>
            log({ ...fields, level, msg: `plugin ${plugin}: ${msg}` }),
          endpoints: listening,
        });
        closeBackend = async () => {
          await plugins
            .close()
            .catch((err: unknown) => log({ level: 'warn', msg: `plugins: ${String(err)}` }));
          await f.close();
        };
        cleanup.push({ close: () => plugins.close() });
        // The hook store's maintenance (git gc) fails without failing hooks: logged here.
        fabric.hooks?.on('store.maintenance_error', ({ error }) =>
          log({
            level: 'warn',
            msg: `hooks: store maintenance failed (hooks go on; retried next interval): ${error instanceof Error ? error.message : String(error)}`,
          }),
        );
        fabric.hooks?.on('store.state_quarantined', ({ found, restored, quarantineRef, reason }) =>
          log({
            level: 'error',
            msg: `hooks: ${
              found === null
                ? 'the state ref was deleted'
                : `the state ref's head ${found} ${reason === 'rollback' ? 'is a genuine commit from before the state the state file records as current (the ref was moved back)' : `was ${reason === 'unsigned' ? 'not signed' : 'signed with another key'}`}`
            } while the sidecar was down, by someone without the key: ${quarantineRef === null ? '' : `kept as ${quarantineRef}; `}the state was loaded from ${restored}, the last genuine state${
              found === null || reason === 'rollback' ? '' : setAsideHint(found, restored)
            }`,
          }),
        );
        fabric.hooks?.on('store.worktree_kept', ({ hookId, path }) =>
          log({
            level: 'warn',
            msg: `hooks: kept the worktree of hook ${hookId} at ${path}: the hook is no longer in the store (finishedRetention) and the folder has changes git would lose; remove it by hand once saved (git worktree remove --force)`,
          }),
        );
        fabric.hooks?.on('store.ref_lock_removed', ({ path, ageMs }) =>
          log({
            level: 'warn',
            msg: `hooks: removed a lock of the state ref left by a git that died (${path}, ${Math.round(ageMs / 1000)} s old)`,
          }),
        );
        fabric.hooks?.on('store.lock_restored', ({ path }) =>
          log({
            level: 'warn',
            msg: `hooks: the hook store's lock ${path} was removed while in use: it was made again for this process`,
          }),
        );
        fabric.hooks?.on('store.lock_lost', ({ path, reason }) =>
          log({
            level: 'error',
            msg: `hooks: the hook store's lock ${path} is not this sidecar's (${reason}): another process may open this hook store — stop it`,
          }),
        );
        await fabric.start();
        // Plugins first: the config's pools may name a pool provider a plugin brings.
        for (const p of config.plugins) {
          enter(`plugin ${p.module}`);
          const loaded = await plugins.load(p.module, p.options, { optional: p.optional });
          if (loaded === undefined) continue;
          log({
            level: 'info',
            msg: `plugin ${loaded.name}@${loaded.version} (${loaded.kind}) loaded`,
          });
        }
        // Restored agents whose executor no plugin brought (a plugin dropped from the config,
        // or optional and failed) wait for it: said once, so their work is not silently stuck.
        for (const { executor, agentIds } of fabric.awaitedExecutors()) {
          log({
            level: 'warn',
            msg: `executor ${JSON.stringify(executor)}: ${agentIds.length} agent(s) restored from the state file run on it, but no plugin registered it: they take no work until it is registered (the tasks queued for them wait; their pools' tasks go to the pools' other agents)`,
            executor,
            agentIds,
          });
        }
        enter('fabric');
        await configureFabric(fabric, config, log);
        // After the plugins: a `hook` plugin's store is the one whose events are counted.
        fabricMetrics = new FabricMetrics(fabric, store);
        // And logged: a failing patrol fails on every run, so once, then once per window.
        const patrolFailures = new FailureLog({ log });
        fabric.hooks?.on('patrol.error', ({ error }) =>
          patrolFailures.report(
            'hooks: a patrol run failed (hooks go on; it runs again every hooks.patrolIntervalSeconds)',
            error,
          ),
        );
        // What the fabric does in the background (recovering a lost agent's hooks, draining a
        // pool a restart found draining) reports its failures as its `error` event.
        const backgroundFailures = new FailureLog({ log });
        fabric.events.on('error', (error) =>
          backgroundFailures.report('fabric: a background job failed', error),
        );
        // A pool that cannot keep its size (its executor or provider missing, no room for more
        // agents, a start that failed) says so, rather than stay short in silence: each pool on
        // its own window, so one failing for good does not hide another that starts to. Logs of
        // pools deleted since are dropped when another pool first fails.
        const poolStartFailures = new Map<string, FailureLog>();
        const pools = fabric.pools;
        pools.events.on('pool.start.failed', ({ poolId, error, retryAt }) => {
          let failures = poolStartFailures.get(poolId);
          if (failures === undefined) {
            for (const id of poolStartFailures.keys()) {
              if (pools.peek(id) === undefined) poolStartFailures.delete(id);
            }
            failures = new FailureLog({ log, level: 'warn' });
            poolStartFailures.set(poolId, failures);
          }
          failures.report(
            `pool ${JSON.stringify(poolId)}: an agent could not be started (tried again from ${new Date(retryAt).toISOString()})`,
            error,
          );
        });
        backend = new FabricBackend(fabric);
      }
      enter('agents');
      const agents: StartupAgent[] = [];
      for (const [i, a] of config.agents.entries()) {
        const pinned = a.credential;
        if (pinned !== undefined && (fabric === undefined || pinned === adminToken)) {
          throw new ConfigError(
            `agents.${i}.credential`,
            fabric === undefined
              ? 'cannot be pinned when the sidecar is given a backend'
              : 'must differ from the admin token',
          );
        }
        if (fabric !== undefined && store !== undefined) {
          const kept = await startupAgent(
            fabric,
            store,
            a.name,
            spawnConfig(a, config),
            log,
            pinned,
          );
          if (kept !== undefined) agents.push(kept);
          continue;
        }
        const spawned =
          fabric !== undefined && pinned !== undefined
            ? await fabric.spawn(spawnConfig(a, config) as AgentConfig, {
                credentialFor: () => pinned,
              })
            : await backend.spawn(spawnConfig(a, config));
        agents.push({
          name: a.name,
          id: spawned.id,
          credential: spawned.credential,
          pinned: pinned !== undefined,
        });
      }
      let anonymous: AgentIdentity | undefined;
      let anonymousCredential: string | undefined;
      if (config.allowAnonymous) {
        const devConfig = spawnConfig(
          { name: 'anonymous-dev-agent', model: 'mcp-client', labels: { anonymous: 'true' } },
          config,
        );
        // Over durable state the dev agent is kept like a start-up agent (not one more per start).
        const dev =
          fabric !== undefined && store !== undefined
            ? await startupAgent(fabric, store, 'anonymous-dev-agent', devConfig, log)
            : await backend.spawn(devConfig);
        if (dev !== undefined) {
          const id = await backend.authenticate(dev.credential);
          if (id.kind === 'agent') {
            anonymous = id;
            anonymousCredential = dev.credential;
          }
        }
      }
      enter('gateway');
      const gateway = new ToolGateway({
        backend,
        upstreams: config.upstreams,
        toolCosts: config.toolCosts,
        tokenEstimates: config.tokenEstimates,
        budgetWaitMs: config.gateway.budgetWaitSeconds * 1000,
        // The audit digests' key: the config's (`audit.digestKey`), else the state file's
        // (0600, beside the start-up agents' secret), so lines correlate across restarts;
        // without either, one per process.
        audit:
          config.audit && config.audit.digestKey === undefined && store !== undefined
            ? { ...config.audit, digestKey: store.secret(AUDIT_DIGEST_KEY) }
            : config.audit,
        hideDeniedTools: config.gateway.hideDeniedTools,
        fabricTools: config.gateway.fabricTools,
        poolScheduling: config.gateway.poolScheduling,
        // The fabric's approval TTL ends the wait of its own calls (refused as expired); an
        // injected backend gets the bound passed along.
        ...(fabric === undefined
          ? { approvalTimeoutSeconds: config.approvals.timeoutSeconds }
          : {}),
        shutdownGraceMs: config.gateway.shutdownGraceSeconds * 1000,
        maxArgumentDepth: config.gateway.maxArgumentDepth,
        maxArgumentNodes: config.gateway.maxArgumentNodes,
        maxSubscriptionsPerSession: config.gateway.maxSubscriptionsPerSession,
        maxSubscriptionUriLength: config.gateway.maxSubscriptionUriLength,
        tasks: gatewayTasks(config.gateway.tasks, store),
        tracing,
        logger: log,
      });
      cleanup.push(gateway);
      await gateway.start();
      // What a terminated agent opened before ends with it, whatever the door: its sessions (an
      // open SSE stream would never idle out), its gRPC and /api calls, its MCP tasks.
      fabric?.lifecycle.events.on('agent.terminated', (agent) => {
        void gateway.endAgent(agent.id);
      });
      // What the gateway learned about an agent (token estimates) goes with its record.
      fabric?.lifecycle.events.on('agent.forgotten', (id) => gateway.forgetAgent(id));
      let http: StartedHttpServer | undefined;
      let dashboardUrl: string | undefined;
      let mcp: McpHttpEndpoint | undefined;
      if (options.http !== false) {
        enter('http');
        const h = config.http;
        mcp = new McpHttpEndpoint({
          gateway,
          authenticate: (c) => backend.authenticate(c),
          ...(backend.credentialEpoch === undefined
            ? {}
            : { credentialEpoch: () => backend.credentialEpoch!() }),
          anonymousCredential,
          keepAliveMs: h.keepAliveSeconds * 1000,
          idleTimeoutMs: h.sessionIdleSeconds * 1000,
          bodyTimeoutMs: h.bodyTimeoutSeconds * 1000,
          maxSessionsPerAgent: h.maxSessionsPerAgent,
          maxInflightPerAgent: h.maxInflightPerAgent,
          maxBatchMessages: h.maxBatchMessages,
          maxStreamBacklogBytes: h.maxStreamBacklogBytes,
          logger: log,
        });
        const hostGuard = new HostGuard({
          bindHost: h.host,
          allowedHosts: h.allowedHosts,
          allowedOrigins: h.allowedOrigins,
        });
        log({
          level: hostGuard.allowsAnyHost ? 'warn' : 'info',
          msg: `http: serving requests for hosts ${hostGuard.describe()}`,
        });
        const endpoint = mcp;
        cleanup.push({ close: () => endpoint.close() });
        // The sessions a replaced credential opened end with it (only the new one authenticates).
        fabric?.lifecycle.events.on('agent.credentialReplaced', (agent) => {
          void endpoint.closeRevokedSessions(agent.id);
        });
        // Failed logins at /ui/login count per client address. Bearer credentials at /api/ do
        // not: agents share addresses (all of loopback is one), so one agent sending unknown
        // credentials would lock every other client of its address out of /api/.
        const throttle = new AuthThrottle(
          options.dashboard?.now === undefined ? {} : { now: options.dashboard.now },
        );
        const dashboard =
          fabric === undefined
            ? undefined
            : new Dashboard({
                ...options.dashboard,
                authenticateAdmin: (credential) => {
                  const identity = fabric.authenticate(credential);
                  return identity.kind === 'admin' ? identity.name : undefined;
                },
                tls: httpTls !== undefined,
                throttle,
              });
        http = await startHttpServer({
          host: h.host,
          port: h.port,
          mcpPath: h.path,
          mcp,
          admin: backend,
          ...(fabric === undefined || dashboard === undefined
            ? {}
            : {
                api: new HttpDoor({
                  fabric,
                  gateway,
                  services: fabricServices(fabric, { gateway }),
                  bodyTimeoutMs: h.bodyTimeoutSeconds * 1000,
                  keepAliveMs: h.keepAliveSeconds * 1000,
                  maxStreams: h.apiMaxStreams,
                  maxBufferedMessages: h.apiMaxBufferedMessages,
                  maxBufferedBytes: h.apiMaxBufferedBytes,
                  sessionCaller: (req) => dashboard.sessionCaller(req),
                  // One maxInflightPerAgent for an agent's calls over /mcp and /api/ together.
                  inflight: (agentId) => endpoint.acquireInflight(agentId),
                  holdInflight: (agentId) => endpoint.holdInflight(agentId),
                }),
                dashboard,
              }),
          metrics: () => renderMetrics(sidecarMetrics(gateway, fabric, endpoint, fabricMetrics)),
          readiness: () => readiness(gateway, fabric, store),
          hostGuard,
          tls: httpTls,
          headersTimeoutMs: h.headersTimeoutSeconds * 1000,
          requestTimeoutMs: h.requestTimeoutSeconds * 1000,
        }).catch((error: unknown) => {
          throw listenError('HTTP', h.host, h.port, error);
        });
        cleanup.push(http);
        if (dashboard?.installed) dashboardUrl = new URL('/ui/', http.url).href;
      }
      let grpc: GrpcServer | undefined;
      if (config.grpc !== undefined && fabric !== undefined) {
        enter('grpc');
        const { host, port } = config.grpc;
        const stateStore = store;
        const healthProbes: Record<string, () => boolean> = {
          // The last commit to the state store succeeded (always, for in-memory state).
          state: () => stateStore?.lastError === undefined,
        };
        // The last write to the hook store succeeded (as `/readyz`'s `hooks` check).
        if (fabric.hooks !== undefined) {
          const f = fabric;
          healthProbes.hooks = () => f.hooks?.lastError === undefined;
        }
        for (const name of gateway.upstreams.keys()) {
          healthProbes[`upstream/${name}`] = () => gateway.upstreams.get(name)?.state === 'ready';
        }
        grpc = await startGrpcServer(fabric, {
          ...config.grpc,
          gateway,
          tls: grpcTls,
          healthProbes,
        }).catch((error: unknown) => {
          throw listenError('gRPC', host, port, error);
        });
        cleanup.push(grpc);
      }
      listen({
        ...(http?.url === undefined ? {} : { mcpUrl: http.url }),
        ...(grpc === undefined ? {} : { grpcAddress: grpc.address }),
      });
      // Only now: a start that failed never showed its token, so a later one must make a new one.
      if (generatedToken && adminToken !== undefined) {
        store?.setMeta(ADMIN_TOKEN_HASH, hashCredential(adminToken));
      }
      return new Sidecar({
        gateway,
        backend,
        fabric,
        adminToken,
        statePath: store?.path,
        agents,
        anonymous,
        http,
        grpc,
        mcp,
        closeBackend,
        tracing,
        dashboardUrl,
      });
    } catch (error) {
      for (const c of cleanup.reverse()) await Promise.resolve(c.close()).catch(() => undefined);
      if (error instanceof FabricError) throw error;
      throw new StartupError(step, messageOf(error), { cause: error });
    }
  }

  /**
   * Graceful shutdown: stop accepting, let in-flight calls finish (bounded), terminate upstream
   * children and their process trees, close the fabric. Idempotent.
   */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      const track = (part: ShutdownPart, closing: Promise<void> | undefined): Promise<void> => {
        if (closing === undefined) return Promise.resolve();
        this.#pending.add(part);
        return closing.finally(() => this.#pending.delete(part));
      };
      // The doors stop accepting at once but keep the connections of the calls in flight until
      // the gateway has let them finish (bounded by its grace), so their answers are delivered.
      const drained = track('gateway', this.gateway.close());
      const httpClosed = track('http', this.#http?.close(drained));
      const grpcClosed = track('grpc', this.#grpc?.close(drained));
      await drained;
      await track('mcp', this.#mcp?.close());
      await httpClosed;
      await grpcClosed;
      await track('backend', this.#closeBackend());
      if (this.#tracing !== undefined) await track('tracing', stopTracing(this.#tracing));
    })();
    return this.#closing;
  }

  /**
   * What a shutdown in progress still waits for, one entry per part, in words: what a shutdown
   * that does not finish within its bound logs. Empty before `close()` and once it finished.
   */
  get shutdownPending(): string[] {
    return [...this.#pending].map((part) => {
      switch (part) {
        case 'gateway':
          return `the gateway (${this.gateway.closing ?? 'closing'})`;
        case 'backend': {
          const step = this.fabric?.closing;
          return step === undefined ? 'the plugins and the fabric' : `the fabric (${step})`;
        }
        default:
          return SHUTDOWN_PARTS[part];
      }
    });
  }
}

/** The parts of a sidecar's shutdown, and how they are named while pending. */
const SHUTDOWN_PARTS = {
  gateway: 'the gateway',
  http: 'the HTTP server (its open connections)',
  grpc: 'the gRPC server (its calls and streams)',
  mcp: 'the MCP endpoint (its sessions)',
  backend: 'the plugins and the fabric',
  tracing: 'exporting the last spans',
} as const;
type ShutdownPart = keyof typeof SHUTDOWN_PARTS;

type DurableStore = SqliteStore<TaskRecord, AgentRecord, PoolRecord>;

/** Longest wait for the last spans to be exported at shutdown (a collector may be down). */
const TRACING_SHUTDOWN_MS = 5000;

/**
 * The tracer of `telemetry`, when an OTLP endpoint is configured; the OpenTelemetry SDK is
 * loaded only then.
 */
async function startTracing(telemetry: SidecarConfig['telemetry']): Promise<Tracing | undefined> {
  const otlp = telemetry.otlp;
  const url =
    otlp?.tracesEndpoint ??
    (otlp?.endpoint === undefined ? undefined : `${otlp.endpoint.replace(/\/+$/, '')}/v1/traces`);
  if (url === undefined) return undefined;
  const { Tracing } = await import('../telemetry/tracing.js');
  return Tracing.create({
    url,
    headers: otlp?.headers,
    serviceName: telemetry.serviceName,
    scheduledDelayMillis: otlp?.scheduledDelayMs,
  });
}

/** Exports the spans still buffered and stops, bounded by {@link TRACING_SHUTDOWN_MS}. */
async function stopTracing(tracing: Tracing): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  await Promise.race([
    tracing.shutdown().catch(() => undefined),
    new Promise<void>((resolve) => {
      timer = setTimeout(resolve, TRACING_SHUTDOWN_MS);
      timer.unref();
    }),
  ]);
  clearTimeout(timer);
}

/** Meta key of the generated admin token's SHA-256. */
const ADMIN_TOKEN_HASH = 'adminTokenHash';
/** Meta key of the audit log's `argsDigest` HMAC key (see `ArgsDigester`). */
const AUDIT_DIGEST_KEY = 'auditDigestKey';

/** Meta key of the secret the start-up agents' credentials are derived from. */
const STARTUP_KEY = 'startupAgentKey';

/**
 * The start-up agent `name` over a durable store: the agent a previous start made under that
 * name (same id, same credential: the credential is derived from the state's secret and the id,
 * so it can be shown again; its budget limits follow the config), or a new one. A credential
 * pinned in the config is used instead of the derived one; when the pinned credential changed
 * (or was pinned or unpinned) since the previous start, the new one replaces the stored hash and
 * the old one stops working. A start-up agent that was terminated stays terminated (it is not
 * shown: its credential no longer works) until its record ages out.
 */
async function startupAgent(
  fabric: AgentFabric,
  store: DurableStore,
  name: string,
  config: Parameters<AdminBackend['spawn']>[0],
  log: (entry: GatewayLogEntry) => void,
  pinned?: string,
): Promise<StartupAgent | undefined> {
  const key = `startupAgent:${name}`;
  const pinnedKey = `startupAgentPinned:${name}`;
  const credentialFor = (id: string): string => pinned ?? `afk_${store.derive(STARTUP_KEY, id)}`;
  const id = store.getMeta(key);
  const kept = id === undefined ? undefined : fabric.lifecycle.peek(id);
  if (id !== undefined && kept !== undefined) {
    if (kept.status === AgentStatus.TERMINATED) {
      log({
        level: 'warn',
        msg: `start-up agent ${name} (${id}) was terminated and stays terminated; remove it from agents: or point state.path elsewhere for a new one`,
      });
      return undefined;
    }
    const credential = credentialFor(id);
    const wasPinned = store.getMeta(pinnedKey) === '1';
    if ((pinned !== undefined || wasPinned) && kept.credentialHash !== hashCredential(credential)) {
      fabric.lifecycle.replaceCredential(id, credential);
      store.flush(); // the new hash is on disk before the meta that says which one it is
      log({
        level: 'info',
        msg: `start-up agent ${name} (${id}): its credential changed in the config; the previous one no longer authenticates`,
      });
    }
    store.setMeta(pinnedKey, pinned === undefined ? '0' : '1');
    const identity = fabric.authenticate(credential);
    if (identity.kind !== 'agent' || identity.agentId !== id) {
      throw new StateStoreError(store.path, `start-up agent ${name}'s credential does not match`);
    }
    // The config is the source of its limits (usage so far is kept); limits set at run time on
    // an agent whose config names none are left alone.
    const budget = (config as AgentConfig).budget;
    if (budget !== undefined) fabric.budgets.setBudget(id, budget);
    return { name, id, credential, pinned: pinned !== undefined };
  }
  const spawned = await fabric.spawn(config as AgentConfig, { credentialFor });
  store.setMeta(key, spawned.id);
  store.setMeta(pinnedKey, pinned === undefined ? '0' : '1');
  return { name, id: spawned.id, credential: spawned.credential, pinned: pinned !== undefined };
}

/** Creates the sandbox folder (and its `protected/`); a path that cannot be made is a config error. */
function makeSandbox(sandbox: string): void {
  try {
    mkdirSync(join(sandbox, 'protected'), { recursive: true });
  } catch (error) {
    throw new ConfigError('sandbox', `cannot be created: ${messageOf(error)}`, { cause: error });
  }
}

/**
 * A listener's bind failure as a {@link ListenError} (Node's and grpc-js's own errors name
 * neither the listener nor, for gRPC, the reason in the first line).
 */
function listenError(listener: string, host: string, port: number, error: unknown): ListenError {
  const code = (error as { code?: unknown } | undefined)?.code;
  const message = messageOf(error);
  const reason =
    code === 'EADDRINUSE' || /EADDRINUSE/.test(message)
      ? 'the address is already in use (EADDRINUSE)'
      : code === 'EADDRNOTAVAIL' || /EADDRNOTAVAIL/.test(message)
        ? 'the address is not available on this host (EADDRNOTAVAIL)'
        : code === 'EACCES' || /EACCES/.test(message)
          ? 'permission denied (EACCES)'
          : message;
  const address = host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
  return new ListenError(listener, address, reason, { cause: error });
}

/** Convenience: {@link Sidecar.start}. */
export function startSidecar(options: SidecarOptions): Promise<Sidecar> {
  return Sidecar.start(options);
}

function spawnConfig(
  a: {
    name: string;
    model: string;
    poolId?: string | undefined;
    labels?: Record<string, string> | undefined;
    capabilities?: string[] | undefined;
    budget?: unknown;
    executor?: 'remote' | 'nats' | undefined;
  },
  config: SidecarConfig,
): Parameters<AdminBackend['spawn']>[0] {
  const budget = a.budget ?? config.budget;
  return {
    name: a.name,
    model: a.model,
    executor: a.executor ?? 'remote',
    ...(a.poolId === undefined ? {} : { poolId: a.poolId }),
    ...(a.labels === undefined ? {} : { labels: a.labels }),
    ...(a.capabilities === undefined ? {} : { capabilities: a.capabilities }),
    ...(budget === undefined ? {} : { budget }),
  } as Parameters<AdminBackend['spawn']>[0];
}

/** The config's hooks section as HookManager options (unset keys keep their defaults). */
function hookOptions(h: NonNullable<SidecarConfig['hooks']>): NonNullable<FabricOptions['hooks']> {
  const {
    baseBranch,
    patrolIntervalSeconds,
    staleAfterSeconds,
    progressCommitIntervalMs,
    maintenanceIntervalSeconds,
    maxReassignments,
    finishedRetention,
    removeCompletedWorktrees,
    ...always
  } = h;
  return {
    ...always,
    ...(baseBranch === undefined ? {} : { baseBranch }),
    ...(patrolIntervalSeconds === undefined ? {} : { patrolIntervalSeconds }),
    ...(staleAfterSeconds === undefined ? {} : { staleAfterSeconds }),
    ...(progressCommitIntervalMs === undefined ? {} : { progressCommitIntervalMs }),
    ...(maintenanceIntervalSeconds === undefined ? {} : { maintenanceIntervalSeconds }),
    ...(maxReassignments === undefined ? {} : { maxReassignments }),
    ...(finishedRetention === undefined ? {} : { finishedRetention }),
    ...(removeCompletedWorktrees === undefined ? {} : { removeCompletedWorktrees }),
  };
}

/** Applies policies and pools from the config to the fabric. */
async function configureFabric(
  fabric: AgentFabric,
  config: SidecarConfig,
  log: (entry: GatewayLogEntry) => void,
): Promise<void> {
  for (const p of config.policies) {
    const stored = fabric.policies.addPolicy(p);
    for (const w of policyWarnings(stored)) {
      log({ level: 'warn', msg: `policy ${stored.name}: ${w}` });
    }
  }
  // Over durable state: the policy changes made at run time (Operator API, library) win over the
  // config's, and are written from now on. Each one applied is logged, so an operator sees why
  // the running policies differ from the config.
  for (const c of fabric.restorePolicies()) {
    const how = {
      added: 'added from the state file (not in the config)',
      replaced: "replaced by the state file's version (the config's is not used)",
      removed: "removed as recorded in the state file (the config's is not used)",
      dropped: 'the state file recorded its removal, but the config no longer has it; forgotten',
      superseded:
        "the config's policy of this name was edited (or added, or dropped) after it was changed at run time: the config's stands, the state file's change is forgotten",
    }[c.effect];
    log({
      level: c.effect === 'dropped' ? 'info' : 'warn',
      msg: `policy ${c.name}: ${how}; changed at run time at ${c.at}`,
      policy: c.name,
      change: c.effect,
    });
  }
  for (const p of config.pools) {
    // Over durable state a pool made by an earlier start is kept as it is, with its agents;
    // only the config's `budget` — every spawned agent's — is applied to it and them again, as
    // to start-up agents (limits set at run time are left alone when the config names none).
    if (fabric.pools.peek(p.id) !== undefined) {
      const agents = fabric.pools.setAgentBudget(p.id, config.budget);
      if (config.budget !== undefined) {
        for (const id of agents) fabric.budgets.setBudget(id, config.budget);
      }
      continue;
    }
    await fabric.createPool({
      poolId: p.id,
      model: p.model,
      // A pool provider names its agents' executor; without one they are remote or NATS workers.
      ...(p.provider === undefined
        ? { executor: p.executor ?? 'remote' }
        : { provider: p.provider }),
      minAgents: p.minAgents,
      ...(p.name === undefined ? {} : { name: p.name }),
      ...(p.maxAgents === undefined ? {} : { maxAgents: p.maxAgents }),
      ...(config.budget === undefined ? {} : { agentBudget: config.budget }),
    });
  }
}

/**
 * What `GET /readyz` answers: the fabric is open, the last state commit succeeded, the last
 * hook store write succeeded (when hooks are configured: `checks.hooks`), the NATS
 * connection (when `nats:` is configured) is connected rather than reconnecting or closed, and
 * every `required` upstream is connected. Optional upstreams are reported but do not make it
 * unready.
 */
function readiness(
  gateway: ToolGateway,
  fabric: AgentFabric | undefined,
  store: { lastError?: unknown } | undefined,
): Readiness {
  const checks: Record<string, boolean> = {};
  let ready = true;
  if (fabric !== undefined) ready = checks.fabric = !fabric.isClosed;
  checks.state = store?.lastError === undefined;
  ready &&= checks.state;
  const hooks = fabric?.hooks;
  if (hooks !== undefined) {
    checks.hooks = hooks.lastError === undefined;
    ready &&= checks.hooks;
  }
  const nats = fabric?.natsState;
  if (nats !== undefined) {
    checks.nats = nats === 'connected';
    ready &&= checks.nats;
  }
  for (const u of gateway.upstreams.values()) {
    const up = u.state === 'ready';
    checks[`upstream/${u.name}`] = up;
    if (u.spec.required) ready &&= up;
  }
  return { ready, checks };
}

/** What `GET /metrics` shows: the gateway's request counters, upstreams, sessions, agents. */
function sidecarMetrics(
  gateway: ToolGateway,
  fabric: AgentFabric | undefined,
  mcp: McpHttpEndpoint,
  fabricMetrics: FabricMetrics | undefined,
): MetricFamily[] {
  const upstreams = [...gateway.upstreams.values()];
  const families = [
    ...gateway.metrics.families(),
    {
      name: 'agent_fabric_upstream_up',
      help: 'Whether an upstream is connected and serving (1) or not (0).',
      type: 'gauge' as const,
      samples: upstreams.map((u) => ({
        labels: { upstream: u.name },
        value: u.state === 'ready' ? 1 : 0,
      })),
    },
    {
      name: 'agent_fabric_upstream_restarts_total',
      help: 'Reconnections of an upstream after it died or became unreachable.',
      type: 'counter' as const,
      samples: upstreams.map((u) => ({
        labels: { upstream: u.name },
        value: Math.max(0, u.connectCount - 1),
      })),
    },
    {
      name: 'agent_fabric_upstream_unsent_input',
      help: 'Characters written to a stdio upstream that it has not read yet and the OS does not buffer.',
      type: 'gauge' as const,
      samples: upstreams.map((u) => ({
        labels: { upstream: u.name },
        value: u.unsentInput,
      })),
    },
    {
      name: 'agent_fabric_mcp_sessions',
      help: 'Open agent MCP sessions (HTTP and stdio).',
      type: 'gauge' as const,
      samples: [{ value: gateway.sessions.size }],
    },
    {
      name: 'agent_fabric_mcp_http_requests_in_flight',
      help: 'MCP requests received over HTTP whose answer has not left the process (nor were they cancelled) yet.',
      type: 'gauge' as const,
      samples: [{ value: mcp.inflightRequests }],
    },
    {
      name: 'agent_fabric_mcp_http_unsent_bytes',
      help: 'Bytes written to open MCP responses that clients have not read and the OS does not buffer.',
      type: 'gauge' as const,
      samples: [{ value: mcp.unsentBytes }],
    },
    {
      name: 'agent_fabric_mcp_http_notifications_dropped_total',
      help: 'Notifications dropped because the stream they were for held maxStreamBacklogBytes unread.',
      type: 'counter' as const,
      samples: [{ value: mcp.droppedNotifications }],
    },
    {
      name: 'agent_fabric_mcp_http_messages_undelivered_total',
      help: 'Messages for agents that reached no stream and were dropped: request-gone (its call was answered as JSON and that connection closed), no-stream (no standalone GET stream open).',
      type: 'counter' as const,
      samples: Object.entries(mcp.undeliveredMessages).map(([reason, value]) => ({
        labels: { reason },
        value,
      })),
    },
  ];
  const audit = gateway.auditStats;
  if (audit !== undefined) {
    families.push(
      {
        name: 'agent_fabric_audit_write_failures_total',
        help: 'Audit log flushes that failed (logged as `audit log write failed`).',
        type: 'counter' as const,
        samples: [{ value: audit.writeFailures }],
      },
      {
        name: 'agent_fabric_audit_records_lost_total',
        help: 'Audit records not written because their flush failed.',
        type: 'counter' as const,
        samples: [{ value: audit.recordsLost }],
      },
      {
        name: 'agent_fabric_audit_reopens_total',
        help: 'Times the audit log path was opened again after its file was renamed away or removed.',
        type: 'counter' as const,
        samples: [{ value: audit.reopens }],
      },
      {
        name: 'agent_fabric_audit_lines_suppressed_total',
        help: 'Audit lines of refusals that ran nothing not written one a line past their per-session bound (each counted in a summary line).',
        type: 'counter' as const,
        samples: [{ value: audit.linesSuppressed }],
      },
    );
  }
  if (fabric !== undefined) {
    const byStatus = new Map<string, number>(Object.values(AgentStatus).map((s) => [s, 0]));
    for (const a of fabric.lifecycle.listAgents()) {
      byStatus.set(a.status, (byStatus.get(a.status) ?? 0) + 1);
    }
    families.push(
      {
        name: 'agent_fabric_agents',
        help: 'Agents by status (terminated ones while still retained).',
        type: 'gauge' as const,
        samples: [...byStatus].map(([status, value]) => ({ labels: { status }, value })),
      },
      {
        name: 'agent_fabric_approvals_pending',
        help: 'Calls waiting for a human decision.',
        type: 'gauge' as const,
        samples: [{ value: fabric.approvals.listApprovals({ status: 'pending' }).length }],
      },
    );
  }
  if (fabricMetrics !== undefined) families.push(...fabricMetrics.families());
  return families;
}

/** The gateway's task options from `gateway.tasks`, its records in the durable store if any. */
function gatewayTasks(
  tasks:
    | {
        defaultTtlSeconds?: number;
        maxTtlSeconds?: number;
        maxPerAgent?: number;
        maxResultBytesPerAgent?: number;
      }
    | false
    | undefined,
  store: DurableStore | undefined,
): ToolGatewayOptions['tasks'] {
  if (tasks === false) return false;
  const ms = (seconds: number | undefined): number | undefined =>
    seconds === undefined ? undefined : seconds * 1000;
  return {
    defaultTtlMs: ms(tasks?.defaultTtlSeconds),
    maxTtlMs: ms(tasks?.maxTtlSeconds),
    maxPerAgent: tasks?.maxPerAgent,
    maxResultBytesPerAgent: tasks?.maxResultBytesPerAgent,
    store: store?.toolTasks,
    commits: store === undefined ? undefined : { whenCommitted: (s) => store.whenCommitted(s) },
  };
}

/**
 * What the log says of commits set aside at open that did not verify: they are not in the
 * state, who writes such commits besides an attacker (an earlier version's `state: memory`
 * sidecar, which opened a signed store), and how an operator who knows them to be genuine takes
 * them back — the same once-only take of an unsigned head a state file without the mark makes.
 */
function setAsideHint(found: string, restored: string): string {
  return `. Their changes are not in the state (git log ${restored}..${found} in the hook store lists them); an earlier version's sidecar with state: memory wrote such unsigned commits too. To take them knowingly, with no sidecar running: git update-ref ${HOOKS_REF} ${found} in the hook store, then sqlite3 <state file> "DELETE FROM meta WHERE key IN ('${HOOK_SIGNED_SINCE}', '${HOOK_STATE_HEAD}')"; the next start takes that head as it is, once, and signs it`;
}
