import { describe, expect, it } from 'vitest';
import { resourceParams } from '../../src/gateway/gateway.js';
import { PolicyEngine } from '../../src/policy/policy-engine.js';

describe('policy parameters of a resource read', () => {
  it('adds the decoded path of a file: URI, so path rules see through traversal', () => {
    expect(resourceParams('demo://x/y')).toEqual({ uri: 'demo://x/y' });
    expect(resourceParams('file:///srv/data/a.txt')).toEqual({
      uri: 'file:///srv/data/a.txt',
      path: '/srv/data/a.txt',
    });
    const engine = new PolicyEngine();
    engine.addPolicy({
      name: 'no-etc',
      rules: [
        { tool: 'resources/read', action: 'deny', conditions: { path: '/etc/*' } },
        { tool: 'resources/read', action: 'allow' },
      ],
    });
    const decide = (uri: string): string =>
      engine.evaluateSync({ agentId: 'a', tool: 'resources/read', params: resourceParams(uri) })
        .action;
    expect(decide('file:///srv/data/a.txt')).toBe('allow');
    for (const uri of [
      'file:///etc/passwd',
      'file:///tmp/../etc/passwd',
      'file:///etc/%2e%2e/etc/passwd',
      'file:////etc//passwd',
    ]) {
      expect(decide(uri), uri).toBe('deny');
    }
  });
});
