/**
 * What an upstream is told when the gateway gives up one of its requests.
 *
 * A `notifications/cancelled` carries a free-text `reason`. The reason the gateway's upstream
 * request is aborted with is often the agent's own text — the `reason` of an MCP client's
 * `notifications/cancelled`, which the SDK's `Protocol` and the fast path abort the call with,
 * and both send `String(reason)` on — and no policy ever sees it: relaying it made cancelling a
 * call a channel from an agent to an upstream around every policy provider (secret-guard
 * included), any text, as often as the agent likes. So the upstream's transport sends every
 * cancellation with a reason of the gateway's own: the timeout's text when the gateway timed
 * the request out, else {@link UPSTREAM_CANCEL_REASON}. The agent's reason stays with its own
 * request.
 *
 * Done on the transport, the one way out to the upstream, rather than on the signals: a linked
 * `AbortController` per call cost ~7 µs (EventTarget listeners), a method check per message sent
 * costs nothing measurable, and it covers the SDK client's path and the fast path alike.
 */
import type { Transport } from '@modelcontextprotocol/sdk/shared/transport.js';

/** The `reason` of every `notifications/cancelled` sent upstream, but a timeout's. */
export const UPSTREAM_CANCEL_REASON = 'the request was cancelled by its client';

/** The reasons the gateway itself gives when it times a request out (SDK client, fast path). */
const TIMEOUT_REASONS: ReadonlySet<string> = new Set([
  'McpError: MCP error -32001: Request timed out',
]);

/**
 * Makes `transport` send each `notifications/cancelled` with a reason of the gateway's own
 * (see above); every other message goes out as it was given. Call before the client connects.
 */
export function withOwnCancelReasons<T extends Transport>(transport: T): T {
  const send = transport.send.bind(transport);
  transport.send = (message, options) => {
    if ('method' in message && message.method === 'notifications/cancelled') {
      const params = message.params as { requestId?: unknown; reason?: unknown } | undefined;
      const reason =
        typeof params?.reason === 'string' && TIMEOUT_REASONS.has(params.reason)
          ? params.reason
          : UPSTREAM_CANCEL_REASON;
      message = { ...message, params: { ...params, reason } };
    }
    return send(message, options);
  };
  return transport;
}
