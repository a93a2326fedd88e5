/**
 * `policyWarnings`: rule values that match no call in the gateway (relative path patterns),
 * and none for values that can match an absolute path or are not paths at all.
 */
import { describe, expect, it } from 'vitest';
import { policyWarnings } from '../../src/policy/conditions.js';
import type { PolicyConditions } from '../../src/policy/policy.js';

const warn = (conditions: PolicyConditions): string[] =>
  policyWarnings({ rules: [{ conditions }] });

describe('policyWarnings', () => {
  it('names relative path patterns on path-like parameters, with the rule and the condition', () => {
    for (const value of ['protected/**', '.env', './build', '../x/*', '~/.ssh/*']) {
      const w = warn({ path: value });
      expect(w, value).toHaveLength(1);
      expect(w[0]).toContain(
        `rule #0 condition "path": ${JSON.stringify(value)} is a relative path`,
      );
    }
    expect(warn({ path: '~/.ssh/*' })[0]).toContain('write the home directory out');
    expect(warn({ path: './protected/**' })[0]).toContain('`/srv/sandbox/protected/**`');
    // Any parameter whose name is path-like, dotted too; array values one by one.
    expect(warn({ 'args.targetDir': 'out/*' })).toHaveLength(1);
    expect(warn({ filePath: ['/ok/**', 'rel/a', 'rel/b'] })).toHaveLength(2);
    // A value that looks like a path makes any parameter path-like.
    expect(warn({ anything: './build' })).toHaveLength(1);
  });

  it('is silent where the pattern can match an absolute path, or is no path', () => {
    const silent: PolicyConditions[] = [
      { path: '/srv/sandbox/protected/**' },
      { path: '**/.env' },
      { path: '*.pem' },
      { path: '?tmp/*' },
      { path: '[/]etc/*' },
      { path: '{/etc,/var}/**' },
      { path: '\\/etc/*' },
      { source: 'github' }, // a path-like name, but no path in the value
      { content: 'a/b' }, // not a path-like name, and the value does not look like one
      { path: 3 },
      { path: null },
    ];
    for (const c of silent) expect(warn(c), JSON.stringify(c)).toEqual([]);
    expect(policyWarnings({ rules: [{}, { conditions: {} }] })).toEqual([]);
  });

  it('counts rules from 0 in the policy’s order', () => {
    const w = policyWarnings({
      rules: [{ conditions: { path: '/a' } }, {}, { conditions: { dir: 'x/y' } }],
    });
    expect(w).toEqual([expect.stringMatching(/^rule #2 condition "dir": "x\/y"/)]);
  });
});
