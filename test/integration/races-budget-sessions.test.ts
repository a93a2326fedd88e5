/**
 * One agent's credential used by several MCP sessions at once for calls its cost budget limits
 * (a real sidecar over HTTP with a SQLite state file, a real server-everything upstream, the
 * official SDK client): concurrency does not overspend — exactly as many calls run as the
 * budget holds, the rest are refused with `FABRIC_ERR_BUDGET_EXCEEDED`, and the spend in the
 * fabric and in the state file is the limit, never more.
 */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  agentId,
  agentToken,
  httpClient,
  tempDir,
  text,
} from '../fixtures/gateway/harness.js';
import {
  closeRaceSidecar,
  closeRaceSidecarAfterEach,
  startRaceSidecar,
} from '../fixtures/races.js';
import { costOnDisk } from '../fixtures/state/budget-rows.js';

closeRaceSidecarAfterEach();

describe('one agent, many sessions, one cost budget', () => {
  it('runs exactly what the budget holds, whatever the concurrency', async () => {
    const statePath = join(tempDir('races-budget-sessions'), 'state.db');
    const s = await startRaceSidecar({
      state: { path: statePath },
      upstreams: {
        ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
      },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'worker', budget: { maxCostPerDay: 5 } }],
      toolCosts: { 'ev__get-sum': 1 },
      gateway: { budgetWaitSeconds: 30 },
    });
    const id = agentId(s, 'worker');
    const token = agentToken(s, 'worker');
    const sessions = await Promise.all([1, 2, 3].map(() => httpClient(s.url!, token)));
    const results = await Promise.all(
      sessions.flatMap((c, i) =>
        Array.from({ length: 6 }, (_, j) =>
          c.callTool({ name: 'ev__get-sum', arguments: { a: i, b: j } }),
        ),
      ),
    );
    const ok = results.filter((r) => !r.isError);
    const refused = results.filter((r) => r.isError);
    expect(ok).toHaveLength(5);
    for (const r of refused) expect(text(r)).toContain('FABRIC_ERR_BUDGET_EXCEEDED');
    const status = s.fabric!.budgets.getStatus(id);
    expect(status.costUsed).toBe(5);
    expect(status.costReserved).toBe(0);
    for (const c of sessions) await c.close();
    await closeRaceSidecar();
    expect(costOnDisk(statePath, `agent:${id}`)).toBe(5);
  }, 60_000);
});
