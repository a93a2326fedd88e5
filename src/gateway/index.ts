/**
 * The tool gateway: upstream MCP clients, downstream MCP sessions, and the per-call pipeline.
 *
 * @module
 */
export {
  AuditLog,
  digestArgs,
  DEFAULT_AUDIT_MAX_BYTES,
  DEFAULT_AUDIT_MAX_FILES,
} from './audit-log.js';
export { buildCatalog, resourceOwner } from './catalog.js';
export { McpHttpEndpoint, bearerToken, DEFAULT_MAX_BODY_BYTES } from './downstream-http.js';
export { HttpSessionTransport, DEFAULT_SSE_KEEP_ALIVE_MS } from './downstream-http-transport.js';
export { StdioSessionTransport } from './downstream-stdio-transport.js';
export { FABRIC_TOOLS, FABRIC_TOOL_PREFIX } from './fabric-tools.js';
export {
  ToolGateway,
  describeDecision,
  DEFAULT_APPROVAL_PROGRESS_INTERVAL_MS,
  DEFAULT_BUDGET_WAIT_MS,
  DEFAULT_SHUTDOWN_GRACE_MS,
} from './gateway.js';
export { GatewayMetrics, renderMetrics, DURATION_BUCKETS } from './metrics.js';
export { ERROR_META_KEY, HTTP_STATUS_BY_KIND, httpStatusOf, toMcpError } from './map-error.js';
export { ProcessStdioTransport } from './process-stdio-transport.js';
export { GatewaySession } from './session.js';
export {
  TokenEstimates,
  ToolEstimate,
  DEFAULT_MAX_ESTIMATE_AGENTS,
  DEFAULT_TOKEN_ESTIMATE,
  ESTIMATE_DECAY,
} from './token-estimates.js';
export { ToolCosts, estimateTokens, BYTES_PER_TOKEN } from './tool-costs.js';
export { Upstream } from './upstream.js';
export {
  upstreamSpecSchema,
  upstreamPrefix,
  DEFAULT_CALL_TIMEOUT_SECONDS,
  MAX_TOOL_NAME_LENGTH,
} from './upstream-config.js';

export type { AuditLogOptions, AuditOutcome, AuditRecord } from './audit-log.js';
export type { MetricFamily } from './metrics.js';
export type {
  AdminBackend,
  AgentIdentity,
  GatewayBackend,
  GatewayIdentity,
  SettleToolCallOptions,
  ToolCallAllowed,
  ToolCallAuthorization,
  ToolCallContext,
  ToolCallRefused,
  ToolUsage,
  ToolVisibilityContext,
} from './backend.js';
export type { Catalog, Route } from './catalog.js';
export type { McpHttpEndpointOptions } from './downstream-http.js';
export type { FabricTool } from './fabric-tools.js';
export type { GatewayLogEntry, ToolGatewayOptions } from './gateway.js';
export type { TokenEstimatesOptions } from './token-estimates.js';
export type { UpstreamHooks, UpstreamState, UpstreamCallOptions } from './upstream.js';
export type { UpstreamSpec, UpstreamSpecInput, StdioUpstreamSpec } from './upstream-config.js';
