/**
 * Unary answers an agent never reads. grpc-js keeps a call open until its answer has gone out
 * (the status follows the message's write), and a client whose HTTP/2 window is 0 lets nothing
 * go out: the answer stays in the sidecar's memory until the client leaves. An agent's slot of
 * `grpc.maxInflightPerAgent` was given back as soon as the method had answered, so one agent
 * credential could make the sidecar hold any number of answers — 100 calls per connection (its
 * stream bound) times as many connections as it opened: a ListTools answer of this catalog is
 * tens of KB for a 5-byte request. Now the slot is held until the call ends (the answer out, or
 * the client gone), so what one agent can make the sidecar hold is bounded by its own slots,
 * and only its own calls are refused past them. Real sidecar, real upstream (server-everything),
 * raw HTTP/2 client with a zero window, grpc-js clients.
 */
import { connect, type ClientHttp2Session } from 'node:http2';
import { create } from '@bufbuild/protobuf';
import { status, type Client as GrpcClient, type ServiceError } from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { ListToolsRequestSchema, type ListToolsResponse } from '../../src/gen/fabric/v1/tool_pb.js';
import { TOOL_SERVICE_DEFINITION } from '../../src/rpc/tool-service.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import { grpcClient, unary } from '../fixtures/grpc-client.js';
import {
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  startTestSidecar,
  until,
} from '../fixtures/gateway/harness.js';

const SLOTS = 4;

describe('gRPC unary answers an agent does not read', () => {
  let sidecar: Sidecar | undefined;
  const clients: GrpcClient[] = [];
  const sessions: ClientHttp2Session[] = [];
  afterEach(async () => {
    for (const s of sessions.splice(0)) s.destroy();
    for (const c of clients.splice(0)) c.close();
    await closeSidecar(sidecar);
    sidecar = undefined;
  });

  it("hold the agent's in-flight slots until they go out: its next call is refused, another agent's is not, and the slots come back when it leaves", async () => {
    sidecar = await startTestSidecar({
      upstreams: { ev: { command: process.execPath, args: [EVERYTHING_BIN] } },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'hoarder' }, { name: 'other' }],
      grpc: { port: 0, maxInflightPerAgent: SLOTS },
    } as never);
    const s = sidecar;
    const hoarder = agentToken(s, 'hoarder');
    const grpc = grpcClient(TOOL_SERVICE_DEFINITION, s.grpcAddress!);
    clients.push(grpc);
    const listTools = (token: string): Promise<string> =>
      unary<ListToolsResponse>(grpc, 'listTools', create(ListToolsRequestSchema), token).then(
        (r) => `ok ${r.tools.length > 0}`,
        (e: ServiceError) => `${e.code} ${String(e.metadata?.get('fabric-error-code')[0] ?? '')}`,
      );
    // Calls whose answers are read give their slots back: more of them, one after another,
    // than the agent has slots.
    for (let i = 0; i < SLOTS + 2; i++) expect(await listTools(hoarder)).toBe('ok true');

    // A client that reads nothing: its window is 0, so no answer's bytes can go out.
    const raw = connect(`http://${s.grpcAddress!}`, { settings: { initialWindowSize: 0 } });
    sessions.push(raw);
    raw.on('error', () => {});
    let answering = 0;
    for (let i = 0; i < SLOTS; i++) {
      const call = raw.request({
        ':method': 'POST',
        ':path': '/fabric.v1.ToolService/ListTools',
        'content-type': 'application/grpc',
        te: 'trailers',
        authorization: `Bearer ${hoarder}`,
      });
      call.on('error', () => {});
      // The answer's headers go out (not flow-controlled): the method has answered.
      call.on('response', () => answering++);
      call.end(Buffer.from([0, 0, 0, 0, 0])); // an empty ListToolsRequest
    }
    await until(() => answering === SLOTS);

    // Its answers wait for it: the agent has no slot left, and its next call is refused
    // before it runs...
    expect(await listTools(hoarder)).toBe(`${status.RESOURCE_EXHAUSTED} FABRIC_ERR_INFLIGHT_LIMIT`);
    // ...while another agent's calls are served.
    expect(await listTools(agentToken(s, 'other'))).toBe('ok true');

    // Once it leaves, the calls end and their slots come back.
    raw.destroy();
    await until(async () => (await listTools(hoarder)) === 'ok true');
  });
});
