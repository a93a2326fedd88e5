/**
 * Adapts an `AgentFabric` to the gateway's {@link GatewayBackend} and the admin API's
 * {@link AdminBackend}, and adds the admin credential.
 *
 * The fabric is typed loosely on purpose: the adapter follows whatever the facade offers
 * (`authorizeToolCall` on the facade, approvals on the facade or on its approval manager), so
 * the sidecar keeps working while the facade grows. Where a piece is missing it says so once
 * through `log` — and refuses tool calls rather than letting them through unchecked.
 *
 * @module
 */
import { timingSafeEqual } from 'node:crypto';
import { PermissionDeniedError, UnauthenticatedError } from '../errors.js';
import type {
  AdminBackend,
  GatewayBackend,
  GatewayIdentity,
  ToolCallAllowed,
  ToolCallAuthorization,
  ToolCallContext,
  ToolUsage,
  ToolVisibilityContext,
} from '../gateway/backend.js';
import type { TaskAssignment } from '../task.js';

/** The fabric methods the adapter uses; anything else is looked up at call time. */
export interface FabricLike {
  authenticate(credential: string): unknown;
  spawn(config: Record<string, unknown>): Promise<{ id: string; credential: string }>;
  heartbeat(agentId: string): unknown;
  claimTask(
    agentId: string,
    options?: { waitSeconds?: number; signal?: AbortSignal },
  ): Promise<TaskAssignment | undefined>;
  completeTask(agentId: string, taskId: string, attempt: number, result?: unknown): unknown;
  failTask(
    agentId: string,
    taskId: string,
    attempt: number,
    error: { code: string; message: string },
  ): unknown;
  reportProgress(agentId: string, taskId: string, attempt: number, progress: unknown): unknown;
}

type Fn = (...args: unknown[]) => unknown;

function method(target: unknown, name: string): Fn | undefined {
  if (!target || typeof target !== 'object') return undefined;
  const fn = (target as Record<string, unknown>)[name];
  return typeof fn === 'function' ? (fn.bind(target) as Fn) : undefined;
}

function sameSecret(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

/** GatewayBackend + AdminBackend over an AgentFabric. */
export class FabricBackend implements GatewayBackend, AdminBackend {
  readonly #fabric: FabricLike;
  readonly #adminToken: string;
  readonly #warn: (msg: string) => void;
  readonly #warned = new Set<string>();

  constructor(
    fabric: FabricLike,
    adminToken: string,
    warn: (msg: string) => void = () => undefined,
  ) {
    this.#fabric = fabric;
    this.#adminToken = adminToken;
    this.#warn = warn;
  }

  #once(key: string, msg: string): void {
    if (this.#warned.has(key)) return;
    this.#warned.add(key);
    this.#warn(msg);
  }

  authenticate(credential: string): GatewayIdentity {
    if (!credential) throw new UnauthenticatedError();
    if (sameSecret(credential, this.#adminToken)) return { kind: 'admin' };
    const who = this.#fabric.authenticate(credential) as Record<string, unknown>;
    if (who.kind === 'agent' || who.kind === 'admin') return who as unknown as GatewayIdentity;
    return {
      kind: 'agent',
      agentId: String(who.id ?? who.agentId),
      poolId: typeof who.poolId === 'string' ? who.poolId : undefined,
      labels: (who.labels as Record<string, string> | undefined) ?? {},
    };
  }

  /** Throws unless `credential` is the admin credential. */
  requireAdmin(credential: string | undefined): void {
    if (credential === undefined)
      throw new UnauthenticatedError('the admin credential is required');
    if (!sameSecret(credential, this.#adminToken)) {
      // An agent credential is known but not allowed; anything else is unknown.
      try {
        this.#fabric.authenticate(credential);
      } catch {
        throw new UnauthenticatedError('unknown credential');
      }
      throw new PermissionDeniedError('admin operations need the admin credential');
    }
  }

  async authorizeToolCall(ctx: ToolCallContext): Promise<ToolCallAuthorization> {
    const authorize = method(this.#fabric, 'authorizeToolCall');
    if (!authorize) {
      this.#once(
        'authorize',
        'the fabric has no authorizeToolCall (policy + budget pipeline); tool calls are refused',
      );
      return {
        allowed: false,
        code: 'FABRIC_ERR_POLICY_UNAVAILABLE',
        reason: 'the policy pipeline is not available in this build',
      };
    }
    return (await authorize(ctx)) as ToolCallAuthorization;
  }

  settleToolCall(authorization: ToolCallAllowed, usage: ToolUsage): unknown {
    return method(this.#fabric, 'settleToolCall')?.(authorization, usage);
  }

  isToolVisible(ctx: ToolVisibilityContext): boolean {
    const probe = method(this.#fabric, 'isToolVisible');
    return probe ? Boolean(probe(ctx)) : true;
  }

  heartbeat(agentId: string): unknown {
    return this.#fabric.heartbeat(agentId);
  }

  claimTask(
    agentId: string,
    options?: { waitSeconds?: number; signal?: AbortSignal },
  ): Promise<TaskAssignment | undefined> {
    return this.#fabric.claimTask(agentId, options);
  }

  completeTask(agentId: string, taskId: string, attempt: number, result: unknown): unknown {
    return this.#fabric.completeTask(agentId, taskId, attempt, result);
  }

  failTask(
    agentId: string,
    taskId: string,
    attempt: number,
    error: { code?: string; message: string },
  ): unknown {
    return this.#fabric.failTask(agentId, taskId, attempt, {
      code: error.code ?? 'FABRIC_ERR_TASK_EXECUTION',
      message: error.message,
    });
  }

  reportProgress(agentId: string, taskId: string, attempt: number, progress: unknown): unknown {
    return this.#fabric.reportProgress(agentId, taskId, attempt, progress);
  }

  recordUsage(agentId: string, usage: ToolUsage): unknown {
    const record = method(this.#fabric, 'recordUsage');
    if (!record) throw new PermissionDeniedError('usage recording is not available in this build');
    return record(agentId, usage);
  }

  #approvals(name: string): Fn {
    const fn =
      method(this.#fabric, name) ??
      method((this.#fabric as unknown as Record<string, unknown>).approvals, name);
    if (!fn) throw new PermissionDeniedError(`approvals are not available in this build (${name})`);
    return fn;
  }

  listApprovals(filter: { status?: string } = {}): unknown {
    return this.#approvals('listApprovals')(filter);
  }

  approve(id: string, options: { approver?: string; reason?: string } = {}): unknown {
    return this.#approvals('approve')(id, options);
  }

  deny(id: string, options: { approver?: string; reason?: string } = {}): unknown {
    return this.#approvals('deny')(id, options);
  }

  async spawn(
    config: Parameters<AdminBackend['spawn']>[0],
  ): Promise<{ id: string; credential: string }> {
    const agent = await this.#fabric.spawn({ executor: 'remote', ...config });
    return { id: agent.id, credential: agent.credential };
  }
}
