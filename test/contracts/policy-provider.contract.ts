/**
 * The contract every PolicyProvider (policy plugin) must keep, run against each implementation:
 * `runPolicyProviderContract({ name, create, deniedCall, allowedCall })`.
 */
import { describe, expect, it } from 'vitest';
import type { PolicyContext, PolicyProvider } from '../../src/policy/policy-engine.js';
import { PolicyEngine } from '../../src/policy/policy-engine.js';

export function runPolicyProviderContract(options: {
  name: string;
  create: () => PolicyProvider | Promise<PolicyProvider>;
  /** A call the provider must refuse (deny or require_approval). */
  deniedCall: PolicyContext;
  /** A call the provider must not refuse. */
  allowedCall: PolicyContext;
}): void {
  describe(`PolicyProvider contract: ${options.name}`, () => {
    it('has a name and a synchronous decide', async () => {
      const p = await options.create();
      expect(typeof p.name).toBe('string');
      expect(p.name.length).toBeGreaterThan(0);
      const v = p.decide(options.allowedCall);
      expect(v === undefined || typeof (v as { then?: unknown }).then !== 'function').toBe(true);
    });

    it('answers only with known actions', async () => {
      const p = await options.create();
      for (const ctx of [
        options.deniedCall,
        options.allowedCall,
        { ...options.allowedCall, params: {} },
      ]) {
        const v = p.decide(ctx);
        if (v !== undefined) expect(['allow', 'deny', 'require_approval']).toContain(v.action);
      }
    });

    it('refuses the denied call through a PolicyEngine, even against an allow-all rule', async () => {
      const engine = new PolicyEngine();
      engine.addPolicy({ name: 'allow-all', rules: [{ tool: '*', action: 'allow' }] });
      engine.addProvider(await options.create());
      expect(engine.evaluateSync(options.deniedCall).allowed).toBe(false);
      expect(engine.evaluateSync(options.allowedCall).allowed).toBe(true);
      engine.close();
    });

    it('is side-effect free: deciding, however often, changes no verdict', async () => {
      const p = await options.create();
      const denied = p.decide(options.deniedCall);
      const allowed = p.decide(options.allowedCall);
      for (let i = 0; i < 50; i++) {
        p.decide(options.allowedCall);
        p.decide({ ...options.allowedCall, params: {} });
      }
      expect(p.decide(options.deniedCall)).toEqual(denied);
      expect(p.decide(options.allowedCall)).toEqual(allowed);
    });

    it('a deny that lifts by itself says when (retryAt in the future)', async () => {
      const p = await options.create();
      const v = p.decide(options.deniedCall);
      if (v?.retryAt !== undefined) {
        expect(v.action).toBe('deny');
        expect(v.retryAt).toBeGreaterThan(Date.now() - 1);
      }
    });
  });
}
