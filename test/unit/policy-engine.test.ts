import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  ConfigError,
  PolicyExistsError,
  PolicyValidationError,
  isFabricError,
} from '../../src/errors.js';
import { ApprovalManager } from '../../src/policy/approval-manager.js';
import {
  PolicyEngine,
  validatePolicy,
  type PolicyContext,
} from '../../src/policy/policy-engine.js';
import type { Policy } from '../../src/policy/policy.js';

const ctx = (
  tool: string,
  params: Record<string, unknown> = {},
  extra: Partial<PolicyContext> = {},
) => ({ agentId: 'agent-1', tool, params, ...extra }) satisfies PolicyContext;

function engineWith(...policies: Policy[]): PolicyEngine {
  const e = new PolicyEngine();
  for (const p of policies) e.addPolicy(p);
  return e;
}

function rejection(fn: () => unknown): PolicyValidationError {
  try {
    fn();
  } catch (err) {
    if (err instanceof PolicyValidationError) return err;
    throw err;
  }
  throw new Error('expected a PolicyValidationError');
}

describe('PolicyEngine: the Fabric Guide example', () => {
  const guide: Policy = {
    name: 'code-execution',
    rules: [
      { tool: 'execute_code', action: 'require_approval', conditions: { language: 'python' } },
      { tool: 'file_write', action: 'deny', conditions: { path: '/etc/*' } },
    ],
  };

  it('requires approval for python and denies writes under /etc', () => {
    const e = engineWith(guide);
    const d = e.evaluateSync(ctx('execute_code', { language: 'python', code: '...' }));
    expect(d).toMatchObject({ action: 'require_approval', policy: 'code-execution', rule: 0 });
    expect(e.evaluateSync(ctx('file_write', { path: '/etc/passwd' }))).toMatchObject({
      action: 'deny',
      allowed: false,
      rule: 1,
    });
  });

  it('falls back to the default action (deny) when nothing matches', () => {
    const e = engineWith(guide);
    const d = e.evaluateSync(ctx('execute_code', { language: 'bash' }));
    expect(d).toMatchObject({ action: 'deny', policy: null, rule: null });
    expect(d.reason).toMatch(/default action is deny/);
  });

  it('honours a configured default action', () => {
    const e = new PolicyEngine({ defaultAction: 'allow' });
    expect(e.evaluateSync(ctx('anything')).action).toBe('allow');
    expect(() => new PolicyEngine({ defaultAction: 'maybe' as never })).toThrow(ConfigError);
    expect(() => new PolicyEngine({ toolCacheSize: -1 })).toThrow(/options.toolCacheSize/);
  });

  it('evaluate() opens an approval and returns its id', async () => {
    const e = engineWith(guide);
    const d = await e.evaluate(ctx('execute_code', { language: 'python' }));
    expect(d.approvalId).toMatch(/^apr_/);
    const approval = e.approvals.getApproval(d.approvalId!);
    expect(approval).toMatchObject({
      status: 'pending',
      agentId: 'agent-1',
      tool: 'execute_code',
      policy: 'code-execution',
      rule: 0,
    });
    e.close();
  });
});

describe('PolicyEngine: path normalization', () => {
  const e = engineWith({
    name: 'etc',
    rules: [
      { tool: 'file_write', action: 'deny', conditions: { path: '/etc/*' } },
      { tool: 'file_write', action: 'allow' },
    ],
  });
  it.each([
    '/etc/passwd',
    '/etc/../etc/passwd',
    '//etc//passwd',
    '/etc/./passwd',
    '/tmp/../etc/passwd',
    '/../../etc/passwd',
    '/etc/ssh/sshd_config',
    '/etc',
    '/etc/',
  ])('denies %s', (path) => {
    expect(e.evaluateSync(ctx('file_write', { path })).action).toBe('deny');
  });
  it.each(['/etcetera', '/tmp/etc/passwd', 'etc/passwd', '../etc/passwd', '/home/u/etc'])(
    'does not deny %s',
    (path) => {
      expect(e.evaluateSync(ctx('file_write', { path })).action).toBe('allow');
    },
  );

  it('normalizes path-like values under any key, and any value under path-like keys', () => {
    const e2 = engineWith({
      name: 'p',
      rules: [
        { tool: 't', action: 'deny', conditions: { target: '/srv/secret' } },
        { tool: 'u', action: 'deny', conditions: { anything: '/srv/secret' } },
        { tool: 'v', action: 'deny', conditions: { url: 'https://x.test/a' } },
      ],
      priority: 1,
    });
    e2.addPolicy({ name: 'rest', rules: [{ tool: '*', action: 'allow' }] });
    expect(e2.evaluateSync(ctx('t', { target: '/srv/./secret/' })).action).toBe('deny');
    expect(e2.evaluateSync(ctx('u', { anything: '/srv//secret' })).action).toBe('deny');
    // Non-path strings are compared as written: `//` in a URL is not collapsed.
    expect(e2.evaluateSync(ctx('v', { url: 'https://x.test/a' })).action).toBe('deny');
    expect(e2.evaluateSync(ctx('v', { url: 'https:/x.test/a' })).action).toBe('allow');
  });
});

describe('PolicyEngine: conditions', () => {
  const e = engineWith(
    {
      name: 'c',
      priority: 10,
      rules: [
        { tool: 'count', action: 'deny', conditions: { count: 0 } },
        { tool: 'flag', action: 'deny', conditions: { dry: false } },
        { tool: 'empty', action: 'deny', conditions: { name: '' } },
        { tool: 'nul', action: 'deny', conditions: { v: null } },
        { tool: 'lang', action: 'deny', conditions: { language: ['python', 'ba*'] } },
        { tool: 'nested', action: 'deny', conditions: { 'opts.mode': 'root' } },
        { tool: 'multi', action: 'deny', conditions: { a: 1, b: 'x*' } },
        { tool: 'paths', action: 'deny', conditions: { paths: '/etc/*' } },
        { tool: 'paths', action: 'require_approval', conditions: { paths: '/home/*' } },
      ],
    },
    {
      name: 'allow-some-paths',
      priority: 5,
      rules: [{ tool: 'list', action: 'allow', conditions: { paths: '/tmp/*' } }],
    },
    { name: 'rest', rules: [{ tool: '*', action: 'allow' }] },
  );
  const act = (tool: string, params: Record<string, unknown>) =>
    e.evaluateSync(ctx(tool, params)).action;

  it('treats 0, false, "" and null as values, not as missing', () => {
    expect(act('count', { count: 0 })).toBe('deny');
    expect(act('count', {})).toBe('allow');
    expect(act('count', { count: '0' })).toBe('allow');
    expect(act('flag', { dry: false })).toBe('deny');
    expect(act('flag', {})).toBe('allow');
    expect(act('empty', { name: '' })).toBe('deny');
    expect(act('nul', { v: null })).toBe('deny');
    expect(act('nul', {})).toBe('allow');
  });

  it('matches any-of lists, dotted keys and every key', () => {
    expect(act('lang', { language: 'python' })).toBe('deny');
    expect(act('lang', { language: 'bash' })).toBe('deny');
    expect(act('lang', { language: 'ruby' })).toBe('allow');
    expect(act('nested', { opts: { mode: 'root' } })).toBe('deny');
    expect(act('nested', { opts: {} })).toBe('allow');
    expect(act('multi', { a: 1, b: 'xy' })).toBe('deny');
    expect(act('multi', { a: 1, b: 'yx' })).toBe('allow');
  });

  it('does not read inherited properties', () => {
    expect(act('nested', { opts: Object.create({ mode: 'root' }) })).toBe('allow');
  });

  it('matches arrays: any element for deny/approval, every element for allow', () => {
    expect(act('paths', { paths: ['/tmp/a', '/etc/shadow'] })).toBe('deny');
    expect(act('paths', { paths: ['/tmp/a', '/home/u/x'] })).toBe('require_approval');
    const strict = new PolicyEngine();
    strict.addPolicy({
      name: 'a',
      rules: [{ tool: 'list', action: 'allow', conditions: { paths: '/tmp/*' } }],
    });
    const a = (paths: unknown) => strict.evaluateSync(ctx('list', { paths })).action;
    expect(a(['/tmp/a', '/tmp/b'])).toBe('allow');
    expect(a(['/tmp/a', '/etc/passwd'])).toBe('deny');
    expect(a([])).toBe('deny');
  });
});

describe('PolicyEngine: precedence', () => {
  it('higher priority is evaluated first and decides', () => {
    const e = engineWith(
      { name: 'low', priority: 1, rules: [{ tool: 'x', action: 'deny' }] },
      { name: 'high', priority: 10, rules: [{ tool: 'x', action: 'allow' }] },
    );
    expect(e.evaluateSync(ctx('x'))).toMatchObject({ action: 'allow', policy: 'high' });
    expect(e.listPolicies().map((p) => p.name)).toEqual(['high', 'low']);
  });

  it('at the same priority deny beats require_approval beats allow', () => {
    const e = engineWith(
      { name: 'a', rules: [{ tool: 'x*', action: 'allow' }] },
      { name: 'b', rules: [{ tool: 'x*', action: 'require_approval' }] },
    );
    expect(e.evaluateSync(ctx('x1'))).toMatchObject({ action: 'require_approval', policy: 'b' });
    e.addPolicy({ name: 'c', rules: [{ tool: 'x1', action: 'deny' }] });
    expect(e.evaluateSync(ctx('x1'))).toMatchObject({ action: 'deny', policy: 'c' });
    expect(e.evaluateSync(ctx('x2'))).toMatchObject({ action: 'require_approval' });
  });

  it('within a policy the strongest matching rule wins; ties go to the earlier rule', () => {
    const e = engineWith({
      name: 'p',
      rules: [
        { tool: '*', action: 'allow', reason: 'first' },
        { tool: 'x', action: 'allow', reason: 'second' },
        { tool: 'x', action: 'deny', conditions: { force: true } },
      ],
    });
    expect(e.evaluateSync(ctx('x')).reason).toBe('first');
    expect(e.evaluateSync(ctx('x', { force: true }))).toMatchObject({ action: 'deny', rule: 2 });
  });

  it('disabled and removed policies do not decide', () => {
    const e = engineWith(
      { name: 'off', enabled: false, priority: 9, rules: [{ tool: 'x', action: 'deny' }] },
      { name: 'on', rules: [{ tool: 'x', action: 'allow' }] },
    );
    expect(e.evaluateSync(ctx('x')).action).toBe('allow');
    expect(e.listPolicies().map((p) => p.name)).toEqual(['off', 'on']);
    expect(e.removePolicy('on')).toBe(true);
    expect(e.removePolicy('on')).toBe(false);
    expect(e.evaluateSync(ctx('x')).policy).toBeNull();
  });

  it('replace swaps a policy atomically; the tool index follows every change', () => {
    const e = engineWith({ name: 'p', rules: [{ tool: 'x', action: 'allow' }] });
    expect(e.evaluateSync(ctx('x')).action).toBe('allow');
    expect(() => e.addPolicy({ name: 'p', rules: [{ tool: 'x', action: 'deny' }] })).toThrow(
      PolicyExistsError,
    );
    e.addPolicy({ name: 'p', rules: [{ tool: 'x', action: 'deny' }] }, { replace: true });
    expect(e.evaluateSync(ctx('x')).action).toBe('deny');
  });

  it('gives the same decisions with the tool index disabled', () => {
    const policies: Policy[] = [
      {
        name: 'a',
        priority: 2,
        rules: [{ tool: 'fs__*', action: 'deny', conditions: { path: '/etc/*' } }],
      },
      { name: 'b', priority: 1, rules: [{ tool: 'fs__{read,list}*', action: 'allow' }] },
      { name: 'c', mode: 'audit', rules: [{ tool: '*', action: 'deny' }] },
    ];
    const indexed = engineWith(...policies);
    const scan = new PolicyEngine({ toolCacheSize: 0 });
    for (const p of policies) scan.addPolicy(p);
    for (const [tool, path] of [
      ['fs__read_file', '/etc/x'],
      ['fs__read_file', '/tmp/x'],
      ['fs__list_dir', '/tmp'],
      ['fs__write_file', '/tmp/x'],
      ['other', '/'],
    ] as const) {
      expect(scan.evaluateSync(ctx(tool, { path }))).toEqual(
        indexed.evaluateSync(ctx(tool, { path })),
      );
    }
  });
});

describe('PolicyEngine: when (JSON-logic)', () => {
  beforeEach(() => {
    vi.useFakeTimers();
    vi.setSystemTime(new Date('2026-03-02T10:00:00Z'));
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('sees agent, labels, tool, params, pool, now and attributes', () => {
    const e = engineWith({
      name: 'w',
      rules: [
        {
          tool: '*',
          action: 'allow',
          when: {
            and: [
              { '==': [{ var: 'agent.labels.team' }, 'infra'] },
              { '==': [{ var: 'pool' }, 'pool-a'] },
              { '<': [{ var: 'params.size' }, 100] },
              { '>': [{ var: 'now' }, 0] },
              { '==': [{ var: 'attributes.env' }, 'dev'] },
              { '==': [{ var: 'agent.id' }, 'agent-1'] },
            ],
          },
        },
      ],
    });
    const base = { labels: { team: 'infra' }, poolId: 'pool-a', attributes: { env: 'dev' } };
    expect(e.evaluateSync(ctx('t', { size: 5 }, base)).action).toBe('allow');
    expect(e.evaluateSync(ctx('t', { size: 500 }, base)).action).toBe('deny');
    expect(e.evaluateSync(ctx('t', { size: 5 }, { ...base, poolId: 'b' })).action).toBe('deny');
  });

  it('conditions and when must both hold', () => {
    const e = engineWith({
      name: 'w',
      rules: [
        {
          tool: 'run',
          action: 'allow',
          conditions: { language: 'python' },
          when: { '<': [{ var: 'params.timeout' }, 60] },
        },
      ],
    });
    expect(e.evaluateSync(ctx('run', { language: 'python', timeout: 5 })).action).toBe('allow');
    expect(e.evaluateSync(ctx('run', { language: 'python', timeout: 90 })).action).toBe('deny');
    expect(e.evaluateSync(ctx('run', { language: 'go', timeout: 5 })).action).toBe('deny');
  });

  it('fails closed when an expression throws at run time', () => {
    const e = new PolicyEngine({ defaultAction: 'allow' });
    e.addPolicy({ name: 'boom', rules: [{ tool: 'x', action: 'deny', when: { '*': [] } }] });
    e.addPolicy({ name: 'boom2', rules: [{ tool: 'y', action: 'allow', when: { '*': [] } }] });
    expect(e.evaluateSync(ctx('x')).action).toBe('deny');
    const strict = engineWith({
      name: 'b',
      rules: [{ tool: 'y', action: 'allow', when: { '*': [] } }],
    });
    expect(strict.evaluateSync(ctx('y')).action).toBe('deny');
  });

  it('is copied when added, so later edits to the caller object change nothing', () => {
    const when = { '==': [{ var: 'params.a' }, 1] };
    const e = engineWith({ name: 'p', rules: [{ tool: 'x', action: 'allow', when }] });
    (when['=='] as unknown[])[1] = 2;
    expect(e.evaluateSync(ctx('x', { a: 1 })).action).toBe('allow');
  });
});

describe('PolicyEngine: audit mode', () => {
  it('reports audit verdicts without changing the outcome', () => {
    const e = engineWith(
      { name: 'enforced', rules: [{ tool: 'x', action: 'allow' }] },
      {
        name: 'trial',
        mode: 'audit',
        priority: 100,
        rules: [
          { tool: 'x', action: 'require_approval' },
          { tool: 'x', action: 'deny', conditions: { danger: true }, reason: 'dangerous' },
        ],
      },
    );
    const plain = e.evaluateSync(ctx('x'));
    expect(plain.action).toBe('allow');
    expect(plain.audit).toEqual([
      expect.objectContaining({ policy: 'trial', rule: 0, action: 'require_approval' }),
    ]);
    const danger = e.evaluateSync(ctx('x', { danger: true }));
    expect(danger.action).toBe('allow');
    expect(danger.audit).toEqual([
      { policy: 'trial', rule: 1, action: 'deny', reason: 'dangerous' },
    ]);
    expect(e.evaluateSync(ctx('y'))).not.toHaveProperty('audit');
    expect(Object.isFrozen(danger)).toBe(true);
  });
});

describe('PolicyEngine: invalid policies are rejected when added', () => {
  const e = new PolicyEngine();
  it.each([
    ['missing name', { rules: [{ tool: 'x', action: 'allow' }] }, '<unnamed>', undefined, /name/],
    ['empty rules', { name: 'p', rules: [] }, 'p', undefined, /rules/],
    [
      'bad action',
      {
        name: 'p',
        rules: [
          { tool: 'x', action: 'allow' },
          { tool: 'x', action: 'permit' },
        ],
      },
      'p',
      1,
      /rules\[1\]\.action/,
    ],
    [
      'bad glob',
      { name: 'p', rules: [{ tool: 'file_[', action: 'deny' }] },
      'p',
      0,
      /rules\[0\]\.tool.*unclosed \[/,
    ],
    [
      'bad condition glob',
      { name: 'p', rules: [{ tool: 'x', action: 'deny', conditions: { path: '/etc/{a' } }] },
      'p',
      0,
      /rules\[0\]\.conditions.*unclosed \{/,
    ],
    [
      'object condition',
      { name: 'p', rules: [{ tool: 'x', action: 'deny', conditions: { path: { '==': 1 } } }] },
      'p',
      0,
      /rules\[0\]\.conditions\.path.*when/,
    ],
    [
      'unknown operator',
      {
        name: 'p',
        rules: [
          { tool: 'x', action: 'deny' },
          { tool: 'y', action: 'deny', when: { and: [{ regex: 1 }] } },
        ],
      },
      'p',
      1,
      /rules\[1\]\.when\.and\[0\].*"regex"/,
    ],
    [
      'unknown key',
      { name: 'p', rules: [{ tool: 'x', action: 'deny', condition: {} }] },
      'p',
      0,
      /rules\[0\]/,
    ],
    [
      'bad mode',
      { name: 'p', mode: 'dry-run', rules: [{ tool: 'x', action: 'deny' }] },
      'p',
      undefined,
      /mode/,
    ],
    [
      'fractional priority',
      { name: 'p', priority: 1.5, rules: [{ tool: 'x', action: 'deny' }] },
      'p',
      undefined,
      /priority/,
    ],
  ])('%s', (_label, policy, name, rule, message) => {
    const err = rejection(() => e.addPolicy(policy));
    expect(err.code).toBe('FABRIC_ERR_POLICY_INVALID');
    expect(err.details.policy).toBe(name);
    expect(err.details.rule).toBe(rule);
    expect(err.message).toMatch(message);
    expect(err.message).toContain(`policy ${JSON.stringify(name)}`);
    // validatePolicy (what the sidecar checks before it makes its state file) refuses it alike.
    expect(rejection(() => validatePolicy(policy)).message).toBe(err.message);
  });

  it('duplicate names', () => {
    e.addPolicy({ name: 'dup', rules: [{ tool: 'x', action: 'deny' }] });
    let err: unknown;
    try {
      e.addPolicy({ name: 'dup', rules: [{ tool: 'y', action: 'deny' }] });
    } catch (x) {
      err = x;
    }
    expect(isFabricError(err, PolicyExistsError.code)).toBe(true);
  });

  it('leaves the engine unchanged after a rejection', () => {
    const e2 = engineWith({ name: 'ok', rules: [{ tool: 'x', action: 'allow' }] });
    expect(() => e2.addPolicy({ name: 'bad', rules: [{ tool: 'x', action: 'nope' }] })).toThrow();
    expect(e2.listPolicies().map((p) => p.name)).toEqual(['ok']);
  });

  it('accepts an ApprovalManager it does not own and does not close it', () => {
    const approvals = new ApprovalManager();
    const e2 = new PolicyEngine({ approvals });
    expect(e2.approvals).toBe(approvals);
    e2.close();
    expect(() => approvals.create({ agentId: 'a', tool: 't' })).not.toThrow();
    approvals.close();
  });
});
