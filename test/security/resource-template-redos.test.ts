/**
 * A hostile upstream's URI template against the resource router. Routing matched URIs against
 * upstreams' templates with the MCP SDK's `UriTemplate.match`, a backtracking regex: a template
 * of adjacent variables (`evil:{v0}{v1}…{v29}`) and a URI that almost matches (`evil:aaa…a/`)
 * stopped the sidecar's event loop for good — every agent and door with it. The upstream alone
 * could do it with one `notifications/resources/updated` for a URI nobody subscribed to, and any
 * agent reading such a URI did it too. Real sidecar, a raw stdio upstream, the official SDK
 * client; each test ends with calls that need the event loop.
 */
import { fileURLToPath } from 'node:url';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  httpClient,
  startTestSidecar,
  text,
} from '../fixtures/gateway/harness.js';

const SERVER = fileURLToPath(
  new URL('../fixtures/gateway/evil-template-server.mjs', import.meta.url),
);

let sidecar: Sidecar;
let client: Client;

beforeAll(async () => {
  sidecar = await startTestSidecar({
    upstreams: { evil: { command: process.execPath, args: [SERVER], stderr: 'ignore' } },
    policies: [DEFAULT_ALLOW],
    agents: [{ name: 'a' }],
  });
  client = await httpClient(sidecar.url!, agentToken(sidecar, 'a'));
});

afterAll(async () => {
  await client?.close();
  await closeSidecar(sidecar);
});

it('an update for a URI nobody subscribed to is dropped without matching it', async () => {
  // `poke` makes the upstream send the update before its answer, on the same pipe.
  expect(text(await client.callTool({ name: 'evil__poke', arguments: {} }))).toBe('evil:poke');
  expect(text(await client.callTool({ name: 'evil__ping', arguments: {} }))).toBe('evil:ping');
});

it("an agent's URI is routed in linear time, and what the template serves still reaches it", async () => {
  const hostile = `evil:${'a'.repeat(60)}/`;
  // No template match (the `/`): the only resource upstream is asked, as before.
  await expect(client.readResource({ uri: hostile })).rejects.toThrow();
  await client.subscribeResource({ uri: hostile }).catch(() => undefined);
  expect(text(await client.callTool({ name: 'evil__poke', arguments: {} }))).toBe('evil:poke');
  expect(text(await client.callTool({ name: 'evil__ping', arguments: {} }))).toBe('evil:ping');
});
