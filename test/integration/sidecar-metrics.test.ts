import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import { Priority } from '../../src/task.js';
import {
  ADMIN_TOKEN,
  agentId,
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  httpClient,
  startTestSidecar,
  text,
} from '../fixtures/gateway/harness.js';

/** One sample line: name, optional labels, value (Prometheus text format 0.0.4). */
const SAMPLE =
  /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (\S+)$/;

/**
 * Parses an exposition strictly: every sample belongs to a family declared by `# TYPE` before
 * it (histograms: `_bucket`, `_sum`, `_count`), every value is a number, no series repeats.
 */
function parseMetrics(body: string): Map<string, number> {
  const types = new Map<string, string>();
  const series = new Map<string, number>();
  for (const line of body.split('\n')) {
    if (line === '') continue;
    if (line.startsWith('# HELP ')) continue;
    const type = /^# TYPE (\S+) (counter|gauge|histogram)$/.exec(line);
    if (type) {
      expect(types.has(type[1]!), `family ${type[1]} declared twice`).toBe(false);
      types.set(type[1]!, type[2]!);
      continue;
    }
    const m = SAMPLE.exec(line);
    expect(m, `malformed line: ${line}`).not.toBeNull();
    const name = m![1]!;
    const family = types.has(name) ? name : name.replace(/_(bucket|sum|count)$/, '');
    expect(types.has(family), `sample before its # TYPE: ${line}`).toBe(true);
    const value = m![3] === '+Inf' ? Infinity : Number(m![3]);
    expect(Number.isNaN(value), line).toBe(false);
    const key = `${name}${m![2] ?? ''}`;
    expect(series.has(key), `series repeated: ${key}`).toBe(false);
    series.set(key, value);
  }
  return series;
}

describe('GET /metrics: scheduler, queues, task outcomes, budgets, hooks and the store', () => {
  let dir: string;
  let sidecar: Sidecar;
  let client: Client;

  const scrape = async (): Promise<Map<string, number>> => {
    const res = await fetch(new URL('/metrics', sidecar.url), {
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    expect(res.status).toBe(200);
    return parseMetrics(await res.text());
  };
  const get = (m: Map<string, number>, series: string): number => {
    const v = m.get(series);
    expect(v, `no series ${series}`).toBeDefined();
    return v!;
  };

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'fabric-metrics-'));
    sidecar = await startTestSidecar({
      state: { path: join(dir, 'state.db') },
      policies: [DEFAULT_ALLOW],
      pools: [{ id: 'builders', minAgents: 0 }],
      agents: [{ name: 'worker', budget: { maxCostPerDay: 1 } }, { name: 'planner' }],
      toolCosts: { fabric__get_hook: 1 },
      hooks: { storagePath: join(dir, 'hooks'), useGitWorktree: false },
    });
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'worker'));
  });

  afterAll(async () => {
    await client?.close();
    await closeSidecar(sidecar);
    await rm(dir, { recursive: true, force: true });
  });

  it('counts queue depth by priority, retries and task outcomes as tasks move', async () => {
    const fabric = sidecar.fabric!;
    const id = agentId(sidecar, 'worker');
    const before = await scrape();
    const high = await Promise.all(
      [1, 2].map(() =>
        fabric.schedule({ agentId: id, taskType: 'job', priority: Priority.HIGH, maxAttempts: 2 }),
      ),
    );
    const low = await fabric.schedule({ agentId: id, taskType: 'job', priority: Priority.LOW });
    const queued = await scrape();
    const q = (m: Map<string, number>, p: string): number =>
      get(m, `agent_fabric_tasks_queued{priority="${p}"}`);
    expect(q(queued, 'HIGH') - q(before, 'HIGH')).toBe(2);
    expect(q(queued, 'LOW') - q(before, 'LOW')).toBe(1);
    expect(q(queued, 'CRITICAL')).toBe(q(before, 'CRITICAL'));
    expect(
      get(queued, 'agent_fabric_tasks_scheduled_total') -
        get(before, 'agent_fabric_tasks_scheduled_total'),
    ).toBe(3);

    // HIGH first: one fails and is retried, then completes; the other fails for good.
    const a = await fabric.claimTask(id);
    expect(high.map((t) => t.id)).toContain(a!.taskId);
    expect(get(await scrape(), 'agent_fabric_tasks_running')).toBe(1);
    await fabric.failTask(id, a!.taskId, a!.attempt, 'flaky', { retry: true });
    const retried = await scrape();
    expect(
      get(retried, 'agent_fabric_task_retries_total') -
        get(before, 'agent_fabric_task_retries_total'),
    ).toBe(1);
    expect(q(retried, 'HIGH') - q(before, 'HIGH')).toBe(2);
    const b = await fabric.claimTask(id);
    await fabric.completeTask(id, b!.taskId, b!.attempt, { ok: true });
    const c = await fabric.claimTask(id);
    await fabric.failTask(id, c!.taskId, c!.attempt, 'broken', { retry: false });
    await fabric.cancelTask(low.id, 'not needed');
    const after = await scrape();
    const finished = (s: string): number =>
      get(after, `agent_fabric_tasks_finished_total{status="${s}"}`) -
      get(before, `agent_fabric_tasks_finished_total{status="${s}"}`);
    expect(finished('COMPLETED')).toBe(1);
    expect(finished('FAILED')).toBe(1);
    expect(finished('CANCELLED')).toBe(1);
    expect(finished('TIMED_OUT')).toBe(0);
    for (const p of ['CRITICAL', 'HIGH', 'NORMAL', 'LOW']) expect(q(after, p)).toBe(q(before, p));
    expect(get(after, 'agent_fabric_tasks_running')).toBe(0);
    expect(get(after, 'agent_fabric_pool_tasks_queued{pool="builders"}')).toBe(0);
  });

  it('counts 50 concurrent schedules exactly', async () => {
    const fabric = sidecar.fabric!;
    const id = agentId(sidecar, 'worker');
    const before = await scrape();
    const tasks = await Promise.all(
      Array.from({ length: 50 }, () => fabric.schedule({ agentId: id, taskType: 'bulk' })),
    );
    const after = await scrape();
    expect(
      get(after, 'agent_fabric_tasks_scheduled_total') -
        get(before, 'agent_fabric_tasks_scheduled_total'),
    ).toBe(50);
    expect(
      get(after, 'agent_fabric_tasks_queued{priority="NORMAL"}') -
        get(before, 'agent_fabric_tasks_queued{priority="NORMAL"}'),
    ).toBe(50);
    await Promise.all(tasks.map((t) => fabric.cancelTask(t.id)));
    expect(get(await scrape(), 'agent_fabric_tasks_queued{priority="NORMAL"}')).toBe(
      get(before, 'agent_fabric_tasks_queued{priority="NORMAL"}'),
    );
  });

  it('shows budget usage and counts budget refusals by code', async () => {
    const before = await scrape();
    const ok = await client.callTool({ name: 'fabric__get_hook', arguments: {} });
    expect(ok.isError, text(ok)).toBeFalsy();
    const refused = await client.callTool({ name: 'fabric__get_hook', arguments: {} });
    expect(text(refused)).toContain('FABRIC_ERR_BUDGET_EXCEEDED');
    const after = await scrape();
    const REFUSED =
      'agent_fabric_request_failures_total{outcome="denied",code="FABRIC_ERR_BUDGET_EXCEEDED"}';
    expect(get(after, REFUSED) - (before.get(REFUSED) ?? 0)).toBe(1);
    expect(
      get(after, 'agent_fabric_budget_cost_used{scope="fabric"}') -
        get(before, 'agent_fabric_budget_cost_used{scope="fabric"}'),
    ).toBe(1);
    expect(get(after, 'agent_fabric_budget_cost_limit{scope="fabric"}')).toBe(Infinity);
    expect(get(after, 'agent_fabric_budget_tokens_used{scope="pool:builders"}')).toBe(0);
    expect(get(after, 'agent_fabric_budget_waiting_calls')).toBe(0);
    // Only catalog codes (or `other`) become labels.
    for (const key of after.keys()) {
      if (!key.startsWith('agent_fabric_request_failures_total{')) continue;
      expect(key).toMatch(/code="(FABRIC_ERR_[A-Z_]+|other)"/);
    }
  });

  it('counts hook events and state-store commits', async () => {
    const before = await scrape();
    await sidecar.fabric!.hooks!.createHook({
      agentId: agentId(sidecar, 'worker'),
      workItem: { task: 'measure' },
    });
    await sidecar.fabric!.schedule({ agentId: agentId(sidecar, 'planner'), taskType: 'stored' });
    await new Promise((resolve) => setImmediate(resolve)); // the group commit
    const after = await scrape();
    const CREATED = 'agent_fabric_hook_events_total{event="hook.created"}';
    expect(get(after, CREATED) - get(before, CREATED)).toBe(1);
    expect(get(after, 'agent_fabric_store_up')).toBe(1);
    expect(get(after, 'agent_fabric_store_commits_total')).toBeGreaterThan(
      get(before, 'agent_fabric_store_commits_total'),
    );
    expect(get(after, 'agent_fabric_store_records_written_total')).toBeGreaterThan(
      get(before, 'agent_fabric_store_records_written_total'),
    );
    expect(get(after, 'agent_fabric_store_commit_failures_total')).toBe(0);
    expect(get(after, 'agent_fabric_store_waiting_calls')).toBe(0);
  });
});
