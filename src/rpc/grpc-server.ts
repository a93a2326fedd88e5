/**
 * The fabric's gRPC server: one grpc-js `Server` on one port carrying every service of
 * proto/fabric/v1 that is implemented (the list in services.ts, which the HTTP door serves too).
 *
 * @module
 */
import { Server, ServerCredentials } from '@grpc/grpc-js';
import type { AgentFabric } from '../fabric.js';
import { addGrpcService } from './rpc-call.js';
import { fabricServices, type FabricServicesOptions } from './services.js';

/** Options of {@link startGrpcServer}. */
export interface GrpcServerOptions extends FabricServicesOptions {
  /** @default '127.0.0.1' */
  host?: string;
  /** 0 picks a free port. @default 0 */
  port?: number;
}

/** A running gRPC server. */
export interface GrpcServer {
  /** `host:port` to dial. */
  readonly address: string;
  readonly port: number;
  /** Stops accepting, lets calls finish briefly, then closes. */
  close(): Promise<void>;
}

/** Starts the fabric's gRPC services over `fabric`. */
export async function startGrpcServer(
  fabric: AgentFabric,
  options: GrpcServerOptions = {},
): Promise<GrpcServer> {
  const server = new Server();
  for (const impl of fabricServices(fabric, options)) addGrpcService(server, fabric, impl);

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
