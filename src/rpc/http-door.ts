/**
 * The HTTP door: the same {@link ServiceImplementation}s the gRPC server serves, as JSON over
 * HTTP — `POST <prefix><package.Service>/<Method>` with a JSON body in the protobuf JSON mapping
 * (protobuf-es `fromJson`/`toJson`), answered with the response message as JSON. This is the
 * request and response form of the Connect protocol's unary calls, so a client can be a plain
 * `curl`.
 *
 * Why not `@connectrpc/connect-node`: v2 needs Node 22 (the fabric supports Node 20), and v1
 * needs `@bufbuild/protobuf` v1 (the generated code is v2). What a unary JSON call needs is
 * small: one route per method, read from the same service descriptors as gRPC.
 *
 * The same rules as gRPC, in the same order: the caller is authenticated from
 * `authorization: Bearer <credential>` before the body is read (no credential: 401; an agent's
 * on an admin service: 403); then the body is read within the size and time limits
 * (http-body.ts: 413, 408), parsed (not JSON, nested deeper than gRPC's decoder allows, or not
 * the method's message: 400 `FABRIC_ERR_INVALID_ARGUMENT`), and the method runs with a signal
 * that aborts when the client goes away. Errors answer with the HTTP status of their catalog
 * kind and the body `{ code, kind, message, details }` (`FabricError.toJSON()`; not Connect's
 * error shape), the code also in the `fabric-error-code` header as in gRPC's trailer. An unknown
 * service or method, a server-streaming method, or another verb than POST is 404
 * `FABRIC_ERR_ROUTE_NOT_FOUND`. The Host/Origin guard runs before this, in the HTTP server, and
 * answers its 403 through {@link HttpDoor.refuse} in the same shape.
 *
 * @module
 */
import {
  fromJson,
  toJson,
  type DescMessage,
  type DescMethod,
  type JsonValue,
} from '@bufbuild/protobuf';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { InvalidArgumentError, RouteNotFoundError } from '../errors.js';
import type { AgentFabric } from '../fabric.js';
import { exceededBound } from '../gateway/input-bounds.js';
import {
  closesConnection,
  DEFAULT_BODY_TIMEOUT_MS,
  readBody,
  sendJson,
} from '../gateway/http-body.js';
import { httpErrorBody, httpStatusOf } from '../gateway/map-error.js';
import { DEFAULT_GRPC_RECURSION_LIMIT } from './grpc-definition.js';
import { authenticateCaller, type Caller, type CallerKind } from './rpc-call.js';
import type { AnyServiceImplementation } from './services.js';

/** Path prefix of the HTTP door in the sidecar. */
export const DEFAULT_API_PREFIX = '/api/';
/** Largest request body of the HTTP door (1 MiB, like the admin routes). */
export const DEFAULT_API_MAX_BODY_BYTES = 1024 * 1024;
/**
 * Most nested arrays and objects in a request body. Half of gRPC's decoder limit: a
 * `google.protobuf.Value` spends two message levels per JSON level.
 */
export const MAX_API_JSON_DEPTH = DEFAULT_GRPC_RECURSION_LIMIT / 2;
/** Most values in a request body (an array of a million zeros fits in 2 MiB). */
export const MAX_API_JSON_NODES = 200_000;

/** Options of {@link HttpDoor}. */
export interface HttpDoorOptions {
  fabric: AgentFabric;
  /** What to serve: the list the gRPC server serves (services.ts). */
  services: readonly AnyServiceImplementation[];
  /** @default '/api/' */
  prefix?: string;
  /** @default 1 MiB */
  maxBodyBytes?: number;
  /** Time the client has to send the body (then 408). @default 30000 */
  bodyTimeoutMs?: number;
}

type Handler = (caller: Caller, request: unknown, signal: AbortSignal) => Promise<unknown>;

interface Route {
  readonly caller: CallerKind;
  readonly method: DescMethod;
  readonly handler: Handler;
}

/** Serves the unary methods of every service as JSON over HTTP. */
export class HttpDoor {
  readonly prefix: string;
  readonly #fabric: AgentFabric;
  readonly #routes = new Map<string, Route>();
  readonly #maxBodyBytes: number;
  readonly #bodyTimeoutMs: number;

  constructor(options: HttpDoorOptions) {
    this.#fabric = options.fabric;
    this.prefix = options.prefix ?? DEFAULT_API_PREFIX;
    this.#maxBodyBytes = options.maxBodyBytes ?? DEFAULT_API_MAX_BODY_BYTES;
    this.#bodyTimeoutMs = options.bodyTimeoutMs ?? DEFAULT_BODY_TIMEOUT_MS;
    for (const impl of options.services) {
      const handlers = impl.unary as Record<string, Handler | undefined>;
      for (const method of impl.service.methods) {
        const handler = handlers[method.localName];
        if (method.methodKind !== 'unary' || handler === undefined) continue;
        this.#routes.set(`${impl.service.typeName}/${method.name}`, {
          caller: impl.caller,
          method,
          handler,
        });
      }
    }
  }

  /** `<prefix><package.Service>/<Method>` of every served method. */
  get paths(): string[] {
    return [...this.#routes.keys()].map((k) => this.prefix + k);
  }

  /** True when `pathname` is the door's to answer. */
  owns(pathname: string): boolean {
    return pathname.startsWith(this.prefix);
  }

  /** Answers one request under the prefix; never rejects. */
  async handle(req: IncomingMessage, res: ServerResponse, pathname: string): Promise<void> {
    try {
      const body = await this.#call(req, res, pathname);
      sendJson(res, 200, body);
    } catch (error) {
      this.refuse(req, res, error);
    }
  }

  /**
   * Answers with `error` in the door's shape: the status of its catalog kind, the body
   * `{ code, kind, message, details }`, the code in `fabric-error-code`; `connection: close`
   * when the body was not read.
   */
  refuse(req: IncomingMessage, res: ServerResponse, error: unknown): void {
    const close = !req.complete || closesConnection(error);
    const body = httpErrorBody(error).error;
    sendJson(res, httpStatusOf(error), body, {
      'fabric-error-code': String(body.code),
      ...(close ? { connection: 'close' } : {}),
    });
  }

  async #call(req: IncomingMessage, res: ServerResponse, pathname: string): Promise<JsonValue> {
    const route = this.#routes.get(pathname.slice(this.prefix.length));
    if (route === undefined) {
      throw new RouteNotFoundError(req.method ?? '', pathname, 'no such service method');
    }
    if (req.method !== 'POST') {
      throw new RouteNotFoundError(req.method ?? '', pathname, 'RPCs are called with POST');
    }
    const caller = authenticateCaller(this.#fabric, route.caller, req.headers.authorization ?? '');
    const type = (req.headers['content-type'] ?? '').split(';')[0]!.trim().toLowerCase();
    if (type !== 'application/json') {
      throw new InvalidArgumentError('content-type', 'must be application/json');
    }
    const text = await readBody(req, {
      limit: this.#maxBodyBytes,
      timeoutMs: this.#bodyTimeoutMs,
    });
    const request = decodeJson(route.method.input, text);
    const controller = new AbortController();
    const onClose = (): void => {
      if (!res.writableEnded) controller.abort(new Error('the client closed the connection'));
    };
    res.once('close', onClose);
    try {
      const response = await route.handler(caller, request, controller.signal);
      return toJson(route.method.output, response as never);
    } finally {
      res.off('close', onClose);
    }
  }
}

/**
 * A request body as a `schema` message.
 * @throws InvalidArgumentError (`details.field` `body`) when it is not JSON, nests deeper than
 *   {@link MAX_API_JSON_DEPTH} or holds more than {@link MAX_API_JSON_NODES} values, or is not a
 *   `schema` message in the protobuf JSON mapping (unknown fields included).
 */
export function decodeJson<D extends DescMessage>(schema: D, text: string): unknown {
  let json: unknown = {};
  if (text.trim() !== '') {
    try {
      json = JSON.parse(text);
    } catch {
      throw new InvalidArgumentError('body', 'is not JSON');
    }
  }
  const exceeded = exceededBound(json, {
    maxDepth: MAX_API_JSON_DEPTH,
    maxNodes: MAX_API_JSON_NODES,
  });
  if (exceeded !== undefined) {
    throw new InvalidArgumentError(
      'body',
      exceeded === 'depth'
        ? `nests deeper than ${MAX_API_JSON_DEPTH} levels`
        : `holds more than ${MAX_API_JSON_NODES} values`,
    );
  }
  try {
    return fromJson(schema, json as JsonValue);
  } catch (error) {
    throw new InvalidArgumentError(
      'body',
      `is not a valid ${schema.typeName}: ${error instanceof Error ? error.message : String(error)}`,
      { cause: error },
    );
  }
}
