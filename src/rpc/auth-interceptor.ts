/**
 * Refuses a gRPC call whose metadata carries no valid credential before its request message is
 * read. grpc-js hands a call to its handler only once the whole message is in (up to its 4 MiB
 * receive bound), so a credential checked only in the handler (rpc-call.ts) came after the
 * server had read and held each call's message: a client without any credential could make the
 * server hold 100 calls × 4 MiB per connection, and open any number of connections.
 *
 * A grpc-js server interceptor sees the call's metadata before the handler asks for the message
 * (grpc-js keeps the HTTP/2 stream paused until then). The check is the handler's own
 * ({@link authenticateCall}, with {@link toServiceError}): a refused call gets the status and
 * trailers the handler would have given it, and the handler checks again when the call passes
 * (a credential may be revoked in between).
 *
 * Answering is not enough on its own: grpc-js then reads and drops the rest of the stream, and a
 * grpc-js client goes on sending its whole message after it has its status. So the stream is
 * also reset with `NO_ERROR` once the status is out — what RFC 9113 §8.1 provides for a server
 * that answered before the request was complete — and the client stops at what it had sent by
 * then, which HTTP/2 flow control keeps near one window (64 KiB): 64 refused calls of 3 MiB on
 * one connection get about 67 KB through (test/security/grpc-preauth.test.ts).
 *
 * @module
 */
import { constants } from 'node:http2';
import type { DescService } from '@bufbuild/protobuf';
import {
  ServerInterceptingCall,
  type ServerInterceptingCallInterface,
  type ServerInterceptor,
} from '@grpc/grpc-js';
import type { AgentFabric } from '../fabric.js';
import { authenticateCall, toServiceError, type CallerKind } from './rpc-call.js';

/**
 * A server interceptor that authenticates each call of `services`' methods as its service's
 * `caller` from the call's metadata, and ends a call that fails with the failure's status
 * without reading its message. Calls of other services (health, reflection) pass untouched.
 * Must be the server's first interceptor (see {@link resetStream}).
 */
export function authInterceptor(
  fabric: AgentFabric,
  services: readonly { readonly service: DescService; readonly caller: CallerKind }[],
): ServerInterceptor {
  const callers = new Map<string, CallerKind>();
  for (const { service, caller } of services) {
    for (const method of service.methods) {
      callers.set(`/${service.typeName}/${method.name}`, caller);
    }
  }
  return (method, call) => {
    const kind = callers.get(method.path);
    if (kind === undefined) return new ServerInterceptingCall(call);
    return new ServerInterceptingCall(call, {
      start: (next) =>
        next({
          onReceiveMetadata: (metadata, pass) => {
            try {
              authenticateCall(fabric, kind, metadata);
            } catch (err) {
              // Not passed on: the handler never asks for the message.
              call.sendStatus(toServiceError(err));
              resetStream(call);
              return;
            }
            pass(metadata);
          },
        }),
    });
  };
}

/**
 * Resets the HTTP/2 stream of a call that has its status, with `NO_ERROR`: Node sends the
 * RST_STREAM after the status has been written. grpc-js has no API for it: this reaches the
 * `stream` of its base call (`BaseServerInterceptingCall`, which the first interceptor gets; a
 * private field in grpc-js 1.14). Without one (another grpc-js) nothing is reset, and the rest
 * of the message is read and dropped — not held — as grpc-js does after any status;
 * test/security/grpc-preauth.test.ts fails then.
 */
function resetStream(call: ServerInterceptingCallInterface): void {
  const stream = (call as { stream?: { close?: unknown } }).stream;
  if (typeof stream?.close === 'function') {
    (stream.close as (code: number) => void).call(stream, constants.NGHTTP2_NO_ERROR);
  }
}
