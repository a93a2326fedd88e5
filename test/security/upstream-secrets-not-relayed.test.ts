/**
 * What the operator gives an upstream to authenticate the sidecar — header values and the URL's
 * query of a remote upstream, environment values of a stdio one — never reaches an agent through
 * that upstream's failed answers. A careless service quotes the request it refused (its
 * `Authorization` header, its URL) in an HTTP error body, or its key in a JSON-RPC error; the
 * sidecar relays such errors to the calling agent, which must not learn the operator's
 * credential for the service. Real sidecar, real MCP SDK client, real upstream processes.
 */
import { fileURLToPath } from 'node:url';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { afterEach, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  httpClient,
  startHttpUpstream,
  startTestSidecar,
  type HttpUpstreamProcess,
} from '../fixtures/gateway/harness.js';

const ECHO_AUTH_SERVER = fileURLToPath(
  new URL('../fixtures/gateway/echo-auth-http-server.mjs', import.meta.url),
);
const ENV_ECHO_SERVER = fileURLToPath(
  new URL('../fixtures/gateway/env-echo-server.mjs', import.meta.url),
);

const HEADER_SECRET = 'hdr-Secret-7f3a9c21e4';
const API_KEY_SECRET = 'key-Secret-51d0be88aa';
const TEAM_SECRET = 'team-Secret-2c9e04f1';
const QUERY_SECRET = 'query-Secret-a61f0d3e';
const ENV_SECRET = 'sk-env-Secret-93b2e7c4d1';

let sidecar: Sidecar | undefined;
let upstream: HttpUpstreamProcess | undefined;
let client: Client | undefined;
afterEach(async () => {
  await client?.close();
  await closeSidecar(sidecar);
  await upstream?.close();
  client = sidecar = upstream = undefined;
});

/** Everything the agent got for calling `name`: its result, or the error it was thrown. */
async function callSeen(name: string): Promise<string> {
  try {
    return JSON.stringify(await client!.callTool({ name, arguments: {} }));
  } catch (error) {
    return String(error);
  }
}

describe('an upstream that quotes its credentials in a failed answer', () => {
  it('HTTP: an error body quoting the request headers and URL reaches the agent without them', async () => {
    upstream = await startHttpUpstream([ECHO_AUTH_SERVER], '/mcp');
    sidecar = await startTestSidecar({
      upstreams: {
        e: {
          transport: 'http',
          url: `${upstream.url}?key=${QUERY_SECRET}`,
          headers: {
            Authorization: `Bearer ${HEADER_SECRET}`,
            'X-Api-Key': API_KEY_SECRET,
            // Not a secret-like name: the value is the operator's all the same.
            'X-Team': TEAM_SECRET,
          },
        },
      },
      agents: [{ name: 'a' }],
      policies: [DEFAULT_ALLOW],
    });
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'a'));
    // A JSON-RPC error quoting them.
    const rpc = await callSeen('e__rpc');
    expect(rpc).toContain('not allowed: authorization=[redacted]');
    // An HTTP 500 whose body quotes them (the SDK puts the body in its error).
    const http = await callSeen('e__fail');
    expect(http).toContain('upstream rejected the request');
    for (const seen of [rpc, http]) {
      for (const secret of [HEADER_SECRET, API_KEY_SECRET, TEAM_SECRET, QUERY_SECRET]) {
        expect(seen).not.toContain(secret);
      }
    }
  });

  it('stdio: a JSON-RPC error quoting the upstream environment reaches the agent without it', async () => {
    sidecar = await startTestSidecar({
      upstreams: {
        s: {
          command: process.execPath,
          args: [ENV_ECHO_SERVER, '/srv/served-folder'],
          env: { API_KEY: ENV_SECRET },
        },
      },
      agents: [{ name: 'a' }],
      policies: [DEFAULT_ALLOW],
    });
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'a'));
    const seen = await callSeen('s__fail');
    expect(seen).toContain('the key [redacted] was refused');
    expect(seen).not.toContain(ENV_SECRET);
    // Arguments are not secrets the upstream was given: its errors still name them.
    expect(await callSeen('s__path')).toContain('not under /srv/served-folder');
  });
});
