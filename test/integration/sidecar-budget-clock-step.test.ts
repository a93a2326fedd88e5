/**
 * A real sidecar (state in a SQLite file) whose wall clock steps ahead a day and an hour while an agent's
 * daily cost budget is spent: its next tool call over MCP is still refused, saying when the
 * budget frees; the operator's log has one warning and `/metrics` counts the step; the state
 * file holds the spend where the corrected clock puts it. `Date` and `performance.now` are the
 * test's, timers real (as test/security/dashboard-clock-step.test.ts).
 */
import { join } from 'node:path';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import type { GatewayLogEntry } from '../../src/gateway/tool-call-pipeline.js';
import {
  ADMIN_TOKEN,
  agentId,
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  httpClient,
  startTestSidecar,
  tempDir,
  text,
} from '../fixtures/gateway/harness.js';
import { budgetOnDisk, usedOnDisk } from '../fixtures/state/budget-rows.js';

const HOUR = 3_600_000;
const DAY = 24 * HOUR;
const BUCKET = 15 * 60_000;

describe('a sidecar whose wall clock steps ahead while a budget is spent', () => {
  let sidecar: Sidecar | undefined;
  let client: Client | undefined;
  let statePath: string;
  const logged: GatewayLogEntry[] = [];

  beforeAll(async () => {
    vi.useFakeTimers({ toFake: ['Date', 'performance'] });
    vi.setSystemTime(Date.UTC(2026, 2, 2, 10, 0, 30));
    const dir = tempDir('budget-clock-sidecar');
    statePath = join(dir, 'state.db');
    sidecar = await startTestSidecar(
      {
        state: { path: statePath },
        policies: [DEFAULT_ALLOW],
        agents: [{ name: 'worker', budget: { maxCostPerDay: 1 } }],
        toolCosts: { fabric__get_hook: 1 },
        hooks: { storagePath: join(dir, 'hooks'), useGitWorktree: false },
      },
      { logger: (entry) => logged.push(entry) },
    );
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'worker'));
  });
  const close = async (): Promise<void> => {
    await client?.close();
    await closeSidecar(sidecar);
    client = sidecar = undefined;
  };
  afterAll(async () => {
    await close();
    vi.useRealTimers();
  });

  it('keeps refusing the spent agent, with when it frees, warns once and counts the step', async () => {
    const id = agentId(sidecar!, 'worker');
    const ok = await client!.callTool({ name: 'fabric__get_hook', arguments: {} });
    expect(ok.isError, text(ok)).toBeFalsy();
    // An operator sets the clock a day and an hour ahead; a second passes.
    vi.setSystemTime(Date.now() + DAY + HOUR);
    vi.advanceTimersByTime(1000);
    const refused = await client!.callTool({ name: 'fabric__get_hook', arguments: {} });
    expect(refused.isError).toBe(true);
    // Spent in the 10:00 bucket, moved 25 hours on: it leaves the sliding day at 11:15 on the 4th.
    const frees = Date.UTC(2026, 2, 4, 11, 15);
    expect(text(refused)).toContain('FABRIC_ERR_BUDGET_EXCEEDED');
    expect(text(refused)).toContain(
      `The limit resets at ${new Date(frees).toISOString()} (in ${(frees - Date.now()) / 1000} s)`,
    );
    const warnings = logged.filter((e) => e.msg.startsWith('budgets:'));
    expect(warnings).toEqual([
      {
        level: 'warn',
        msg: 'budgets: the wall clock stepped ahead by 90000 s; budget windows keep the elapsed time they had left',
        stepMs: DAY + HOUR,
      },
    ]);
    const metrics = await (
      await fetch(new URL('/metrics', sidecar!.url), {
        headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
      })
    ).text();
    expect(metrics).toMatch(/^agent_fabric_budget_clock_steps_total 1$/m);
    // The state file holds the spend in the bucket the corrected clock puts it in.
    await close();
    const row = budgetOnDisk(statePath, `agent:${id}`)!;
    expect(row.cost).toMatchObject({ head: Date.UTC(2026, 2, 3, 11) / BUCKET });
    expect(usedOnDisk(row.cost)).toBe(1);
  });
});
