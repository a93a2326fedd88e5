/**
 * Reading request bodies and writing JSON answers on `node:http`, bounded in size and time.
 *
 * A body over the limit is answered, not cut: the old reader destroyed the socket at once, and
 * the client saw a connection reset instead of a 413. Closing a socket that still has unread
 * data makes the kernel send a reset, which may also discard an answer the client has not read
 * yet; so the rest of the body is read and thrown away (up to one more `limit` of bytes, within
 * the same timeout) before the answer goes out with `connection: close`. A body that stops
 * arriving is answered with 408 when the body timeout passes (slow clients held a request for
 * the server's 300 s default before).
 *
 * @module
 */
import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import type { FabricError } from '../errors.js';
import { BodyTimeoutError, PayloadTooLargeError } from '../errors.js';
import { jsonRpcError } from './jsonrpc-message.js';
import { httpStatusOf } from './map-error.js';

/** Default of the body read timeout: 30 s to receive a whole body once its headers arrived. */
export const DEFAULT_BODY_TIMEOUT_MS = 30_000;

/** Bounds of {@link readBody}. */
export interface ReadBodyOptions {
  /** Largest body accepted, in bytes. */
  limit: number;
  /** Time allowed to receive the whole body; `0` for none. @default 30000 */
  timeoutMs?: number;
}

/**
 * The body as UTF-8 text when the whole of it has arrived and is within `limit` bytes (a small
 * body comes in the packet of its headers, and the parser has finished the message by the time
 * the handler's first await resumes): taken from the stream's buffer at once — no listeners, no
 * timer, no waiting for `end`. Undefined otherwise: {@link readBody} reads it.
 */
export function arrivedBody(req: IncomingMessage, limit: number): string | undefined {
  if (!req.complete || req.readableLength > limit || req.readableFlowing) return undefined;
  const body = req.read() as Buffer | null;
  return body === null ? '' : body.toString('utf8');
}

/**
 * Reads a request body as UTF-8 text.
 *
 * @throws PayloadTooLargeError after the body went past `limit` (the rest was drained, up to
 *   another `limit` bytes). Answer with `connection: close`.
 * @throws BodyTimeoutError when the body did not arrive in time. Answer with
 *   `connection: close`.
 */
export function readBody(req: IncomingMessage, options: ReadBodyOptions): Promise<string> {
  const { limit } = options;
  const arrived = arrivedBody(req, limit);
  if (arrived !== undefined) return Promise.resolve(arrived);
  const timeoutMs = options.timeoutMs ?? DEFAULT_BODY_TIMEOUT_MS;
  return new Promise((resolve, reject) => {
    let chunks: Buffer[] = [];
    let size = 0;
    let tooLarge = false;
    let drained = 0;
    let settled = false;
    const settle = (error: Error | undefined, text?: string): void => {
      if (settled) return;
      settled = true;
      if (timer !== undefined) clearTimeout(timer);
      req.off('data', ondata);
      // `close` comes after every request, read whole or not: the listener goes now, so the
      // error it would make (a stack trace: once ~12 % of an HTTP call's CPU) is never made.
      req.off('close', onclose);
      chunks = [];
      if (error) {
        // Anything still arriving is read and dropped, so the answer is not lost to a reset.
        req.resume();
        reject(error);
      } else resolve(text!);
    };
    const onclose = (): void => settle(new Error('the client closed the connection mid-body'));
    const ondata = (chunk: Buffer): void => {
      if (tooLarge) {
        drained += chunk.length;
        if (drained > limit) settle(new PayloadTooLargeError(limit));
        return;
      }
      size += chunk.length;
      if (size > limit) {
        tooLarge = true;
        chunks = [];
        return;
      }
      chunks.push(chunk);
    };
    const timer =
      timeoutMs > 0
        ? setTimeout(
            () =>
              settle(tooLarge ? new PayloadTooLargeError(limit) : new BodyTimeoutError(timeoutMs)),
            timeoutMs,
          )
        : undefined;
    timer?.unref();
    req.on('data', ondata);
    req.once('end', () => {
      if (tooLarge) settle(new PayloadTooLargeError(limit));
      else {
        settle(
          undefined,
          chunks.length === 1
            ? chunks[0]!.toString('utf8')
            : Buffer.concat(chunks).toString('utf8'),
        );
      }
    });
    req.once('error', (error) => settle(error));
    // A client that goes away mid-body: nobody is left to answer, but the reader must end.
    req.once('close', onclose);
  });
}

/** True for the errors of {@link readBody} after which the connection must be closed. */
export function closesConnection(error: unknown): boolean {
  return error instanceof PayloadTooLargeError || error instanceof BodyTimeoutError;
}

/** Writes a JSON response (with `headers` besides the content ones). */
export function sendJson(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers?: OutgoingHttpHeaders,
): void {
  if (res.headersSent) {
    res.end();
    return;
  }
  const json = JSON.stringify(body);
  res
    .writeHead(status, {
      ...headers,
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(json),
    })
    .end(json);
}

/**
 * Answers a refused MCP request: the error's HTTP status and a JSON-RPC error (`id: null`) whose
 * `data` holds the catalog facts (`code`, `kind`, `details`). `connection: close` when the
 * request body may still be arriving (the socket cannot be reused then).
 */
export function sendJsonRpcRefusal(
  req: IncomingMessage,
  res: ServerResponse,
  error: FabricError,
  jsonRpcCode: number,
  headers?: OutgoingHttpHeaders,
): void {
  const close = !req.complete || closesConnection(error);
  const wire = error.toJSON();
  sendJson(
    res,
    httpStatusOf(error),
    jsonRpcError(jsonRpcCode, wire.message, null, wire),
    close ? { ...headers, connection: 'close' } : headers,
  );
}
