/**
 * Agent Fabric: the public API. Explicit named exports only.
 *
 * @module
 */
export { AgentFabric } from './fabric.js';
export {
  DEFAULT_DRAIN_TIMEOUT_SECONDS,
  DEFAULT_FABRIC_CONFIG,
  DEFAULT_FINISHED_TASK_RETENTION,
  DEFAULT_FINISHED_TASK_RETENTION_PER_AGENT,
  DEFAULT_HEARTBEAT_INTERVAL_SECONDS,
  DEFAULT_MAX_ATTEMPTS,
  DEFAULT_MAX_CONCURRENT_AGENTS,
  DEFAULT_MAX_CONCURRENT_TASKS_PER_AGENT,
  DEFAULT_MAX_QUEUE_DEPTH,
  DEFAULT_TIMEOUT_SECONDS,
  parseFabricConfig,
} from './config.js';
export { AgentStatus } from './agent.js';
export { Priority, TaskStatus, isFinished } from './task.js';
export { LifecycleManager, hashCredential } from './lifecycle/lifecycle-manager.js';
export { AgentScheduler } from './scheduler/agent-scheduler.js';
export { FairQueue } from './scheduler/fair-queue.js';
export { InProcessExecutor, INPROCESS_EXECUTOR } from './scheduler/inprocess-executor.js';
export { PiscinaExecutor, LOCAL_EXECUTOR } from './scheduler/piscina-executor.js';
export { RemoteExecutor, REMOTE_EXECUTOR } from './scheduler/remote-executor.js';
export { toTaskError } from './scheduler/executor.js';
export { PoolManager } from './pools/pool-manager.js';
export { THREADS_POOL_PROVIDER, ThreadPoolProvider } from './pools/thread-pool-provider.js';
export { MemoryStore, MemoryCollection } from './store/memory-store.js';
export {
  SqliteStore,
  SqliteCollection,
  SqliteBudgetStore,
  STATE_SCHEMA_VERSION,
  DEFAULT_STATE_SYNCHRONOUS,
} from './store/sqlite-store.js';
export { TypedEmitter } from './events.js';
export { PolicyEngine } from './policy/policy-engine.js';
export { ApprovalManager } from './policy/approval-manager.js';
export { ToolCallAuthorizer } from './policy/tool-call-authorizer.js';
export { normalizePath, policyWarnings } from './policy/conditions.js';
export { isUnresolvedPath, UnresolvedPath } from './policy/unresolved-path.js';
export { BudgetManager, MAX_USAGE_AMOUNT } from './budget/budget-manager.js';
export { InMemoryBudgetStore } from './budget/budget-store.js';
export { parseBudgetConfig } from './budget/budget-config.js';
export { HookManager } from './hooks/hook-manager.js';
export { HookStatus } from './hooks/hook-status.js';
export { ToolGateway } from './gateway/gateway.js';
export { PathResolver } from './gateway/path-resolver.js';
export { Sidecar, startSidecar } from './server/sidecar.js';
export { loadSidecarConfig, parseSidecarConfig } from './server/config-file.js';
export { FabricBackend } from './server/fabric-backend.js';
export {
  definePlugin,
  epochOf,
  FIRST_PARTY_PLUGINS_DIR,
  PLUGIN_API_VERSION,
  PluginHost,
} from './plugins/index.js';
export { FabricWorker, RemoteFabricError } from './worker/fabric-worker.js';
export { NatsWorker } from './transport/nats/nats-worker.js';
export { NatsWorkerTransport } from './transport/nats/nats-worker-transport.js';
export { NatsExecutor, NATS_EXECUTOR } from './transport/nats/nats-executor.js';
export { parseNatsOptions } from './transport/nats/nats-options.js';
export { AGENT_SERVICE_DEFINITION } from './rpc/agent-service.js';
export { TOOL_SERVICE_DEFINITION } from './rpc/tool-service.js';
export {
  callbackAnswerCheckRequest,
  POLICY_PROVIDER_DECISION,
  POLICY_PROVIDER_SERVICE_DEFINITION,
  policyProviderRequest,
} from './rpc/policy-provider.js';
export { startGrpcServer } from './rpc/grpc-server.js';
export { DEFAULT_MAX_WAIT_TASK_SECONDS, fabricService } from './rpc/fabric-service.js';
export { fabricServices } from './rpc/services.js';
export { DEFAULT_API_PREFIX, HttpDoor } from './rpc/http-door.js';
export { DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE } from './paging.js';
export {
  decodeRequest,
  grpcDefinition,
  grpcServerDefinition,
  DEFAULT_GRPC_RECURSION_LIMIT,
} from './rpc/grpc-definition.js';
export {
  AgentBusyError,
  AgentLimitError,
  ApprovalDecidedError,
  ApprovalDeniedError,
  ApprovalExpiredError,
  ApprovalLimitError,
  ApprovalStaleError,
  ApprovalNotFoundError,
  BodyTimeoutError,
  BudgetExceededError,
  ConfigFileError,
  HookNotFoundError,
  HookRetryLimitError,
  HookStateError,
  HookStoreError,
  HookStoreLockedError,
  HookStoreSignedError,
  HookStateRollbackError,
  HookWorkItemTooLargeError,
  HookWorktreeError,
  StateLockedError,
  StateStoreError,
  StateVersionError,
  HostNotAllowedError,
  InflightLimitError,
  AuthThrottledError,
  InvalidUsageError,
  InsecureListenerError,
  ListenError,
  NatsUnavailableError,
  PayloadTooLargeError,
  PolicyDeniedError,
  PolicyUnavailableError,
  CallbackAnswerDeniedError,
  CallbackTimeoutError,
  PluginError,
  PluginTimeoutError,
  PolicyExistsError,
  PolicyNotFoundError,
  PolicyValidationError,
  RouteNotFoundError,
  RoutingError,
  GatewayUnavailableError,
  SessionLimitError,
  StartupError,
  SubscriptionLimitError,
  ToolTaskLimitError,
  StreamOverflowError,
  StreamLimitError,
  CallDeadlineError,
  ToolNameError,
  ToolNotFoundError,
  UpstreamTimeoutError,
  UpstreamUnavailableError,
  AgentNotFoundError,
  AgentUnavailableError,
  ClosedError,
  ConfigError,
  ExecutorNotFoundError,
  FabricError,
  GRPC_STATUS_BY_KIND,
  HandlerNotFoundError,
  InvalidArgumentError,
  NoAvailableAgentError,
  PermissionDeniedError,
  PoolDrainingError,
  PoolExistsError,
  PoolFullError,
  PoolNotFoundError,
  QueueFullError,
  TaskExecutionError,
  TaskNotFoundError,
  TaskResultTooLargeError,
  TaskStateError,
  UnauthenticatedError,
  WaitTimeoutError,
  isFabricError,
} from './errors.js';

export type { FabricConfig } from './config.js';
export type {
  ClaimOptions,
  FabricEvents,
  FabricOptions,
  FabricStats,
  Identity,
  PoolStats,
  SpawnOptions,
} from './fabric.js';
export type {
  Policy,
  PolicyAction,
  PolicyConditions,
  PolicyMode,
  PolicyRule,
} from './policy/policy.js';
export type {
  AskedVerdicts,
  PolicyContext,
  PolicyDecision,
  PolicyEngineOptions,
  PolicyProvider,
  PolicyVerdict,
} from './policy/policy-engine.js';
export type {
  CallbackAnswerContext,
  CallbackAnswerDecision,
  CallbackAnswerVerdict,
} from './policy/callback-answer-check.js';
export type {
  Approval,
  ApprovalManagerOptions,
  ApprovalResult,
  ApprovalStatus,
} from './policy/approval-manager.js';
export type {
  CostEstimator,
  ToolCallAllowed,
  ToolCallAuthorization,
  ToolCallContext,
  ToolCallDenied,
} from './policy/tool-call-authorizer.js';
export type { BudgetConfig } from './budget/budget-config.js';
export type {
  BudgetCheck,
  BudgetStatus,
  CheckOptions,
  Reservation,
  ReserveOptions,
  ReserveWhenFreeOptions,
  SettleOptions,
  UnsharedUsage,
  UsageAmount,
} from './budget/budget-manager.js';
export type { BudgetStore } from './budget/budget-store.js';
export type { BudgetClockStep } from './budget/budget-clock.js';
export type { Hook, PatrolHook, WorktreeInfo } from './hooks/hook.js';
export type { HookManagerOptions } from './hooks/hook-manager-options.js';
export type { AgentLiveness } from './hooks/liveness.js';
export type { AgentPicker } from './hooks/hook-manager.js';
export type { GatewayBackend, GatewayIdentity, ToolCallRefused } from './gateway/backend.js';
export type { ToolGatewayOptions } from './gateway/gateway.js';
export type { ToolCallOutcome, ToolCallRequest } from './gateway/tool-call-pipeline.js';
export type { SidecarOptions } from './server/sidecar.js';
export type { AgentServiceOptions } from './rpc/agent-service.js';
export type {
  CheckCallbackAnswerRequest,
  CheckCallbackAnswerResponse,
  DecideRequest,
  DecideResponse,
} from './rpc/policy-provider.js';
export type { GrpcServer, GrpcServerOptions } from './rpc/grpc-server.js';
export type { FabricServiceOptions } from './rpc/fabric-service.js';
export type { AnyServiceImplementation, FabricServicesOptions } from './rpc/services.js';
export type { HttpDoorOptions } from './rpc/http-door.js';
export type { Page, PageRequest } from './paging.js';
export type { TaskFilter } from './scheduler/agent-scheduler.js';
export type {
  NatsRunOptions,
  NatsTaskContext,
  NatsTaskHandler,
  NatsWorkerOptions,
} from './transport/nats/nats-worker.js';
export type { NatsOptions, NatsOptionsInput } from './transport/nats/nats-options.js';
export type { NatsWorkerTransportOptions } from './transport/nats/nats-worker-transport.js';
export type {
  FabricWorkerOptions,
  FabricWorkerRunOptions,
  WorkerHandler,
  WorkerTaskContext,
} from './worker/fabric-worker.js';
export type {
  HeldTask,
  WorkerEndedTask,
  WorkerFailure,
  WorkerHook,
  WorkerReportAnswer,
  WorkerTransport,
} from './worker/worker-transport.js';
export type {
  LoadedPlugin,
  Plugin,
  PluginContext,
  PluginEndpoints,
  PluginHostOptions,
  PluginInstance,
  PluginKind,
  PluginLogEntry,
  PluginLogger,
  PluginManifest,
  PluginOptionsSchema,
  SkippedPlugin,
} from './plugins/index.js';
export type { SidecarConfig, SidecarConfigInput } from './server/config-file.js';
export type {
  AgentBudgetConfig,
  AgentConfig,
  AgentInfo,
  HeartbeatMode,
  IsolationConfig,
  SpawnedAgent,
} from './agent.js';
export type { ScheduleOptions, ScheduleRequest, Task, TaskAssignment, TaskError } from './task.js';
export type {
  AgentRecord,
  AgentWorkload,
  Drainer,
  LifecycleEvents,
  LifecycleOptions,
} from './lifecycle/lifecycle-manager.js';
export type {
  AgentLoad,
  PoolLoad,
  ScheduleTarget,
  SchedulerAgent,
  SchedulerEvents,
  SchedulerOptions,
  SchedulerStats,
} from './scheduler/agent-scheduler.js';
export type {
  ExecutorSink,
  TaskExecutor,
  TaskHandler,
  TaskHandlerContext,
} from './scheduler/executor.js';
export type { PiscinaExecutorOptions } from './scheduler/piscina-executor.js';
export type { TaskData } from './scheduler/task-record.js';
export type {
  PoolChange,
  PoolConfig,
  PoolEvents,
  PoolHost,
  PoolInfo,
  PoolManagerOptions,
  PoolRecord,
  PoolSpawnReason,
  PoolStatus,
} from './pools/pool-manager.js';
export type { PoolAgentStart, PoolProvider, PoolStopReason } from './pools/pool-provider.js';
export type { ThreadPoolProviderOptions } from './pools/thread-pool-provider.js';
export type { HookStore } from './hooks/hook-store.js';
export type { Collection, FabricStore } from './store/store.js';
export type { SqliteStoreOptions, StateSynchronous } from './store/sqlite-store.js';
export type { StoreBootOptions } from './store/store-clock.js';
export type { ErrorKind } from './errors.js';
export type { EventMap } from './events.js';
