/**
 * secret-guard's options are checked before it loads. A hostile review found it checked them by
 * hand (no schema): `patterns` was read with Object.entries(options.patterns ?? {}), so a string
 * — a likely slip, `patterns: 'acme_token'` — became one pattern per character, and the guard
 * loaded and then refused every call whose arguments held one of those letters. Now a zod schema
 * (like the other first-party plugins') refuses a bad option at load with FABRIC_ERR_PLUGIN
 * naming it, and good options still guard as before.
 */
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import { PluginHost } from '../../src/plugins/plugin-host.js';

const SECRET_GUARD = fileURLToPath(new URL('../../plugins/secret-guard/index.js', import.meta.url));

describe('secret-guard options', () => {
  let fabric: AgentFabric | undefined;
  afterEach(async () => {
    await fabric?.close();
    fabric = undefined;
  });

  const bad: [string, unknown, RegExp][] = [
    ['patterns as a string', { patterns: 'acme_token' }, /options\.patterns: .*expected record/],
    ['patterns as a list', { patterns: ['acme_[a-z]+'] }, /options\.patterns: .*expected record/],
    [
      'a pattern that does not compile',
      { patterns: { acme: '(' } },
      /options\.patterns\.acme: is not a regular expression/,
    ],
    ['a pattern that is not a string', { patterns: { acme: 5 } }, /options\.patterns\.acme: /],
    ['an unknown action', { action: 'block' }, /options\.action: /],
    ['a priority that is not a number', { priority: 'high' }, /options\.priority: /],
    ['a misspelt option', { pattern: { acme: 'x' } }, /Unrecognized key: "pattern"/],
  ];
  for (const [what, options, message] of bad) {
    it(`refuses ${what} at load, naming the option`, async () => {
      fabric = new AgentFabric();
      const host = new PluginHost(fabric);
      const err = await host.load(SECRET_GUARD, options).then(
        () => undefined,
        (e: Error & { code?: string }) => e,
      );
      expect(err?.code).toBe('FABRIC_ERR_PLUGIN');
      expect(err?.message).toMatch(/^plugin secret-guard: invalid options: /);
      expect(err?.message).toMatch(message);
      expect(host.plugins).toEqual([]);
    });
  }

  it('with good options guards as configured: own patterns added, ordinary calls allowed', async () => {
    fabric = new AgentFabric();
    const host = new PluginHost(fabric);
    await host.load(SECRET_GUARD, {
      action: 'require_approval',
      patterns: { 'acme token': 'acme_[a-z0-9]{8}' },
    });
    fabric.policies.addPolicy({ name: 'allow', rules: [{ tool: '*', action: 'allow' }] });
    const a = await fabric.spawn({ model: 'm', name: 'a', executor: 'remote' });
    const ordinary = await fabric.authorizeToolCall({
      agentId: a.id,
      tool: 'notes__write',
      params: { text: 'meeting at 3pm' },
    });
    expect(ordinary.allowed).toBe(true);
    const secret = fabric.policies.evaluateSync({
      agentId: a.id,
      tool: 'notes__write',
      params: { text: 'use acme_12345678 please' },
    });
    expect(secret).toMatchObject({ action: 'require_approval', policy: 'secret-guard' });
    expect(secret.reason).toMatch(/params\.text looks like a secret \(acme token\)/);
  });
});
