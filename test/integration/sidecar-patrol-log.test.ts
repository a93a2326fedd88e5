/**
 * The real `agent-fabric serve` (child process, JSON log on stderr) logs a hook patrol that
 * fails: the hook store's git objects are made unusable under it (the `objects` folder becomes a
 * file), an agent with an open hook is terminated, and every patrol run after that fails to
 * abandon its hook. Before, `patrol.error` was counted in /metrics and never logged. The
 * failure is logged once at `error` level — not once per run (the patrol runs every 0.2 s
 * here) — with the store's own message and without a credential; so is the failure of the
 * fabric's background recovery of the terminated agent's hook (its `error` event).
 */
import { execFileSync } from 'node:child_process';
import { rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { tempDir, until } from '../fixtures/gateway/harness.js';
import { cleanUp, serve, stop } from '../fixtures/state/serve.js';

afterAll(cleanUp);

const ADMIN = `fab_admin_${'Pq7w'.repeat(8)}`;

describe('sidecar log of a failing hook patrol', () => {
  it('logs patrol.error once at error level while it keeps failing, with no secret', async () => {
    const dir = tempDir('patrol-log');
    const storagePath = join(dir, 'hooks');
    writeFileSync(
      join(dir, 'fabric.json'),
      JSON.stringify({
        http: { host: '127.0.0.1', port: 0 },
        adminToken: ADMIN,
        state: 'memory',
        hooks: { storagePath, useGitWorktree: false, patrolIntervalSeconds: 0.2 },
        agents: [{ name: 'worker' }],
      }),
    );
    const r = await serve(dir);
    const base = new URL(r.url).origin;
    const call = async (method: string, body: unknown): Promise<Record<string, unknown>> => {
      const res = await fetch(`${base}/api/fabric.v1.${method}`, {
        method: 'POST',
        headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
        body: JSON.stringify(body),
      });
      expect(res.status, method).toBe(200);
      return (await res.json()) as Record<string, unknown>;
    };
    const patrolErrors = async (): Promise<number> => {
      const res = await fetch(`${base}/metrics`, { headers: { authorization: `Bearer ${ADMIN}` } });
      const m = /agent_fabric_hook_events_total\{event="patrol\.error"\} (\d+)/.exec(
        await res.text(),
      );
      return Number(m?.[1] ?? 0);
    };

    const { agents } = (await call('FabricService/ListAgents', {})) as {
      agents: { agentId: string }[];
    };
    const agentId = agents[0]!.agentId;
    await call('FabricService/CreateHook', { agentId, workItem: 'w' });
    // The store's objects can no longer be written.
    const gitDir = execFileSync('git', ['rev-parse', '--absolute-git-dir'], {
      cwd: storagePath,
      encoding: 'utf8',
    }).trim();
    rmSync(join(gitDir, 'objects'), { recursive: true, force: true });
    writeFileSync(join(gitDir, 'objects'), 'not a folder');
    await call('FabricService/TerminateAgent', { agentId });
    // Many failed runs (each counted in /metrics) …
    await until(async () => (await patrolErrors()) >= 10, 60_000);
    expect(await stop(r, 'SIGTERM')).toBe(0);

    const entries = r
      .err()
      .split('\n')
      .filter((l) => l.trim() !== '')
      .map((l) => JSON.parse(l) as { level: number; msg: string });
    // … one log line.
    const patrol = entries.filter((e) => e.msg.startsWith('hooks: a patrol run failed'));
    expect(patrol, r.err()).toHaveLength(1);
    expect(patrol[0]!.level).toBe(50); // pino's error
    expect(patrol[0]!.msg).toMatch(/could not commit hook state/);
    // The termination's own attempt to abandon the hook (the fabric's background recovery)
    // failed the same way, and is logged too (its `error` event was not listened to either).
    const recovery = entries.filter((e) => e.msg.startsWith('fabric: a background job failed'));
    expect(recovery).toHaveLength(1);
    expect(recovery[0]!.msg).toMatch(/could not commit hook state/);
    expect(r.err()).not.toContain(ADMIN);
    expect(r.err()).not.toContain(r.token);
  }, 120_000);
});
