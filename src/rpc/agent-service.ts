/**
 * The gRPC ingress of the agent protocol (proto/fabric/v1/agent.proto): heartbeat, claim and
 * finish tasks, and run the work on the agent's hook, for agents in any language. Each call is
 * authenticated from its `authorization: Bearer <credential>` metadata and acts as exactly that
 * agent. Catalog errors map to gRPC status codes (`GRPC_STATUS_BY_KIND`), with the fabric's code
 * in the `fabric-error-code` trailer.
 *
 * The credential is checked before the request is decoded (see grpc-definition.ts): without a
 * valid one the answer is UNAUTHENTICATED whatever the bytes; with one, bytes that are not a
 * valid message (or nest deeper than the decoder's recursion limit) and `Value`s that are not
 * JSON (NaN, Infinity) are INVALID_ARGUMENT with `FABRIC_ERR_INVALID_ARGUMENT`.
 *
 * @module
 */
import {
  create,
  fromJson,
  toJson,
  type DescMessage,
  type JsonValue,
  type MessageShape,
} from '@bufbuild/protobuf';
import { ValueSchema, type Value } from '@bufbuild/protobuf/wkt';
import {
  Metadata,
  Server,
  ServerCredentials,
  status,
  type sendUnaryData,
  type ServerUnaryCall,
  type UntypedServiceImplementation,
} from '@grpc/grpc-js';
import {
  FabricError,
  GRPC_STATUS_BY_KIND,
  InvalidArgumentError,
  UnauthenticatedError,
} from '../errors.js';
import type { AgentFabric } from '../fabric.js';
import type { Hook as FabricHook } from '../hooks/hook.js';
import {
  AgentService,
  ClaimTaskResponseSchema,
  CompleteTaskResponseSchema,
  FailTaskResponseSchema,
  GetHookResponseSchema,
  HeartbeatResponseSchema,
  HookResponseSchema,
  HookSchema,
  ReportProgressResponseSchema,
  TaskSchema,
  type Hook,
} from '../gen/fabric/v1/agent_pb.js';
import { decodeRequest, grpcDefinition, grpcServerDefinition } from './grpc-definition.js';

/** Options of {@link startAgentGrpcServer}. */
export interface AgentGrpcServerOptions {
  /** @default '127.0.0.1' */
  host?: string;
  /** 0 picks a free port. @default 0 */
  port?: number;
  /** Longest `ClaimTask` wait. @default 300 */
  maxClaimWaitSeconds?: number;
}

/** A running gRPC server. */
export interface AgentGrpcServer {
  /** `host:port` to dial. */
  readonly address: string;
  readonly port: number;
  /** Stops accepting, lets calls finish briefly, then closes. */
  close(): Promise<void>;
}

/** The grpc-js definition of `fabric.v1.AgentService` (for clients in this process too). */
export const AGENT_SERVICE_DEFINITION = grpcDefinition(AgentService);

function toValue(v: unknown): Value {
  return fromJson(
    ValueSchema,
    (v === undefined ? null : JSON.parse(JSON.stringify(v))) as JsonValue,
  );
}

/**
 * The JSON of a request's `Value` field.
 * @throws InvalidArgumentError naming `field` when it is not JSON (NaN, Infinity, no kind).
 */
function fromValue(v: Value | undefined, field: string): unknown {
  if (v === undefined) return null;
  try {
    return toJson(ValueSchema, v);
  } catch (error) {
    throw new InvalidArgumentError(
      field,
      `is not a JSON value: ${error instanceof Error ? error.message : String(error)}`,
      { cause: error },
    );
  }
}

function hookMessage(h: FabricHook): Hook {
  return create(HookSchema, {
    hookId: h.hookId,
    agentId: h.agentId,
    status: h.status,
    workItem: toValue(h.workItem),
    branch: h.branch ?? '',
    path: h.worktreePath ?? '',
    result: toValue(h.result ?? null),
  });
}

/** Starts the agent gRPC service over `fabric`. */
export async function startAgentGrpcServer(
  fabric: AgentFabric,
  options: AgentGrpcServerOptions = {},
): Promise<AgentGrpcServer> {
  const maxWait = options.maxClaimWaitSeconds ?? 300;
  const server = new Server();

  /**
   * Authenticates the call, then decodes its request as a `method.input` message, runs
   * `handler` as that agent, and maps errors to status codes.
   */
  function unary<D extends DescMessage, Res>(
    method: { readonly input: D },
    handler: (agentId: string, request: MessageShape<D>, signal: AbortSignal) => Promise<Res>,
  ) {
    return (call: ServerUnaryCall<Buffer, Res>, callback: sendUnaryData<Res>): void => {
      const controller = new AbortController();
      call.on('cancelled', () => controller.abort());
      void (async () => {
        const header = call.metadata.get('authorization')[0];
        const credential = typeof header === 'string' ? header.replace(/^Bearer\s+/i, '') : '';
        const identity = fabric.authenticate(credential);
        if (identity.kind !== 'agent')
          throw new UnauthenticatedError('the agent protocol needs an agent credential');
        const request = decodeRequest(method.input, call.request);
        return handler(identity.agentId, request, controller.signal);
      })().then(
        (res) => callback(null, res),
        (err: unknown) => callback(toServiceError(err)),
      );
    };
  }

  const m = AgentService.method;
  const implementation: UntypedServiceImplementation = {
    heartbeat: unary(m.heartbeat, async (agentId) => {
      const info = await fabric.heartbeat(agentId);
      return create(HeartbeatResponseSchema, {
        agentId: info.id,
        status: info.status,
        lastHeartbeatMs: BigInt(info.lastHeartbeat),
      });
    }),
    claimTask: unary(m.claimTask, async (agentId, req, signal) => {
      const a = await fabric.claimTask(agentId, {
        waitSeconds: Math.min(maxWait, Math.max(0, req.waitSeconds)),
        signal,
      });
      return create(ClaimTaskResponseSchema, {
        ...(a === undefined
          ? {}
          : {
              task: create(TaskSchema, {
                taskId: a.taskId,
                attempt: a.attempt,
                taskType: a.taskType,
                payload: toValue(a.payload),
                timeoutSeconds: a.timeoutSeconds,
                deadlineMs: BigInt(a.deadline ?? 0),
              }),
            }),
      });
    }),
    completeTask: unary(m.completeTask, async (agentId, req) => {
      const result = fromValue(req.result, 'result');
      await fabric.completeTask(agentId, req.taskId, req.attempt, result);
      return create(CompleteTaskResponseSchema);
    }),
    failTask: unary(m.failTask, async (agentId, req) => {
      await fabric.failTask(
        agentId,
        req.taskId,
        req.attempt,
        { code: req.code || 'FABRIC_ERR_TASK_EXECUTION', message: req.message || 'failed' },
        { retry: req.retry },
      );
      return create(FailTaskResponseSchema);
    }),
    reportProgress: unary(m.reportProgress, async (agentId, req) => {
      const progress = fromValue(req.progress, 'progress');
      await fabric.reportProgress(agentId, req.taskId, req.attempt, progress);
      return create(ReportProgressResponseSchema);
    }),
    getHook: unary(m.getHook, async (agentId) => {
      const h = await fabric.hookFor(agentId);
      return create(GetHookResponseSchema, h === undefined ? {} : { hook: hookMessage(h) });
    }),
    activateHook: unary(m.activateHook, async (agentId, req) =>
      create(HookResponseSchema, {
        hook: hookMessage(await fabric.activateHook(agentId, req.hookId)),
      }),
    ),
    completeHook: unary(m.completeHook, async (agentId, req) => {
      const result = fromValue(req.result, 'result');
      return create(HookResponseSchema, {
        hook: hookMessage(await fabric.completeHook(agentId, req.hookId, result)),
      });
    }),
    failHook: unary(m.failHook, async (agentId, req) =>
      create(HookResponseSchema, {
        hook: hookMessage(
          await fabric.failHook(agentId, req.hookId, {
            ...(req.code ? { code: req.code } : {}),
            message: req.message || 'failed',
          }),
        ),
      }),
    ),
  };
  server.addService(grpcServerDefinition(AgentService), implementation);

  const host = options.host ?? '127.0.0.1';
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(
      `${host}:${options.port ?? 0}`,
      ServerCredentials.createInsecure(),
      (err, p) => (err ? reject(err) : resolve(p)),
    ),
  );
  return {
    address: `${host}:${port}`,
    port,
    close: () =>
      new Promise<void>((resolve) => {
        const force = setTimeout(() => server.forceShutdown(), 2_000);
        force.unref();
        server.tryShutdown(() => {
          clearTimeout(force);
          resolve();
        });
      }),
  };
}

/** A catalog error as a gRPC status; anything else is INTERNAL with its message. */
function toServiceError(err: unknown): { code: number; details: string; metadata: Metadata } {
  const metadata = new Metadata();
  if (err instanceof FabricError) {
    metadata.set('fabric-error-code', err.code);
    return { code: GRPC_STATUS_BY_KIND[err.kind], details: err.message, metadata };
  }
  metadata.set('fabric-error-code', 'FABRIC_ERR_INTERNAL');
  return {
    code: status.INTERNAL,
    details: err instanceof Error ? err.message : String(err),
    metadata,
  };
}
