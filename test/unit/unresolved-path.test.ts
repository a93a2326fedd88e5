import { describe, expect, it } from 'vitest';
import { compileJsonLogic } from '../../src/policy/json-logic.js';
import { PolicyEngine } from '../../src/policy/policy-engine.js';
import type { PolicyRule } from '../../src/policy/policy.js';
import {
  holdsUnresolved,
  isUnresolvedPath,
  markHoldsUnresolved,
  MAX_UNRESOLVED_VALUE_DISPLAY,
  UnresolvedPath,
} from '../../src/policy/unresolved-path.js';

const marker = (): UnresolvedPath => new UnresolvedPath('protected/x', 'is relative');

/** A view as the gateway builds it: the marker's containers are recorded as holding it. */
function view(params: Record<string, unknown>, ...holders: object[]): Record<string, unknown> {
  markHoldsUnresolved(params);
  for (const h of holders) markHoldsUnresolved(h);
  return params;
}

/** The action one rule (plus a default) decides for `params`. */
function decide(rule: PolicyRule, params: Record<string, unknown>, fallback = 'deny'): string {
  const engine = new PolicyEngine({ defaultAction: fallback as 'deny' | 'allow' });
  engine.addPolicy({ name: 'p', rules: [rule] });
  const action = engine.evaluateSync({ agentId: 'a', tool: 'write', params }).action;
  engine.close();
  return action;
}

describe('the unresolved-path marker in conditions', () => {
  it('a deny or require_approval condition on it matches; an allow condition does not', () => {
    const params = view({ path: marker() });
    for (const expected of ['/sandbox/protected/**', '/anything', 'x', null, 1, true]) {
      expect(
        decide({ tool: 'write', action: 'deny', conditions: { path: expected } }, params, 'allow'),
      ).toBe('deny');
      expect(
        decide(
          { tool: 'write', action: 'require_approval', conditions: { path: expected } },
          params,
          'allow',
        ),
      ).toBe('require_approval');
      expect(
        decide({ tool: 'write', action: 'allow', conditions: { path: expected } }, params),
      ).toBe('deny');
    }
  });

  it('in an array: any element for restrictive rules, never for allow rules', () => {
    const paths = ['/sandbox/work/a', marker()];
    const params = view({ paths }, paths);
    expect(
      decide(
        { tool: 'write', action: 'deny', conditions: { paths: '/sandbox/protected/**' } },
        params,
        'allow',
      ),
    ).toBe('deny');
    expect(
      decide({ tool: 'write', action: 'allow', conditions: { paths: '/sandbox/work/**' } }, params),
    ).toBe('deny');
  });

  it('on the way to a dotted key: the marker answers for what is below it', () => {
    const params = view({ options: marker() });
    expect(
      decide(
        { tool: 'write', action: 'deny', conditions: { 'options.path': '/x' } },
        params,
        'allow',
      ),
    ).toBe('deny');
    expect(
      decide({ tool: 'write', action: 'allow', conditions: { 'options.path': '/x' } }, params),
    ).toBe('deny');
  });

  it('other parameters are decided as usual', () => {
    const params = view({ path: marker(), mode: 'fast' });
    expect(decide({ tool: 'write', action: 'allow', conditions: { mode: 'fast' } }, params)).toBe(
      'allow',
    );
  });
});

describe('the unresolved-path marker in `when`', () => {
  const whenDecides = (action: 'allow' | 'deny', when: unknown, params: Record<string, unknown>) =>
    decide({ tool: 'write', action, when }, params, action === 'allow' ? 'deny' : 'allow');

  it('reading it throws, so a deny rule matches and an allow rule does not', () => {
    const cases: unknown[] = [
      { in: ['protected', { var: 'params.path' }] },
      { '!': { in: ['protected', { var: 'params.path' }] } },
      { '===': [{ var: 'params.path' }, '/x'] },
      { '!==': [{ var: 'params.path' }, '/x'] },
      { '<': [{ var: 'params.path.length' }, 100] }, // through the marker
      { '!': { var: 'params' } }, // the container that holds it
      { '!': { missing: ['params.path'] } },
      { var: [{ cat: ['params.', 'path'] }] }, // a computed var name
      { some: [{ var: 'params.paths' }, { '==': [{ var: '' }, '/x'] }] },
    ];
    for (const when of cases) {
      const paths = ['/ok', marker()];
      const params = view({ path: marker(), paths }, paths);
      expect(whenDecides('deny', when, params), JSON.stringify(when)).toBe('deny');
      expect(whenDecides('allow', when, params), JSON.stringify(when)).toBe('deny');
    }
  });

  it('a `when` that reads only other parameters is unaffected', () => {
    const params = view({ path: marker(), mode: 'fast' });
    expect(whenDecides('allow', { '==': [{ var: 'params.mode' }, 'fast'] }, params)).toBe('allow');
  });

  it('the compiled `var` throws for the marker and for a holder, not for plain values', () => {
    const f = compileJsonLogic({ var: 'params.path' });
    expect(() => f({ params: { path: marker() } })).toThrow(/unresolved path/);
    const holder = { path: '/x' };
    markHoldsUnresolved(holder);
    expect(() => compileJsonLogic({ var: 'params' })({ params: holder })).toThrow(/unresolved/);
    expect(f({ params: { path: '/x' } })).toBe('/x');
    expect(compileJsonLogic({ var: 'params' })({ params: { path: '/x' } })).toEqual({ path: '/x' });
  });
});

describe('the unresolved-path marker elsewhere', () => {
  it('a policy provider that reads it as a string fails, and a failing provider denies', () => {
    const engine = new PolicyEngine({ defaultAction: 'allow' });
    engine.addProvider({
      name: 'prefix-check',
      decide: (ctx) =>
        `${ctx.params.path as string}`.startsWith('/protected') ? { action: 'deny' } : undefined,
    });
    const d = engine.evaluateSync({ agentId: 'a', tool: 't', params: view({ path: marker() }) });
    expect(d.action).toBe('deny');
    expect(d.reason).toMatch(/unresolved path/);
    engine.close();
  });

  it('serializes with its reason and the (truncated) spelling', () => {
    expect(JSON.parse(JSON.stringify({ path: marker() }))).toEqual({
      path: { unresolvedPath: 'is relative', value: 'protected/x' },
    });
    const long = new UnresolvedPath('x'.repeat(10_000), 'too long');
    expect(long.value.length).toBe(MAX_UNRESOLVED_VALUE_DISPLAY + 1);
    expect(Object.isFrozen(long)).toBe(true);
    expect(() => String(long)).toThrow(TypeError);
  });

  it('is recognized by the guards, and nothing else is', () => {
    expect(isUnresolvedPath(marker())).toBe(true);
    expect(holdsUnresolved(marker())).toBe(true);
    for (const v of ['x', null, undefined, {}, [], { unresolvedPath: 'x', value: 'y' }]) {
      expect(isUnresolvedPath(v)).toBe(false);
      expect(holdsUnresolved(v)).toBe(false);
    }
  });
});

describe('path conditions compare NFC on both sides (engine used directly)', () => {
  it('an NFD value matches an NFC rule and an NFD rule matches an NFC value', () => {
    const nfc = '/data/caf\u00e9/**';
    const nfd = '/data/cafe\u0301/**';
    const rule = (path: string): PolicyRule => ({
      tool: 'write',
      action: 'deny',
      conditions: { path },
    });
    expect(decide(rule(nfc), { path: '/data/cafe\u0301/x' }, 'allow')).toBe('deny');
    expect(decide(rule(nfd), { path: '/data/caf\u00e9/x' }, 'allow')).toBe('deny');
    expect(decide(rule('/data/caf\u00e9'), { path: '/data/cafe\u0301/' }, 'allow')).toBe('deny');
  });
});
