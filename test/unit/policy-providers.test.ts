import { describe, expect, it, vi } from 'vitest';
import { BudgetManager } from '../../src/budget/budget-manager.js';
import {
  PolicyExistsError,
  PolicyUnavailableError,
  PolicyValidationError,
} from '../../src/errors.js';
import {
  PolicyEngine,
  type PolicyProvider,
  type PolicyVerdict,
} from '../../src/policy/policy-engine.js';
import { ToolCallAuthorizer } from '../../src/policy/tool-call-authorizer.js';

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

describe('PolicyEngine asynchronous providers (decideAsync)', () => {
  /** A provider that answers after a turn, counting what it was asked. */
  function remote(
    name: string,
    priority: number,
    answer: (tool: string) => Promise<PolicyVerdict | undefined>,
  ): PolicyProvider & { asked: string[] } {
    const asked: string[] = [];
    return {
      name,
      priority,
      asked,
      decide: () => undefined,
      decideAsync: async (c) => {
        asked.push(c.tool);
        await new Promise((r) => setImmediate(r));
        return answer(c.tool);
      },
    };
  }

  it('are awaited by evaluateAsync, by the same precedence; evaluateSync only uses decide', async () => {
    const engine = new PolicyEngine();
    engine.addPolicy({
      name: 'rules',
      rules: [
        { tool: 'blocked', action: 'deny' },
        { tool: '*', action: 'allow' },
      ],
    });
    const p = remote('svc', 0, async (tool) =>
      tool === 'rm' ? { action: 'deny', reason: 'svc says no' } : undefined,
    );
    engine.addProvider(p);
    expect(engine.hasAsyncProviders).toBe(true);
    expect(await engine.evaluateAsync(ctx('rm'))).toMatchObject({
      action: 'deny',
      policy: 'svc',
      reason: 'svc says no',
    });
    expect(engine.evaluateSync(ctx('rm')).action).toBe('allow');
    // Abstain: the rule decides.
    expect(await engine.evaluateAsync(ctx('ls'))).toMatchObject({
      action: 'allow',
      policy: 'rules',
    });
    // A rule deny at its priority decides without asking it.
    p.asked.length = 0;
    expect((await engine.evaluateAsync(ctx('blocked'))).policy).toBe('rules');
    expect(p.asked).toEqual([]);
    // evaluate (which opens approvals) awaits it too.
    expect((await engine.evaluate(ctx('rm'))).action).toBe('deny');
    engine.removeProvider('svc');
    expect(engine.hasAsyncProviders).toBe(false);
    engine.close();
  });

  it('a rejection fails closed with FABRIC_ERR_POLICY_UNAVAILABLE; an aborted signal throws', async () => {
    const engine = new PolicyEngine();
    engine.addPolicy({ name: 'rules', rules: [{ tool: '*', action: 'allow' }] });
    const down = remote('down', 0, async () => {
      throw new Error('connection refused');
    });
    engine.addProvider(down);
    expect(await engine.evaluateAsync(ctx('x'))).toMatchObject({
      action: 'deny',
      allowed: false,
      code: PolicyUnavailableError.code,
      reason: expect.stringMatching(/policy provider down failed: connection refused/),
    });
    const ac = new AbortController();
    ac.abort(new Error('client went away'));
    await expect(engine.evaluateAsync(ctx('x'), ac.signal)).rejects.toThrow('client went away');
    // A call given up before it is evaluated asks no provider.
    expect(down.asked).toEqual(['x']);
    engine.close();
  });

  it('a provider that cannot decide is refused alike, sync or async: FABRIC_ERR_POLICY_UNAVAILABLE', async () => {
    // Before, a `decide` that threw (or answered nonsense) was a plain deny, FABRIC_ERR_POLICY_DENIED,
    // while the same failure from `decideAsync` was FABRIC_ERR_POLICY_UNAVAILABLE.
    const failures: [string, () => never | unknown][] = [
      [
        'throws',
        () => {
          throw new Error('backend gone');
        },
      ],
      ['answers nonsense', () => null],
      ['answers an unknown action', () => ({ action: 'block' })],
    ];
    for (const [what, fail] of failures) {
      const refusals = [];
      for (const asynchronous of [false, true]) {
        const policies = new PolicyEngine();
        policies.addPolicy({ name: 'rules', rules: [{ tool: '*', action: 'allow' }] });
        policies.addProvider({
          name: 'p',
          priority: 5,
          decide: asynchronous ? () => undefined : (fail as () => undefined),
          ...(asynchronous ? { decideAsync: async () => fail() as PolicyVerdict | undefined } : {}),
        });
        const auth = new ToolCallAuthorizer({
          policies,
          approvals: policies.approvals,
          budgets: new BudgetManager(),
        });
        const refused = await auth.authorize(ctx('x'));
        expect(refused, `${what}, ${asynchronous ? 'async' : 'sync'}`).toMatchObject({
          allowed: false,
          code: PolicyUnavailableError.code,
        });
        expect(!refused.allowed && refused.error).toBeInstanceOf(PolicyUnavailableError);
        const { decision } = refused as { decision: { policy: string; reason: string } };
        refusals.push({ policy: decision.policy, reason: decision.reason });
        policies.close();
      }
      expect(refusals[0], what).toEqual(refusals[1]);
    }
  });

  it('a counting provider whose decide throws at admission refuses with FABRIC_ERR_POLICY_UNAVAILABLE', () => {
    const engine = new PolicyEngine();
    engine.addPolicy({ name: 'rules', rules: [{ tool: '*', action: 'allow' }] });
    engine.addProvider({
      name: 'counter',
      priority: 5,
      decide: () => {
        throw new Error('count store gone');
      },
      admitted: () => undefined,
    });
    const allowed = Object.freeze({
      action: 'allow' as const,
      allowed: true,
      policy: 'rules',
      rule: 0,
      reason: 'ok',
    });
    expect(engine.recheckAdmission(ctx('x'), allowed)).toMatchObject({
      action: 'deny',
      policy: 'counter',
      code: PolicyUnavailableError.code,
      reason: 'policy provider counter failed: count store gone',
    });
    engine.close();
  });

  it('askAsLikeHidden asks those above the lowest rule that hides tools, and never rejects', async () => {
    const engine = new PolicyEngine();
    const high = remote('high', 200, () => Promise.reject(new Error('down')));
    const mid = remote('mid', 100, async () => ({ action: 'deny' }));
    const low = remote('low', 10, async () => undefined);
    for (const p of [high, mid, low]) engine.addProvider(p);
    // No rule hides a tool: nothing to look like.
    engine.addPolicy({ name: 'allow', rules: [{ tool: '*', action: 'allow' }] });
    expect(engine.askAsLikeHidden(ctx('ghost'))).toBeUndefined();
    // Denies with conditions, in audit mode or disabled hide nothing either.
    engine.addPolicy({
      name: 'conditional',
      priority: 300,
      rules: [{ tool: 'x', action: 'deny', conditions: { path: '/etc/*' } }],
    });
    engine.addPolicy({
      name: 'audit',
      priority: 1,
      mode: 'audit',
      rules: [{ tool: 'x', action: 'deny' }],
    });
    engine.addPolicy({
      name: 'off',
      priority: 1,
      enabled: false,
      rules: [{ tool: 'x', action: 'deny' }],
    });
    expect(engine.askAsLikeHidden(ctx('ghost'))).toBeUndefined();
    // Rules hiding tools at 150 and 100: the floor is 100, a provider at it is not above it.
    engine.addPolicy({ name: 'hide-a', priority: 150, rules: [{ tool: 'a', action: 'deny' }] });
    engine.addPolicy({ name: 'hide-b', priority: 100, rules: [{ tool: 'b', action: 'deny' }] });
    await expect(engine.askAsLikeHidden(ctx('ghost'))).resolves.toBeUndefined();
    expect([high.asked, mid.asked, low.asked]).toEqual([['ghost'], [], []]);
    engine.removePolicy('hide-b');
    engine.removePolicy('hide-a');
    engine.addPolicy({ name: 'hide-c', priority: 5, rules: [{ tool: 'c', action: 'deny' }] });
    await engine.askAsLikeHidden(ctx('ghost2'));
    expect([high.asked, mid.asked, low.asked]).toEqual([
      ['ghost', 'ghost2'],
      ['ghost2'],
      ['ghost2'],
    ]);
    engine.close();
  });

  it('make the authorizer wait for them: tryAuthorize defers, authorize refuses with the typed code', async () => {
    const policies = new PolicyEngine();
    policies.addPolicy({ name: 'rules', rules: [{ tool: '*', action: 'allow' }] });
    policies.addProvider(
      remote('svc', 0, async (tool) =>
        tool === 'down'
          ? { action: 'deny', code: PolicyUnavailableError.code, reason: 'svc unreachable' }
          : { action: 'deny', reason: 'svc says no' },
      ),
    );
    const budgets = new BudgetManager();
    const auth = new ToolCallAuthorizer({ policies, approvals: policies.approvals, budgets });
    expect(auth.tryAuthorize(ctx('rm'))).toBeUndefined();
    expect(await auth.authorize(ctx('rm'))).toMatchObject({
      allowed: false,
      code: 'FABRIC_ERR_POLICY_DENIED',
    });
    const down = await auth.authorize(ctx('down'));
    expect(down).toMatchObject({ allowed: false, code: 'FABRIC_ERR_POLICY_UNAVAILABLE' });
    expect(!down.allowed && down.error).toBeInstanceOf(PolicyUnavailableError);
    policies.close();
  });
});

describe('PolicyEngine answer checks (checkCallbackAnswer)', () => {
  const answer = (text: string) => ({
    agentId: 'a1',
    upstream: 'up',
    method: 'sampling/createMessage',
    result: { role: 'assistant', content: { type: 'text', text } },
  });
  const live = () => new AbortController().signal;

  it('take no part without a provider that checks answers; rules never decide answers', async () => {
    const engine = new PolicyEngine(); // default deny, no rule
    engine.addProvider({ name: 'calls-only', decide: () => ({ action: 'deny' }) });
    expect(engine.hasCallbackAnswerChecks).toBe(false);
    expect(await engine.checkCallbackAnswer(answer('x'), live())).toEqual({ allowed: true });
    engine.close();
  });

  it('are a veto: highest priority first, the first deny decides, an allow stops nothing', async () => {
    const engine = new PolicyEngine();
    const asked: string[] = [];
    const checker = (name: string, priority: number, verdict: unknown): PolicyProvider => ({
      name,
      priority,
      decide: () => undefined,
      checkCallbackAnswer: () => {
        asked.push(name);
        return verdict as PolicyVerdict;
      },
    });
    engine.addProvider(checker('low', 1, { action: 'deny', reason: 'low says no' }));
    engine.addProvider(checker('high', 10, { action: 'allow' }));
    engine.addProvider(checker('mid', 5, undefined));
    expect(engine.hasCallbackAnswerChecks).toBe(true);
    expect(await engine.checkCallbackAnswer(answer('x'), live())).toEqual({
      allowed: false,
      policy: 'low',
      reason: 'low says no',
    });
    expect(asked).toEqual(['high', 'mid', 'low']);
    engine.removeProvider('low');
    expect(await engine.checkCallbackAnswer(answer('x'), live())).toEqual({ allowed: true });
    engine.close();
  });

  it('fail closed: a throw, a rejection, nonsense, require_approval and a timeout refuse', async () => {
    const refusal = async (check: PolicyProvider['checkCallbackAnswer'], timeoutMs = 1000) => {
      const engine = new PolicyEngine({ callbackCheckTimeoutMs: timeoutMs });
      engine.addProvider({ name: 'p', decide: () => undefined, checkCallbackAnswer: check });
      const d = await engine.checkCallbackAnswer(answer('x'), live());
      engine.close();
      return d;
    };
    expect(
      await refusal(() => {
        throw new Error('boom');
      }),
    ).toEqual({
      allowed: false,
      policy: 'p',
      reason: 'policy provider p failed: boom',
      failed: true,
    });
    expect(await refusal(() => Promise.reject(new Error('gone')))).toMatchObject({
      allowed: false,
      reason: 'policy provider p failed: gone',
    });
    expect(await refusal(() => null as never)).toMatchObject({
      allowed: false,
      reason: 'policy provider p returned an invalid verdict (null)',
    });
    expect(await refusal(() => ({ action: 'block' }) as never)).toMatchObject({
      allowed: false,
      reason: 'policy provider p returned an invalid action',
    });
    expect(await refusal(() => ({ action: 'require_approval' }))).toMatchObject({
      allowed: false,
      reason:
        'policy provider p requires approval (an answer to a callback cannot wait for an approval: refused)',
    });
    vi.useFakeTimers();
    try {
      let aborted: unknown;
      const pending = refusal((_ctx, signal) => {
        signal.addEventListener('abort', () => (aborted = signal.reason));
        return new Promise(() => undefined);
      }, 250);
      await vi.advanceTimersByTimeAsync(250);
      expect(await pending).toMatchObject({
        allowed: false,
        reason: 'policy provider p failed: did not answer within 250 ms',
      });
      // The provider is told it ran out of time.
      expect(String(aborted)).toContain('did not answer within 250 ms');
    } finally {
      vi.useRealTimers();
    }
  });

  it('an aborted signal (the upstream gave up) rejects with its reason: no decision', async () => {
    const engine = new PolicyEngine();
    engine.addProvider({
      name: 'slow',
      decide: () => undefined,
      checkCallbackAnswer: () => new Promise(() => undefined),
    });
    const controller = new AbortController();
    const pending = engine.checkCallbackAnswer(answer('x'), controller.signal);
    controller.abort(new Error('cancelled upstream'));
    await expect(pending).rejects.toThrow('cancelled upstream');
    engine.close();
  });

  it('checks the shape of providers and of the timeout option', () => {
    const engine = new PolicyEngine();
    expect(() =>
      engine.addProvider({
        name: 'bad',
        decide: () => undefined,
        checkCallbackAnswer: 'yes' as never,
      }),
    ).toThrow(PolicyValidationError);
    engine.close();
    for (const bad of [0, -1, 1.5, Number.NaN, 2 ** 31]) {
      expect(() => new PolicyEngine({ callbackCheckTimeoutMs: bad })).toThrow(
        /options\.callbackCheckTimeoutMs must be an integer from 1 to 2147483647/,
      );
    }
  });
});
