/**
 * A config file's secrets never reach what the CLI prints about the file: a real `agent-fabric`
 * process (`config check`, `serve`, `policy test`) reads a config whose token, password or key
 * is written so that YAML takes it for syntax, or whose NATS URL carries a password, and its
 * stdout and stderr must name the problem and its line without the secret. Those lines go to a
 * terminal, a CI log or the journal, which more people read than the config file.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CLI_MAIN, tempDir, TSX } from '../fixtures/gateway/harness.js';

/** A value that must never appear in the CLI's output. */
const SECRET = `Sx${randomBytes(12).toString('hex')}`;

interface Run {
  code: number | null;
  out: string;
  /** The last non-empty stderr line. */
  last: string;
}

/** Runs the CLI with `args` to its end in `dir`. */
function cli(dir: string, args: string[]): Promise<Run> {
  const env = { ...process.env };
  delete env.FABRIC_ADMIN_TOKEN; // the file's adminToken is the one looked at
  return new Promise((resolve) => {
    const child = execFile(
      process.execPath,
      ['--import', TSX, CLI_MAIN, ...args],
      { cwd: dir, env, timeout: 45_000 },
      (_error, stdout, stderr) => {
        const lines = stderr.split('\n').filter((l) => l.trim() !== '');
        resolve({ code: child.exitCode, out: stdout + stderr, last: lines.at(-1) ?? '' });
      },
    );
  });
}

/** Writes `text` as `fabric.yaml` in a new folder; returns the folder. */
function configDir(text: string): string {
  const dir = tempDir('config-secret');
  writeFileSync(join(dir, 'fabric.yaml'), text);
  return dir;
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as { port: number };
  await new Promise((r) => server.close(r));
  return port;
}

/**
 * Values as a person writes them unquoted, each of which YAML reads as syntax that its error
 * message quotes: an alias (`*`), a block scalar header (`|`, `>`), a named tag handle, a
 * double-quoted string with an escape it does not know.
 */
const FORMS: readonly { name: string; line: string; message: RegExp }[] = [
  { name: 'an alias (*…)', line: `adminToken: *${SECRET}`, message: /Unresolved alias/ },
  {
    name: 'a block scalar header (|…)',
    line: `adminToken: |${SECRET}`,
    message: /Block scalar header/,
  },
  { name: 'a folded header (>…)', line: `adminToken: >${SECRET}`, message: /Block scalar header/ },
  {
    name: 'a named tag (!x!…)',
    line: `adminToken: !x!${SECRET} v`,
    message: /Could not resolve tag/,
  },
  {
    name: 'an unknown escape (\\U…)',
    line: `adminToken: "\\U${SECRET}"`,
    message: /Invalid escape sequence/,
  },
];

describe('a config value read as YAML syntax is not echoed', () => {
  for (const form of FORMS) {
    it(`config check: ${form.name} is a problem at its line, without the value`, async () => {
      const dir = configDir(`http:\n  port: 0\n${form.line}\n`);
      const run = await cli(dir, ['config', 'check', 'fabric.yaml']);
      expect(run.code).toBe(1);
      expect(run.out).toMatch(form.message);
      expect(run.out).toContain('fabric.yaml:3:');
      expect(run.out).not.toContain(SECRET);
      // Not any part of it either (an escape error quoted its first 8 characters).
      expect(run.out).not.toContain(SECRET.slice(0, 6));
    });
  }

  it('serve: an alias stops the start with FABRIC_ERR_CONFIG_FILE, without the value', async () => {
    const dir = configDir(`state: memory\nhttp:\n  port: 0\nadminToken: *${SECRET}\n`);
    const run = await cli(dir, ['serve', '--config', 'fabric.yaml']);
    expect(run.code).toBe(1);
    expect(run.last).toMatch(
      /^agent-fabric: FABRIC_ERR_CONFIG_FILE: fabric\.yaml:4: Unresolved alias/,
    );
    expect(run.out).not.toContain(SECRET);
  });

  it('serve: a block scalar header in an upstream env value is not echoed', async () => {
    const dir = configDir(
      [
        'state: memory',
        'http:',
        '  port: 0',
        'upstreams:',
        '  x:',
        '    command: node',
        '    env:',
        `      API_KEY: |${SECRET}`,
        '',
      ].join('\n'),
    );
    const run = await cli(dir, ['serve', '--config', 'fabric.yaml']);
    expect(run.code).toBe(1);
    expect(run.last).toMatch(/FABRIC_ERR_CONFIG_FILE: fabric\.yaml:8: Block scalar header/);
    expect(run.out).not.toContain(SECRET);
  });

  it('policy test on a sidecar config: the parse error is not echoed', async () => {
    for (const line of [`adminToken: *${SECRET}`, `adminToken: |${SECRET}`]) {
      const dir = configDir(`policies: []\n${line}\n`);
      const run = await cli(dir, [
        'policy',
        'test',
        'fabric.yaml',
        '--tool',
        'fs__read',
        '--params',
        '{}',
      ]);
      expect(run.code).toBe(1);
      expect(run.last).toMatch(/^agent-fabric: fabric\.yaml: (Unresolved alias|Block scalar)/);
      expect(run.out).not.toContain(SECRET);
    }
  });
});

describe('a password in nats.url is not echoed when the server is unreachable', () => {
  for (const [name, url] of [
    // Not percent-encoded: a '/' in the password ended the masked part before the '@'.
    [
      'a password holding a slash',
      (port: number) => `nats://fabric:pa/${SECRET}@127.0.0.1:${port}`,
    ],
    // nats.js takes a server without a scheme; the mask needed one.
    ['a URL without a scheme', (port: number) => `fabric:${SECRET}@127.0.0.1:${port}`],
  ] as const) {
    it(`serve: ${name}`, async () => {
      const port = await freePort();
      const dir = configDir(
        JSON.stringify({
          state: 'memory',
          http: { port: 0 },
          nats: { url: url(port), connectTimeoutMs: 1000 },
        }),
      );
      const run = await cli(dir, ['serve', '--config', 'fabric.yaml']);
      expect(run.code).toBe(1);
      expect(run.last).toMatch(
        /^agent-fabric: FABRIC_ERR_NATS_UNAVAILABLE: NATS at .*\*\*\*@127\.0\.0\.1/,
      );
      expect(run.last).toContain(`127.0.0.1:${port}`);
      expect(run.out).not.toContain(SECRET);
    });
  }
});
