/**
 * Policies and approvals: the PolicyEngine, the ApprovalManager and the ToolCallAuthorizer
 * that chains them with the BudgetManager.
 *
 * @module
 */
export {
  ApprovalManager,
  DEFAULT_APPROVAL_TTL_SECONDS,
  DEFAULT_MAX_RESOLVED_APPROVALS,
  MAX_APPROVAL_SECONDS,
  parseApprovalManagerOptions,
} from './approval-manager.js';
export {
  compileConditions,
  looksLikePath,
  normalizePath,
  PATH_KEY_PATTERN,
  policyWarnings,
} from './conditions.js';
export { compileGlob, GlobSyntaxError, hasGlobSyntax } from './glob.js';
export {
  compileJsonLogic,
  JSON_LOGIC_OPERATORS,
  JsonLogicCompileError,
  MAX_JSON_LOGIC_DEPTH,
  truthy,
} from './json-logic.js';
export { parsePolicy, PolicyRuleSchema, PolicySchema } from './policy.js';
export {
  holdsUnresolved,
  isUnresolvedPath,
  MAX_UNRESOLVED_VALUE_DISPLAY,
  UnresolvedPath,
} from './unresolved-path.js';
export {
  DEFAULT_POLICY_ACTION,
  DEFAULT_TOOL_CACHE_SIZE,
  parsePolicyEngineOptions,
  PolicyEngine,
} from './policy-engine.js';
export { ToolCallAuthorizer } from './tool-call-authorizer.js';
export { DEFAULT_CALLBACK_CHECK_TIMEOUT_MS } from './callback-answer-check.js';

export type {
  Approval,
  ApprovalDecision,
  ApprovalEvents,
  ApprovalManagerOptions,
  ApprovalRequest,
  ApprovalResult,
  ApprovalStatus,
  WaitForApprovalOptions,
} from './approval-manager.js';
export type { ParamsPredicate } from './conditions.js';
export type { GlobMatcher } from './glob.js';
export type { CompiledLogic } from './json-logic.js';
export type {
  ConditionScalar,
  NormalizedPolicy,
  Policy,
  PolicyAction,
  PolicyConditions,
  PolicyMode,
  PolicyRule,
} from './policy.js';
export type {
  CallbackAnswerContext,
  CallbackAnswerDecision,
  CallbackAnswerVerdict,
} from './callback-answer-check.js';
export type {
  AskedVerdicts,
  PolicyAuditEntry,
  PolicyContext,
  PolicyDecision,
  PolicyEngineOptions,
  PolicyProvider,
  PolicyVerdict,
  PolicyWhenData,
} from './policy-engine.js';
export type {
  CostEstimator,
  ToolCallAllowed,
  ToolCallAuthorization,
  ToolCallAuthorizerOptions,
  ToolCallContext,
  ToolCallDenied,
} from './tool-call-authorizer.js';
