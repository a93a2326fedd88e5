import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

/** The plugin as users load theirs: a plain-JS module, imported by path. */
const SECRET_GUARD = fileURLToPath(new URL('../../plugins/secret-guard/index.js', import.meta.url));
const {
  default: plugin,
  BUILT_IN_PATTERNS,
  findSecret,
  MAX_SCAN_NODES,
} = (await import(SECRET_GUARD)) as {
  default: unknown;
  BUILT_IN_PATTERNS: Record<string, RegExp>;
  findSecret: (
    value: unknown,
    patterns: [string, RegExp][],
  ) => { path: string; kind: string | undefined; unscannable?: true } | undefined;
  MAX_SCAN_NODES: number;
};

type Decision = { action: string; reason: string } | undefined;
const guard = (
  plugin as {
    create(o?: unknown): {
      decide(ctx: unknown): Decision;
      checkCallbackAnswer(ctx: unknown): Decision;
    };
  }
).create({
  action: 'require_approval',
});
const checkAnswer = (answer: { result?: unknown; error?: unknown }): Decision =>
  guard.checkCallbackAnswer({
    agentId: 'a',
    upstream: 'up',
    method: 'sampling/createMessage',
    params: { messages: [{ role: 'user', content: { type: 'text', text: `echo ${KEY}` } }] },
    ...answer,
  });
const decide = (params: unknown): Decision =>
  guard.decide({ agentId: 'a', tool: 'fs__write_file', params });
const patterns = Object.entries(BUILT_IN_PATTERNS);
const KEY = 'AKIAIOSFODNN7EXAMPLE';

describe('secret-guard scans everything that is forwarded', () => {
  it('finds a credential after the first MiB of a string (at 1.5 MiB)', () => {
    const content = 'x'.repeat(1.5 * 1024 * 1024) + ` ${KEY} ` + 'y'.repeat(1024);
    const d = decide({ path: '/tmp/a', content });
    expect(d?.action).toBe('require_approval');
    expect(d?.reason).toMatch(/params\.content looks like a secret \(AWS access key id\)/);
    expect(d?.reason).not.toContain(KEY);
  });

  it('finds a credential 40 levels deep (and in arrays)', () => {
    let params: unknown = { token: `Bearer ${KEY}` };
    for (let i = 0; i < 39; i++) params = i % 2 ? { nested: params } : [params];
    const d = decide({ wrapper: params });
    // The path is cut at 200 characters.
    expect(d?.reason).toMatch(/^params\.wrapper[[\]0.a-z]+… looks like a secret \(AWS/);
    expect(findSecret({ a: [{ b: KEY }] }, patterns)).toEqual({
      path: 'params.a[0].b',
      kind: 'AWS access key id',
    });
  });

  it('finds a credential used as an object key, without echoing it', () => {
    const d = decide({ headers: { [`${KEY}`]: 'x' } });
    expect(d?.reason).toMatch(/params\.headers \(a key\) looks like a secret/);
    expect(d?.reason).not.toContain(KEY);
  });

  it('refuses what it cannot scan (more values than MAX_SCAN_NODES, a cycle), whatever the action', () => {
    const huge = new Array<number>(MAX_SCAN_NODES + 1).fill(0);
    expect(decide({ huge })).toMatchObject({ action: 'deny' });
    expect(decide({ huge })!.reason).toMatch(/too many to scan/);
    const loop: Record<string, unknown> = { a: 1 };
    loop.self = loop;
    expect(decide(loop)).toMatchObject({ action: 'deny' });
  });

  it('lets ordinary and large clean arguments through', () => {
    expect(decide({ path: '/tmp/a', content: 'hello' })).toBeUndefined();
    expect(
      decide({ content: 'a'.repeat(4 << 20), list: Array.from({ length: 50_000 }, (_, i) => i) }),
    ).toBeUndefined();
  });

  it('matches each built-in kind, also glued to other characters (no word boundary asked for)', () => {
    const samples: [string, string | undefined][] = [
      [`ghp_${'a'.repeat(36)}`, 'GitHub token'],
      [`ghp_${'a'.repeat(35)}`, undefined],
      [`ghp_${'a'.repeat(40)}_`, 'GitHub token'], // glued: the receiver drops the `_`
      [`x${`ghp_${'a'.repeat(36)}`}`, 'GitHub token'],
      [`github_pat_${'a'.repeat(22)}`, 'GitHub token'],
      ['xoxb-0123456789', 'Slack token'],
      ['xoxb-012345678', undefined],
      [`afk_${'a'.repeat(40)}`, 'Agent Fabric credential'],
      [`afk_${'a'.repeat(39)}`, undefined],
      [`x${`afk_${'a'.repeat(40)}`}`, 'Agent Fabric credential'],
      [`fab_admin_${'a'.repeat(32)}`, 'Agent Fabric credential'],
      [`fab_admin_${'a'.repeat(31)}`, undefined],
      ['keyAKIAIOSFODNN7EXAMPLEx', 'AWS access key id'],
      ['AKIAIOSFODNN7EXAMPL', undefined],
      ['-----BEGIN RSA PRIVATE KEY-----', 'private key'],
    ];
    for (const [s, kind] of samples) {
      expect(findSecret({ s }, patterns)?.kind, s).toBe(kind);
    }
  });

  it('stays linear on 4 MiB strings built to make the patterns backtrack', () => {
    // Each of these took 0.3–1 s with `{n,}` runs; the test asserts results, bench numbers are in
    // the README (no timing assertions in tests).
    const n = 4 << 20;
    expect(findSecret({ s: ('-xoxb-' + 'a'.repeat(5)).repeat(n / 11) }, patterns)?.kind).toBe(
      'Slack token',
    );
    expect(
      findSecret({ s: ('ghp_' + 'a'.repeat(35) + '-').repeat(n / 40) }, patterns),
    ).toBeUndefined();
    expect(
      findSecret({ s: ('afk_' + 'a'.repeat(39) + '.').repeat(n / 44) }, patterns),
    ).toBeUndefined();
    expect(
      findSecret({ s: ('AKIA' + 'A'.repeat(15) + 'a').repeat(n / 20) }, patterns),
    ).toBeUndefined();
    expect(findSecret({ s: '-afk_' + 'a'.repeat(n) }, patterns)?.kind).toBe(
      'Agent Fabric credential',
    );
  });
});

describe("secret-guard checks agents' answers to upstream callbacks", () => {
  it('refuses a result carrying a secret with a deny, even where calls ask for approval', () => {
    const d = checkAnswer({
      result: { role: 'assistant', content: { type: 'text', text: `key: ${KEY}` } },
    });
    expect(d).toEqual({
      action: 'deny',
      reason:
        'result.content.text looks like a secret (AWS access key id); secrets may not be sent to an upstream (secret-guard)',
    });
    expect(checkAnswer({ result: { roots: [{ uri: 'file:///w', name: KEY }] } })?.reason).toMatch(
      /^result\.roots\[0\]\.name looks like a secret/,
    );
    expect(checkAnswer({ result: { action: 'accept', content: { [KEY]: 1 } } })?.reason).toMatch(
      /^result\.content \(a key\) looks like a secret/,
    );
  });

  it("scans an error answer's message and data, not what the upstream asked", () => {
    expect(checkAnswer({ error: { code: -1, message: `no: ${KEY}` } })?.reason).toMatch(
      /^error\.message looks like a secret/,
    );
    expect(
      checkAnswer({ error: { code: -1, message: 'no', data: { env: [KEY] } } })?.reason,
    ).toMatch(/^error\.data\.env\[0\] looks like a secret/);
    // The request's params carry the key (the upstream's own text): the answer is clean.
    expect(checkAnswer({ result: { content: { type: 'text', text: 'fine' } } })).toBeUndefined();
    expect(checkAnswer({ error: { code: -1, message: 'cannot' } })).toBeUndefined();
  });

  it('refuses an answer too large to scan', () => {
    const huge = new Array<number>(MAX_SCAN_NODES + 1).fill(0);
    expect(checkAnswer({ result: { huge } })).toMatchObject({
      action: 'deny',
      reason: expect.stringMatching(/too many to scan/),
    });
  });
});
