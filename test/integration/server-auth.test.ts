import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseSidecarConfig } from '../../src/server/config-file.js';
import { Sidecar } from '../../src/server/sidecar.js';
import { ADMIN_TOKEN, FakeBackend } from '../fixtures/gateway/fake-backend.js';
import { EVERYTHING_BIN, httpClient } from '../fixtures/gateway/harness.js';

const INIT = {
  jsonrpc: '2.0',
  id: 1,
  method: 'initialize',
  params: {
    protocolVersion: '2025-06-18',
    capabilities: {},
    clientInfo: { name: 'raw', version: '1' },
  },
};

describe('sidecar HTTP authentication', () => {
  const backend = new FakeBackend();
  let sidecar: Sidecar;

  beforeAll(async () => {
    const config = parseSidecarConfig(
      JSON.stringify({
        http: { port: 0 },
        upstreams: {
          ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
        },
      }),
      'test.json',
    );
    sidecar = await Sidecar.start({ config, backend });
  });
  afterAll(() => sidecar?.close());

  const post = (headers: Record<string, string>): Promise<Response> =>
    fetch(sidecar.url!, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
        ...headers,
      },
      body: JSON.stringify(INIT),
    });

  it('answers 401 with a JSON error when the token is missing', async () => {
    const res = await post({});
    expect(res.status).toBe(401);
    expect(res.headers.get('www-authenticate')).toBe('Bearer');
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe(
      'FABRIC_ERR_UNAUTHENTICATED',
    );
  });

  it('answers 401 for an unknown token', async () => {
    const res = await post({ authorization: 'Bearer not-a-real-token' });
    expect(res.status).toBe(401);
    expect(((await res.json()) as { error: { code: string } }).error.code).toBe(
      'FABRIC_ERR_UNAUTHENTICATED',
    );
  });

  it('refuses the admin credential as an agent (403)', async () => {
    const res = await post({ authorization: `Bearer ${ADMIN_TOKEN}` });
    expect(res.status).toBe(403);
  });

  it('refuses admin routes without the admin credential', async () => {
    const agent = await backend.spawn({ name: 'a' });
    const none = await fetch(new URL('/admin/approvals', sidecar.url));
    expect(none.status).toBe(401);
    const asAgent = await fetch(new URL('/admin/approvals', sidecar.url), {
      headers: { authorization: `Bearer ${agent.credential}` },
    });
    expect(asAgent.status).toBe(403);
  });

  it('spawns an agent over the admin API whose credential opens a session', async () => {
    const res = await fetch(new URL('/admin/agents', sidecar.url), {
      method: 'POST',
      headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'spawned' }),
    });
    expect(res.status).toBe(201);
    const { credential } = (await res.json()) as { credential: string };
    const client = await httpClient(sidecar.url!, credential);
    expect((await client.listTools()).tools.length).toBeGreaterThan(0);
    await client.close();
  });

  it('does not let another agent use a session id it does not own', async () => {
    const a = await backend.spawn({ name: 'owner' });
    const b = await backend.spawn({ name: 'intruder' });
    const init = await post({ authorization: `Bearer ${a.credential}` });
    const sessionId = init.headers.get('mcp-session-id')!;
    expect(sessionId).toBeTruthy();
    const res = await fetch(sidecar.url!, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        authorization: `Bearer ${b.credential}`,
        'mcp-session-id': sessionId,
      },
      body: JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'tools/list' }),
    });
    expect(res.status).toBe(403);
  });
});
