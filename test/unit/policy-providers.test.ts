import { describe, expect, it } from 'vitest';
import { PolicyEngine, type PolicyProvider } from '../../src/policy/policy-engine.js';
import { PolicyExistsError, PolicyValidationError } from '../../src/errors.js';

const ctx = (tool: string, params: Record<string, unknown> = {}) => ({
  agentId: 'a1',
  tool,
  params,
});

describe('PolicyEngine providers', () => {
  it('compete with rules by priority, then deny > require_approval > allow', () => {
    const engine = new PolicyEngine();
    engine.addPolicy({ name: 'rules', priority: 10, rules: [{ tool: '*', action: 'allow' }] });
    const low: PolicyProvider = {
      name: 'low',
      priority: 5,
      decide: () => ({ action: 'deny', reason: 'low says no' }),
    };
    engine.addProvider(low);
    // A lower-priority provider cannot override a higher-priority rule.
    expect(engine.evaluateSync(ctx('x')).action).toBe('allow');
    engine.addProvider({
      name: 'same',
      priority: 10,
      decide: (c) =>
        c.tool === 'exec'
          ? { action: 'require_approval', reason: 'exec needs a human' }
          : undefined,
    });
    expect(engine.evaluateSync(ctx('exec'))).toMatchObject({
      action: 'require_approval',
      policy: 'same',
      rule: null,
      reason: 'exec needs a human',
    });
    engine.addProvider({ name: 'high', priority: 20, decide: () => ({ action: 'allow' }) });
    expect(engine.evaluateSync(ctx('exec'))).toMatchObject({ action: 'allow', policy: 'high' });
    expect(engine.removeProvider('high')).toBe(true);
    expect(engine.removeProvider('high')).toBe(false);
    expect(engine.evaluateSync(ctx('exec')).action).toBe('require_approval');
    engine.close();
  });

  it('fails closed when a provider throws or answers nonsense', () => {
    const engine = new PolicyEngine({ defaultAction: 'allow' });
    engine.addProvider({
      name: 'broken',
      decide: () => {
        throw new Error('boom');
      },
    });
    expect(engine.evaluateSync(ctx('x'))).toMatchObject({ action: 'deny', policy: 'broken' });
    engine.removeProvider('broken');
    engine.addProvider({ name: 'weird', decide: () => ({ action: 'maybe' as never }) });
    expect(engine.evaluateSync(ctx('x'))).toMatchObject({ action: 'deny', policy: 'weird' });
    engine.close();
  });

  it('rejects malformed and duplicate providers', () => {
    const engine = new PolicyEngine();
    engine.addPolicy({ name: 'p', rules: [{ tool: '*', action: 'allow' }] });
    expect(() => engine.addProvider({ name: 'p', decide: () => undefined })).toThrow(
      PolicyExistsError,
    );
    expect(() => engine.addProvider({ name: '', decide: () => undefined })).toThrow(
      PolicyValidationError,
    );
    expect(() => engine.addProvider({ name: 'x' } as never)).toThrow(PolicyValidationError);
    expect(() =>
      engine.addProvider({ name: 'x', priority: Number.NaN, decide: () => undefined }),
    ).toThrow(/priority/);
    engine.close();
  });
});
