/**
 * Found in review: names that are also `Object.prototype` members — `constructor`, `toString`,
 * `__proto__` — where an operator or an agent writes them, at the real sidecar (operator API over
 * HTTP with the admin token, a real server-everything upstream, the official SDK client, a SQLite
 * state file):
 *
 * - a `when` read what every object inherits: `{"var":"params.constructor"}` was the `Object`
 *   function for a call that sent no `constructor`, so an allow rule on that parameter allowed
 *   calls without it (`conditions` never read inherited properties);
 * - a condition on a parameter named `__proto__` was dropped without a word (zod leaves that key
 *   out of a record), so `allow … conditions: {"__proto__": "x"}` was stored and enforced as an
 *   unconditional allow;
 * - a pool whose id is `__proto__` was missing from `GetStats` (its figures were assigned to a
 *   plain object's `__proto__`, which set that object's prototype instead).
 *
 * Nothing here may pollute `Object.prototype` of the sidecar (it runs in this process).
 */
import { join } from 'node:path';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  api,
  closeSidecar,
  EVERYTHING_BIN,
  httpClient,
  startTestSidecar,
  tempDir,
} from '../fixtures/gateway/harness.js';

const b64 = (text: string): string => Buffer.from(text).toString('base64');

describe('Object.prototype member names in policies, calls and ids (real sidecar)', () => {
  let sidecar: Sidecar;
  let agent: Client;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      state: { path: join(tempDir('prototype-keys'), 'state.db') },
      upstreams: {
        ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
      },
      agents: [{ name: 'a' }],
    } as never);
    agent = await httpClient(sidecar.url!, agentToken(sidecar, 'a'));
  });

  afterAll(async () => {
    await agent?.close();
    await closeSidecar(sidecar);
    expect(Object.prototype).not.toHaveProperty('polluted');
  });

  async function addPolicy(json: string): Promise<Response> {
    return api(sidecar, 'PolicyService/AddPolicy', { policyJson: b64(json) });
  }

  async function removePolicy(name: string): Promise<void> {
    await api(sidecar, 'PolicyService/RemovePolicy', { name });
  }

  async function echo(args: Record<string, unknown>): Promise<boolean> {
    const result = await agent.callTool({ name: 'ev__echo', arguments: args });
    return result.isError !== true;
  }

  it('`when` reads own properties only: an inherited member is no parameter', async () => {
    const res = await addPolicy(
      JSON.stringify({
        name: 'needs-constructor',
        rules: [
          { tool: 'ev__echo', action: 'allow', when: { '!!': { var: 'params.constructor' } } },
        ],
      }),
    );
    expect(res.status).toBe(200);
    try {
      // No `constructor` sent: the allow does not apply, the default (deny) does.
      expect(await echo({ message: 'hi' })).toBe(false);
      const dry = await api(sidecar, 'PolicyService/EvaluatePolicy', {
        agentId: 'x',
        tool: 'ev__echo',
        params: { message: 'hi' },
      });
      expect(((await dry.json()) as { action: string }).action).toBe('POLICY_ACTION_DENY');
      // Sent: it does.
      expect(await echo({ message: 'hi', constructor: 'yes' })).toBe(true);
    } finally {
      await removePolicy('needs-constructor');
    }
  });

  it('a condition on a parameter named __proto__ is refused, never dropped', async () => {
    const res = await addPolicy(
      '{"name":"proto-cond","rules":[{"tool":"ev__echo","action":"allow","conditions":{"__proto__":"x"}}]}',
    );
    const body = (await res.json()) as { code: string; message: string };
    expect(res.status).toBe(400);
    expect(body.code).toBe('FABRIC_ERR_POLICY_INVALID');
    expect(body.message).toContain('__proto__');
    const list = await api(sidecar, 'PolicyService/ListPolicies', {});
    expect(JSON.stringify(await list.json())).not.toContain('proto-cond');
    // Nothing was allowed by it.
    expect(await echo({ message: 'hi' })).toBe(false);
  });

  it('a pool named __proto__ (or constructor) is in GetStats like any other', async () => {
    for (const poolId of ['__proto__', 'constructor']) {
      const res = await api(sidecar, 'FabricService/CreatePool', {
        poolId,
        model: 'm',
        minAgents: 0,
        maxAgents: 1,
      });
      expect(res.status).toBe(200);
    }
    const stats = (await (await api(sidecar, 'FabricService/GetStats', {})).text()) as string;
    const pools = Object.keys((JSON.parse(stats) as { pools: object }).pools);
    expect(pools).toContain('__proto__');
    expect(pools).toContain('constructor');
  });
});
