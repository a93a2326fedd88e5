/**
 * The JSON text of an outgoing JSON-RPC message, for the transports that write it.
 *
 * A response must reach its caller whatever its result holds. An upstream can answer with JSON
 * nested deeper than `JSON.stringify` can serialize (it throws `RangeError`), and a result built
 * in this process could hold a BigInt or a cycle; serializing such a response in a transport
 * would otherwise throw where nobody answers the request (it then hangs), or inside a timer
 * (the process exits). Such a response is replaced by an `InternalError` response to the same
 * id. Requests and notifications are not answers: their errors are thrown to the sender.
 *
 * @module
 */
import { ErrorCode, type JSONRPCMessage } from '@modelcontextprotocol/sdk/types.js';

/**
 * `JSON.stringify(message)`; for a response that cannot be serialized, the text of an
 * `InternalError` response with the same id (its `data.code` is `FABRIC_ERR_INTERNAL`).
 *
 * @throws whatever `JSON.stringify` threw, for a request or a notification.
 * @example
 * serializeMessage({ jsonrpc: '2.0', id: 1, result: {} }); // '{"jsonrpc":"2.0","id":1,"result":{}}'
 */
export function serializeMessage(message: JSONRPCMessage): string {
  try {
    return JSON.stringify(message);
  } catch (error) {
    const m = message as { id?: unknown; method?: unknown };
    const id = m.id;
    if (m.method !== undefined || (typeof id !== 'string' && typeof id !== 'number')) throw error;
    const reason = error instanceof Error ? error.message : String(error);
    return JSON.stringify({
      jsonrpc: '2.0',
      id,
      error: {
        code: ErrorCode.InternalError,
        message: `the response could not be serialized as JSON (${reason})`,
        data: { code: 'FABRIC_ERR_INTERNAL' },
      },
    });
  }
}
