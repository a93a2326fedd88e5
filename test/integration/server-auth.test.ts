import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  ADMIN_TOKEN,
  api,
  agentId,
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  INIT,
  httpClient,
  startTestSidecar,
  until,
} from '../fixtures/gateway/harness.js';

type ErrorBody = { error: { code: string; message: string } };

describe('sidecar HTTP authentication (real fabric identities)', () => {
  let sidecar: Sidecar;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstreams: {
        ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
      },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'owner' }, { name: 'intruder' }, { name: 'retiring' }],
    });
  });
  afterAll(() => closeSidecar(sidecar));

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
    expect(((await res.json()) as ErrorBody).error.code).toBe('FABRIC_ERR_UNAUTHENTICATED');
  });

  it('answers 401 for an unknown token', async () => {
    const res = await post({ authorization: 'Bearer not-a-real-token' });
    expect(res.status).toBe(401);
    expect(((await res.json()) as ErrorBody).error.code).toBe('FABRIC_ERR_UNAUTHENTICATED');
  });

  it('refuses the admin credential as an agent (403)', async () => {
    const res = await post({ authorization: `Bearer ${ADMIN_TOKEN}` });
    expect(res.status).toBe(403);
    expect(((await res.json()) as ErrorBody).error.message).toContain('agent credential');
  });

  it('refuses the Operator API without the admin credential (401 without, 403 for an agent)', async () => {
    const none = await fetch(new URL('/api/fabric.v1.ApprovalService/ListApprovals', sidecar.url), {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{}',
    });
    expect(none.status).toBe(401);
    const wrong = await api(sidecar, 'ApprovalService/ListApprovals', {}, 'not-the-admin-token');
    expect(wrong.status).toBe(401);
    const asAgent = await api(
      sidecar,
      'ApprovalService/ListApprovals',
      {},
      agentToken(sidecar, 'owner'),
    );
    expect(asAgent.status).toBe(403);
    expect(((await asAgent.json()) as ErrorBody['error']).code).toBe(
      'FABRIC_ERR_PERMISSION_DENIED',
    );
  });

  it('answers the retired /admin/ routes 404 naming the Operator API', async () => {
    for (const [method, path] of [
      ['GET', '/admin/approvals?status=pending'],
      ['POST', '/admin/agents'],
      ['DELETE', `/admin/agents/${agentId(sidecar, 'owner')}`],
    ] as const) {
      const res = await fetch(new URL(path, sidecar.url), {
        method,
        headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' },
        ...(method === 'POST' ? { body: JSON.stringify({ name: 'via-old-route' }) } : {}),
      });
      expect(res.status).toBe(404);
      const { error } = (await res.json()) as ErrorBody;
      expect(error.code).toBe('FABRIC_ERR_ROUTE_NOT_FOUND');
      expect(error.message).toContain('/api/');
    }
    // Nothing was done by them.
    expect((await sidecar.fabric!.listAgents()).map((a) => a.name)).not.toContain('via-old-route');
    expect((await sidecar.fabric!.getAgentInfo(agentId(sidecar, 'owner'))).status).not.toBe(
      'TERMINATED',
    );
  });

  it('spawns an agent over the Operator API whose credential opens a session', async () => {
    const res = await api(sidecar, 'FabricService/SpawnAgent', { name: 'spawned', model: 'm' });
    expect(res.status).toBe(200);
    const { spawned } = (await res.json()) as {
      spawned: { agent: { agentId: string }; credential: string };
    };
    expect(await sidecar.fabric!.getAgentInfo(spawned.agent.agentId)).toMatchObject({
      name: 'spawned',
    });
    const client = await httpClient(sidecar.url!, spawned.credential);
    try {
      expect((await client.listTools()).tools.length).toBeGreaterThan(0);
    } finally {
      await client.close();
    }
  });

  it('lists and shows agents over the Operator API, never their credentials', async () => {
    const list = await api(sidecar, 'FabricService/ListAgents');
    expect(list.status).toBe(200);
    const text = await list.text();
    expect(text).not.toContain(agentToken(sidecar, 'owner'));
    expect(text).not.toContain('credential');
    const { agents } = JSON.parse(text) as { agents: { agentId: string; name: string }[] };
    expect(agents.map((a) => a.name)).toEqual(expect.arrayContaining(['owner', 'intruder']));

    const bogus = await api(sidecar, 'FabricService/ListAgents', { status: 'SLEEPING' });
    expect(bogus.status).toBe(400);
    expect(((await bogus.json()) as ErrorBody['error']).message).toContain('SLEEPING');

    const owner = agentId(sidecar, 'owner');
    const one = await api(sidecar, 'FabricService/GetAgent', { agentId: owner });
    expect(one.status).toBe(200);
    expect(await one.json()).toMatchObject({ agent: { agentId: owner, name: 'owner' } });
    const budget = await api(sidecar, 'BudgetService/GetBudgetStatus', {
      scope: { agentId: owner },
    });
    expect(await budget.json()).toMatchObject({ status: { scope: `agent:${owner}` } });
    const { status } = (
      (await (
        await api(sidecar, 'FabricService/GetAgent', { agentId: agentId(sidecar, 'intruder') })
      ).json()) as { agent: { status: string } }
    ).agent;
    const filtered = await api(sidecar, 'FabricService/ListAgents', { status });
    const names = ((await filtered.json()) as { agents: { name: string; status: string }[] })
      .agents;
    expect(names.map((a) => a.name)).toContain('intruder');
    expect(names.every((a) => a.status === status)).toBe(true);

    const unknown = await api(sidecar, 'FabricService/GetAgent', { agentId: 'no-such-agent' });
    expect(unknown.status).toBe(404);
    expect(((await unknown.json()) as ErrorBody['error']).code).toBe('FABRIC_ERR_AGENT_NOT_FOUND');
  });

  it('terminates an agent over the Operator API: its calls stop, then its credential', async () => {
    const spawned = await api(sidecar, 'FabricService/SpawnAgent', {
      name: 'to-revoke',
      model: 'm',
    });
    const {
      spawned: {
        agent: { agentId: id },
        credential,
      },
    } = (await spawned.json()) as { spawned: { agent: { agentId: string }; credential: string } };
    const client = await httpClient(sidecar.url!, credential);
    try {
      const ok = await client.callTool({ name: 'ev__echo', arguments: { message: 'hi' } });
      expect(ok.isError).toBeFalsy();
      const del = (drainTimeout: unknown, token = ADMIN_TOKEN): Promise<Response> =>
        api(
          sidecar,
          'FabricService/TerminateAgent',
          { agentId: id, ...(drainTimeout === undefined ? {} : { drainTimeout }) },
          token,
        );
      expect((await del(undefined, credential)).status).toBe(403); // an agent cannot do it
      expect((await del('soon')).status).toBe(400);
      const res = await del('0s');
      expect(res.status).toBe(200);
      expect(await res.json()).toMatchObject({
        agent: { agentId: id, status: 'AGENT_STATUS_TERMINATED' },
      });
      // Its open session (the SDK client holds an SSE stream) is closed with it.
      await until(() => ![...sidecar.gateway.sessions].some((x) => x.identity.agentId === id));
      expect((await del(undefined)).status).toBe(200); // again: returns it, no error

      const refused = await post({ authorization: `Bearer ${credential}` });
      expect(refused.status).toBe(401);
      await expect(
        client.callTool({ name: 'ev__echo', arguments: { message: 'again' } }),
      ).rejects.toThrow(/401|unauthenticated|revoked/i);
    } finally {
      await client.close();
    }
  });

  it('serves Prometheus metrics to the admin only, counting every request', async () => {
    const scrape = async (token?: string): Promise<Response> =>
      fetch(new URL('/metrics', sidecar.url), {
        headers: token === undefined ? {} : { authorization: `Bearer ${token}` },
      });
    expect((await scrape()).status).toBe(401);
    expect((await scrape(agentToken(sidecar, 'owner'))).status).toBe(403);
    const value = (text: string, series: string): number => {
      const line = text.split('\n').find((l) => l.startsWith(`${series} `));
      return line === undefined ? 0 : Number(line.slice(series.length + 1));
    };
    const OK = 'agent_fabric_requests_total{tool="ev__echo",decision="allow",outcome="ok"}';
    const UNKNOWN = 'agent_fabric_requests_total{tool="(unknown)",decision="none",outcome="error"}';
    const before = await (await scrape(ADMIN_TOKEN)).text();

    const client = await httpClient(sidecar.url!, agentToken(sidecar, 'owner'));
    try {
      await client.callTool({ name: 'ev__echo', arguments: { message: 'a' } });
      await client.callTool({ name: 'ev__echo', arguments: { message: 'b' } });
      await client.callTool({ name: 'made-up-tool-name', arguments: {} }).catch(() => undefined);
    } finally {
      await client.close();
    }
    const res = await scrape(ADMIN_TOKEN);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toContain('text/plain; version=0.0.4');
    const text = await res.text();
    expect(value(text, OK) - value(before, OK)).toBe(2);
    expect(value(text, UNKNOWN) - value(before, UNKNOWN)).toBe(1);
    expect(text).not.toContain('made-up-tool-name'); // agents cannot grow the label set
    expect(text).toContain('agent_fabric_upstream_up{upstream="ev"} 1\n');
    expect(text).toContain('agent_fabric_upstream_restarts_total{upstream="ev"} 0\n');
    const agentLines = text.split('\n').filter((l) => l.startsWith('agent_fabric_agents{'));
    expect(agentLines.length).toBe(6); // every status, zeros included
    const total = agentLines.reduce((n, l) => n + Number(l.split(' ')[1]), 0);
    expect(total).toBe(sidecar.fabric!.lifecycle.listAgents().length);
    expect(text).toMatch(/\nagent_fabric_approvals_pending 0\n/);
    expect(text).toMatch(/\nagent_fabric_mcp_sessions \d+\n/);
  });

  it('does not let another agent use a session id it does not own', async () => {
    const init = await post({ authorization: `Bearer ${agentToken(sidecar, 'owner')}` });
    const sessionId = init.headers.get('mcp-session-id')!;
    expect(sessionId).toBeTruthy();
    const res = await fetch(sidecar.url!, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
        authorization: `Bearer ${agentToken(sidecar, 'intruder')}`,
        'mcp-session-id': sessionId,
      },
      body: JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'tools/list' }),
    });
    expect(res.status).toBe(403);
  });

  it("authenticates a session's requests once per credential revocation, and a replaced credential is refused on its open session", async () => {
    const spawn = async (name: string): Promise<{ id: string; credential: string }> => {
      const res = await api(sidecar, 'FabricService/SpawnAgent', { name, model: 'm' });
      const { spawned } = (await res.json()) as {
        spawned: { agent: { agentId: string }; credential: string };
      };
      return { id: spawned.agent.agentId, credential: spawned.credential };
    };
    const holder = await spawn('holder');
    const bystander = await spawn('bystander');
    const authenticate = vi.spyOn(sidecar.backend, 'authenticate');
    try {
      const init = await post({ authorization: `Bearer ${holder.credential}` });
      expect(init.status).toBe(200);
      const sessionId = init.headers.get('mcp-session-id')!;
      let id = 10;
      const list = (token: string): Promise<Response> =>
        fetch(sidecar.url!, {
          method: 'POST',
          headers: {
            'content-type': 'application/json',
            accept: 'application/json, text/event-stream',
            authorization: `Bearer ${token}`,
            'mcp-session-id': sessionId,
          },
          body: JSON.stringify({ jsonrpc: '2.0', id: id++, method: 'tools/list' }),
        });
      expect(authenticate).toHaveBeenCalledTimes(1); // the initialize
      for (let i = 0; i < 3; i++) expect((await list(holder.credential)).status).toBe(200);
      expect(authenticate).toHaveBeenCalledTimes(1); // the session's own credential, unchanged
      // Another credential on this session is authenticated (and refused: not the session's).
      expect((await list(bystander.credential)).status).toBe(403);
      expect(authenticate).toHaveBeenCalledTimes(2);
      // Any revocation makes every session authenticate its next request again.
      sidecar.fabric!.lifecycle.replaceCredential(bystander.id, `afk_${'b'.repeat(40)}`);
      expect((await list(holder.credential)).status).toBe(200);
      expect(authenticate).toHaveBeenCalledTimes(3);
      expect((await list(holder.credential)).status).toBe(200);
      expect(authenticate).toHaveBeenCalledTimes(3);
      // The session's own credential replaced: the session is closed at once, the old
      // credential no longer works, and the new one finds no such session.
      const replacement = `afk_${'h'.repeat(40)}`;
      sidecar.fabric!.lifecycle.replaceCredential(holder.id, replacement);
      await until(
        () => ![...sidecar.gateway.sessions].some((x) => x.identity.agentId === holder.id),
      );
      const revoked = await list(holder.credential);
      expect(revoked.status).toBe(401);
      expect(((await revoked.json()) as ErrorBody).error.code).toBe('FABRIC_ERR_UNAUTHENTICATED');
      expect((await list(holder.credential)).status).toBe(401);
      expect((await list(replacement)).status).toBe(404);
    } finally {
      authenticate.mockRestore();
    }
  });

  it('refuses the credential of a terminated agent (401)', async () => {
    const token = agentToken(sidecar, 'retiring');
    expect((await post({ authorization: `Bearer ${token}` })).status).toBe(200);
    await sidecar.fabric!.terminate(agentId(sidecar, 'retiring'), { drainTimeoutSeconds: 1 });
    const res = await post({ authorization: `Bearer ${token}` });
    expect(res.status).toBe(401);
    expect(((await res.json()) as ErrorBody).error.code).toBe('FABRIC_ERR_UNAUTHENTICATED');
  });
});
