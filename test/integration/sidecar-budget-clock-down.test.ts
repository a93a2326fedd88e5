/**
 * The wall clock moved while the sidecar was down. A real sidecar over a SQLite state file, its
 * agent's daily cost budget spent, is stopped; the clock is set two days ahead and the sidecar
 * started again on the same file; then stopped, the clock corrected back, and started a third
 * time. Real time — the machine's boot-time clock, `/proc/uptime` — moved only seconds: each
 * start takes the difference for a step of the wall clock (the windows' rows carry the clocks'
 * readings when written) and moves the usage by it. Before, the step ahead passed for two days of
 * time: the spent budget was free again at once and the agent spent it a second time within
 * the same real day (and the correction back then kept only the second spend). `Date` and
 * `performance.now` are the test's, the boot-time clock and timers real. And the other way: two
 * days that really passed while the budgets were down (a test boot-time clock moving with them)
 * free the usage, as they did.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { BudgetManager } from '../../src/budget/budget-manager.js';
import type { AgentRecord } from '../../src/lifecycle/lifecycle-manager.js';
import type { PoolRecord } from '../../src/pools/pool-manager.js';
import type { TaskRecord } from '../../src/scheduler/task-record.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import { SqliteStore } from '../../src/store/sqlite-store.js';
import {
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

const DAY = 24 * 60 * 60_000;
const canTell =
  existsSync('/proc/uptime') &&
  existsSync('/proc/sys/kernel/random/boot_id') &&
  readFileSync('/proc/sys/kernel/random/boot_id', 'latin1').trim() !== '';

describe.runIf(canTell)('a sidecar restarted after its wall clock moved while it was down', () => {
  const dir = tempDir('budget-clock-down');
  const statePath = join(dir, 'state.db');
  let sidecar: Sidecar | undefined;
  let client: Client | undefined;

  const start = async (): Promise<void> => {
    sidecar = await startTestSidecar({
      state: { path: statePath },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'worker', budget: { maxCostPerDay: 1 } }],
      toolCosts: { fabric__get_hook: 1 },
      hooks: { storagePath: join(dir, 'hooks'), useGitWorktree: false },
    });
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'worker'));
  };
  const stop = async (): Promise<void> => {
    await client?.close();
    await closeSidecar(sidecar);
    client = sidecar = undefined;
  };
  const call = () => client!.callTool({ name: 'fabric__get_hook', arguments: {} });

  beforeAll(async () => {
    vi.useFakeTimers({ toFake: ['Date', 'performance'] });
    vi.setSystemTime(Date.UTC(2026, 2, 2, 10, 0, 30));
    await start();
  });
  afterAll(async () => {
    await stop();
    vi.useRealTimers();
  });

  it('keeps the spent budget spent, neither freed by the step ahead nor doubled by the correction', async () => {
    const id = agentId(sidecar!, 'worker');
    const ok = await call();
    expect(ok.isError, text(ok)).toBeFalsy();
    await stop();
    const written = budgetOnDisk(statePath, `agent:${id}`)!;
    expect(usedOnDisk(written.cost)).toBe(1);
    expect(written.clock).toMatchObject({ wall: Date.UTC(2026, 2, 2, 10, 0, 30) });

    // Down: the clock is set two days ahead. Started again, the spend is still today's.
    vi.setSystemTime(Date.now() + 2 * DAY);
    await start();
    expect(agentId(sidecar!, 'worker')).toBe(id);
    const ahead = await call();
    expect(ahead.isError).toBe(true);
    expect(text(ahead)).toContain('FABRIC_ERR_BUDGET_EXCEEDED');
    await stop();
    expect(usedOnDisk(budgetOnDisk(statePath, `agent:${id}`)!.cost)).toBe(1);

    // Down again: the clock is corrected back. Started a third time: still spent, once.
    vi.setSystemTime(Date.now() - 2 * DAY);
    await start();
    const back = await call();
    expect(back.isError).toBe(true);
    expect(text(back)).toContain('FABRIC_ERR_BUDGET_EXCEEDED');
    await stop();
    const last = budgetOnDisk(statePath, `agent:${id}`)!;
    expect(usedOnDisk(last.cost)).toBe(1);
    // Where the corrected clock puts it: the 10:00 bucket of the day it was spent (15 min ones).
    expect(last.cost).toMatchObject({ head: Date.UTC(2026, 2, 2, 10) / (15 * 60_000) });
  });
});

describe.runIf(canTell)('budgets over a state file, down while time really passed', () => {
  afterAll(() => vi.useRealTimers());

  it('frees the usage when the boot-time clock passed as much as the wall clock', async () => {
    vi.useFakeTimers({ toFake: ['Date', 'performance'] });
    vi.setSystemTime(Date.UTC(2026, 2, 2, 10, 0, 30));
    const path = join(tempDir('budget-clock-down-real'), 'state.db');
    // The boot-time clock moves with the test's monotonic one: time the test lets pass passed.
    const bootClock = () => performance.now();
    const first = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(path);
    const before = new BudgetManager({ store: first.budgets!, bootClock });
    before.setBudget('a', { maxTokensPerHour: 1000, maxCostPerDay: 1 });
    before.recordUsage('a', { tokens: 1000, cost: 1 });
    first.close();
    expect(usedOnDisk(budgetOnDisk(path, 'agent:a')!.tokens)).toBe(1000);

    // Down for two days that really pass (wall, monotonic and boot-time clocks together).
    vi.advanceTimersByTime(2 * DAY);
    const second = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(path);
    try {
      const after = new BudgetManager({ store: second.budgets!, bootClock });
      // Its limits come from the row; its usage left the windows.
      expect(after.getStatus('a')).toMatchObject({
        tokensLimit: 1000,
        costLimit: 1,
        tokensUsed: 0,
        costUsed: 0,
      });
    } finally {
      second.close();
    }
  });
});
