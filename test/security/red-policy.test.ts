/**
 * A red-team pass over the merged gateway, as an agent with one token: what still slipped past
 * policy after issue 10, each with the test that failed before its fix.
 *
 * 1. Dotted condition keys: `{ "opts.path": ok, "opts": { "path": bad } }` — the literal key
 *    answered for the rule while the tool reads the nested one.
 *
 * Real parts: the sidecar, an SDK server that reports what reached it, the official SDK client.
 */
import { fileURLToPath } from 'node:url';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import { PolicyEngine } from '../../src/policy/policy-engine.js';
import {
  agentToken,
  closeSidecar,
  httpClient,
  startTestSidecar,
  text,
} from '../fixtures/gateway/harness.js';

const TRANSPARENCY_SERVER = fileURLToPath(
  new URL('../fixtures/gateway/transparency-server.mjs', import.meta.url),
);

describe('dotted condition keys name the nested parameter too (real sidecar, SDK fixture server)', () => {
  let sidecar: Sidecar;
  let client: Client;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstreams: {
        t: { command: process.execPath, args: [TRANSPARENCY_SERVER], stderr: 'ignore' },
      },
      policies: [
        {
          name: 'nested',
          priority: 100,
          rules: [
            { tool: 't__report', action: 'deny', conditions: { 'opts.path': '/etc/**' } },
            { tool: 't__report', action: 'allow', conditions: { 'opts.mode': 'safe' } },
          ],
        },
      ],
      agents: [{ name: 'nester' }],
    });
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'nester'));
  });

  afterAll(async () => {
    await client?.close();
    await closeSidecar(sidecar);
  });

  const report = async (args: Record<string, unknown>): Promise<CallToolResult> =>
    (await client.callTool({ name: 't__report', arguments: args })) as CallToolResult;

  it('a literal "opts.path" key does not hide the nested opts.path the tool reads from a deny', async () => {
    for (const args of [
      { 'opts.path': '/tmp/ok', opts: { path: '/etc/passwd', mode: 'safe' } },
      { opts: { path: '/etc/passwd', mode: 'safe' }, 'opts.path': '/tmp/ok' },
      { 'opts.path': '/etc/passwd', opts: { path: '/tmp/ok', mode: 'safe' } },
    ]) {
      const r = await report(args);
      expect(r.isError, JSON.stringify(args)).toBe(true);
      expect(text(r)).toContain('FABRIC_ERR_POLICY_DENIED');
    }
  });

  it('an allow on a dotted key holds only when every spelling present satisfies it', async () => {
    const smuggled = await report({ 'opts.mode': 'safe', opts: { mode: 'unsafe' } });
    expect(text(smuggled)).toContain('FABRIC_ERR_POLICY_DENIED');
    // Either spelling alone, when it satisfies the rule, is allowed — and reaches the tool.
    for (const args of [{ opts: { mode: 'safe', path: '/tmp/x' } }, { 'opts.mode': 'safe' }]) {
      const r = await report(args);
      expect(r.isError, text(r)).toBeFalsy();
      expect(JSON.parse(text(r))).toEqual({ name: 'report', arguments: args });
    }
  });

  it('the engine used directly decides the same, with markers and arrays below the dots', () => {
    const engine = new PolicyEngine();
    engine.addPolicy({
      name: 'p',
      rules: [
        { tool: 'x', action: 'deny', conditions: { 'a.b': '/etc/**' } },
        { tool: 'x', action: 'allow', conditions: { 'a.c': ['1', '2'] } },
      ],
    });
    const decide = (params: Record<string, unknown>): string =>
      engine.evaluateSync({ agentId: 'agent', tool: 'x', params }).action;
    expect(decide({ 'a.b': '/tmp', a: { b: ['/tmp', '/etc/x'] }, 'a.c': '1' })).toBe('deny');
    expect(decide({ 'a.b': ['/etc/x'], a: { b: '/tmp', c: '1' } })).toBe('deny');
    expect(decide({ 'a.c': '1', a: { c: '2' } })).toBe('allow');
    expect(decide({ 'a.c': '1', a: { c: '3' } })).toBe('deny');
    expect(decide({ 'a.c': ['1', '2'], a: { c: ['2', '3'] } })).toBe('deny');
    // `__proto__` and `constructor` are keys like any other, never the prototype.
    expect(decide(JSON.parse('{"__proto__":{"c":"1"},"constructor":{"c":"1"}}'))).toBe('deny');
    expect(decide(JSON.parse('{"a":{"__proto__":{"b":"/etc/x"}},"a.c":"1"}'))).toBe('allow');
    engine.close();
  });
});
