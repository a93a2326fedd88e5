/**
 * Unary answers of the `/api/` door an agent never reads. The door gave an agent's slot of
 * `http.maxInflightPerAgent` back when it handed the answer to Node (`res.end`), not when the
 * answer had gone out: a client that stops reading left the answer in the sidecar's memory
 * without holding a slot, so one agent credential could park one large answer per connection it
 * opened. Now, as an `/mcp` request (and a gRPC call), the call holds its slot until its response
 * has closed — written out to the socket, or the connection gone. Real sidecar, real stdio
 * upstream answering a large result, a raw TCP client that stops reading.
 */
import { readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import { postJson } from '../fixtures/api.js';
import {
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  startTestSidecar,
  until,
} from '../fixtures/gateway/harness.js';

const OVERSIZE_SERVER = fileURLToPath(
  new URL('../fixtures/gateway/oversize-server.mjs', import.meta.url),
);
const SLOTS = 1;

/** The most a TCP socket's buffer of `kind` may grow to (the third value of `tcp_<kind>mem`). */
function tcpBufferMax(kind: 'r' | 'w'): number {
  try {
    const max = Number(readFileSync(`/proc/sys/net/ipv4/tcp_${kind}mem`, 'utf8').split(/\s+/)[2]);
    return Number.isSafeInteger(max) && max > 0 ? max : 16 * 1024 * 1024;
  } catch {
    return 16 * 1024 * 1024;
  }
}

/**
 * KiB of an answer the kernel cannot take whole from a client that reads nothing: more than the
 * sender's and the receiver's socket buffers can ever hold together, so part of it stays in the
 * sidecar's memory until the client reads or leaves (not a matter of timing).
 */
const UNREAD_KIB = Math.ceil((tcpBufferMax('r') + tcpBufferMax('w')) / 1024) + 4096;

let sidecar: Sidecar | undefined;
const sockets: Socket[] = [];
afterEach(async () => {
  for (const s of sockets.splice(0)) s.destroy();
  await closeSidecar(sidecar);
  sidecar = undefined;
});

describe('the /api/ door and answers an agent does not read', () => {
  it("hold the agent's in-flight slot until they went out: its next call is refused, another agent's is not, and the slot comes back when it leaves", async () => {
    // Within the upstream's maxMessageBytes (64 MiB): the answer is delivered, not dropped.
    expect(UNREAD_KIB * 1024).toBeLessThan(60 * 1024 * 1024);
    sidecar = await startTestSidecar({
      http: { maxInflightPerAgent: SLOTS },
      upstreams: { big: { command: process.execPath, args: [OVERSIZE_SERVER] } },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'hoarder' }, { name: 'other' }],
    } as never);
    const url = new URL(sidecar.url!);
    const hoarder = agentToken(sidecar, 'hoarder');
    const listTools = async (token: string): Promise<string> => {
      const r = await postJson(new URL('/api/fabric.v1.ToolService/ListTools', url), {}, token);
      await r.arrayBuffer();
      return `${r.status} ${r.headers.get('fabric-error-code') ?? ''}`.trim();
    };
    // Answers that are read give their slot back: more calls, one after another, than it has.
    for (let i = 0; i < SLOTS + 2; i++) expect(await listTools(hoarder)).toBe('200');

    // A client that stops reading once the answer started to arrive.
    const body = JSON.stringify({ name: 'big__bigresult', arguments: { kib: UNREAD_KIB } });
    const socket = connect(Number(url.port), url.hostname);
    sockets.push(socket);
    socket.on('error', () => {});
    const started = new Promise<string>((resolve) =>
      socket.once('data', (chunk: Buffer) => {
        socket.pause();
        resolve(chunk.toString('latin1').split('\r\n')[0]!);
      }),
    );
    socket.write(
      [
        'POST /api/fabric.v1.ToolService/CallTool HTTP/1.1',
        `host: ${url.host}`,
        `authorization: Bearer ${hoarder}`,
        'content-type: application/json',
        `content-length: ${Buffer.byteLength(body)}`,
        '',
        body,
      ].join('\r\n'),
    );
    // The door has answered (its status line arrived): the method is done, the answer is in
    // the sidecar's hands, most of it not out.
    expect(await started).toBe('HTTP/1.1 200 OK');

    // Its answer waits for it: the agent has no slot left, its next call is refused...
    expect(await listTools(hoarder)).toBe('429 FABRIC_ERR_INFLIGHT_LIMIT');
    // ...while another agent's calls are served.
    expect(await listTools(agentToken(sidecar, 'other'))).toBe('200');

    // Once it leaves, the call ends and its slot comes back.
    socket.destroy();
    await until(async () => (await listTools(hoarder)) === '200');
  });
});
