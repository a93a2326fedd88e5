/**
 * A red-team pass over the merged gateway, as an agent with one token: what still slipped past
 * policy after issue 10, each with the test that failed before its fix.
 *
 * 1. Resource URIs spelled another way: an SDK-based upstream looks a resource up by
 *    `new URL(uri).toString()`, so `DEMO://…`, `…/./…`, `…/x/../…`, a leading space or a tab
 *    name the resource a deny rule on `uri` names — the rule matched the raw spelling only.
 * 2. What leaves beside the matched params: a completion's `context` and the `_meta` of a
 *    prompt get, resource read or completion were forwarded upstream but neither rules nor
 *    secret-guard saw them — a credential could be handed to an upstream through them.
 * 3. Dotted condition keys: `{ "opts.path": ok, "opts": { "path": bad } }` — the literal key
 *    answered for the rule while the tool reads the nested one.
 *
 * Real parts: the sidecar, server-everything, an SDK server that reports what reached it,
 * secret-guard loaded from config, the official SDK client.
 */
import { fileURLToPath } from 'node:url';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { McpError, type CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import { PolicyEngine } from '../../src/policy/policy-engine.js';
import {
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  httpClient,
  startTestSidecar,
  text,
} from '../fixtures/gateway/harness.js';

const SECRET_GUARD = fileURLToPath(new URL('../../plugins/secret-guard/index.js', import.meta.url));
const TRANSPARENCY_SERVER = fileURLToPath(
  new URL('../fixtures/gateway/transparency-server.mjs', import.meta.url),
);
const AWS_KEY = 'AKIAIOSFODNN7EXAMPLE';

/** The McpError a refused request rejects with. */
async function refusal(promise: Promise<unknown>): Promise<McpError> {
  const outcome = await promise.then(
    (r) => r,
    (e: unknown) => e,
  );
  expect(outcome, JSON.stringify(outcome)?.slice(0, 200)).toBeInstanceOf(McpError);
  return outcome as McpError;
}

describe('resource URIs and forwarded extras on server-everything (real sidecar)', () => {
  const DOC = 'demo://resource/static/document/features.md';
  const TEXT_1 = 'demo://resource/dynamic/text/1';
  let sidecar: Sidecar;
  let client: Client;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstreams: {
        ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
      },
      plugins: [{ module: SECRET_GUARD }],
      policies: [
        {
          name: 'hidden-resources',
          priority: 100,
          rules: [
            { tool: 'resources/*', action: 'deny', conditions: { uri: DOC } },
            { tool: 'resources/*', action: 'deny', conditions: { uri: TEXT_1 } },
            {
              tool: 'completion/complete',
              action: 'deny',
              conditions: { 'context.arguments.department': 'Sales' },
              reason: 'no completions about Sales',
            },
          ],
        },
        DEFAULT_ALLOW,
      ],
      agents: [{ name: 'reader' }],
    });
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'reader'));
  });

  afterAll(async () => {
    await client?.close();
    await closeSidecar(sidecar);
  });

  const spellings = (uri: string): [string, string][] => {
    const [scheme, rest] = uri.split('://') as [string, string];
    const cut = rest.lastIndexOf('/');
    const dir = rest.slice(0, cut);
    const leaf = rest.slice(cut + 1);
    return [
      ['upper-case scheme', `${scheme.toUpperCase()}://${rest}`],
      ['mixed-case scheme', `D${scheme.slice(1)}://${rest}`],
      ['dot segment', `${scheme}://${dir}/./${leaf}`],
      ['up and back in', `${scheme}://${dir}/x/../${leaf}`],
      ['leading space', ` ${uri}`],
      ['trailing newline', `${uri}\n`],
      ['tab inside', `${scheme}://${dir}/\t${leaf}`],
    ];
  };

  it('the upstream really serves those spellings (so the policy must catch them)', async () => {
    for (const [name, uri] of spellings('demo://resource/static/document/architecture.md')) {
      const r = await client.readResource({ uri });
      expect(r.contents[0]?.uri, name).toBe('demo://resource/static/document/architecture.md');
    }
  });

  it.each([...spellings(DOC), ...spellings(TEXT_1)])(
    'resources/read: %s (%j) of a denied URI is refused',
    async (_n, uri) => {
      const error = await refusal(client.readResource({ uri }));
      expect(error.message).toContain('FABRIC_ERR_POLICY_DENIED');
    },
  );

  it.each(spellings(TEXT_1))(
    'resources/subscribe: %s (%j) of a denied URI is refused',
    async (_n, uri) => {
      const error = await refusal(client.subscribeResource({ uri }));
      expect(error.message).toContain('FABRIC_ERR_POLICY_DENIED');
    },
  );

  it("completion/complete: the prompt's context reaches the upstream, so policy sees it", async () => {
    const complete = (department: string): Promise<unknown> =>
      client.complete({
        ref: { type: 'ref/prompt', name: 'ev__completable-prompt' },
        argument: { name: 'name', value: '' },
        context: { arguments: { department } },
      });
    // The upstream's completer reads the context: its answer depends on it.
    const eng = (await complete('Engineering')) as { completion: { values: string[] } };
    expect(eng.completion.values).toEqual(['Alice', 'Bob', 'Charlie']);
    const error = await refusal(complete('Sales'));
    expect(error.message).toContain('no completions about Sales');
  });

  it('secret-guard scans a completion context, not only the argument being completed', async () => {
    const error = await refusal(
      client.complete({
        ref: { type: 'ref/prompt', name: 'ev__completable-prompt' },
        argument: { name: 'name', value: '' },
        context: { arguments: { department: `Engineering ${AWS_KEY}` } },
      }),
    );
    expect(error.message).toMatch(/params\.context\.arguments\.department looks like a secret/);
    expect(error.message).not.toContain(AWS_KEY);
  });

  it('secret-guard scans the _meta forwarded with a prompt get, a resource read and a completion', async () => {
    const _meta = { note: `key ${AWS_KEY}` };
    const attempts: [string, Promise<unknown>][] = [
      ['prompts/get', client.getPrompt({ name: 'ev__simple-prompt', _meta })],
      [
        'resources/read',
        client.readResource({ uri: 'demo://resource/static/document/architecture.md', _meta }),
      ],
      [
        'completion/complete',
        client.complete({
          ref: { type: 'ref/prompt', name: 'ev__completable-prompt' },
          argument: { name: 'department', value: 'E' },
          _meta,
        }),
      ],
    ];
    for (const [method, attempt] of attempts) {
      const error = await refusal(attempt);
      expect(error.message, method).toMatch(/params\._meta\.note looks like a secret/);
      expect(error.message, method).not.toContain(AWS_KEY);
    }
    // The same requests without the secret pass: the refusal was the secret's.
    const ok = await client.getPrompt({ name: 'ev__simple-prompt', _meta: { note: 'fine' } });
    expect(ok.messages.length).toBeGreaterThan(0);
  });
});

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
