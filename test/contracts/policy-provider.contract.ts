/**
 * The contract every PolicyProvider (policy plugin) must keep, run against each implementation:
 * `runPolicyProviderContract({ name, create, deniedCall, allowedCall })`. A provider that
 * decides asynchronously (`decideAsync`, e.g. policy-grpc) is held to the same verdicts through
 * it and `PolicyEngine.evaluateAsync`; its synchronous `decide` must still be synchronous. A
 * provider that checks agents' answers to upstream callbacks (`checkCallbackAnswer`) names an
 * answer it refuses and one it lets through (`deniedAnswer`, `allowedAnswer`).
 */
import { describe, expect, it } from 'vitest';
import type {
  PolicyContext,
  PolicyProvider,
  PolicyVerdict,
} from '../../src/policy/policy-engine.js';
import { PolicyEngine } from '../../src/policy/policy-engine.js';
import type { CallbackAnswerContext } from '../../src/policy/callback-answer-check.js';

/** The provider's verdict for a tool call: `decideAsync` when it has one, else `decide`. */
async function verdictOf(
  p: PolicyProvider,
  ctx: PolicyContext,
): Promise<PolicyVerdict | undefined> {
  return p.decideAsync === undefined ? p.decide(ctx) : p.decideAsync(ctx);
}

/** The engine's decision as the tool-call pipeline makes it. */
function evaluate(engine: PolicyEngine, ctx: PolicyContext) {
  return engine.hasAsyncProviders ? engine.evaluateAsync(ctx) : engine.evaluateSync(ctx);
}

export function runPolicyProviderContract(options: {
  name: string;
  create: () => PolicyProvider | Promise<PolicyProvider>;
  /** A call the provider must refuse (deny or require_approval). */
  deniedCall: PolicyContext;
  /** A call the provider must not refuse. */
  allowedCall: PolicyContext;
  /** With `checkCallbackAnswer`: an answer the provider must refuse, and one it must not. */
  answers?: { denied: CallbackAnswerContext; allowed: CallbackAnswerContext };
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
        const w = await verdictOf(p, ctx);
        if (w !== undefined) expect(['allow', 'deny', 'require_approval']).toContain(w.action);
      }
    });

    it('refuses the denied call through a PolicyEngine, even against an allow-all rule', async () => {
      const engine = new PolicyEngine();
      engine.addPolicy({ name: 'allow-all', rules: [{ tool: '*', action: 'allow' }] });
      engine.addProvider(await options.create());
      expect((await evaluate(engine, options.deniedCall)).allowed).toBe(false);
      expect((await evaluate(engine, options.allowedCall)).allowed).toBe(true);
      engine.close();
    });

    it('is side-effect free: deciding, however often, changes no verdict', async () => {
      const p = await options.create();
      const denied = await verdictOf(p, options.deniedCall);
      const allowed = await verdictOf(p, options.allowedCall);
      expect(denied?.action).toMatch(/^(deny|require_approval)$/);
      for (let i = 0; i < 50; i++) {
        p.decide(options.allowedCall);
        p.decide({ ...options.allowedCall, params: {} });
        if (p.decideAsync !== undefined && i % 10 === 0) await p.decideAsync(options.allowedCall);
      }
      expect(await verdictOf(p, options.deniedCall)).toEqual(denied);
      expect(await verdictOf(p, options.allowedCall)).toEqual(allowed);
    });

    it('checks answers to callbacks if and only if it says so (answers given)', async () => {
      const p = await options.create();
      expect(p.checkCallbackAnswer !== undefined).toBe(options.answers !== undefined);
      if (options.answers === undefined) return;
      const engine = new PolicyEngine();
      engine.addPolicy({ name: 'allow-all', rules: [{ tool: '*', action: 'allow' }] });
      engine.addProvider(p);
      const signal = new AbortController().signal;
      const denied = await engine.checkCallbackAnswer(options.answers.denied, signal);
      expect(denied).toMatchObject({ allowed: false, policy: p.name });
      expect(denied).not.toHaveProperty('failed');
      expect(await engine.checkCallbackAnswer(options.answers.allowed, signal)).toEqual({
        allowed: true,
      });
      engine.close();
    });

    it('a deny that lifts by itself says when (retryAt in the future)', async () => {
      const p = await options.create();
      const v = await verdictOf(p, options.deniedCall);
      if (v?.retryAt !== undefined) {
        expect(v.action).toBe('deny');
        expect(v.retryAt).toBeGreaterThan(Date.now() - 1);
      }
    });
  });
}
