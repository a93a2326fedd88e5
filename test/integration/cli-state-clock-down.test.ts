/**
 * The real `agent-fabric serve` (child processes, a real server-everything upstream, the official
 * SDK client, a real SQLite state file, the machine's real boot id and `/proc/uptime`), restarted
 * after the wall clock was set two hours ahead while it was down. A process cannot move the
 * machine's clock, so the state file is made to say it instead: everything it holds that is
 * wall-clock time — the pending approval's times and the clock mark the store keeps with them —
 * is put two hours earlier, which is what the file would hold had the clock been set two hours
 * ahead after it was written. Restarted, the sidecar tells the step from elapsed time (the
 * boot-time clock moved seconds, the wall clock two hours more) and moves the approval back to
 * the hour it had left; it warns once. Before, the approval was expired at start.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { CreateTaskResultSchema } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, describe, expect, it } from 'vitest';
import { listApprovals } from '../fixtures/api.js';
import { tempDir, until } from '../fixtures/gateway/harness.js';
import {
  cleanUp,
  connect,
  freePort,
  serve,
  stop,
  writeEverythingConfig,
} from '../fixtures/state/serve.js';
import { CLOCK_MARK_KEY } from '../../src/store/store-clock.js';

afterAll(cleanUp);

const ADMIN = `fab_admin_${'c7Lk'.repeat(8)}`;
const HOUR = 60 * 60_000;
// A boot id and a boot-time clock to tell the step with (Linux).
const canTell =
  existsSync('/proc/uptime') &&
  existsSync('/proc/sys/kernel/random/boot_id') &&
  readFileSync('/proc/sys/kernel/random/boot_id', 'latin1').trim() !== '';

/** Puts every wall-clock time the file holds `ms` earlier (the pending approvals, the mark). */
function clockWasBehind(statePath: string, ms: number): void {
  const db = new Database(statePath, { fileMustExist: true });
  try {
    const mark = db.prepare<[string], { value: string }>('SELECT value FROM meta WHERE key = ?');
    const stored = mark.get(CLOCK_MARK_KEY)?.value;
    // (A build without the mark has none: only the approval's times move.)
    if (stored !== undefined) {
      const m = JSON.parse(stored) as { wall: number };
      db.prepare('UPDATE meta SET value = ? WHERE key = ?').run(
        JSON.stringify({ ...m, wall: m.wall - ms }),
        CLOCK_MARK_KEY,
      );
    }
    const times: Record<string, readonly string[]> = {
      approval: ['createdAt', 'expiresAt'],
      tool_task: ['createdAt', 'updatedAt'],
    };
    const rows = db
      .prepare<[], { kind: string; id: string; data: string }>(
        "SELECT kind, id, data FROM records WHERE kind IN ('approval', 'tool_task')",
      )
      .all();
    for (const { kind, id, data } of rows) {
      const r = JSON.parse(data) as Record<string, number>;
      for (const f of times[kind]!) r[f]! -= ms;
      db.prepare('UPDATE records SET data = ? WHERE kind = ? AND id = ?').run(
        JSON.stringify(r),
        kind,
        id,
      );
    }
  } finally {
    db.close();
  }
}

describe.runIf(canTell)('agent-fabric serve restarted after its wall clock moved ahead', () => {
  it('keeps a pending approval and its MCP task for the time they had left, and says why', async () => {
    const dir = tempDir('cli-state-clock');
    const port = await freePort();
    const statePath = join(dir, '.fabric', 'state.db');
    writeEverythingConfig(dir, port, ADMIN, {
      policies: [{ name: 'approvals', rules: [{ tool: 'ev__echo', action: 'require_approval' }] }],
      approvals: { timeoutSeconds: 600 },
      agents: [{ name: 'worker' }],
    });

    const first = await serve(dir);
    const client = await connect(first.url, first.token);
    // A task-augmented call (an MCP task that lives 10 minutes) parked on the approval.
    const { task } = await client.request(
      {
        method: 'tools/call',
        params: { name: 'ev__echo', arguments: { message: 'm' }, task: { ttl: 600_000 } },
      },
      CreateTaskResultSchema,
    );
    let pending: Awaited<ReturnType<typeof listApprovals>> = [];
    await until(
      async () => (pending = await listApprovals(first.url, ADMIN, 'pending')).length > 0,
    );
    const [parked] = pending;
    await stop(first, 'SIGTERM');

    clockWasBehind(statePath, 2 * HOUR);
    const second = await serve(dir);
    const [restored, ...others] = await listApprovals(second.url, ADMIN, 'pending');
    expect(others).toEqual([]);
    expect(restored).toMatchObject({ id: parked!.id, status: 'pending' });
    // Moved back by the step: two hours, less what the wall clock and the boot-time clock
    // differ by over the seconds the restart took (milliseconds).
    expect(Math.abs(restored!.expiresAt - parked!.expiresAt)).toBeLessThan(1000);
    expect(restored!.expiresAt - restored!.createdAt).toBe(600_000);
    expect(second.out + second.err()).toMatch(
      /state: the wall clock moved ahead by (7199|7200|7201) s more than time passed while the sidecar was down/,
    );
    // The MCP task too: still waiting for the approval, not gone with a ttl run out.
    const again = await connect(second.url, second.token);
    const waiting = await again.experimental.tasks.getTask(task.taskId);
    expect(waiting.status).toBe('input_required');
    expect(Math.abs(Date.parse(waiting.createdAt) - Date.parse(task.createdAt))).toBeLessThan(1000);
    await stop(second, 'SIGTERM');
  }, 120_000);
});
