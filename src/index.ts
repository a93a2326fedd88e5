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
export { MemoryStore, MemoryCollection } from './store/memory-store.js';
export { TypedEmitter } from './events.js';
export {
  AgentBusyError,
  AgentLimitError,
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
  PoolNotFoundError,
  QueueFullError,
  TaskExecutionError,
  TaskNotFoundError,
  TaskStateError,
  UnauthenticatedError,
  WaitTimeoutError,
  isFabricError,
} from './errors.js';

export type { FabricConfig } from './config.js';
export type { ClaimOptions, FabricOptions, FabricStats, Identity, PoolStats } from './fabric.js';
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
export type {
  PoolChange,
  PoolConfig,
  PoolHost,
  PoolInfo,
  PoolRecord,
  PoolStatus,
} from './pools/pool-manager.js';
export type { Collection, FabricStore } from './store/store.js';
export type { ErrorKind } from './errors.js';
export type { EventMap } from './events.js';
