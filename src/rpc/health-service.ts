/**
 * `grpc.health.v1.Health` (the standard gRPC health-checking protocol, vendored in
 * proto-grpc/): what load balancers, Kubernetes probes and `grpc_health_probe` ask.
 *
 * Health is made of named *probes* (`() => boolean`, true when the part works): the server adds
 * `fabric` (the fabric is open) and the sidecar adds `state` (the last commit to the state store
 * succeeded), `hooks` (with hooks configured: the last write to the hook store succeeded) and
 * `upstream/<name>` (the MCP upstream is connected). A service name checks:
 * - `""` (the whole server): every probe;
 * - a served fabric service (`fabric.v1.AgentService`, …): `fabric` and `state`;
 * - a probe's own name (`upstream/github`, `state`, `fabric`): that probe.
 * Any other name is NOT_FOUND for `Check` and SERVICE_UNKNOWN for `Watch`.
 *
 * Health calls need no credential (probes carry none) and tell nothing but these names and
 * their states. `Watch` re-evaluates every {@link HEALTH_WATCH_INTERVAL_MS} and sends a message
 * when the state changed; its streams end when the server closes.
 *
 * The maintained `grpc-health-check` package was not used: it loads its .proto at run time
 * through `@grpc/proto-loader`/protobufjs (a second protobuf stack beside protobuf-es) and keeps
 * statuses that must be pushed, where ours are computed from the parts when asked.
 *
 * @module
 */
import { create, fromBinary, toBinary } from '@bufbuild/protobuf';
import {
  status,
  type sendUnaryData,
  type Server,
  type ServerUnaryCall,
  type ServerWritableStream,
  type ServiceDefinition,
} from '@grpc/grpc-js';
import {
  Health,
  HealthCheckRequestSchema,
  HealthCheckResponse_ServingStatus as ServingStatus,
  HealthCheckResponseSchema,
  type HealthCheckRequest,
  type HealthCheckResponse,
} from '../gen/grpc/health/v1/health_pb.js';
import { statusMessage } from './rpc-call.js';

/** How often a `Watch` looks at the probes again. */
export const HEALTH_WATCH_INTERVAL_MS = 1_000;
/**
 * Most `Watch` streams open at once (the health service takes no credential): more are refused
 * with RESOURCE_EXHAUSTED rather than held open without bound.
 */
export const MAX_HEALTH_WATCHES = 1024;

/** A part the server's health depends on: true while it works. Must not throw. */
export type HealthProbe = () => boolean;

/** The names a health call may ask about, and how each is evaluated. */
export class HealthRegistry {
  readonly #probes = new Map<string, HealthProbe>();
  readonly #services = new Set<string>();

  /** Adds (or replaces) a probe under `name`. */
  addProbe(name: string, probe: HealthProbe): void {
    this.#probes.set(name, probe);
  }

  /** Declares a fabric gRPC service; it is healthy while `fabric` and `state` are. */
  addService(name: string): void {
    this.#services.add(name);
  }

  /** The serving status of `service`, or undefined for a name nobody declared. */
  status(service: string): ServingStatus | undefined {
    let names: Iterable<string>;
    if (service === '') names = this.#probes.keys();
    else if (this.#services.has(service)) names = ['fabric', 'state'];
    else if (this.#probes.has(service)) names = [service];
    else return undefined;
    for (const name of names) {
      const probe = this.#probes.get(name);
      if (probe !== undefined && !safe(probe)) return ServingStatus.NOT_SERVING;
    }
    return ServingStatus.SERVING;
  }
}

function safe(probe: HealthProbe): boolean {
  try {
    return probe();
  } catch {
    return false;
  }
}

/** The grpc-js definition of `grpc.health.v1.Health` (clients use it too). */
export const HEALTH_SERVICE_DEFINITION: ServiceDefinition = {
  check: {
    path: `/${Health.typeName}/Check`,
    requestStream: false,
    responseStream: false,
    requestSerialize: (m: HealthCheckRequest) => Buffer.from(toBinary(HealthCheckRequestSchema, m)),
    requestDeserialize: (b: Buffer) => fromBinary(HealthCheckRequestSchema, b),
    responseSerialize: (m: HealthCheckResponse) =>
      Buffer.from(toBinary(HealthCheckResponseSchema, m)),
    responseDeserialize: (b: Buffer) => fromBinary(HealthCheckResponseSchema, b),
  },
  watch: {
    path: `/${Health.typeName}/Watch`,
    requestStream: false,
    responseStream: true,
    requestSerialize: (m: HealthCheckRequest) => Buffer.from(toBinary(HealthCheckRequestSchema, m)),
    requestDeserialize: (b: Buffer) => fromBinary(HealthCheckRequestSchema, b),
    responseSerialize: (m: HealthCheckResponse) =>
      Buffer.from(toBinary(HealthCheckResponseSchema, m)),
    responseDeserialize: (b: Buffer) => fromBinary(HealthCheckResponseSchema, b),
  },
};

/**
 * Adds `grpc.health.v1.Health` over `registry` to `server`. Returns a function that ends every
 * open `Watch` (call it before shutting the server down: a stream would hold it open).
 */
export function addHealthService(server: Server, registry: HealthRegistry): () => void {
  const watches = new Set<Watch>();
  server.addService(HEALTH_SERVICE_DEFINITION, {
    check: (
      call: ServerUnaryCall<HealthCheckRequest, HealthCheckResponse>,
      callback: sendUnaryData<HealthCheckResponse>,
    ) => {
      const s = registry.status(call.request.service);
      if (s === undefined) {
        callback({
          code: status.NOT_FOUND,
          details: statusMessage(`unknown service ${call.request.service}`),
        });
        return;
      }
      callback(null, create(HealthCheckResponseSchema, { status: s }));
    },
    watch: (call: ServerWritableStream<HealthCheckRequest, HealthCheckResponse>) => {
      if (watches.size >= MAX_HEALTH_WATCHES) {
        call.emit('error', {
          code: status.RESOURCE_EXHAUSTED,
          details: `more than ${MAX_HEALTH_WATCHES} health watches are open; use Check, or retry later`,
        });
        return;
      }
      let last: ServingStatus | undefined;
      const send = (): void => {
        const s = registry.status(call.request.service) ?? ServingStatus.SERVICE_UNKNOWN;
        if (s === last) return;
        last = s;
        call.write(create(HealthCheckResponseSchema, { status: s }));
      };
      const watch: Watch = {
        send,
        end: () => {
          forget(watch);
          call.end();
        },
      };
      watches.add(watch);
      // One timer re-evaluates every watch, running only while some are open.
      timer ??= setInterval(() => {
        for (const w of watches) w.send();
      }, HEALTH_WATCH_INTERVAL_MS).unref();
      call.on('cancelled', () => forget(watch));
      send();
    },
  });
  let timer: NodeJS.Timeout | undefined;
  const forget = (w: Watch): void => {
    watches.delete(w);
    if (watches.size === 0 && timer !== undefined) {
      clearInterval(timer);
      timer = undefined;
    }
  };
  return () => {
    for (const w of [...watches]) w.end();
  };
}

/** An open `Watch`: re-evaluated on the shared timer, ended at shutdown. */
interface Watch {
  readonly send: () => void;
  readonly end: () => void;
}
