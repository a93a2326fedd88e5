/**
 * The one place where errors become wire shapes: MCP tool results the model can read, JSON-RPC
 * errors, and HTTP statuses.
 *
 * @module
 */
import { ErrorCode, McpError, type CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import {
  BodyTimeoutError,
  cutWireText,
  FabricError,
  PayloadTooLargeError,
  StateStoreError,
  wireErrorDetails,
  type ErrorKind,
} from '../errors.js';
import type { ToolCallRefused } from './backend.js';

/** `_meta` key under which error facts travel in tool results. */
export const ERROR_META_KEY = 'agent-fabric/error';

/** HTTP status of each error kind. */
export const HTTP_STATUS_BY_KIND: Readonly<Record<ErrorKind, number>> = Object.freeze({
  invalid_argument: 400,
  unauthenticated: 401,
  permission_denied: 403,
  not_found: 404,
  already_exists: 409,
  failed_precondition: 409,
  resource_exhausted: 429,
  internal: 500,
  unavailable: 503,
  deadline_exceeded: 504,
});

/** JSON-RPC error code of each error kind (standard codes; the catalog code travels in `data`). */
const JSONRPC_CODE_BY_KIND: Readonly<Record<ErrorKind, number>> = Object.freeze({
  invalid_argument: ErrorCode.InvalidParams,
  not_found: ErrorCode.InvalidParams,
  already_exists: ErrorCode.InvalidParams,
  failed_precondition: ErrorCode.InvalidRequest,
  resource_exhausted: ErrorCode.InternalError,
  permission_denied: ErrorCode.InvalidRequest,
  unauthenticated: ErrorCode.InvalidRequest,
  deadline_exceeded: ErrorCode.RequestTimeout,
  unavailable: ErrorCode.InternalError,
  internal: ErrorCode.InternalError,
});

/** Codes whose HTTP status is more precise than their kind's (HTTP has its own words). */
const HTTP_STATUS_BY_CODE: Readonly<Record<string, number>> = Object.freeze({
  [PayloadTooLargeError.code]: 413,
  [BodyTimeoutError.code]: 408,
});

/**
 * An `McpError` whose `message` goes on the wire exactly as given: the SDK's `McpError`
 * constructor prefixes `MCP error <code>: `, and every client prefixes again on receipt ("MCP
 * error -32602: MCP error -32602: …"). Used for errors relayed from an upstream (its own
 * message, code and data) and for the gateway's own JSON-RPC errors. Still an `McpError`, so
 * every path that relays protocol errors relays it; the SDK's `Protocol` and the fast path both
 * put `message` on the wire.
 */
export class RelayedMcpError extends McpError {
  constructor(code: number, message: string, data?: unknown) {
    super(code, message, data);
    this.message = message;
  }
}

/**
 * An error the SDK built from a peer's JSON-RPC error response (an upstream's answer to a call,
 * or an agent's client's answer to a request an upstream sent it), as a {@link RelayedMcpError}
 * carrying the peer's original message (the SDK prefixed it).
 */
export function relayedMcpError(error: McpError): RelayedMcpError {
  if (error instanceof RelayedMcpError) return error;
  const prefix = `MCP error ${error.code}: `;
  const message = error.message.startsWith(prefix)
    ? error.message.slice(prefix.length)
    : error.message;
  const relayed = new RelayedMcpError(error.code, message, error.data);
  relayed.cause = error;
  return relayed;
}

/** HTTP status for any thrown value (500 for non-catalog errors). */
export function httpStatusOf(error: unknown): number {
  if (!(error instanceof FabricError)) return 500;
  return HTTP_STATUS_BY_CODE[error.code] ?? HTTP_STATUS_BY_KIND[error.kind];
}

/** JSON body of an HTTP error response. Never includes stacks. */
export function httpErrorBody(error: unknown): { error: Record<string, unknown> } {
  if (error instanceof FabricError) return { error: error.toJSON() };
  return {
    error: {
      code: 'FABRIC_ERR_INTERNAL',
      kind: 'internal',
      message: cutWireText(messageOf(error)),
    },
  };
}

/** A JSON-RPC error for a failure that is not the model's business (bad request, routing). */
export function toMcpError(error: unknown): McpError {
  if (error instanceof McpError) return error;
  if (error instanceof FabricError) {
    const wire = error.toJSON();
    return new RelayedMcpError(JSONRPC_CODE_BY_KIND[error.kind], wire.message, wire);
  }
  return new RelayedMcpError(ErrorCode.InternalError, cutWireText(messageOf(error)));
}

/** A tool result with `isError: true` that the model can read and act on. */
export function errorResult(
  text: string,
  meta: Record<string, unknown>,
): CallToolResult & { isError: true } {
  return { content: [{ type: 'text', text }], isError: true, _meta: { [ERROR_META_KEY]: meta } };
}

/** The tool result for an error raised while forwarding a call (upstream down, timeout …). */
export function toolErrorResult(error: unknown): CallToolResult {
  if (error instanceof FabricError) {
    const wire = error.toJSON();
    return errorResult(`Tool call failed: ${wire.message} (${wire.code})`, wire);
  }
  const message = cutWireText(messageOf(error));
  return errorResult(`Tool call failed: ${message}`, { code: 'FABRIC_ERR_INTERNAL', message });
}

/** The tool result for a call the policy / approval / budget pipeline refused. */
export function refusalResult(refusal: ToolCallRefused, now = Date.now()): CallToolResult {
  const { advice, meta } = refusalFacts(refusal, now);
  return errorResult(`Tool call refused: ${meta.reason} (${meta.code}).${advice}`, meta);
}

/**
 * The JSON-RPC error for a non-tool request (a resource read, a prompt) the pipeline refused:
 * `InvalidRequest`, the same facts as {@link refusalResult} in `data`.
 */
export function refusalError(refusal: ToolCallRefused, now = Date.now()): McpError {
  const { advice, meta } = refusalFacts(refusal, now);
  return new RelayedMcpError(
    ErrorCode.InvalidRequest,
    `Request refused: ${meta.reason} (${meta.code}).${advice}`,
    meta,
  );
}

/**
 * What a refusal tells the agent, bounded as every error on a wire (see `FabricError.toJSON`):
 * the reason (a rule's or a policy plugin's text) and code cut, the details without secret-named
 * members and cut.
 */
function refusalFacts(
  refusal: ToolCallRefused,
  now: number,
): { advice: string; meta: { code: string; reason: string } & Record<string, unknown> } {
  const retryAt = toEpochMs(refusal.retryAt);
  let advice = ' Do not retry the same call; choose another approach or ask a human.';
  if (refusal.code === StateStoreError.code) {
    // Nothing is wrong with the call: the sidecar cannot write its state for now (the disk
    // full). The reason says when to call again; "do not retry" would contradict it.
    advice = ' The call did not run; retry it once the sidecar can write its state again.';
  } else if (retryAt !== undefined) {
    const inSeconds = Math.max(0, Math.ceil((retryAt - now) / 1000));
    advice = ` The limit resets at ${new Date(retryAt).toISOString()} (in ${inSeconds} s); retry after that.`;
  }
  return {
    advice,
    meta: {
      code: cutWireText(String(refusal.code)),
      reason: cutWireText(String(refusal.reason)),
      ...(retryAt === undefined ? {} : { retryAt: new Date(retryAt).toISOString() }),
      ...(refusal.details && typeof refusal.details === 'object'
        ? { details: wireErrorDetails(refusal.details) }
        : {}),
    },
  };
}

function toEpochMs(value: number | Date | null | undefined): number | undefined {
  if (value === undefined || value === null) return undefined;
  const ms = value instanceof Date ? value.getTime() : value;
  return Number.isFinite(ms) ? ms : undefined;
}

/** The message of any thrown value. */
export function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
