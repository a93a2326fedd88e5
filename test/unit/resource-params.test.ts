import { describe, expect, it } from 'vitest';
import { resourceParams } from '../../src/gateway/gateway.js';
import { PolicyEngine } from '../../src/policy/policy-engine.js';
import { isUnresolvedPath } from '../../src/policy/unresolved-path.js';

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

  it('parses the URI as WHATWG URL does: any case of scheme, trimmed, tabs and newlines dropped', () => {
    for (const uri of [
      'FILE:///etc/passwd',
      'File://localhost/etc/passwd',
      ' file:///etc/passwd',
      '\u0000file:///etc/passwd\n',
      'fi\tle:///etc/pass\nwd',
      'file:/etc/passwd',
      'file:///etc/%70asswd',
    ]) {
      expect(resourceParams(uri), JSON.stringify(uri)).toEqual({
        uri: new URL(uri).href,
        path: '/etc/passwd',
      });
    }
  });

  it('matches the URI as an SDK upstream looks it up: serialized, dot segments resolved', () => {
    for (const uri of [
      'DEMO://resource/static/document/a.md',
      ' demo://resource/static/document/a.md\n',
      'demo://resource/static/x/../document/a.md',
      'demo://resource/static/./document/a.md',
      'demo://resource/static/docu\tment/a.md',
    ]) {
      expect(resourceParams(uri), JSON.stringify(uri)).toEqual({
        uri: 'demo://resource/static/document/a.md',
      });
    }
  });

  it('gives a URI it cannot parse or decode an unresolved path (deny rules match, allow rules do not)', () => {
    const engine = new PolicyEngine();
    engine.addPolicy({
      name: 'files',
      rules: [
        { tool: 'resources/read', action: 'deny', conditions: { path: '/etc/**' } },
        { tool: 'resources/read', action: 'allow', conditions: { path: '/srv/**' } },
      ],
    });
    for (const uri of [
      'file:///etc%2Fpasswd',
      'file:///srv/%FF',
      'file://remote-host/srv/a',
      'not a uri',
      '',
    ]) {
      const params = resourceParams(uri);
      expect(isUnresolvedPath(params.path), JSON.stringify(uri)).toBe(true);
      // Not a URL at all: the URI itself is unknown too (a deny on `uri` matches it).
      expect(isUnresolvedPath(params.uri), JSON.stringify(uri)).toBe(!URL.canParse(uri));
      expect(engine.evaluateSync({ agentId: 'a', tool: 'resources/read', params }).policy).toBe(
        'files',
      );
      expect(engine.evaluateSync({ agentId: 'a', tool: 'resources/read', params }).action).toBe(
        'deny',
      );
    }
    // Other schemes name no file.
    expect(resourceParams('https://example.com/etc/passwd')).toEqual({
      uri: 'https://example.com/etc/passwd',
    });
    engine.close();
  });
});
