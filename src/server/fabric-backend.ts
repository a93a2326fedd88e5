/**
 * Adapts an {@link AgentFabric} to the gateway's {@link GatewayBackend}, the sidecar's
 * {@link AdminBackend} (start-up agents) and the admin check of `GET /metrics`. The
 * fabric does the work — identity, policy, approvals, budgets, tasks; this only narrows shapes.
 *
 * @module
 */
import type { AgentFabric } from '../fabric.js';
import { type FabricError, UnauthenticatedError } from '../errors.js';
import type {
  AdminBackend,
  CallbackAnswerContext,
  CallbackAnswerDecision,
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
} from '../gateway/backend.js';
import type { EndedTask } from '../scheduler/remote-executor.js';
import type { Task, TaskAssignment } from '../task.js';
import type { AdminApi } from './http-server.js';

/** GatewayBackend + AdminBackend + the admin check over an AgentFabric. */
export class FabricBackend implements GatewayBackend, AdminBackend, AdminApi {
  readonly #fabric: AgentFabric;

  constructor(fabric: AgentFabric) {
    this.#fabric = fabric;
  }

  authenticate(credential: string): GatewayIdentity {
    const id = this.#fabric.authenticate(credential);
    if (id.kind === 'admin') return { kind: 'admin' };
    return { kind: 'agent', agentId: id.agentId, poolId: id.poolId, labels: id.labels };
  }

  credentialEpoch(): number {
    return this.#fabric.credentialEpoch();
  }

  /** Returns the admin's name. @throws UnauthenticatedError / PermissionDeniedError */
  requireAdmin(credential: string | undefined): string {
    if (credential === undefined)
      throw new UnauthenticatedError('the admin credential is required');
    const id = this.#fabric.authenticate(credential);
    this.#fabric.requireAdmin(id, 'the admin API');
    return id.kind === 'admin' ? id.name : 'admin';
  }

  authorizeToolCall(ctx: ToolCallContext): Promise<ToolCallAuthorization> {
    return this.#fabric.authorizeToolCall(ctx);
  }

  tryAuthorizeToolCall(ctx: ToolCallContext): ToolCallAuthorization | undefined {
    return this.#fabric.tryAuthorizeToolCall(ctx);
  }

  recheckToolCall(
    ctx: ToolCallContext,
    authorization: ToolCallAllowed,
  ): ToolCallRefused | undefined | Promise<ToolCallRefused | undefined> {
    return this.#fabric.recheckToolCall(ctx, authorization);
  }

  settleToolCall(
    authorization: ToolCallAllowed,
    usage: ToolUsage,
    options?: SettleToolCallOptions,
  ): ToolCallRefused | undefined {
    return this.#fabric.settleToolCall(authorization, usage, options);
  }

  checkCallbackAnswer(
    ctx: CallbackAnswerContext,
    signal: AbortSignal,
  ): Promise<CallbackAnswerDecision> {
    return this.#fabric.checkCallbackAnswer(ctx, signal);
  }

  isToolVisible(ctx: ToolVisibilityContext): boolean {
    return this.#fabric.isToolVisible(ctx);
  }

  decideUnknownTool(ctx: UnknownToolContext, signal: AbortSignal): Promise<void> | undefined {
    return this.#fabric.decideUnknownTool(ctx, signal);
  }

  onToolVisibilityChange(listener: () => void): () => void {
    return this.#fabric.policies.onRulesChanged(listener);
  }

  heartbeat(agentId: string): unknown {
    return this.#fabric.heartbeat(agentId);
  }

  claimTask(
    agentId: string,
    options?: { waitSeconds?: number; signal?: AbortSignal; ackSeconds?: number },
  ): Promise<TaskAssignment | undefined> {
    return this.#fabric.claimTask(agentId, options);
  }

  completeTask(agentId: string, taskId: string, attempt: number, result: unknown): Promise<void> {
    return this.#fabric.completeTask(agentId, taskId, attempt, result);
  }

  failTask(
    agentId: string,
    taskId: string,
    attempt: number,
    error: { code?: string; message: string },
  ): Promise<void> {
    return this.#fabric.failTask(agentId, taskId, attempt, {
      code: error.code ?? 'FABRIC_ERR_TASK_EXECUTION',
      message: error.message,
    });
  }

  reportProgress(
    agentId: string,
    taskId: string,
    attempt: number,
    progress: unknown,
  ): Promise<void> {
    return this.#fabric.reportProgress(agentId, taskId, attempt, progress);
  }

  releaseTask(agentId: string, taskId: string, attempt: number): boolean {
    return this.#fabric.unclaimTask(agentId, taskId, attempt);
  }

  takeEndedTasks(agentId: string): readonly EndedTask[] {
    return this.#fabric.scheduler.takeEndedTasks(agentId);
  }

  admitSampling(agentId: string, tokens: number): FabricError | SamplingAdmission | undefined {
    return this.#fabric.admitSampling(agentId, tokens);
  }

  /** An agent's own report: one past its own limit's remainder rejects (`BudgetExceededError`, `details.shared`). */
  recordUsage(agentId: string, usage: ToolUsage): Promise<void> {
    return this.#fabric.recordReportedUsage(agentId, usage);
  }

  scheduleToOwnPool(
    agentId: string,
    poolId: string,
    request: { taskType: string; payload?: unknown; timeoutSeconds?: number },
  ): Promise<Task> {
    const { taskType, payload, timeoutSeconds } = request;
    return this.#fabric.scheduleFromAgent(
      agentId,
      poolId,
      taskType,
      payload,
      timeoutSeconds === undefined ? {} : { timeoutSeconds },
    );
  }

  waitForFabricTask(taskId: string, signal: AbortSignal): Promise<Task> {
    return this.#fabric.waitForTask(taskId, { signal });
  }

  fabricTask(taskId: string): Promise<Task> {
    return this.#fabric.getTask(taskId);
  }

  cancelFabricTask(taskId: string, reason: string): Promise<unknown> {
    return this.#fabric.cancelTask(taskId, reason);
  }

  async hookFor(agentId: string): Promise<unknown> {
    return (await this.#fabric.hookFor(agentId)) ?? null;
  }

  activateHook(agentId: string, hookId: string): Promise<unknown> {
    return this.#fabric.activateHook(agentId, hookId);
  }

  completeHook(agentId: string, hookId: string, result?: unknown): Promise<unknown> {
    return this.#fabric.completeHook(agentId, hookId, result);
  }

  failHook(
    agentId: string,
    hookId: string,
    error: { code?: string; message: string },
  ): Promise<unknown> {
    return this.#fabric.failHook(agentId, hookId, error);
  }

  recordHookProgress(agentId: string, hookId: string, note?: string): Promise<unknown> {
    return this.#fabric.recordHookProgress(agentId, hookId, note);
  }

  async spawn(
    config: Parameters<AdminBackend['spawn']>[0],
  ): Promise<{ id: string; credential: string }> {
    const agent = await this.#fabric.spawn({ executor: 'remote', ...config });
    return { id: agent.id, credential: agent.credential };
  }
}
