/**
 * Config errors name every problem at once, each at its line; a value set by the environment or
 * by a `serve` flag is named as such instead of a line of a file that does not hold it.
 */
import { describe, expect, it } from 'vitest';
import { ConfigFileError, type ConfigFileProblem } from '../../src/errors.js';
import { parseSidecarConfig } from '../../src/server/config-file.js';

function problems(fn: () => unknown): { error: ConfigFileError; list: ConfigFileProblem[] } {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigFileError);
    const e = error as ConfigFileError;
    return { error: e, list: e.details.problems as ConfigFileProblem[] };
  }
  throw new Error('expected a ConfigFileError');
}

describe('config errors', () => {
  it('reports every schema problem with its own line', () => {
    const yaml = [
      'http:', // 1
      '  port: "abc"', // 2
      '  bogus: 1', // 3
      'upstreams: {}', // 4
      'gateway:', // 5
      '  hideDeniedTools: maybe', // 6
      'approvals:', // 7
      '  timeoutSeconds: -1', // 8
      '  extra: 2', // 9
      '  other: 3', // 10
    ].join('\n');
    const { error, list } = problems(() => parseSidecarConfig(yaml, 'f.yaml', { env: {} }));
    expect(list.map((p) => [p.path, p.line])).toEqual([
      ['http.port', 2],
      ['http.bogus', 3],
      ['gateway.hideDeniedTools', 6],
      ['approvals.timeoutSeconds', 8],
      ['approvals.extra', 9],
      ['approvals.other', 10],
    ]);
    expect(error.message.split('\n')[0]).toBe('f.yaml: 6 problems');
    expect(error.message).toContain('\n  f.yaml:3: http.bogus: is not a known key');
    // The first problem stays in details.path/line for callers that read one.
    expect(error.details).toMatchObject({ path: 'http.port', line: 2 });
  });

  it('names an environment override as env, without a line of the file', () => {
    const yaml = '# no port here\nhttp:\n  host: 127.0.0.1\n';
    const { error, list } = problems(() =>
      parseSidecarConfig(yaml, 'f.yaml', { env: { FABRIC_HTTP_PORT: 'eighty' } }),
    );
    expect(list).toEqual([
      expect.objectContaining({ path: 'http.port', source: 'env FABRIC_HTTP_PORT' }),
    ]);
    expect(list[0]).not.toHaveProperty('line');
    expect(error.message).toMatch(/^f\.yaml: http\.port \(from env FABRIC_HTTP_PORT\): /);
  });

  it('names a serve flag, and a flag wins over the environment and the file', () => {
    const yaml = 'http:\n  port: 1234\n';
    const { list } = problems(() =>
      parseSidecarConfig(yaml, 'f.yaml', { env: {}, flags: { port: '99x' } }),
    );
    expect(list).toEqual([expect.objectContaining({ path: 'http.port', source: '--port' })]);
    const config = parseSidecarConfig(yaml, 'f.yaml', {
      env: { FABRIC_HTTP_PORT: '2000', FABRIC_HTTP_HOST: '127.0.0.2' },
      flags: { port: '3000' },
    });
    expect(config.http).toMatchObject({ port: 3000, host: '127.0.0.2' });
  });

  it('reads ${env:NAME} from the environment it is given, as the overrides', () => {
    const yaml = 'nats:\n  url: "${env:FABRIC_TEST_NATS_URL}"\n';
    const config = parseSidecarConfig(yaml, 'f.yaml', {
      env: { FABRIC_TEST_NATS_URL: 'nats://10.0.0.1:4222' },
    });
    expect(config.nats?.url).toBe('nats://10.0.0.1:4222');
    // Not from process.env when another environment is given.
    process.env.FABRIC_TEST_NATS_URL = 'nats://127.0.0.9:1';
    try {
      expect(problems(() => parseSidecarConfig(yaml, 'f.yaml', { env: {} })).list).toEqual([
        expect.objectContaining({ message: 'unknown variable ${env:FABRIC_TEST_NATS_URL}' }),
      ]);
      expect(parseSidecarConfig(yaml, 'f.yaml').nats?.url).toBe('nats://127.0.0.9:1');
    } finally {
      delete process.env.FABRIC_TEST_NATS_URL;
    }
  });

  it('lists every unknown variable, and every YAML syntax error at its line', () => {
    const vars = problems(() =>
      parseSidecarConfig(
        'sandbox: "${NOPE}"\nhooks:\n  storagePath: "${env:ALSO_NOPE_9}"\n',
        'f.yaml',
        {
          env: {},
        },
      ),
    ).list;
    expect(vars.map((p) => [p.path, p.line, p.message])).toEqual([
      ['sandbox', 1, 'unknown variable ${NOPE}'],
      ['hooks.storagePath', 3, 'unknown variable ${env:ALSO_NOPE_9}'],
    ]);
    const syntax = problems(() =>
      parseSidecarConfig('http:\n  port: 1\n  host "x"\nfoo: [1,\n', 'f.yaml', { env: {} }),
    ).list;
    expect(syntax.map((p) => p.line)).toEqual([3, 4]);
  });

  it('names a __proto__ key at its line, where the schema would have dropped it unseen', () => {
    const yaml = [
      'upstreams:', // 1
      '  __proto__:', // 2
      '    command: node', // 3
      'policies:', // 4
      '  - name: p', // 5
      '    rules:', // 6
      '      - tool: "*"', // 7
      '        action: allow', // 8
      '        conditions: { "__proto__": x }', // 9
      'toolCosts: {"__proto__": 1}', // 10
    ].join('\n');
    const { list } = problems(() => parseSidecarConfig(yaml, 'f.yaml', { env: {} }));
    expect(list.map((p) => [p.path, p.line])).toEqual([
      ['upstreams.__proto__', 3], // its value's line, as for any block value
      ['policies.0.rules.0.conditions.__proto__', 9],
      ['toolCosts.__proto__', 10],
    ]);
    expect(list[0]!.message).toMatch(/cannot hold/);
    // The same in JSON.
    const json = problems(() =>
      parseSidecarConfig('{"agents":[{"name":"a","labels":{"__proto__":"x"}}]}', 'f.json', {
        env: {},
      }),
    ).list;
    expect(json.map((p) => p.path)).toEqual(['agents.0.labels.__proto__']);
  });

  it('names a file nested too deep at its line, in one problem, however deep it goes', () => {
    // Each parsed more than once in one process: the second deep parse used to end the process
    // (V8: "RegExpCompiler Allocation failed") instead of failing with a ConfigFileError.
    const deep = (n: number): string[] => [
      `x: ${'['.repeat(n)}${']'.repeat(n)}`,
      `{"x": ${'['.repeat(n)}${']'.repeat(n)}}`,
      `x:\n${'- '.repeat(n)}1`,
      `a: 1\npolicies:\n  - name: p\n    rules:\n      - tool: "*"\n        action: deny\n        when: ${'{"!":'.repeat(n)}true${'}'.repeat(n)}`,
    ];
    for (const n of [5_000, 100_000]) {
      for (const text of deep(n)) {
        const { list } = problems(() => parseSidecarConfig(text, 'f.yaml', { env: {} }));
        expect(list).toHaveLength(1);
        expect(list[0]!.message).toBe('nests deeper than 256 levels of mappings and sequences');
        expect(list[0]!.line).toBe(text.startsWith('a: 1') ? 7 : text.startsWith('x:\n') ? 2 : 1);
      }
    }
    // 256 levels are fine (the when is then refused by the policy check, not by its depth here).
    expect(() =>
      parseSidecarConfig(`x: ${'['.repeat(255)}${']'.repeat(255)}`, 'f.yaml', { env: {} }),
    ).toThrow(/x: is not a known key/);
  });

  it('refuses the threads pool provider in a sidecar (no task handlers there), naming the line', () => {
    const yaml = [
      'pools:', // 1
      '  - id: workers', // 2
      '    provider: threads', // 3
      '  - id: both', // 4
      '    provider: pool-process', // 5
      '    executor: remote', // 6
    ].join('\n');
    const { list } = problems(() => parseSidecarConfig(yaml, 'f.yaml', { env: {} }));
    expect(list.map((p) => [p.path, p.line])).toEqual([
      ['pools.0.provider', 3],
      ['pools.1.executor', 6],
    ]);
    expect(list[0]!.message).toContain('library use only');
  });

  it('refuses a budget warnAtPercent of 0 at its line (the budget manager takes (0, 100])', () => {
    const yaml = [
      'budget:', // 1
      '  warnAtPercent: 0', // 2
      'agents:', // 3
      '  - name: a', // 4
      '    budget: { maxTokensPerHour: 10, warnAtPercent: 0 }', // 5
    ].join('\n');
    const { list } = problems(() => parseSidecarConfig(yaml, 'f.yaml', { env: {} }));
    expect(list.map((p) => [p.path, p.line])).toEqual([
      ['budget.warnAtPercent', 2],
      ['agents.0.budget.warnAtPercent', 5],
    ]);
    expect(() =>
      parseSidecarConfig('budget: { warnAtPercent: 0.5 }', 'f.yaml', { env: {} }),
    ).not.toThrow();
  });
});
