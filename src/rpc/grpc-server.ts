/**
 * The fabric's gRPC server: one grpc-js `Server` on one port carrying every service of
 * proto/fabric/v1 that is implemented: `AgentService` (agents), `ToolService` (the tool gateway's
 * tools as the calling agent, UNAVAILABLE when no gateway is given), and `PolicyService`,
 * `ApprovalService`, `BudgetService` and `EventService` (the administrator).
 *
 * @module
 */
import { Server, ServerCredentials } from '@grpc/grpc-js';
import type { AgentFabric } from '../fabric.js';
import type { ToolGateway } from '../gateway/gateway.js';
import { agentService, type AgentServiceOptions } from './agent-service.js';
import { approvalService } from './approval-service.js';
import { budgetService } from './budget-service.js';
import { eventService } from './events-service.js';
import { policyService } from './policy-service.js';
import { ActiveStreams, addGrpcService, type GrpcServiceOptions } from './rpc-call.js';
import { toolService } from './tool-service.js';

/** Options of {@link startGrpcServer}. */
export interface GrpcServerOptions
  extends AgentServiceOptions, Pick<GrpcServiceOptions, 'maxBufferedMessages'> {
  /** @default '127.0.0.1' */
  host?: string;
  /** 0 picks a free port. @default 0 */
  port?: number;
  /** The tool gateway `ToolService` calls through. @default none: ToolService is UNAVAILABLE */
  gateway?: ToolGateway | undefined;
}

/** A running gRPC server. */
export interface GrpcServer {
  /** `host:port` to dial. */
  readonly address: string;
  readonly port: number;
  /**
   * Stops accepting, ends the server streams in progress (UNAVAILABLE), lets unary calls finish
   * briefly, then closes.
   */
  close(): Promise<void>;
}

/** Starts the fabric's gRPC services over `fabric`. */
export async function startGrpcServer(
  fabric: AgentFabric,
  options: GrpcServerOptions = {},
): Promise<GrpcServer> {
  const server = new Server();
  const streams = new ActiveStreams();
  const serviceOptions: GrpcServiceOptions = {
    streams,
    ...(options.maxBufferedMessages === undefined
      ? {}
      : { maxBufferedMessages: options.maxBufferedMessages }),
  };
  addGrpcService(server, fabric, agentService(fabric, options), serviceOptions);
  addGrpcService(server, fabric, toolService(fabric, options.gateway), serviceOptions);
  addGrpcService(server, fabric, policyService(fabric), serviceOptions);
  addGrpcService(server, fabric, approvalService(fabric), serviceOptions);
  addGrpcService(server, fabric, budgetService(fabric), serviceOptions);
  addGrpcService(server, fabric, eventService(fabric), serviceOptions);

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
        // After tryShutdown (no new calls): a watch never ends on its own.
        streams.endAll();
      }),
  };
}
