import { afterEach, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  api,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  INIT,
  startTestSidecar,
} from '../fixtures/gateway/harness.js';

/**
 * `allowAnonymous: true`: requests to /mcp without a token act as the built-in dev agent. Once
 * an operator terminates that agent, they must fare as any terminated agent's credential does
 * (401 before anything is served), not open sessions that list the catalog. Real sidecar, real
 * upstream (server-everything), real HTTP client.
 */
describe('the anonymous dev agent, terminated', () => {
  let sidecar: Sidecar | undefined;
  afterEach(async () => {
    await closeSidecar(sidecar);
    sidecar = undefined;
  });

  /** A sidecar with `allowAnonymous` and the everything upstream `ev`. */
  function startAnonymous(): Promise<Sidecar> {
    return startTestSidecar({
      allowAnonymous: true,
      upstreams: { ev: { command: process.execPath, args: [EVERYTHING_BIN] } },
      policies: [DEFAULT_ALLOW],
    } as never);
  }

  async function post(
    s: Sidecar,
    body: unknown,
    sessionId?: string,
  ): Promise<{ status: number; sessionId: string | undefined; body: string }> {
    const r = await fetch(s.url!, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
        'mcp-protocol-version': '2025-06-18',
        ...(sessionId === undefined ? {} : { 'mcp-session-id': sessionId }),
      },
      body: JSON.stringify(body),
    });
    return {
      status: r.status,
      sessionId: r.headers.get('mcp-session-id') ?? undefined,
      body: await r.text(),
    };
  }

  it('opens no session and lists nothing for a request without a token (401, as its credential would)', async () => {
    const s = (sidecar = await startAnonymous());
    const dev = s.anonymous!.agentId;
    const before = await post(s, INIT);
    expect(before.status).toBe(200);
    const list = { jsonrpc: '2.0', id: 2, method: 'tools/list', params: {} };
    expect((await post(s, list, before.sessionId)).body).toContain('ev__echo');

    const terminated = await api(s, 'FabricService/TerminateAgent', { agentId: dev });
    expect(terminated.status).toBe(200);
    expect((await s.fabric!.getAgentInfo(dev)).status).toBe('TERMINATED');

    // The session it had is gone; a new one is not opened; nothing is listed.
    const init = await post(s, INIT);
    expect(init.status).toBe(401);
    expect(init.sessionId).toBeUndefined();
    expect(init.body).toContain('FABRIC_ERR_UNAUTHENTICATED');
    expect(init.body).toContain('anonymous');
    expect(init.body).not.toContain('ev__echo');
    const old = await post(s, list, before.sessionId);
    expect(old.status).not.toBe(200);
    expect(old.body).not.toContain('ev__echo');
  });

  it('still serves requests without a token while the dev agent lives, on one session', async () => {
    const s = (sidecar = await startAnonymous());
    const init = await post(s, INIT);
    expect(init.status).toBe(200);
    const call = await post(
      s,
      {
        jsonrpc: '2.0',
        id: 2,
        method: 'tools/call',
        params: { name: 'ev__echo', arguments: { message: 'hello-anon' } },
      },
      init.sessionId,
    );
    expect(call.status).toBe(200);
    expect(call.body).toContain('hello-anon');
    expect(call.body).not.toContain('isError":true');
  });
});
