/**
 * An approved MCP task's call is forwarded only once its task's `working` record is on disk. A
 * task parked on an approval is restored after a restart `input_required` and runs its call
 * again (the approval then decides it at once); only that record says the call already went out.
 * It is committed on a microtask, and a commit may fail (a full disk: the store keeps the change
 * in memory and retries). Before, the call went out at once: the disk full when the approval was
 * decided, then a crash, and the restarted sidecar ran the approved call a second time.
 *
 * A real sidecar over a real SQLite state file, a real server-everything upstream, the official
 * SDK client; the full disk is this process's file size limit (0, with `prlimit`, as
 * state-commit-undo.test.ts), set the moment the decision is committed; the crash is the file and
 * its WAL as they are then, opened by a second sidecar.
 */
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { CallToolResultSchema } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import { listApprovals } from '../fixtures/api.js';
import {
  ADMIN_TOKEN,
  agentToken,
  api,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  httpClient,
  startTestSidecar,
  tempDir,
  text,
  until,
} from '../fixtures/gateway/harness.js';
import { callAsTask } from '../fixtures/gateway/tasks.js';
import { toolTaskOnDisk } from '../fixtures/state/tool-task-rows.js';

/** A full disk for this process (its file size limit 0), or none. */
function diskFull(full: boolean): void {
  execFileSync('prlimit', [`--pid=${process.pid}`, `--fsize=${full ? 0 : 'unlimited'}:`]);
}

const config = (statePath: string, auditPath: string) => ({
  state: { path: statePath },
  audit: { path: auditPath },
  upstreams: {
    ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' as const },
  },
  policies: [
    {
      name: 'pay',
      priority: 100,
      rules: [{ tool: 'ev__echo', action: 'require_approval' as const }],
    },
    DEFAULT_ALLOW,
  ],
  agents: [{ name: 'payer' }],
  gateway: { shutdownGraceSeconds: 0 },
});

/** The audit lines of `tool` calls that reached their upstream (outcome ok). */
function ran(auditPath: string, tool: string): number {
  if (!existsSync(auditPath)) return 0;
  return readFileSync(auditPath, 'utf8')
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => JSON.parse(l) as { tool: string; outcome: string })
    .filter((e) => e.tool === tool && e.outcome === 'ok').length;
}

describe('an approved task call and a state file that cannot be written', () => {
  const sidecars: Sidecar[] = [];
  const clients: Client[] = [];
  afterAll(async () => {
    diskFull(false);
    for (const c of clients) await c.close().catch(() => undefined);
    for (const s of sidecars) await closeSidecar(s).catch(() => undefined);
  });

  it('is not forwarded before its task says so on disk: a crash then runs it once', async () => {
    const dir = tempDir('tool-task-approved-commit');
    const path = join(dir, 'state.db');
    const first = await startTestSidecar(config(path, join(dir, 'audit-1.jsonl')));
    sidecars.push(first);
    const c1 = await httpClient(first.url!, agentToken(first, 'payer'));
    clients.push(c1);
    const { task } = await callAsTask(c1, 'ev__echo', { message: 'pay once' });
    let approval: string | undefined;
    await until(async () => {
      approval = (await listApprovals(first.url!, ADMIN_TOKEN, 'pending'))[0]?.id;
      return approval !== undefined;
    });
    // The decision is committed; from then on nothing more can be.
    first.fabric!.approvals.once('resolved', () => diskFull(true));
    await api(first, 'ApprovalService/Approve', { id: approval });
    // The task waits for its record to be on disk, its call not sent. Before, it ran and completed.
    await until(
      async () => (await c1.experimental.tasks.getTask(task.taskId)).status !== 'input_required',
    );
    await new Promise((r) => setTimeout(r, 300));
    expect((await c1.experimental.tasks.getTask(task.taskId)).status).toBe('working');
    expect(ran(join(dir, 'audit-1.jsonl'), 'ev__echo')).toBe(0);
    // The crash: the file and its WAL as they are now (the task input_required, approved).
    diskFull(false);
    const crashed = join(tempDir('tool-task-approved-commit-crash'), 'state.db');
    copyFileSync(path, crashed);
    if (existsSync(`${path}-wal`)) copyFileSync(`${path}-wal`, `${crashed}-wal`);
    expect(toolTaskOnDisk(crashed, task.taskId)).toMatchObject({ status: 'input_required' });
    // Had it not crashed: its store commits again, the call goes out once, the task completes.
    const done = await c1.experimental.tasks.getTaskResult(task.taskId, CallToolResultSchema);
    expect(text(done)).toBe('Echo: pay once');
    await until(() => ran(join(dir, 'audit-1.jsonl'), 'ev__echo') === 1);
    // The crash image restarted (in that story the call never went out): it runs now, once.
    const auditAfter = join(dir, 'audit-2.jsonl');
    const second = await startTestSidecar(config(crashed, auditAfter));
    sidecars.push(second);
    const c2 = await httpClient(second.url!, agentToken(second, 'payer'));
    clients.push(c2);
    const again = await c2.experimental.tasks.getTaskResult(task.taskId, CallToolResultSchema);
    expect(text(again)).toBe('Echo: pay once');
    await until(() => ran(auditAfter, 'ev__echo') === 1);
    await new Promise((r) => setTimeout(r, 300));
    expect(ran(auditAfter, 'ev__echo')).toBe(1);
  });
});
