/**
 * A policy provider's answer is untrusted input to the engine. A hostile review found that a
 * plugin answering `null` (a common JavaScript "no opinion") made the engine read `null.action`
 * outside its try/catch: evaluation threw, and tools/list — which asks every provider about
 * every tool — failed for every agent, not only for the plugin's calls. An action named after an
 * Object.prototype member (`constructor`) even passed the engine's "known action" check. Now any
 * answer but `undefined` that is not an object with a known action is an invalid verdict, denied
 * naming the provider (as an unknown action already was), and listing keeps working.
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PolicyEngine, type PolicyProvider } from '../../src/policy/policy-engine.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  httpClient,
  startTestSidecar,
  tempDir,
  text,
} from '../fixtures/gateway/harness.js';

const NULL_ABSTAINER = `
export default {
  name: 'null-abstainer',
  version: '1.0.0',
  kind: 'policy',
  create: () => ({
    name: 'null-abstainer',
    priority: 10,
    // Bug: null instead of undefined for "no opinion".
    decide: (ctx) => (ctx.tool === 'e__echo' ? { action: 'allow' } : null),
  }),
};
`;

describe('a policy plugin whose decide returns null (real sidecar)', () => {
  let sidecar: Sidecar;
  let agent: Client;

  beforeAll(async () => {
    const dir = tempDir('null-verdict');
    writeFileSync(join(dir, 'null-abstainer.mjs'), NULL_ABSTAINER);
    sidecar = await startTestSidecar({
      upstreams: { e: { command: process.execPath, args: [EVERYTHING_BIN], stderr: 'ignore' } },
      policies: [DEFAULT_ALLOW],
      plugins: [{ module: join(dir, 'null-abstainer.mjs') }],
      agents: [{ name: 'a' }],
    });
    agent = await httpClient(sidecar.url!, agentToken(sidecar, 'a'));
  });

  afterAll(async () => {
    await agent?.close();
    await closeSidecar(sidecar);
  });

  it('still lets the agent list its tools (the ones the provider allows)', async () => {
    const listed = await agent.listTools().then(
      (r) => r.tools.map((t) => t.name),
      (e: Error) => e.message,
    );
    expect(listed).toContain('e__echo');
  });

  it('refuses the calls it answered null for, naming the provider', async () => {
    const res = (await agent.callTool({
      name: 'e__get-sum',
      arguments: { a: 1, b: 2 },
    })) as CallToolResult;
    expect(res.isError).toBe(true);
    expect(text(res)).toMatch(
      /policy provider null-abstainer returned an invalid verdict \(null\)/,
    );
  });
});

describe('PolicyEngine: invalid provider verdicts fail closed', () => {
  const cases: [string, unknown, RegExp][] = [
    ['null', null, /returned an invalid verdict \(null\)/],
    ['a string', 'allow', /returned an invalid verdict \(string\)/],
    ['a number', 1, /returned an invalid verdict \(number\)/],
    ['an unknown action', { action: 'block' }, /returned an invalid action/],
    ['an Object.prototype name', { action: 'constructor' }, /returned an invalid action/],
    ['no action', {}, /returned an invalid action/],
  ];
  for (const [what, verdict, reason] of cases) {
    it(`${what} is a deny naming the provider, whether asked sync or async`, async () => {
      const engine = new PolicyEngine();
      engine.addPolicy({ name: 'allow', rules: [{ tool: '*', action: 'allow' }] });
      engine.addProvider({
        name: 'odd',
        decide: () => verdict as undefined,
      } satisfies PolicyProvider);
      const sync = engine.evaluateSync({ agentId: 'a', tool: 't', params: {} });
      // A provider failure, as a throw or a rejection is (it was a plain deny: POLICY_DENIED).
      expect(sync).toMatchObject({
        action: 'deny',
        allowed: false,
        policy: 'odd',
        code: 'FABRIC_ERR_POLICY_UNAVAILABLE',
      });
      expect(sync.reason).toMatch(reason);
      expect(sync.reason).toMatch(/^policy provider odd /);

      const asyncEngine = new PolicyEngine();
      asyncEngine.addPolicy({ name: 'allow', rules: [{ tool: '*', action: 'allow' }] });
      asyncEngine.addProvider({
        name: 'odd',
        decide: () => undefined,
        decideAsync: () => Promise.resolve(verdict as undefined),
      } satisfies PolicyProvider);
      const viaAsync = await asyncEngine.evaluateAsync({ agentId: 'a', tool: 't', params: {} });
      expect(viaAsync).toMatchObject({
        action: 'deny',
        allowed: false,
        policy: 'odd',
        code: 'FABRIC_ERR_POLICY_UNAVAILABLE',
      });
      expect(viaAsync.reason).toMatch(reason);
    });
  }

  it('a non-string reason gives way to the default one; a valid verdict is taken as given', () => {
    const engine = new PolicyEngine();
    engine.addProvider({
      name: 'p',
      decide: (c) =>
        c.tool === 'odd'
          ? ({ action: 'deny', reason: { html: '<b>' } } as never)
          : { action: 'deny', reason: 'no', retryAt: 5 },
    });
    expect(engine.evaluateSync({ agentId: 'a', tool: 'odd', params: {} }).reason).toBe(
      'deny by policy provider p',
    );
    expect(engine.evaluateSync({ agentId: 'a', tool: 't', params: {} })).toMatchObject({
      action: 'deny',
      reason: 'no',
      retryAt: 5,
    });
  });

  it('a verdict whose action getter throws is a provider failure (deny), not an escape', () => {
    const engine = new PolicyEngine();
    engine.addProvider({
      name: 'getter',
      decide: () =>
        ({
          get action(): string {
            throw new Error('boom');
          },
        }) as never,
    });
    const d = engine.evaluateSync({ agentId: 'a', tool: 't', params: {} });
    expect(d).toMatchObject({ action: 'deny', policy: 'getter' });
    expect(d.reason).toMatch(/policy provider getter failed: .*boom/);
  });
});
