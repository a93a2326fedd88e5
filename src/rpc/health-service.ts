/**
 * `grpc.health.v1.Health` (the standard gRPC health-checking protocol, vendored in
 * proto-grpc/): what load balancers, Kubernetes probes and `grpc_health_probe` ask.
 *
 * Health is made of named *probes* (`() => boolean`, true when the part works): the server adds
 * `fabric` (the fabric is open) and the sidecar adds `state` (the last commit to the state store
 * succeeded) and `upstream/<name>` (the MCP upstream is connected). A service name checks:
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

/** How often a `Watch` looks at the probes again. */
export const HEALTH_WATCH_INTERVAL_MS = 1_000;

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
  const watches = new Set<() => void>();
  server.addService(HEALTH_SERVICE_DEFINITION, {
    check: (
      call: ServerUnaryCall<HealthCheckRequest, HealthCheckResponse>,
      callback: sendUnaryData<HealthCheckResponse>,
    ) => {
      const s = registry.status(call.request.service);
      if (s === undefined) {
        callback({ code: status.NOT_FOUND, details: `unknown service ${call.request.service}` });
        return;
      }
      callback(null, create(HealthCheckResponseSchema, { status: s }));
    },
    watch: (call: ServerWritableStream<HealthCheckRequest, HealthCheckResponse>) => {
      let last: ServingStatus | undefined;
      const send = (): void => {
        const s = registry.status(call.request.service) ?? ServingStatus.SERVICE_UNKNOWN;
        if (s === last) return;
        last = s;
        call.write(create(HealthCheckResponseSchema, { status: s }));
      };
      const timer = setInterval(send, HEALTH_WATCH_INTERVAL_MS);
      timer.unref();
      const end = (): void => {
        clearInterval(timer);
        watches.delete(end);
        call.end();
      };
      watches.add(end);
      call.on('cancelled', () => {
        clearInterval(timer);
        watches.delete(end);
      });
      send();
    },
  });
  return () => {
    for (const end of [...watches]) end();
  };
}
