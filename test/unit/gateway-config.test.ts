import { describe, expect, it } from 'vitest';
import { ConfigError, ConfigFileError, ToolNameError } from '../../src/errors.js';
import { MAX_USAGE_AMOUNT } from '../../src/budget/budget-manager.js';
import { buildCatalog } from '../../src/gateway/catalog.js';
import { Upstream } from '../../src/gateway/upstream.js';
import { upstreamSpecSchema } from '../../src/gateway/upstream-config.js';
import { ToolCosts, estimateTokens } from '../../src/gateway/tool-costs.js';
import {
  defaultConfigPath,
  loadSidecarConfig,
  parseSidecarConfig,
} from '../../src/server/config-file.js';

function fakeUpstream(name: string, tools: string[], spec: Record<string, unknown> = {}): Upstream {
  const u = new Upstream(name, upstreamSpecSchema.parse({ command: 'x', ...spec }));
  Object.defineProperty(u, 'state', { get: () => 'ready' });
  u.tools = tools.map((t) => ({ name: t, inputSchema: { type: 'object' } }));
  return u;
}

describe('sidecar config file', () => {
  it('names the key path and line of an unknown key', () => {
    const yaml = 'http:\n  port: 0\nupstreams:\n  fs:\n    command: node\n    argz: [a]\n';
    expect(() => parseSidecarConfig(yaml, 'f.yaml')).toThrow(ConfigFileError);
    try {
      parseSidecarConfig(yaml, 'f.yaml');
    } catch (e) {
      expect((e as ConfigFileError).message).toMatch(/^f\.yaml:\d+: upstreams\.fs/);
    }
  });

  it('names the line of a wrong type', () => {
    try {
      parseSidecarConfig('http:\n  port: "eighty"\n', 'f.yaml');
      expect.unreachable();
    } catch (e) {
      expect((e as ConfigFileError).details).toMatchObject({ path: 'http.port', line: 2 });
    }
  });

  it('reports YAML syntax errors with a line', () => {
    expect(() => parseSidecarConfig('http:\n  port: [1,\n', 'bad.yaml')).toThrow(/bad\.yaml:\d+/);
  });

  it('applies environment overrides for ports and secrets', () => {
    const c = parseSidecarConfig('{}', 'c.json', {
      env: { FABRIC_HTTP_PORT: '0', FABRIC_ADMIN_TOKEN: 'x'.repeat(20) },
    });
    expect(c.http.port).toBe(0);
    expect(c.adminToken).toBe('x'.repeat(20));
  });

  it('reads token estimate priors and the budget wait, rejecting bad ones by key path', () => {
    const c = parseSidecarConfig(
      'tokenEstimates:\n  "fs__read_*": 2000\ngateway:\n  budgetWaitSeconds: 2\n',
      'f.yaml',
      { env: {} },
    );
    expect(c.tokenEstimates).toEqual({ 'fs__read_*': 2000 });
    expect(c.gateway.budgetWaitSeconds).toBe(2);
    expect(parseSidecarConfig('{}', 'c.json', { env: {} }).gateway.budgetWaitSeconds).toBe(5);
    expect(() =>
      parseSidecarConfig('tokenEstimates:\n  "fs__*": -1\n', 'f.yaml', { env: {} }),
    ).toThrow(/f\.yaml:2: tokenEstimates\.fs__\*/);
    expect(() =>
      parseSidecarConfig('gateway:\n  budgetWaitSeconds: -1\n', 'f.yaml', { env: {} }),
    ).toThrow(/gateway\.budgetWaitSeconds/);
  });

  it('loads the shipped example config', () => {
    const c = loadSidecarConfig(defaultConfigPath(), { env: {} });
    expect(c.upstreams.fs).toBeDefined();
    expect(c.policies.length).toBeGreaterThan(0);
  });
});

describe('catalog', () => {
  it('rejects a name clash naming upstream and tool', () => {
    const a = fakeUpstream('a', ['read'], { namespace: 'none' });
    const b = fakeUpstream('b', ['read'], { namespace: 'none' });
    expect(() => buildCatalog([a, b], new Set(), true)).toThrow(ToolNameError);
    expect(() => buildCatalog([a, b], new Set(), true)).toThrow(/upstream b: "read"/);
  });

  it('rejects a downstream name over 64 characters', () => {
    const a = fakeUpstream('a', ['x'.repeat(62)]);
    expect(() => buildCatalog([a], new Set(), true)).toThrow(/64-character/);
  });

  it('prefixes names by default and honours a custom prefix', () => {
    const cat = buildCatalog(
      [fakeUpstream('fs', ['read']), fakeUpstream('gh', ['read'], { prefix: 'git_' })],
      new Set(),
      true,
    );
    expect([...cat.tools.keys()].sort()).toEqual(['fs__read', 'git_read']);
  });
});

describe('usage', () => {
  it('prices by the first matching glob and estimates tokens as ceil(bytes / 4)', () => {
    const costs = new ToolCosts({ 'fs__write_*': 0.01, 'fs__*': 0.001 });
    expect(costs.costOf('fs__write_file')).toBe(0.01);
    expect(costs.costOf('fs__read')).toBe(0.001);
    expect(costs.costOf('other')).toBe(0);
    expect(estimateTokens({ a: 'bc' })).toBe(Math.ceil('{"a":"bc"}'.length / 4));
  });

  // A cost the budgets cannot take (above MAX_USAGE_AMOUNT, negative, not a number) was
  // accepted, and every call of the tool then failed at its reservation with
  // FABRIC_ERR_INVALID_USAGE ("estimate.cost must be …"): the error belongs to the config.
  it('refuses a tool cost or a token prior the budgets cannot take, naming the glob', () => {
    const over = MAX_USAGE_AMOUNT * 2;
    for (const bad of [over, -1, Number.NaN, Infinity, '1' as unknown as number]) {
      expect(() => new ToolCosts({ 'fs__*': bad })).toThrow(ConfigError);
      expect(() => new ToolCosts({ 'fs__*': bad })).toThrow('toolCosts.fs__*');
    }
    expect(new ToolCosts({ 'fs__*': MAX_USAGE_AMOUNT }).costOf('fs__x')).toBe(MAX_USAGE_AMOUNT);
    expect(() =>
      parseSidecarConfig(`toolCosts:\n  "fs__*": ${over}\n`, 'f.yaml', { env: {} }),
    ).toThrow(/f\.yaml:2: toolCosts\.fs__\*/);
    expect(() =>
      parseSidecarConfig(`tokenEstimates:\n  "fs__*": ${over}\n`, 'f.yaml', { env: {} }),
    ).toThrow(/f\.yaml:2: tokenEstimates\.fs__\*/);
  });
});
