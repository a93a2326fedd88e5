/**
 * grpc-js's own log lines without the credentials it quotes. grpc-js drops a metadata entry
 * whose value holds a character metadata cannot carry (a tab, a non-ASCII byte) and logs the
 * whole entry, value included, on stderr: `authorization: Bearer<TAB><credential>` — a client's
 * real credential with a stray separator — went to the sidecar's log in clear. And its
 * `server_call` tracer (`GRPC_TRACE=server_call`, `GRPC_VERBOSITY=DEBUG`) logs every request's
 * headers as JSON, `authorization` included. This logger writes what grpc-js's default one does
 * (`E`/`I`/`D` and the message on stderr), with such a dropped entry's value left out and the
 * values of the headers that carry credentials ({@link SECRET_HEADER}) replaced in a traced
 * request's headers. It hands each line to the logger grpc-js had before (its default, or an
 * embedder's own `setLogger`), so an embedder keeps its logger and gets the lines redacted.
 *
 * @module
 */
import { setLogger } from '@grpc/grpc-js';
// grpc-js exports `setLogger` only; `getLogger` (the logger in place) is in this module of its.
import { getLogger } from '@grpc/grpc-js/build/src/logging.js';

/** The line grpc-js logs for a metadata entry it dropped: `… entry <key>: <values>. <reason>`. */
const DROPPED_ENTRY = /^Failed to add metadata entry ([a-z0-9._-]{1,64})?/;

/** What precedes a traced request's headers (JSON) in grpc-js's `server_call` trace line. */
const TRACED_HEADERS = ' received headers ';

/** Headers whose values a traced request's line leaves out: those that carry credentials. */
const SECRET_HEADER = /^(?:proxy-)?authorization$|^cookie$|token|secret|credential|password|key/i;

/**
 * `message` as logged: a dropped metadata entry's line names its key, never its value; a traced
 * request's headers keep their names, not the values of {@link SECRET_HEADER} ones.
 */
export function redactGrpcLogMessage(message: string): string {
  // The first occurrence: what precedes it is grpc-js's (a registered method's path), what
  // follows is the client's.
  const traced = message.indexOf(TRACED_HEADERS);
  if (traced !== -1) return redactTracedHeaders(message, traced + TRACED_HEADERS.length);
  const dropped = DROPPED_ENTRY.exec(message);
  if (dropped === null) return message;
  return (
    `Failed to add metadata entry ${dropped[1] ?? '(a key that is not shown)'}: its value has ` +
    'characters gRPC metadata cannot carry, so the entry was dropped (the value is not logged: ' +
    'it may be a credential)'
  );
}

function redactTracedHeaders(message: string, at: number): string {
  const head = message.slice(0, at);
  let headers: unknown;
  try {
    headers = JSON.parse(message.slice(at));
  } catch {
    headers = undefined;
  }
  if (headers === null || typeof headers !== 'object' || Array.isArray(headers)) {
    return `${head}(not logged: not the JSON object grpc-js writes)`;
  }
  const shown: Record<string, unknown> = {};
  for (const [name, values] of Object.entries(headers)) {
    const value = SECRET_HEADER.test(name) ? ['(not logged)'] : values;
    Object.defineProperty(shown, name, { value, enumerable: true, writable: true });
  }
  return head + JSON.stringify(shown);
}

let installed = false;

/**
 * Routes grpc-js's log lines through {@link redactGrpcLogMessage} to the logger in place before
 * (once per process): grpc-js's default writes `E`/`I`/`D` and the message on stderr; an
 * embedder's own logger (set before the gRPC server starts) gets the redacted lines instead of
 * being replaced. A logger set after it replaces it, redaction included.
 */
export function redactGrpcLogs(): void {
  if (installed) return;
  installed = true;
  const before = getLogger();
  const line =
    (severity: 'error' | 'info' | 'debug') =>
    (message?: unknown, ...rest: unknown[]): void => {
      // grpc-js falls back to `error` for a logger without the method; so does this.
      const write = before[severity] ?? before.error;
      write?.call(before, redactGrpcLogMessage(String(message)), ...rest);
    };
  setLogger({ error: line('error'), info: line('info'), debug: line('debug') });
}
