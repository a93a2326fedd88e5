/**
 * The README's "Run the sidecar" part, as a new user follows it: every command and flag of its
 * command-line table exists, every YAML config snippet of the README passes `config check`, and
 * the `policy test` example prints what the README shows.
 */
import { execFile } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { CLI_MAIN, tempDir, TSX } from '../fixtures/gateway/harness.js';

const README = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');

/** The README between `from` (a heading line) and the next heading of the same level. */
function section(from: string): string {
  const at = README.indexOf(`\n${from}\n`);
  if (at < 0) throw new Error(`README has no heading ${from}`);
  const level = /^#+ /.exec(from)![0];
  const rest = README.slice(at + from.length + 2);
  const end = rest.search(new RegExp(`\\n${level}`));
  return end < 0 ? rest : rest.slice(0, end);
}

interface Ran {
  code: number | null;
  out: string;
  err: string;
}

/** Runs `agent-fabric <args>` (from source) to its end, without the variables the CLI reads. */
function cli(args: readonly string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}) {
  const env = { ...process.env };
  for (const key of Object.keys(env)) if (key.startsWith('FABRIC_')) delete env[key];
  return new Promise<Ran>((resolve) => {
    execFile(
      process.execPath,
      ['--import', TSX, CLI_MAIN, ...args],
      { env: { ...env, ...opts.env }, timeout: 60_000, ...(opts.cwd ? { cwd: opts.cwd } : {}) },
      (error, out, err) => {
        const code = error ? (typeof error.code === 'number' ? error.code : null) : 0;
        resolve({ code, out, err });
      },
    );
  });
}

/** The commands and flags of the README's command table: `[command, flags it names]`. */
function tableCommands(): [string, string[]][] {
  const rows = section('### The command line')
    .split('\n')
    .filter((l) => l.startsWith('| `'));
  const out: [string, string[]][] = [];
  for (const row of rows) {
    const [first = '', second = ''] = row.split(/(?<!\\)\|/).slice(1, 3);
    const segments = [...first.matchAll(/`([^`]+)`/g)].map((m) => m[1]!);
    // Flags named in the second column apply "where they apply": checked as a group below.
    const shared = [...second.matchAll(/`(--[a-z-]+)`/g)].map((m) => m[1]!);
    for (const segment of segments) {
      if (segment.startsWith('--')) continue; // `--version`, checked with `version`
      const alternatives = segment.split(/\s*\\\|\s*/);
      const group = alternatives[0]!.split(' ')[0]!;
      for (const [i, alt] of alternatives.entries()) {
        const words = alt.split(' ');
        const end = words.findIndex((w) => !/^[a-z]/.test(w));
        const name = (end < 0 ? words : words.slice(0, end)).join(' ');
        const full = i === 0 || name.startsWith(`${group} `) ? name : `${group} ${name}`;
        const flags = [...alt.matchAll(/--[a-z-]+/g)].map((m) => m[0]);
        out.push([full.trim(), [...flags, ...(shared.length > 0 ? ['*'] : [])]]);
      }
    }
    if (shared.length > 0) out.push(['*', shared]);
  }
  return out;
}

describe('README: the command line', () => {
  it('every command and flag of the table exists', async () => {
    const rows = tableCommands();
    const commands = rows.filter(([c]) => c !== '*').map(([c]) => c);
    expect(commands).toEqual(
      expect.arrayContaining(['serve', 'mcp', 'status', 'pools scale', 'config check']),
    );
    expect(rows).toContainEqual(['serve', ['--config', '--port', '--host']]);
    expect(rows).toContainEqual(['*', ['--status', '--pool', '--agent', '--limit']]);
    const help = await cli(['--help']);
    expect(help.code).toBe(0);
    const helps = new Map<string, string>();
    for (const c of commands) {
      const r = await cli([...c.split(' '), '--help']);
      expect(r.code, `agent-fabric ${c} --help: ${r.err}`).toBe(0);
      helps.set(c, r.out);
    }
    for (const [c, flags] of rows) {
      if (c === '*') {
        // "filters where they apply": each one applies to at least one of the row's commands.
        const group = rows.filter(([, f]) => f.includes('*')).map(([name]) => helps.get(name)!);
        for (const flag of flags) {
          expect(
            group.some((h) => h.includes(`  ${flag} `)),
            `${flag} of no command`,
          ).toBe(true);
        }
        continue;
      }
      if (c !== 'version') expect(help.out, c).toContain(`  ${c} `);
      for (const flag of flags.filter((f) => f !== '*')) {
        expect(helps.get(c), `agent-fabric ${c} ${flag}`).toMatch(
          new RegExp(` ${flag}[ ,]|${flag}$`, 'm'),
        );
      }
    }
  }, 240_000);

  it('`--json` of the offline commands does not promise the sidecar an answer', async () => {
    for (const c of ['config check', 'policy test']) {
      const r = await cli([...c.split(' '), '--help']);
      const line = r.out.split('\n').find((l) => l.trimStart().startsWith('--json'));
      expect(line, c).toBeDefined();
      expect(line, c).not.toContain('sidecar');
    }
  });
});

describe('README: config snippets', () => {
  const dir = tempDir('readme-cli');
  const blocks = [...README.matchAll(/```yaml\n([\s\S]*?)```/g)].map((m) => m[1]!);

  it('every YAML snippet passes `config check` (with the variables it names set)', async () => {
    expect(blocks.length).toBeGreaterThanOrEqual(5);
    for (const [i, yaml] of blocks.entries()) {
      const file = join(dir, `snippet-${i}.yaml`);
      writeFileSync(file, yaml);
      const env = Object.fromEntries(
        [...yaml.matchAll(/\$\{env:([A-Z0-9_]+)\}/g)].map((m) => [m[1]!, 'x']),
      );
      const r = await cli(['config', 'check', file], { env });
      expect(`${r.code} ${r.out}${r.err}`, yaml).toMatch(/^0 .*: valid \(/);
    }
  }, 120_000);

  it('the policy test example prints what the README shows', async () => {
    const run = section('### Write a policy file');
    const policies = /```yaml\n([\s\S]*?)```/.exec(run)![1]!;
    const example = /```sh\n\$ agent-fabric ([^\n]+)\n([\s\S]*?)```/.exec(run)!;
    const shown = example[2]!.trimEnd().split('\n');
    // The README's fabric.yaml: the quick start's fs upstream over the sandbox, and the policies.
    const cwd = join(dir, 'project');
    mkdirSync(join(cwd, '.fabric', 'sandbox'), { recursive: true });
    writeFileSync(
      join(cwd, 'fabric.yaml'),
      `upstreams:
  fs:
    command: '\${NODE}'
    args: ['\${FILESYSTEM_SERVER_BIN}', '\${SANDBOX}']
    paths:
      roots: ['\${SANDBOX}']
${policies}`,
    );
    // The command line as the README writes it (single-quoted JSON kept whole).
    const args = [...example[1]!.matchAll(/'([^']*)'|(\S+)/g)].map((m) => m[1] ?? m[2]!);
    const r = await cli(args, { cwd });
    expect(r.code, r.err).toBe(0);
    const printed = r.out
      .trimEnd()
      .split('\n')
      .map((l) => l.replace(cwd, '/home/me/project'));
    expect(printed).toEqual(shown);
  });
});
