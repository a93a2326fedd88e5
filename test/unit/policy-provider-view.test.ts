/**
 * Policy providers are handed a frozen copy of the call (`provider-view.ts`): a provider that
 * writes over its context changes neither the caller's arguments nor what the next provider
 * sees, in every place the engine asks providers (decide, decideAsync, admitted, recheck).
 */
import { describe, expect, it } from 'vitest';
import { PolicyEngine, type PolicyContext } from '../../src/policy/policy-engine.js';
import { frozenCopy } from '../../src/policy/provider-view.js';
import { isUnresolvedPath, UnresolvedPath } from '../../src/policy/unresolved-path.js';

/** Writes over everything it is given; records what it saw first. */
function scribbler(name: string, priority: number, seen: unknown[]) {
  const scribble = (ctx: PolicyContext): undefined => {
    seen.push(JSON.stringify(ctx.rawParams ?? ctx.params));
    const c = ctx as unknown as Record<string, unknown>;
    for (const write of [
      () => Object.assign(ctx.rawParams ?? ctx.params, { path: '/etc/passwd' }),
      () => ((ctx.params as { nested: { n: number } }).nested.n = 99),
      () => (c.params = {}),
      () => (c.rawParams = {}),
      () => (c.tool = 'other'),
    ]) {
      try {
        write();
      } catch {
        // frozen
      }
    }
    return undefined;
  };
  return {
    name,
    priority,
    decide: scribble,
    decideAsync: (ctx: PolicyContext) => Promise.resolve(scribble(ctx)),
    admitted: (ctx: PolicyContext) => void scribble(ctx),
  };
}

describe('what policy providers are handed', () => {
  it('cannot be written over: the caller and the next provider keep the call as it was', async () => {
    const engine = new PolicyEngine();
    engine.addPolicy({ name: 'allow', rules: [{ tool: '*', action: 'allow' }] });
    const seen: unknown[] = [];
    engine.addProvider(scribbler('first', 20, seen));
    engine.addProvider(scribbler('second', 10, seen));
    const params = { path: '/tmp/a', nested: { n: 1 } };
    const rawParams = { path: 'a', nested: { n: 1 } };
    const ctx: PolicyContext = { agentId: 'a1', tool: 't', params, rawParams };
    expect((await engine.evaluateAsync(ctx)).allowed).toBe(true);
    expect(engine.evaluateSync(ctx).allowed).toBe(true);
    engine.admitted(ctx);
    expect(engine.recheckAdmission(ctx, engine.evaluateSync(ctx))).toBeUndefined();
    expect(params).toEqual({ path: '/tmp/a', nested: { n: 1 } });
    expect(rawParams).toEqual({ path: 'a', nested: { n: 1 } });
    expect(ctx.tool).toBe('t');
    expect(new Set(seen)).toEqual(new Set([JSON.stringify(rawParams)]));
  });
});

describe('frozenCopy', () => {
  it('copies plain objects and arrays deeply and freezes them; keeps markers and __proto__ keys', () => {
    const marker = new UnresolvedPath('~/x', 'home folder');
    const src = JSON.parse('{"__proto__":{"polluted":true},"a":[1,{"b":2}]}') as Record<
      string,
      unknown
    >;
    src.m = marker;
    const copy = frozenCopy(src);
    expect(copy).not.toBe(src);
    expect(Object.isFrozen(copy)).toBe(true);
    expect(Object.isFrozen(copy.a)).toBe(true);
    expect(Object.isFrozen((copy.a as unknown[])[1])).toBe(true);
    expect(Object.getPrototypeOf(copy)).toBe(Object.prototype);
    expect(Object.hasOwn(copy, '__proto__')).toBe(true);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(isUnresolvedPath(copy.m)).toBe(true);
    expect(JSON.stringify(copy)).toBe(JSON.stringify(src));
    expect(Object.isFrozen(src)).toBe(false);
  });

  it('copies any depth, and a cycle as a cycle', () => {
    let deep: Record<string, unknown> = {};
    const root = deep;
    for (let i = 0; i < 100_000; i++) deep = (deep.d = {}) as Record<string, unknown>;
    expect(Object.isFrozen(frozenCopy(root))).toBe(true);
    const cyclic: Record<string, unknown> = { x: 1 };
    cyclic.self = cyclic;
    const copy = frozenCopy(cyclic);
    expect(copy.self).toBe(copy);
    expect(copy).not.toBe(cyclic);
  });
});
