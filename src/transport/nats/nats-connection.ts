/**
 * Opens the NATS connection of a sidecar or a worker from {@link NatsOptions}: fails fast with a
 * {@link NatsUnavailableError} naming the URL when the server cannot be reached at start, and
 * reconnects forever once connected (a restarted server must not take the fabric down).
 *
 * @module
 */
import { readFile } from 'node:fs/promises';
import type { ConnectionOptions, NatsConnection } from '@nats-io/transport-node';
import { connect, credsAuthenticator } from '@nats-io/transport-node';
import { NatsUnavailableError } from '../../errors.js';
import type { NatsOptions } from './nats-options.js';
import { natsServers, shownNatsServers } from './nats-options.js';

/**
 * Connects with the options' server and credentials.
 * @param name - the client name the server shows (`nats server report connections`).
 * @throws NatsUnavailableError naming the URL (never the credentials).
 */
export async function connectNats(options: NatsOptions, name: string): Promise<NatsConnection> {
  const servers = natsServers(options);
  const shown = shownNatsServers(options);
  const opts: ConnectionOptions = {
    servers,
    name,
    timeout: options.connectTimeoutMs,
    reconnect: true,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 250,
    // No stack captured per request (an error object made up front for every request and
    // publish, in case it times out): a fifth of the CPU of each dispatched task. The errors
    // still carry their type and message, which is all the fabric looks at.
    noAsyncTraces: true,
  };
  if (options.token !== undefined) opts.token = options.token;
  if (options.user !== undefined) {
    opts.user = options.user;
    opts.pass = options.password!;
  }
  if (options.credsFile !== undefined) {
    let creds: Uint8Array;
    try {
      creds = await readFile(options.credsFile);
    } catch (err) {
      throw new NatsUnavailableError(shown, `cannot read credsFile ${options.credsFile}`, {
        cause: err,
      });
    }
    opts.authenticator = credsAuthenticator(creds);
  }
  try {
    return await connect(opts);
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    throw new NatsUnavailableError(shown, message, { cause: err });
  }
}

/** Longest wait for a NATS connection to drain at close: a flush needs the server's answer. */
export const NATS_DRAIN_TIMEOUT_MS = 5000;

/**
 * Drains `nc` (its subscriptions end, what was published is flushed) and closes it — bounded by
 * `timeoutMs`: a server that stopped answering (frozen, partitioned) or is gone (the client
 * reconnecting) never answers the drain's flush, and a close waiting for it never ended (the
 * sidecar then never exited on SIGTERM). Past the bound the connection is closed at once; what
 * was not flushed is lost as on any broken connection (JetStream redelivers what was not acked).
 * @returns whether the drain finished in time
 */
export async function drainNats(
  nc: NatsConnection,
  timeoutMs: number = NATS_DRAIN_TIMEOUT_MS,
): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const drained = nc.drain().then(
    () => true,
    () => false,
  );
  const late = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), timeoutMs);
  });
  const done = await Promise.race([drained, late]);
  clearTimeout(timer);
  if (!done) await nc.close().catch(() => undefined);
  return done;
}
