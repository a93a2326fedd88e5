/**
 * What kind of JSON-RPC message an agent sent, decided exactly as the SDK's
 * `JSONRPCMessageSchema` would, without zod.
 *
 * The SDK's `Protocol` silently drops (through `onerror`) every message its schemas reject, so a
 * malformed request would never be answered: the agent's HTTP request stayed open forever, its
 * session counted as busy and never expired, and a stdio client waited for nothing. Ingresses
 * therefore classify each message first, hand the SDK only what it accepts, and answer the rest
 * themselves with `-32600 Invalid Request`. The check must accept exactly what the SDK accepts:
 * accepting more would leave a message unanswered again, accepting less would refuse valid
 * traffic. `test/unit/jsonrpc-message.test.ts` compares it with the SDK's schemas on a fuzzed
 * corpus, so an SDK upgrade that changes them fails there, loudly.
 *
 * The SDK's rules (types.ts of `@modelcontextprotocol/sdk` 1.32): every message is a strict
 * object (no keys beyond its own) with `jsonrpc: "2.0"`; a request has `id` and a string
 * `method`, a notification a `method` and no `id`; `params`, when present, is an object; ids
 * are strings or safe integers (zod's `int()`: `2^53` and beyond, fractions, `null` and objects
 * are not ids); `params._meta` and `result._meta`, when present, are objects whose
 * `progressToken` is an id-like value and whose related-task entry has a string `taskId`; a
 * result is an object; an error is an object with an integer `code` and a string `message`, and
 * its `id` may be absent.
 *
 * @module
 */
import {
  ErrorCode,
  RELATED_TASK_META_KEY,
  type RequestId,
} from '@modelcontextprotocol/sdk/types.js';

/** The kind of an inbound JSON-RPC message; `invalid` when the SDK would reject it. */
export type MessageKind = 'request' | 'notification' | 'response' | 'invalid';

/** A JSON-RPC error response written by an ingress itself (not by the SDK). */
export interface JsonRpcErrorResponse {
  jsonrpc: '2.0';
  id: RequestId | null;
  error: { code: number; message: string; data?: unknown };
}

/** Why a message is invalid (fixed text: never echoes what the agent sent). */
interface Problem {
  readonly reason: string;
}

const problem = (reason: string): Problem => Object.freeze({ reason });
const NOT_OBJECT = problem('a message must be a JSON object');
const BAD_VERSION = problem('jsonrpc must be "2.0"');
const BAD_ID = problem(
  'id must be a string or an integer between -(2^53 - 1) and 2^53 - 1 (not null, a fraction or an object)',
);
const BAD_METHOD = problem('method must be a string');
const BAD_PARAMS = problem('params must be an object');
const BAD_META = problem('_meta must be an object');
const BAD_PROGRESS_TOKEN = problem('_meta.progressToken must be a string or an integer');
const BAD_RELATED_TASK = problem(`_meta["${RELATED_TASK_META_KEY}"] must have a string taskId`);
const REQUEST_KEYS = problem('a request or notification has only jsonrpc, id, method and params');
const RESULT_KEYS = problem('a result response has only jsonrpc, id and result');
const ERROR_KEYS = problem('an error response has only jsonrpc, id and error');
const BAD_RESULT = problem('result must be an object');
const BAD_ERROR = problem('error must be an object with an integer code and a string message');
const NO_KIND = problem(
  'a message needs a method (request or notification) or a result or error (response)',
);

type Obj = Record<string, unknown>;

function isObject(value: unknown): value is Obj {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** True for a valid JSON-RPC id as the SDK defines it: a string or a safe integer. */
export function isRequestId(value: unknown): value is RequestId {
  return typeof value === 'string' || Number.isSafeInteger(value);
}

/** True when `o` has no keys besides `a`, `b`, `c` and `d`. */
function onlyKeys(o: Obj, a: string, b: string, c: string, d: string): boolean {
  for (const k in o) if (k !== a && k !== b && k !== c && k !== d) return false;
  return true;
}

/** The SDK's `RequestMetaSchema` (on request and notification params, and on results). */
function metaProblem(meta: unknown): Problem | undefined {
  if (meta === undefined) return undefined;
  if (!isObject(meta)) return BAD_META;
  const token = meta.progressToken;
  if (token !== undefined && !isRequestId(token)) return BAD_PROGRESS_TOKEN;
  const task = meta[RELATED_TASK_META_KEY];
  if (task !== undefined && !(isObject(task) && typeof task.taskId === 'string')) {
    return BAD_RELATED_TASK;
  }
  return undefined;
}

/** The kind of `m`, or the first reason the SDK would reject it. No allocation. */
function inspect(m: unknown): MessageKind | Problem {
  if (!isObject(m)) return NOT_OBJECT;
  if (m.jsonrpc !== '2.0') return BAD_VERSION;
  const id = m.id;
  if (m.method !== undefined) {
    if (typeof m.method !== 'string') return BAD_METHOD;
    if (!onlyKeys(m, 'jsonrpc', 'id', 'method', 'params')) return REQUEST_KEYS;
    const params = m.params;
    if (params !== undefined) {
      if (!isObject(params)) return BAD_PARAMS;
      const p = metaProblem(params._meta);
      if (p) return p;
    }
    if (id === undefined) return 'notification';
    return isRequestId(id) ? 'request' : BAD_ID;
  }
  if (m.result !== undefined) {
    if (!onlyKeys(m, 'jsonrpc', 'id', 'result', 'result')) return RESULT_KEYS;
    if (!isRequestId(id)) return BAD_ID;
    if (!isObject(m.result)) return BAD_RESULT;
    return metaProblem(m.result._meta) ?? 'response';
  }
  if (m.error !== undefined) {
    if (!onlyKeys(m, 'jsonrpc', 'id', 'error', 'error')) return ERROR_KEYS;
    if (id !== undefined && !isRequestId(id)) return BAD_ID;
    const e = m.error;
    if (!isObject(e) || !Number.isSafeInteger(e.code) || typeof e.message !== 'string') {
      return BAD_ERROR;
    }
    return 'response';
  }
  return NO_KIND;
}

/**
 * Classifies one inbound message exactly as the SDK's `JSONRPCMessageSchema` (and `Protocol`'s
 * `isJSONRPCRequest` / `isJSONRPCNotification` / `isJSONRPCResultResponse` /
 * `isJSONRPCErrorResponse`) would. Cheap: a few property reads and one pass over the top-level
 * keys; nothing is copied or allocated.
 *
 * @example
 * ```ts
 * classifyMessage({ jsonrpc: '2.0', id: 1, method: 'ping' }); // 'request'
 * classifyMessage({ jsonrpc: '2.0', id: 1.5, method: 'ping' }); // 'invalid'
 * ```
 */
export function classifyMessage(message: unknown): MessageKind {
  const kind = inspect(message);
  return typeof kind === 'string' ? kind : 'invalid';
}

/**
 * The id to answer an invalid message with: its own id when that is a valid id and the message
 * is not a response (so a client waiting for that request gets its answer), else `null`.
 */
export function answerIdOf(message: unknown): RequestId | null {
  if (!isObject(message)) return null;
  const id = message.id;
  if (!isRequestId(id)) return null;
  // A malformed response must not fail a request of the client's own that shares its id.
  if (message.method === undefined && (message.result !== undefined || message.error !== undefined))
    return null;
  return id;
}

/**
 * The `-32600 Invalid Request` answer to a message {@link classifyMessage} found invalid,
 * naming the first problem (fixed text; nothing the agent sent is echoed but a valid id).
 */
export function invalidMessageResponse(message: unknown): JsonRpcErrorResponse {
  const kind = inspect(message);
  const reason = typeof kind === 'string' ? 'the message is valid' : kind.reason;
  return {
    jsonrpc: '2.0',
    id: answerIdOf(message),
    error: { code: ErrorCode.InvalidRequest, message: `Invalid Request: ${reason}` },
  };
}

/** A JSON-RPC error response with no id to answer (`id: null`, as JSON-RPC 2.0 asks). */
/**
 * The error answering a request whose id a request still in flight in the same session holds
 * (MCP: an id is never reused in a session): the later request is refused unrun, the earlier one
 * goes on and stays cancellable by that id.
 */
export function duplicateIdError(id: RequestId): JsonRpcErrorResponse {
  return jsonRpcError(
    ErrorCode.InvalidRequest,
    `Invalid Request: id ${JSON.stringify(id)} is already used by a request in flight in this session (MCP forbids reusing it); this request was not run, the earlier one goes on`,
    id,
  );
}

export function jsonRpcError(
  code: number,
  message: string,
  id: RequestId | null = null,
  data?: unknown,
): JsonRpcErrorResponse {
  return {
    jsonrpc: '2.0',
    id,
    error: data === undefined ? { code, message } : { code, message, data },
  };
}

/**
 * The ids of the requests a JSON-RPC POST body carries (one message or a batch; the SDK's
 * transports send a string): those with a string `method` and a string or number `id`. Not a
 * string, or not JSON: none.
 */
export function requestIdsOf(body: unknown): (string | number)[] {
  if (typeof body !== 'string') return [];
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    return [];
  }
  const ids: (string | number)[] = [];
  for (const m of Array.isArray(parsed) ? parsed : [parsed]) {
    if (m === null || typeof m !== 'object') continue;
    const { id, method } = m as { id?: unknown; method?: unknown };
    if (typeof method === 'string' && (typeof id === 'string' || typeof id === 'number')) {
      ids.push(id);
    }
  }
  return ids;
}
