import { execFile, execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseSidecarConfig } from '../../src/server/config-file.js';
import { Sidecar } from '../../src/server/sidecar.js';
import { TaskStatus } from '../../src/task.js';
import { ADMIN_TOKEN, closeSidecar, tempDir, until } from '../fixtures/gateway/harness.js';

/** Debian's python3 with python3-grpcio and python3-grpc-tools (.ci/run installs them). */
const PYTHON = '/usr/bin/python3';
const pythonGrpc = (() => {
  try {
    execFileSync(PYTHON, ['-c', 'import grpc, grpc_tools'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
})();

const root = fileURLToPath(new URL('../../', import.meta.url));
const DEMO = join(root, 'examples/python/fabric_demo.py');

/** The example's sidecar config: one allow, one deny and one require_approval policy. */
const CONFIG = join(root, 'examples/python/fabric.yaml');

interface AuditLine {
  agent: string;
  tool: string;
  decision: string;
  rule?: string;
  outcome: string;
}

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the example with /usr/bin/python3, asynchronously: the sidecar in this process serves it. */
function runDemo(args: readonly string[], env: Record<string, string> = {}): Promise<Run> {
  return new Promise((resolve) => {
    execFile(
      PYTHON,
      [DEMO, ...args],
      { encoding: 'utf8', timeout: 90_000, env: { PATH: process.env.PATH ?? '', ...env } },
      (err, stdout, stderr) =>
        resolve({
          code: err ? (typeof err.code === 'number' ? err.code : null) : 0,
          stdout,
          stderr,
        }),
    );
  });
}

describe('examples/python against a real sidecar (cross-language proof)', () => {
  const dir = tempDir('python-example');
  const auditPath = join(dir, 'audit.log');
  const client = join(dir, 'client');
  let sidecar: Sidecar | undefined;

  const audit = (): AuditLine[] =>
    readFileSync(auditPath, 'utf8')
      .trim()
      .split('\n')
      .filter(Boolean)
      .map((l) => JSON.parse(l) as AuditLine);

  beforeAll(async () => {
    if (!pythonGrpc && process.env.CI === undefined) return;
    // The example's config as it is, on free ports, with the audit log in the temp dir.
    const config = parseSidecarConfig(readFileSync(CONFIG, 'utf8'), CONFIG, {
      env: { FABRIC_HTTP_PORT: '0', FABRIC_ADMIN_TOKEN: ADMIN_TOKEN, FABRIC_AUDIT_PATH: auditPath },
      cwd: dir,
    });
    sidecar = await Sidecar.start({ config: { ...config, grpc: { ...config.grpc!, port: 0 } } });
    // The client is generated from proto/ by the example's own script, as its README says.
    execFileSync(join(root, 'examples/python/generate.sh'), [client], {
      env: { ...process.env, PYTHON },
      stdio: 'pipe',
    });
  });

  afterAll(async () => {
    await closeSidecar(sidecar);
    await rm(dir, { recursive: true, force: true });
  });

  // CI installs python3-grpcio and python3-grpc-tools; elsewhere it runs when they are there.
  it.runIf(pythonGrpc || process.env.CI !== undefined)(
    'spawns, schedules, works, waits, calls tools and approves a parked call; the sidecar shows it',
    async () => {
      const fabric = sidecar!.fabric!;
      // The worker acknowledges its claimed task (an empty progress report) before completing it.
      const acknowledged: string[] = [];
      const onProgress = (t: { id: string; status: string }): void => {
        if (t.status === TaskStatus.RUNNING) acknowledged.push(t.id);
      };
      fabric.scheduler.events.on('task.progress', onProgress);
      const run = await runDemo(['--address', sidecar!.grpcAddress!, '--client', client], {
        FABRIC_ADMIN_TOKEN: ADMIN_TOKEN,
      });
      expect({ code: run.code, stderr: run.stderr, stdout: run.stdout }).toEqual({
        code: 0,
        stderr: '',
        stdout: expect.any(String),
      });
      const lines = run.stdout.trim().split('\n');
      expect(lines.map((l) => l.split(':')[0])).toEqual([
        'spawn',
        'schedule',
        'worker',
        'wait',
        'allowed',
        'denied',
        'pending',
        'self-approve',
        'approve',
        'parked',
        'done',
      ]);

      // The agent it spawned exists in the fabric, and its task completed with the worker's result.
      const agentId = /^spawn: agent (\S+) \(py-worker\)$/.exec(lines[0]!)?.[1];
      expect(await fabric.getAgentInfo(agentId!)).toMatchObject({ name: 'py-worker' });
      const taskId = /^schedule: task (\S+) /.exec(lines[1]!)?.[1];
      expect(await fabric.waitForTask(taskId!)).toMatchObject({
        status: TaskStatus.COMPLETED,
        agentId,
        result: { words: 9, by: 'python' },
      });
      fabric.scheduler.events.off('task.progress', onProgress);
      expect(acknowledged).toEqual([taskId]);
      expect(lines[2]).toBe(`worker: claimed ${taskId} (attempt 1), acknowledged and answered it`);
      expect(lines[3]).toBe(
        `wait: task ${taskId} TASK_STATUS_COMPLETED: 9 words, counted by python`,
      );
      expect(lines[4]).toBe(
        "allowed: ev__echo -> 'Echo: hello from python' (TOOL_CALL_DECISION_ALLOW)",
      );
      // The rule printed is the one from the fabric-error-details trailer.
      expect(lines[5]).toMatch(
        /^denied: ev__get-sum -> PERMISSION_DENIED FABRIC_ERR_POLICY_DENIED policy=no-sums rule=0: /,
      );
      expect(lines[9]).toBe(
        "parked: ev__echo -> 'Echo: needs approval' (TOOL_CALL_DECISION_APPROVED)",
      );

      // One approval, for that agent's parked call, approved by the admin.
      const decided = fabric.approvals.listApprovals({ agentId: agentId! });
      expect(decided).toHaveLength(1);
      expect(decided[0]).toMatchObject({
        tool: 'ev__echo',
        status: 'approved',
        approver: 'admin',
        policy: 'echo-needs-approval',
      });
      expect(lines[6]).toBe(
        `pending: approval ${decided[0]!.id} for ev__echo by ${agentId} ` +
          '(policy echo-needs-approval: a human reads this first)',
      );
      expect(lines[7]).toBe('self-approve: refused to the agent: PERMISSION_DENIED');
      expect(lines[8]).toBe(`approve: approval ${decided[0]!.id} APPROVED by admin`);

      // The audit log records the three decisions as the agent's.
      await until(() => audit().filter((l) => l.agent === agentId).length === 3);
      expect(
        audit()
          .filter((l) => l.agent === agentId)
          .map(({ tool, decision, rule, outcome }) => ({ tool, decision, rule, outcome })),
      ).toEqual([
        { tool: 'ev__echo', decision: 'allow', rule: 'echo-allowed#0', outcome: 'ok' },
        { tool: 'ev__get-sum', decision: 'deny', rule: 'no-sums#0', outcome: 'denied' },
        { tool: 'ev__echo', decision: 'approved', rule: 'echo-needs-approval#0', outcome: 'ok' },
      ]);
    },
    120_000,
  );

  it.runIf(pythonGrpc || process.env.CI !== undefined)(
    'exits non-zero, saying why, on an unexpected outcome',
    async () => {
      // The "allowed" tool is denied here: that step is not what the example expects.
      const run = await runDemo([
        '--address',
        sidecar!.grpcAddress!,
        '--client',
        client,
        '--admin-token',
        ADMIN_TOKEN,
        '--allowed',
        'ev__get-sum',
      ]);
      expect(run.code).toBe(1);
      expect(run.stderr).toMatch(/^unexpected: PERMISSION_DENIED /);
      expect(run.stdout).not.toMatch(/^allowed:/m);
      // A wrong admin token: SpawnAgent is refused and the example says so.
      const refused = await runDemo([
        '--address',
        sidecar!.grpcAddress!,
        '--client',
        client,
        '--admin-token',
        'not-the-token',
      ]);
      expect(refused.code).toBe(1);
      expect(refused.stderr).toMatch(/^unexpected: UNAUTHENTICATED /);
      expect(refused.stdout).toBe('');
    },
  );
});
