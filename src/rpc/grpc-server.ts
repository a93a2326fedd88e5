/**
 * The fabric's gRPC server: one grpc-js `Server` on one port carrying every service of
 * proto/fabric/v1 that is implemented — the list in services.ts, which the HTTP door serves too:
 * `AgentService` (agents), `ToolService` (the tool gateway's tools as the calling agent,
 * UNAVAILABLE when no gateway is given), and `FabricService`, `PolicyService`,
 * `ApprovalService`, `BudgetService` and `EventService` (the administrator) — plus the standard
 * `grpc.health.v1.Health` (see health-service.ts) and server reflection (reflection-service.ts).
 * A call of a fabric service whose metadata has no valid credential is refused before its
 * request is read (auth-interceptor.ts); health and reflection need none.
 *
 * With `tls` it speaks TLS (mutual TLS when `tls.ca` is given); without it, it refuses to listen
 * beyond loopback unless `allowInsecure` (see server/tls.ts).
 *
 * @module
 */
import type { DescService } from '@bufbuild/protobuf';
import { Server, ServerCredentials } from '@grpc/grpc-js';
import type { AgentFabric } from '../fabric.js';
import { Health } from '../gen/grpc/health/v1/health_pb.js';
import { checkListenerSecurity, type TlsMaterial } from '../server/tls.js';
import { authInterceptor } from './auth-interceptor.js';
import { redactGrpcLogs } from './grpc-logging.js';
import { addHealthService, HealthRegistry, type HealthProbe } from './health-service.js';
import { addReflectionService } from './reflection-service.js';
import { DEFAULT_MAX_INFLIGHT_PER_AGENT } from '../gateway/downstream-http.js';
import { reserveWatchListeners } from './events-service.js';
import { DEFAULT_API_MAX_STREAMS } from './http-door.js';
import {
  ActiveStreams,
  addGrpcService,
  AgentInflight,
  type GrpcServiceOptions,
} from './rpc-call.js';
import { fabricServices, type FabricServicesOptions } from './services.js';

/** Options of {@link startGrpcServer}. */
export interface GrpcServerOptions
  extends
    FabricServicesOptions,
    Pick<GrpcServiceOptions, 'maxBufferedMessages' | 'maxBufferedBytes'> {
  /** @default '127.0.0.1' */
  host?: string;
  /** 0 picks a free port. @default 0 */
  port?: number;
  /** Serve TLS with this certificate and key; with `ca`, require client certificates from it. */
  tls?: TlsMaterial | undefined;
  /** Listen beyond loopback without TLS. @default false */
  allowInsecure?: boolean | undefined;
  /**
   * Parts the server's health depends on besides the fabric itself (`fabric`): e.g. `state`
   * (the state store) and `upstream/<name>`; see health-service.ts.
   */
  healthProbes?: Readonly<Record<string, HealthProbe>> | undefined;
  /** Serve gRPC server reflection. @default true */
  reflection?: boolean | undefined;
  /**
   * Unary calls one agent may have in flight on this server (tool calls, claims, waits …); one
   * more is RESOURCE_EXHAUSTED (`FABRIC_ERR_INFLIGHT_LIMIT`) until one ends. A call counts until
   * its answer is out (or its client left): answers an agent does not read count against its
   * own bound (see rpc-call.ts).
   * @default 256 (as `http.maxInflightPerAgent`)
   */
  maxInflightPerAgent?: number | undefined;
  /**
   * Server streams (`EventService/Watch`, `ApprovalService/Watch`) open at once on this server;
   * one more is RESOURCE_EXHAUSTED (`FABRIC_ERR_STREAM_LIMIT`) before it subscribes to anything,
   * until one ends. Health watches have their own bound (`MAX_HEALTH_WATCHES`).
   * @default 64 (as `http.apiMaxStreams`)
   */
  maxStreams?: number | undefined;
}

/**
 * Most calls one client connection may have open at once (HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS`;
 * grpc-js sets none): a client queues further calls until one ends. Bounds what one connection
 * can make the server hold: streams, and the request messages (up to 4 MiB each) of calls with a
 * valid credential — a call without one is refused before its message is read
 * (auth-interceptor.ts).
 */
export const MAX_CONCURRENT_STREAMS = 100;

/** A running gRPC server. */
export interface GrpcServer {
  /** `host:port` to dial. */
  readonly address: string;
  readonly port: number;
  /**
   * Stops accepting, ends the server streams in progress (UNAVAILABLE), lets unary calls finish
   * until `drained` settles (the gateway's in-flight calls ended or their grace ran out) and
   * briefly after, then closes. @param drained default: already settled
   */
  close(drained?: Promise<unknown>): Promise<void>;
}

/**
 * Starts the fabric's gRPC services over `fabric`.
 * @throws InsecureListenerError for a non-loopback host without `tls` or `allowInsecure`.
 */
export async function startGrpcServer(
  fabric: AgentFabric,
  options: GrpcServerOptions = {},
): Promise<GrpcServer> {
  const host = options.host ?? '127.0.0.1';
  checkListenerSecurity('gRPC', host, options.tls, options.allowInsecure);
  // grpc-js logs a metadata entry it drops with its value (a credential, for `authorization`).
  redactGrpcLogs();
  const streams = new ActiveStreams(options.maxStreams ?? DEFAULT_API_MAX_STREAMS);
  const unreserve = reserveWatchListeners(fabric, options.gateway, streams.max);
  const services = fabricServices(fabric, options);
  const server = new Server({
    'grpc.max_concurrent_streams': MAX_CONCURRENT_STREAMS,
    interceptors: [authInterceptor(fabric, services)],
  });
  const serviceOptions: GrpcServiceOptions = {
    streams,
    inflight: new AgentInflight(
      options.maxInflightPerAgent ?? DEFAULT_MAX_INFLIGHT_PER_AGENT,
      'grpc.maxInflightPerAgent',
    ),
    ...(options.maxBufferedMessages === undefined
      ? {}
      : { maxBufferedMessages: options.maxBufferedMessages }),
    ...(options.maxBufferedBytes === undefined
      ? {}
      : { maxBufferedBytes: options.maxBufferedBytes }),
  };
  const health = new HealthRegistry();
  const described: DescService[] = [];
  for (const impl of services) {
    addGrpcService(server, fabric, impl, serviceOptions);
    described.push(impl.service);
    health.addService(impl.service.typeName);
  }

  health.addProbe('fabric', () => !fabric.isClosed);
  for (const [name, probe] of Object.entries(options.healthProbes ?? {}))
    health.addProbe(name, probe);
  const endStreams = [addHealthService(server, health)];
  if (options.reflection !== false)
    endStreams.push(addReflectionService(server, [...described, Health]));

  const tls = options.tls;
  const credentials =
    tls === undefined
      ? ServerCredentials.createInsecure()
      : ServerCredentials.createSsl(
          tls.ca ?? null,
          [{ private_key: tls.key, cert_chain: tls.cert }],
          tls.ca !== undefined,
        );
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(`${host}:${options.port ?? 0}`, credentials, (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  return {
    address: `${host}:${port}`,
    port,
    close: (drained = Promise.resolve()) =>
      new Promise<void>((resolve) => {
        for (const end of endStreams) end();
        let force: NodeJS.Timeout | undefined;
        let done = false;
        const arm = (): void => {
          if (done) return;
          force = setTimeout(() => server.forceShutdown(), 2_000);
          force.unref();
        };
        drained.then(arm, arm);
        server.tryShutdown(() => {
          done = true;
          clearTimeout(force);
          resolve();
        });
        // After tryShutdown (no new calls): a watch never ends on its own.
        streams.endAll();
        unreserve();
      }),
  };
}
