/**
 * Answers for the requests Node's HTTP parser refuses before any route sees them: a request
 * line or header it cannot read (a body sent without `content-length`, read as the next
 * request; `content-length` beside `transfer-encoding`; a control character in a header name),
 * headers past its size limit, a chunk extension past its limit, a request that did not arrive
 * within `http.headersTimeoutSeconds` / `http.requestTimeoutSeconds`, and an `Expect` other than
 * `100-continue`. Node answers these itself with a status and an empty body; a client (the
 * CLI, a script reading `code`) then has nothing to tell its user. Here each gets the status
 * Node would give and the `/api/` door's error body `{ code, kind, message, details }` with
 * `fabric-error-code`, `cache-control: no-store` and `connection: close`. No route is known at
 * this point (the parser may have failed on a pipelined request), so it is one shape for all.
 * The message names the parser's error code and reason, never the request's bytes.
 *
 * @module
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { BodyTimeoutError, InvalidArgumentError, type FabricError } from '../errors.js';

/** Headers of every such answer (as the `/api/` door's own answers carry). */
const HEADERS = 'cache-control: no-store\r\nx-content-type-options: nosniff\r\nconnection: close';

const REASONS: Readonly<Record<number, string>> = Object.freeze({
  400: 'Bad Request',
  408: 'Request Timeout',
  413: 'Payload Too Large',
  417: 'Expectation Failed',
  431: 'Request Header Fields Too Large',
});

/** The longest parser reason quoted in a message. */
const MAX_REASON_LENGTH = 200;

/** Timeouts of the server, for the message of a request that did not arrive in time. */
export interface ClientErrorTimeouts {
  headersTimeoutMs: number;
  requestTimeoutMs: number;
}

/** The status and catalog error of a `clientError` of Node's HTTP server. */
export function clientErrorAnswer(
  error: Error & { code?: unknown; reason?: unknown },
  timeouts: ClientErrorTimeouts,
): { status: number; error: FabricError } {
  switch (error.code) {
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return {
        status: 408,
        error: new BodyTimeoutError(
          timeouts.requestTimeoutMs,
          `the request did not arrive in time (its headers within ${timeouts.headersTimeoutMs} ms: ` +
            `http.headersTimeoutSeconds; all of it within ${timeouts.requestTimeoutMs} ms: ` +
            'http.requestTimeoutSeconds)',
        ),
      };
    case 'HPE_HEADER_OVERFLOW':
      return {
        status: 431,
        error: new InvalidArgumentError(
          'the request headers',
          "are larger than the server reads (Node's --max-http-header-size)",
        ),
      };
    case 'HPE_CHUNK_EXTENSIONS_OVERFLOW':
      return {
        status: 413,
        error: new InvalidArgumentError(
          'the request body',
          'has chunk extensions larger than the server reads',
        ),
      };
    default: {
      const code = typeof error.code === 'string' ? error.code : 'unknown';
      const said = typeof error.reason === 'string' ? error.reason : error.message;
      const reason =
        said.length > MAX_REASON_LENGTH ? `${said.slice(0, MAX_REASON_LENGTH)}…` : said;
      return {
        status: 400,
        error: new InvalidArgumentError(
          'the request',
          `is not HTTP/1.1 the server can read (${code}: ${reason})`,
        ),
      };
    }
  }
}

function responseText(status: number, error: FabricError): string {
  const body = JSON.stringify(error.toJSON());
  return (
    `HTTP/1.1 ${status} ${REASONS[status] ?? 'Error'}\r\n${HEADERS}\r\n` +
    `fabric-error-code: ${error.code}\r\ncontent-type: application/json\r\n` +
    `content-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`
  );
}

/**
 * The server's `clientError` listener: writes the answer unless the socket cannot take it (the
 * client reset it, or an answer of the request already began — Node's own rule), then destroys
 * the socket, as Node does.
 */
export function answerClientError(
  error: Error & { code?: unknown; reason?: unknown },
  socket: Duplex,
  timeouts: ClientErrorTimeouts,
): void {
  const inFlight = (socket as { _httpMessage?: { headersSent?: boolean } })._httpMessage;
  if (error.code !== 'ECONNRESET' && socket.writable && inFlight?.headersSent !== true) {
    const { status, error: answer } = clientErrorAnswer(error, timeouts);
    socket.write(responseText(status, answer));
  }
  socket.destroy();
}

/**
 * The server's `checkExpectation` listener: a request whose `Expect` is not `100-continue` is
 * refused with 417 and the error body (Node's own answer has none); its body is not read.
 */
export function refuseExpectation(req: IncomingMessage, res: ServerResponse): void {
  const expect = String(req.headers.expect ?? '');
  const error = new InvalidArgumentError(
    'expect',
    `only 100-continue is supported, got ${JSON.stringify(expect.slice(0, 40))}`,
  );
  const body = JSON.stringify(error.toJSON());
  res
    .writeHead(417, {
      'cache-control': 'no-store',
      'x-content-type-options': 'nosniff',
      connection: 'close',
      'fabric-error-code': error.code,
      'content-type': 'application/json',
      'content-length': Buffer.byteLength(body),
    })
    .end(body);
}
