/**
 * grpc-js's own log lines without the metadata values it quotes. grpc-js drops a metadata entry
 * whose value holds a character metadata cannot carry (a tab, a non-ASCII byte) and logs the
 * whole entry, value included, on stderr: `authorization: Bearer<TAB><credential>` — a client's
 * real credential with a stray separator — went to the sidecar's log in clear. This logger
 * writes what grpc-js's default one does (`E`/`I`/`D` and the message on stderr), with such a
 * line's value left out.
 *
 * @module
 */
import { format } from 'node:util';
import { setLogger } from '@grpc/grpc-js';

/** The line grpc-js logs for a metadata entry it dropped: `… entry <key>: <values>. <reason>`. */
const DROPPED_ENTRY = /^Failed to add metadata entry ([a-z0-9._-]{1,64})?/;

/** `message` as logged: a dropped metadata entry's line names its key, never its value. */
export function redactGrpcLogMessage(message: string): string {
  const dropped = DROPPED_ENTRY.exec(message);
  if (dropped === null) return message;
  return (
    `Failed to add metadata entry ${dropped[1] ?? '(a key that is not shown)'}: its value has ` +
    'characters gRPC metadata cannot carry, so the entry was dropped (the value is not logged: ' +
    'it may be a credential)'
  );
}

let installed = false;

/** Routes grpc-js's log lines through {@link redactGrpcLogMessage} (once per process). */
export function redactGrpcLogs(): void {
  if (installed) return;
  installed = true;
  const line =
    (severity: string) =>
    (message?: unknown, ...rest: unknown[]): void =>
      void process.stderr.write(
        `${format(`${severity} ${redactGrpcLogMessage(String(message))}`, ...rest)}\n`,
      );
  setLogger({ error: line('E'), info: line('I'), debug: line('D') });
}
