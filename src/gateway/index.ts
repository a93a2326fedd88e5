/**
 * The tool gateway: upstream MCP clients, downstream MCP sessions, and the per-call pipeline.
 *
 * @module
 */
export {
  ArgsDigester,
  AuditLog,
  AuditWriteError,
  digestArgs,
  DEFAULT_AUDIT_MAX_BYTES,
  DEFAULT_AUDIT_MAX_FILES,
} from './audit-log.js';
export { buildCatalog, resourceOwner } from './catalog.js';
export {
  McpHttpEndpoint,
  bearerToken,
  DEFAULT_MAX_BODY_BYTES,
  DEFAULT_MAX_BATCH_MESSAGES,
  DEFAULT_MAX_INFLIGHT_PER_AGENT,
  DEFAULT_MAX_SESSIONS_PER_AGENT,
  DEFAULT_SESSION_IDLE_TIMEOUT_MS,
} from './downstream-http.js';
export {
  HttpSessionTransport,
  DEFAULT_MAX_STREAM_BACKLOG_BYTES,
  DEFAULT_SSE_KEEP_ALIVE_MS,
} from './downstream-http-transport.js';
export { StdioSessionTransport } from './downstream-stdio-transport.js';
export { DEFAULT_BODY_TIMEOUT_MS } from './http-body.js';
export { classifyMessage, isRequestId } from './jsonrpc-message.js';
export { FABRIC_TOOLS, FABRIC_TOOL_PREFIX } from './fabric-tools.js';
export {
  ToolGateway,
  DEFAULT_APPROVAL_PROGRESS_INTERVAL_MS,
  DEFAULT_BUDGET_WAIT_MS,
  DEFAULT_MAX_SUBSCRIPTIONS_PER_SESSION,
  DEFAULT_MAX_SUBSCRIPTION_URI_LENGTH,
  DEFAULT_SHUTDOWN_GRACE_MS,
} from './gateway.js';
export {
  checkInputBounds,
  exceededBound,
  DEFAULT_INPUT_BOUNDS,
  DEFAULT_MAX_ARGUMENT_DEPTH,
  DEFAULT_MAX_ARGUMENT_NODES,
  MAX_ARGUMENT_DEPTH_LIMIT,
} from './input-bounds.js';
export { GatewayMetrics, renderMetrics, DURATION_BUCKETS } from './metrics.js';
export { ERROR_META_KEY, HTTP_STATUS_BY_KIND, httpStatusOf, toMcpError } from './map-error.js';
export {
  DEFAULT_REMOTE_REALPATH,
  DEFAULT_STDIO_REALPATH,
  MAX_DISK_LOOKUPS_PER_CALL,
  MAX_PATH_LENGTH,
  MAX_PATH_WALK_DEPTH,
  MAX_PATH_WALK_NODES,
  MAX_PATHS_PER_CALL,
  MAX_SYMLINK_HOPS,
  PathResolver,
  pathResolutionOf,
  unresolvedPathsIn,
} from './path-resolver.js';
export { ProcessStdioTransport } from './process-stdio-transport.js';
export { GatewaySession } from './session.js';
export { serializeMessage } from './serialize-message.js';
export {
  TokenEstimates,
  ToolEstimate,
  DEFAULT_MAX_ESTIMATE_AGENTS,
  DEFAULT_TOKEN_ESTIMATE,
  ESTIMATE_DECAY,
} from './token-estimates.js';
export { ToolCosts, approximateJsonBytes, estimateTokens, BYTES_PER_TOKEN } from './tool-costs.js';
export { Upstream } from './upstream.js';
export {
  upstreamSpecSchema,
  upstreamPrefix,
  DEFAULT_CALL_TIMEOUT_SECONDS,
  MAX_TOOL_NAME_LENGTH,
} from './upstream-config.js';

export type { AuditLogOptions, AuditLogStats, AuditOutcome, AuditRecord } from './audit-log.js';
export type { ExceededBound, InputBounds } from './input-bounds.js';
export type { MetricFamily } from './metrics.js';
export type { PathResolutionOptions } from './path-resolver.js';
export type {
  AdminBackend,
  AgentIdentity,
  GatewayBackend,
  GatewayIdentity,
  SamplingAdmission,
  SettleToolCallOptions,
  ToolCallAllowed,
  ToolCallAuthorization,
  ToolCallContext,
  ToolCallRefused,
  ToolUsage,
  ToolVisibilityContext,
  UnknownToolContext,
} from './backend.js';
export type { Catalog, Route } from './catalog.js';
export type { McpHttpEndpointOptions } from './downstream-http.js';
export type { HttpSessionTransportOptions } from './downstream-http-transport.js';
export type { MessageKind } from './jsonrpc-message.js';
export type { FabricTool } from './fabric-tools.js';
export type { ToolGatewayOptions } from './gateway.js';
export { ToolCallPipeline, describeDecision } from './tool-call-pipeline.js';
export type {
  CallAbort,
  GatewayLogEntry,
  PipelineCall,
  ProgressSink,
  ToolCallOutcome,
  ToolCallPipelineOptions,
  ToolCallRequest,
  ToolCallStage,
} from './tool-call-pipeline.js';
export { UpstreamGate } from './upstream-gate.js';
export type { TokenEstimatesOptions } from './token-estimates.js';
export type { UpstreamHooks, UpstreamState, UpstreamCallOptions } from './upstream.js';
export type { UpstreamSpec, UpstreamSpecInput, StdioUpstreamSpec } from './upstream-config.js';
