/**
 * The operator commands of the real `agent-fabric` CLI (child processes) against a real
 * `agent-fabric serve` (child process, a real server-everything upstream, the official SDK
 * client as the agent):
 *
 * - help, version and usage errors, with their exit codes;
 * - `serve --port/--host` override the config's port;
 * - the admin token from the environment or a 0600 `--token-file`; none, a wrong one, an agent's
 *   own token, or a token file other users can read: exit 4, and nothing is decided (the
 *   approval stays pending in the sidecar) — the token never appears in the output;
 * - an unreachable sidecar: exit 3;
 * - `status`, `agents`, `pools`, `tasks`, `budgets` as tables and `--json`; `hooks` on a sidecar
 *   without hooks fails with the sidecar's reason;
 * - `approvals watch` reads the `ApprovalService/Watch` stream: a call parked by a
 *   `require_approval` rule before it started (`existing`), its decision, and a call parked after
 *   it started, as they happen; `approvals approve` lets the first through (the agent gets the
 *   echo), `approvals deny` refuses the next one, and deciding a decided approval fails; Ctrl-C
 *   (SIGINT) ends the watch with exit 0;
 * - a watch whose sidecar stops gets the stream's end error (exit 1, the reason printed); one
 *   whose sidecar is killed lost its connection (exit 3);
 * - `policy test` and `config check` offline.
 */
import { execFile, spawn } from 'node:child_process';
import {
  chmodSync,
  existsSync,
  mkdirSync,
  readFileSync,
  realpathSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  CLI_MAIN,
  EVERYTHING_BIN,
  tempDir,
  text,
  TSX,
  until,
} from '../fixtures/gateway/harness.js';
import { cleanUp, connect, freePort, serve, stop, type Running } from '../fixtures/state/serve.js';

afterAll(cleanUp);

const ADMIN = `fab_admin_${'Zr7w'.repeat(8)}`;

interface Ran {
  code: number | null;
  out: string;
  err: string;
}

/** Every output the CLI printed in this file (checked for the admin token at the end). */
const outputs: string[] = [];

/** The environment without the variables the CLI reads, plus `extra`. */
function cliEnv(extra: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const key of ['FABRIC_ADMIN_TOKEN', 'FABRIC_URL', 'FABRIC_HTTP_PORT']) delete env[key];
  return { ...env, ...extra };
}

/**
 * The folder the CLI runs in: not the repository, where a `serve` without a state path of its
 * own would make `.fabric/state.db` (the default, taken from the working directory).
 */
const CLI_CWD = tempDir('cli-operator-cwd');

/** Runs `agent-fabric <args>` (from source) to its end, in {@link CLI_CWD}. */
function cli(args: readonly string[], env: NodeJS.ProcessEnv = {}): Promise<Ran> {
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['--import', TSX, CLI_MAIN, ...args],
      { cwd: CLI_CWD, env: cliEnv(env), timeout: 60_000 },
      (error, out, err) => {
        outputs.push(out, err);
        const code = error ? (typeof error.code === 'number' ? error.code : null) : 0;
        resolve({ code, out, err });
      },
    );
  });
}

describe('agent-fabric without a sidecar', () => {
  it('prints help and the version, and refuses a wrong command line with exit 2', async () => {
    const help = await cli(['--help']);
    expect(help.code).toBe(0);
    for (const c of ['serve', 'status', 'approvals watch', 'policy test', 'config check']) {
      expect(help.out).toContain(`  ${c} `);
    }
    expect(help.out).toMatch(/exit codes:\n\s+0/);
    const serveHelp = await cli(['serve', '--help']);
    expect(serveHelp.code).toBe(0);
    expect(serveHelp.out).toMatch(/--port <n>/);
    expect(serveHelp.out).toMatch(/--host <address>/);
    const { version } = JSON.parse(readFileSync('package.json', 'utf8')) as { version: string };
    expect((await cli(['--version'])).out.trim()).toBe(version);
    expect((await cli(['version'])).out.trim()).toBe(version);
    const unknown = await cli(['agents', '--bogus']);
    expect(unknown.code).toBe(2);
    expect(unknown.err).toMatch(/--bogus.*agent-fabric agents --help/s);
    expect((await cli(['frobnicate'])).code).toBe(2);
    expect((await cli(['approvals', 'approve'])).code).toBe(2); // missing <id>
  });

  it('policy test shows the deciding policy and rule; --expect fails on another decision', async () => {
    const dir = tempDir('cli-policy');
    const file = join(dir, 'policies.yaml');
    writeFileSync(
      file,
      [
        '- name: no-secrets',
        '  priority: 50',
        '  rules:',
        '    - tool: "fs__*"',
        '      action: deny',
        '      conditions: { path: "**/.env" }',
        '      reason: secrets stay put',
        '- name: rest',
        '  rules: [{ tool: "*", action: allow }]',
      ].join('\n'),
    );
    const denied = await cli([
      'policy',
      'test',
      file,
      '--tool',
      'fs__read_text_file',
      '--params',
      '{"path":"/srv/app/.env"}',
    ]);
    expect(denied.code).toBe(0);
    expect(denied.out).toContain('decision: deny');
    expect(denied.out).toContain('policy:   no-secrets');
    expect(denied.out).toMatch(/rule:\s+#0 /);
    expect(denied.out).toContain('reason:   secrets stay put');
    const json = await cli([
      'policy',
      'test',
      file,
      '--tool',
      'fs__read_text_file',
      '--params',
      '{"path":"/srv/app/main.ts"}',
      '--json',
      '--expect',
      'allow',
    ]);
    expect(json.code).toBe(0);
    expect(JSON.parse(json.out)).toMatchObject({ action: 'allow', policy: 'rest', rule: 0 });
    const mismatch = await cli([
      'policy',
      'test',
      file,
      '--tool',
      'fs__x',
      '--params',
      '{"path":"a/.env"}',
      '--expect',
      'allow',
    ]);
    expect(mismatch.code).toBe(1);
    expect((await cli(['policy', 'test', file, '--params', '{}'])).code).toBe(2); // no --tool
    expect((await cli(['policy', 'test', file, '--tool', 't', '--params', '[1]'])).code).toBe(2);
  });

  it('policy test resolves paths as the tool’s upstream would, and warns of relative patterns', async () => {
    const dir = realpathSync(tempDir('cli-policy-paths'));
    const sandbox = join(dir, 'sandbox');
    mkdirSync(join(sandbox, 'vault'), { recursive: true });
    symlinkSync('vault', join(sandbox, 'secrets'));
    const file = join(dir, 'fabric.yaml');
    writeFileSync(
      file,
      [
        'upstreams:',
        '  fs:',
        '    command: node',
        `    args: [server.js, ${JSON.stringify(sandbox)}]`,
        `    paths: { roots: [${JSON.stringify(sandbox)}] }`,
        'policies:',
        '  - name: guard',
        '    priority: 10',
        '    rules:',
        '      - tool: "fs__*"',
        '        action: deny',
        `        conditions: { path: ${JSON.stringify(`${sandbox}/vault/**`)} }`,
        '      - tool: "fs__*"',
        '        action: deny',
        '        conditions: { path: "protected/**" }',
        '  - name: rest',
        '    rules: [{ tool: "*", action: allow }]',
        '',
      ].join('\n'),
    );
    const policyTest = (tool: string, params: unknown, ...more: string[]) =>
      cli(['policy', 'test', file, '--tool', tool, '--params', JSON.stringify(params), ...more]);
    // Relative, through a symlink: the gateway sees <sandbox>/vault/key, and so does the dry run.
    const linked = await policyTest('fs__read_text_file', { path: 'secrets/key' });
    expect(linked.code, linked.err).toBe(0);
    expect(linked.out).toContain('decision: deny');
    expect(linked.out).toContain('rule:     #0 ');
    expect(linked.out).toContain('paths:    resolved as upstream fs resolves them');
    expect(linked.out).toContain(`params:   {"path":${JSON.stringify(`${sandbox}/vault/key`)}}`);
    // The relative pattern matches nothing live, so the dry run says allow, and warns why.
    const relative = await policyTest('fs__write_file', { path: 'protected/x' }, '--json');
    expect(relative.code, relative.err).toBe(0);
    const decided = JSON.parse(relative.out) as Record<string, unknown>;
    expect(decided).toMatchObject({
      action: 'allow',
      policy: 'rest',
      resolvedParams: { path: `${sandbox}/protected/x` },
    });
    expect(decided.warnings).toEqual([
      expect.stringMatching(
        /^policy guard: rule #1 condition "path": "protected\/\*\*" is a relative path/,
      ),
    ]);
    // A tool no upstream of the file serves: matched as written, and said so.
    const other = await policyTest('gh__x', { path: 'secrets/key' });
    expect(other.out).toContain('decision: allow');
    expect(other.out).toContain('paths:    as written (no upstream of');
    expect(other.out).toContain('warning:  policy guard: rule #1');
    // config check shows the same warning, and the file stays valid.
    const checked = await cli(['config', 'check', file]);
    expect(checked.code, checked.err).toBe(0);
    expect(checked.out).toContain('warning: policy guard: rule #1 condition "path"');
  });

  it('config check lists every problem with its line, and names an env override as env', async () => {
    const dir = tempDir('cli-config');
    const file = join(dir, 'fabric.yaml');
    writeFileSync(
      file,
      ['http:', '  port: "abc"', '  bogus: 1', 'gateway:', '  hideDeniedTools: maybe', ''].join(
        '\n',
      ),
    );
    const bad = await cli(['config', 'check', file]);
    expect(bad.code).toBe(1);
    expect(bad.err).toContain(`${file}: 3 problems`);
    expect(bad.err).toContain(`${file}:2: http.port:`);
    expect(bad.err).toContain(`${file}:3: http.bogus: is not a known key`);
    expect(bad.err).toContain(`${file}:5: gateway.hideDeniedTools:`);
    // serve lists them too, its last line the coded one supervisors read.
    const served = await cli(['serve', '--config', file]);
    expect(served.code).toBe(1);
    const lines = served.err.trim().split('\n');
    expect(lines.at(-1)).toMatch(
      new RegExp(
        `^agent-fabric: FABRIC_ERR_CONFIG_FILE: ${file}:2: http\\.port: .* \\(1 of 3 problems, all above\\)$`,
      ),
    );
    expect(lines.slice(0, -1)).toEqual([
      expect.stringContaining(`${file}:2: http.port:`),
      `  ${file}:3: http.bogus: is not a known key`,
      expect.stringContaining(`${file}:5: gateway.hideDeniedTools:`),
    ]);
    const good = join(dir, 'good.yaml');
    writeFileSync(good, 'gateway:\n  hideDeniedTools: true\n');
    expect((await cli(['config', 'check', good])).code).toBe(0);
    const env = await cli(['config', 'check', good, '--json'], { FABRIC_HTTP_PORT: '70000' });
    expect(env.code).toBe(1);
    const problems = (JSON.parse(env.out) as { problems: Record<string, unknown>[] }).problems;
    expect(problems).toEqual([
      expect.objectContaining({ path: 'http.port', source: 'env FABRIC_HTTP_PORT' }),
    ]);
    expect(problems[0]).not.toHaveProperty('line');
  });
});

describe('agent-fabric config check and policies', () => {
  it('reports a policy serve would refuse (README: every problem, each with its line)', async () => {
    const dir = tempDir('cli-config-policy');
    const file = join(dir, 'fabric.yaml');
    writeFileSync(
      file,
      [
        'policies:',
        '  - name: ok',
        "    rules: [{ tool: '*', action: allow }]",
        '  - name: typo',
        '    rules: [{ tool: fs__x, action: alow }]',
        '',
      ].join('\n'),
    );
    const served = await cli(['serve', '--config', file, '--port', '0']);
    expect(served.code).toBe(1);
    expect(served.err).toContain('FABRIC_ERR_POLICY_INVALID');
    // Refused before the default state file (.fabric/state.db in its folder) was made: before,
    // it was made first, and this test left one in the repository.
    expect(existsSync(join(CLI_CWD, '.fabric'))).toBe(false);
    const checked = await cli(['config', 'check', file]);
    expect(checked.code).toBe(1);
    expect(checked.err).toContain(`${file}:4: policies.1: policy "typo" rule 0: rules[0].action`);
    const json = await cli(['config', 'check', file, '--json']);
    expect(json.code).toBe(1);
    expect(JSON.parse(json.out)).toMatchObject({
      valid: false,
      problems: [{ path: 'policies.1', line: 4 }],
    });
  });
});

describe('agent-fabric config check and the state file inside an upstream root', () => {
  it('serve refuses it before the file is made; config check reports it, and the audit log as a warning', async () => {
    const dir = tempDir('cli-config-own-files');
    const file = join(dir, 'fabric.yaml');
    mkdirSync(join(dir, 'work'));
    writeFileSync(
      file,
      [
        'state:',
        "  path: '${CONFIG_DIR}/work/.fabric/state.db'",
        'audit:',
        "  path: '${CONFIG_DIR}/work/audit.log'",
        'upstreams:',
        '  fs:',
        "    command: '${NODE}'",
        "    args: ['${FILESYSTEM_SERVER_BIN}', '${CONFIG_DIR}/work']",
        "    paths: { roots: ['${CONFIG_DIR}/work'] }",
        'agents:',
        '  - name: a1',
        '',
      ].join('\n'),
    );
    const served = await cli(['serve', '--config', file, '--port', '0'], {
      FABRIC_ADMIN_TOKEN: 'admin-token-for-tests-0123456789',
    });
    expect(served.code).toBe(1);
    expect(served.err.trim().split('\n').at(-1)).toMatch(
      /^agent-fabric: FABRIC_ERR_CONFIG: state\.path .* a root of upstream fs \(paths\.roots\)/,
    );
    expect(existsSync(join(dir, 'work', '.fabric', 'state.db'))).toBe(false);
    const json = await cli(['config', 'check', file, '--json']);
    expect(json.code).toBe(1);
    expect(JSON.parse(json.out)).toMatchObject({
      valid: false,
      problems: [{ path: 'state.path', message: expect.stringContaining('upstream fs') }],
    });
    // With the state file elsewhere the file is valid, the audit log inside the root a warning.
    writeFileSync(file, readFileSync(file, 'utf8').replace('/work/.fabric/state.db', '/state.db'));
    const checked = await cli(['config', 'check', file, '--json']);
    expect(checked.code).toBe(0);
    expect(JSON.parse(checked.out)).toMatchObject({
      valid: true,
      warnings: [expect.stringMatching(/^audit\.path .* a root of upstream fs/)],
    });
  });
});

describe('agent-fabric operator commands against a running sidecar', () => {
  let sidecar: Running;
  let dir: string;
  let port: number;
  const admin = (): NodeJS.ProcessEnv => ({ FABRIC_ADMIN_TOKEN: ADMIN, FABRIC_URL: sidecar.url });

  beforeAll(async () => {
    dir = tempDir('cli-operator');
    port = await freePort();
    writeFileSync(
      join(dir, 'fabric.json'),
      JSON.stringify({
        // --port below overrides this port (nothing listens on 9).
        http: { host: '127.0.0.1', port: 9 },
        adminToken: ADMIN,
        state: 'memory',
        upstreams: {
          ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
        },
        policies: [
          {
            name: 'approvals',
            priority: 100,
            rules: [{ tool: 'ev__echo', action: 'require_approval', reason: 'a human echoes' }],
          },
          { name: 'default-allow', rules: [{ tool: '*', action: 'allow' }] },
        ],
        pools: [{ id: 'builders', minAgents: 1 }],
        agents: [{ name: 'worker' }],
      }),
    );
    sidecar = await serve(dir, {}, ['--port', String(port), '--host', '127.0.0.1']);
  }, 60_000);

  it('serve --port overrides the config', () => {
    expect(sidecar.url).toBe(`http://127.0.0.1:${port}/mcp`);
  });

  it('needs the admin token: none, a wrong one, or an agent token is exit 4; unreachable is 3', async () => {
    const none = await cli(['status'], { FABRIC_URL: sidecar.url });
    expect(none.code).toBe(4);
    expect(none.err).toMatch(/FABRIC_ADMIN_TOKEN|--token-file/);
    const wrong = await cli(['agents'], { FABRIC_URL: sidecar.url, FABRIC_ADMIN_TOKEN: 'nope' });
    expect(wrong.code).toBe(4);
    const agent = await cli(['agents'], {
      FABRIC_URL: sidecar.url,
      FABRIC_ADMIN_TOKEN: sidecar.token,
    });
    expect(agent.code).toBe(4);
    const closed = await freePort();
    const unreachable = await cli(['pools', '--url', `http://127.0.0.1:${closed}`], {
      FABRIC_ADMIN_TOKEN: ADMIN,
    });
    expect(unreachable.code).toBe(3);
    expect(unreachable.err).toContain(`127.0.0.1:${closed}`);
  }, 120_000);

  it('takes the token from a 0600 --token-file and refuses one others can read', async () => {
    const file = join(dir, 'admin.token');
    writeFileSync(file, `${ADMIN}\n`);
    chmodSync(file, 0o644);
    const open = await cli(['pools', '--token-file', file, '--url', sidecar.url]);
    expect(open.code).toBe(4);
    expect(open.err).toContain('chmod 600');
    chmodSync(file, 0o600);
    const ok = await cli(['pools', '--token-file', file, '--url', sidecar.url]);
    expect(ok.code).toBe(0);
    expect(ok.out).toMatch(/^ID\s+NAME\s+MODEL\s+STATUS/);
    expect(ok.out).toMatch(/\nbuilders\s+builders\s+mcp-client\s+ACTIVE\s+1\s+10\s+1\s/);
  }, 120_000);

  it('status, agents, tasks and budgets as tables and JSON; hooks tells they are not configured', async () => {
    const status = await cli(['status'], admin());
    expect(status.code).toBe(0);
    expect(status.out).toMatch(/^agents:\s+2 active/m);
    expect(status.out).toMatch(/^queued:\s+CRITICAL 0, HIGH 0, NORMAL 0, LOW 0$/m);
    expect(status.out).toMatch(/^upstreams:\s+ev up$/m);
    expect(status.out).toMatch(/^\s+builders\s+1\s/m);
    const statusJson = JSON.parse((await cli(['status', '--json'], admin())).out) as {
      stats: { activeAgents: number };
      upstreams: unknown[];
      pendingApprovals: number;
    };
    expect(statusJson).toMatchObject({
      stats: { activeAgents: 2 },
      upstreams: [{ name: 'ev', up: true, restarts: 0 }],
      pendingApprovals: 0,
    });
    const agents = JSON.parse((await cli(['agents', '--json'], admin())).out) as {
      agents: { name: string; poolId?: string }[];
    };
    expect(agents.agents.map((a) => a.name).sort()).toEqual(['builders-1', 'worker']);
    const pooled = await cli(['agents', '--pool', 'builders'], admin());
    expect(pooled.out).toContain('builders-1');
    expect(pooled.out).not.toContain('worker');
    expect((await cli(['agents', '--status', 'sleepy'], admin())).code).toBe(2);
    const tasks = await cli(['tasks', '--status', 'pending'], admin());
    expect(tasks).toMatchObject({ code: 0, out: '(none)\n' });
    const budgets = JSON.parse((await cli(['budgets', '--json'], admin())).out) as {
      budgets: { scope: string }[];
    };
    expect(budgets.budgets.map((b) => b.scope)).toEqual(
      expect.arrayContaining(['fabric', 'pool:builders']),
    );
    expect(budgets.budgets).toHaveLength(4); // fabric, the pool, its agent, worker
    const hooks = await cli(['hooks'], admin());
    expect(hooks.code).toBe(1);
    expect(hooks.err).toContain('hooks are not configured');
  }, 180_000);

  it('approvals: watch streams a call parked before and one parked after it started, approve lets it through, deny refuses; an agent decides nothing', async () => {
    const agent = await connect(sidecar.url, sidecar.token);
    const first = agent.callTool({ name: 'ev__echo', arguments: { message: 'first' } }, undefined, {
      timeout: 600_000,
    });
    const pendingIds = async (): Promise<string[]> => {
      const listed = await cli(['approvals', 'list', '--json'], admin());
      return ((JSON.parse(listed.out) as { approvals?: { id: string }[] }).approvals ?? []).map(
        (a) => a.id,
      );
    };
    await until(async () => (await pendingIds()).length === 1, 60_000);
    const id1 = (await pendingIds())[0]!;

    const watch = spawn(
      process.execPath,
      ['--import', TSX, CLI_MAIN, 'approvals', 'watch', '--json'],
      {
        env: cliEnv(admin()),
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    let watched = '';
    watch.stdout.on('data', (c: Buffer) => (watched += c.toString()));
    let watchErr = '';
    watch.stderr.on('data', (c: Buffer) => (watchErr += c.toString()));
    interface Event {
      kind: string;
      existing?: boolean;
      approval: { id: string; status: string; tool: string };
    }
    const events = (): Event[] =>
      watched
        .split('\n')
        .filter(Boolean)
        .map((l) => JSON.parse(l) as Event);

    // The stream starts with the approval already pending.
    await until(() => events().length > 0, 60_000);
    expect(events()[0]).toMatchObject({
      kind: 'APPROVAL_EVENT_KIND_REQUESTED',
      existing: true,
      approval: { id: id1, status: 'APPROVAL_STATUS_PENDING', tool: 'ev__echo' },
    });

    // The agent's own token decides nothing; the approval is still pending afterwards.
    const selfApprove = await cli(['approvals', 'approve', id1], {
      FABRIC_URL: sidecar.url,
      FABRIC_ADMIN_TOKEN: sidecar.token,
    });
    expect(selfApprove.code).toBe(4);
    const pending = await cli(['approvals', 'list', '--json'], admin());
    expect(JSON.parse(pending.out)).toMatchObject({
      approvals: [{ id: id1, status: 'APPROVAL_STATUS_PENDING' }],
    });

    const approved = await cli(['approvals', 'approve', id1, '--reason', 'looks fine'], admin());
    expect(approved.code).toBe(0);
    expect(approved.out).toContain(`${id1} APPROVED (ev__echo by `);
    expect(text(await first)).toContain('first');
    await until(() => events().length >= 2, 60_000);
    expect(events()[1]).toMatchObject({
      kind: 'APPROVAL_EVENT_KIND_DECIDED',
      approval: { id: id1, status: 'APPROVAL_STATUS_APPROVED' },
    });
    const again = await cli(['approvals', 'deny', id1], admin());
    expect(again.code).toBe(1);

    const second = agent.callTool(
      { name: 'ev__echo', arguments: { message: 'second' } },
      undefined,
      {
        timeout: 600_000,
      },
    );
    // Parked after the watch started: streamed as it happens (not one of the existing).
    await until(() => events().length >= 3, 60_000);
    const requested = events()[2]!;
    expect(requested).toMatchObject({
      kind: 'APPROVAL_EVENT_KIND_REQUESTED',
      approval: { status: 'APPROVAL_STATUS_PENDING', tool: 'ev__echo' },
    });
    expect(requested.existing).toBeUndefined();
    const id2 = requested.approval.id;
    expect(id2).not.toBe(id1);
    expect((await cli(['approvals', 'deny', id2, '--reason', 'no'], admin())).code).toBe(0);
    const refused = await second;
    expect(refused.isError).toBe(true);
    await until(() => events().length >= 4, 60_000);
    expect(events()[3]).toMatchObject({
      kind: 'APPROVAL_EVENT_KIND_DECIDED',
      approval: { id: id2, status: 'APPROVAL_STATUS_DENIED' },
    });
    const all = JSON.parse(
      (await cli(['approvals', 'list', '--status', 'all', '--json'], admin())).out,
    ) as {
      approvals: { id: string; status: string; decisionReason?: string }[];
    };
    expect(all.approvals).toEqual(
      expect.arrayContaining([
        expect.objectContaining({
          id: id1,
          status: 'APPROVAL_STATUS_APPROVED',
          decisionReason: 'looks fine',
        }),
        expect.objectContaining({ id: id2, status: 'APPROVAL_STATUS_DENIED' }),
      ]),
    );
    const exited = new Promise<number | null>((resolve) => watch.once('exit', (c) => resolve(c)));
    watch.kill('SIGINT');
    expect(await exited).toBe(0);
    outputs.push(watched, watchErr);
    expect(watchErr).toBe('');
  }, 240_000);

  it('never prints the admin token', () => {
    for (const o of outputs) expect(o).not.toContain(ADMIN);
  });
});

describe('approvals watch when its sidecar goes away', () => {
  /** A sidecar of its own (no upstreams, one agent) and a watch (text mode) reading its stream. */
  const watching = async (name: string): Promise<{ sidecar: Running; exit: Promise<Ran> }> => {
    const dir = tempDir(name);
    writeFileSync(
      join(dir, 'fabric.json'),
      JSON.stringify({
        http: { host: '127.0.0.1', port: 9, keepAliveSeconds: 0.2 },
        adminToken: ADMIN,
        state: 'memory',
        agents: [{ name: 'worker' }],
      }),
    );
    const port = await freePort();
    const sidecar = await serve(dir, {}, ['--port', String(port), '--host', '127.0.0.1']);
    const watch = spawn(process.execPath, ['--import', TSX, CLI_MAIN, 'approvals', 'watch'], {
      env: cliEnv({ FABRIC_ADMIN_TOKEN: ADMIN, FABRIC_URL: sidecar.url }),
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    watch.stdout.on('data', (c: Buffer) => (out += c.toString()));
    watch.stderr.on('data', (c: Buffer) => (err += c.toString()));
    const exit = new Promise<Ran>((resolve) =>
      watch.once('exit', (code) => resolve({ code, out, err })),
    );
    // The header shows once the stream is open (a keep-alive line every 0.2 s sends the door's
    // headers while no approval is pending).
    await until(() => out.startsWith('EVENT  ID'), 60_000);
    return { sidecar, exit };
  };

  it('the sidecar stopping ends the watch with its end error: exit 1 and the reason', async () => {
    const { sidecar, exit } = await watching('cli-watch-stop');
    expect(await stop(sidecar, 'SIGTERM')).toBe(0);
    const ran = await exit;
    expect(ran.out + ran.err).not.toContain(ADMIN);
    expect(ran.code).toBe(1);
    expect(ran.err).toMatch(
      /ApprovalService\/Watch: the sidecar ended the stream: FABRIC_ERR_CLOSED: /,
    );
  }, 120_000);

  it('the sidecar killed cuts the connection: exit 3, the connection lost', async () => {
    const { sidecar, exit } = await watching('cli-watch-kill');
    await stop(sidecar, 'SIGKILL');
    const ran = await exit;
    expect(ran.out + ran.err).not.toContain(ADMIN);
    expect(ran.code).toBe(3);
    expect(ran.err).toMatch(
      /ApprovalService\/Watch: (the stream was cut|the connection to the sidecar was lost)/,
    );
  }, 120_000);
});
