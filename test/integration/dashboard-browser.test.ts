/**
 * The web dashboard in a real browser: Debian's Chromium driven by playwright-core against a real
 * sidecar (real AgentFabric, server-everything as a stdio upstream, hooks in a real git repo).
 * The agent is the official MCP SDK client over the sidecar's MCP endpoint; a policy parks its
 * `ev__echo` calls for approval. The test logs in (a wrong token first), watches a spawned agent
 * appear, approves one parked call and sees the agent's call complete, denies another and sees
 * the agent get the denial, and uses every action (scale a pool, cancel a task, terminate an
 * agent, reassign its abandoned hook), checking each effect through the Operator API. It saves a
 * screenshot of each view: into docs/screenshots/ (the README shows them) when
 * FABRIC_UPDATE_SCREENSHOTS is set, else into a temporary directory, so a test run leaves the
 * checkout unchanged.
 *
 * Skips only when /usr/bin/chromium is missing and FABRIC_TEST_REQUIRE_BROWSER is unset
 * (.ci/run installs Chromium and sets it).
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { type Browser, type Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  ADMIN_TOKEN,
  agentId,
  agentToken,
  api,
  closeSidecar,
  httpClient,
  startTestSidecar,
  tempDir,
  text,
  until,
} from '../fixtures/gateway/harness.js';
import {
  chromiumAvailable,
  ECHO_NEEDS_APPROVAL,
  launchChromium,
  newDashboardPage,
} from '../fixtures/browser.js';

const available = chromiumAvailable();
const SHOTS =
  process.env.FABRIC_UPDATE_SCREENSHOTS !== undefined
    ? fileURLToPath(new URL('../../docs/screenshots/', import.meta.url))
    : tempDir('dashboard-shots');
/** A secret in a parked call's arguments: the inbox must show it masked. */
const SECRET = 's3cr3t-deploy-key-0042';
/** A value under a secret-like key: masked whole. */
const KEY = 'key-value-that-must-not-show-77';
/** How long a poll of the page waits (the machine is shared and slow; no timing is asserted). */
const POLL = { timeout: 20_000, interval: 100 };

async function json<T>(res: Response): Promise<T> {
  expect(res.status).toBe(200);
  return (await res.json()) as T;
}

describe.skipIf(!available)('the web dashboard in Chromium (playwright-core)', () => {
  let sidecar: Sidecar;
  let browser: Browser;
  let page: Page;
  let agent: Client;
  let base: string;
  const pageErrors: string[] = [];

  beforeAll(async () => {
    mkdirSync(SHOTS, { recursive: true });
    sidecar = await startTestSidecar({
      ...ECHO_NEEDS_APPROVAL,
      agents: [{ name: 'worker' }, { name: 'helper' }],
      hooks: {
        storagePath: join(tempDir('dash-hooks'), 'hooks'),
        useGitWorktree: false,
        autoReassign: false,
      },
    });
    base = new URL('/ui/', sidecar.url!).href;
    agent = await httpClient(sidecar.url!, agentToken(sidecar, 'worker'));
    browser = await launchChromium();
    // A script error in the page fails the test that runs into it (its output names the error).
    page = await newDashboardPage(browser, pageErrors);
  });

  afterEach(() => expect(pageErrors).toEqual([]));

  afterAll(async () => {
    await browser?.close();
    await agent?.close();
    await closeSidecar(sidecar);
  });

  const shot = (name: string): Promise<Buffer> =>
    page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
  const tab = async (id: string): Promise<void> => {
    await page.click(`#tab-${id}`);
    await page.waitForSelector(`#view-${id}:not([hidden])`);
  };

  it('refuses a wrong token with a clear error, then logs in with the admin token', async () => {
    await page.goto(base);
    await page.waitForSelector('#login:not([hidden])');
    await page.fill('#login-token', 'not-the-admin-token-000000');
    await page.click('#login-form button[type=submit]');
    await expect.poll(() => page.textContent('#login-error'), POLL).toBe('Wrong admin token.');
    expect(await page.context().cookies()).toEqual([]);
    await shot('login');

    await page.fill('#login-token', ADMIN_TOKEN);
    await page.click('#login-form button[type=submit]');
    await page.waitForSelector('#view-agents:not([hidden]) tr[data-name="worker"]');
    const [cookie, ...others] = await page.context().cookies();
    expect(others).toEqual([]);
    expect(cookie).toMatchObject({ name: 'fabric_session', httpOnly: true, sameSite: 'Strict' });
    expect(cookie!.value).not.toContain(ADMIN_TOKEN);
    // The token is nowhere in the page, its storage or its URL.
    expect(await page.content()).not.toContain(ADMIN_TOKEN);
    expect(page.url()).not.toContain(ADMIN_TOKEN);
    const storage = await page.evaluate('JSON.stringify({ ...localStorage, ...sessionStorage })');
    expect(storage).not.toContain(ADMIN_TOKEN);
    await expect.poll(() => page.textContent('#stream-state'), POLL).toBe('live');
    expect(await page.isVisible('#login')).toBe(false);
  });

  it('shows a spawned agent appear', async () => {
    await json(
      await api(sidecar, 'FabricService/SpawnAgent', {
        name: 'live-one',
        model: 'demo-model',
        executor: 'remote',
      }),
    );
    const row = await page.waitForSelector('#view-agents tr[data-name="live-one"]');
    expect(await row.textContent()).toContain('STARTING');
    await shot('agents');
  });

  it('approves a parked tool call in the inbox and the agent’s MCP call completes', async () => {
    const call = agent.callTool({
      name: 'ev__echo',
      arguments: { message: `deploy with Bearer ${SECRET}`, apiKey: KEY },
    }) as Promise<CallToolResult>;
    let settled = false;
    void call.finally(() => (settled = true));
    await tab('approvals');
    const row = page.locator('#view-approvals tr[data-tool="ev__echo"]');
    await row.waitFor();
    const shown = (await row.textContent()) ?? '';
    expect(shown).toContain('worker');
    expect(shown).toContain('human-in-the-loop');
    expect(shown).toContain('echo needs a human');
    expect(shown).toContain('Bearer ••••••');
    expect(shown).not.toContain(SECRET);
    expect(shown).toMatch(/"apiKey": "••••••"/);
    expect(shown).not.toContain(KEY);
    expect(settled).toBe(false);
    await shot('approvals');
    await row.locator('input.reason').fill('looks fine');
    // Approve asks once more (the first click arms the button).
    await row.locator('button.approve').click();
    await expect
      .poll(() => row.locator('button.approve').textContent(), POLL)
      .toBe('Confirm approve');
    await row.locator('button.approve').click();
    const result = await call;
    expect(result.isError).toBeFalsy();
    expect(text(result)).toContain(`Echo: deploy with Bearer ${SECRET}`);
    const decided = await page.waitForSelector('#view-approvals tr[data-status="APPROVED"]');
    expect(await decided.textContent()).toContain('admin');
    expect(await decided.textContent()).toContain('looks fine');
  });

  it('denies another with a reason and the agent gets the denial', async () => {
    const call = agent.callTool({
      name: 'ev__echo',
      arguments: { message: 'rm -rf /' },
    }) as Promise<CallToolResult>;
    // Pending rows carry the tool; decided rows their status.
    const row = page.locator('#view-approvals tr[data-tool="ev__echo"]');
    await row.waitFor();
    await row.locator('input.reason').fill('not on my watch');
    await row.locator('button.danger').click();
    const result = await call;
    expect(result.isError).toBe(true);
    expect(text(result)).toContain('FABRIC_ERR_APPROVAL_DENIED');
    expect(text(result)).toContain('not on my watch');
    await page.waitForSelector('#view-approvals tr[data-status="DENIED"]');
    const { approvals } = await json<{ approvals: { status: string; approver: string }[] }>(
      await api(sidecar, 'ApprovalService/ListApprovals', {}),
    );
    expect(approvals.map((a) => [a.status, a.approver])).toEqual([
      ['APPROVAL_STATUS_APPROVED', 'admin'],
      ['APPROVAL_STATUS_DENIED', 'admin'],
    ]);
    await shot('approvals-decided');
  });

  it('lists the tool calls live with their decision and rule', async () => {
    // One call that policy allows at once, for contrast with the approved one.
    const r = (await agent.callTool({
      name: 'ev__get-sum',
      arguments: { a: 1, b: 2 },
    })) as CallToolResult;
    expect(r.isError).toBeFalsy();
    await tab('toolcalls');
    const approved = await page.waitForSelector(
      '#view-toolcalls tr[data-tool="ev__echo"][data-outcome="ok"]',
    );
    expect(await approved.textContent()).toContain('approved');
    const denied = await page.waitForSelector(
      '#view-toolcalls tr[data-tool="ev__echo"][data-outcome="denied"]',
    );
    expect(await denied.textContent()).toContain('human-in-the-loop');
    const allowed = await page.waitForSelector('#view-toolcalls tr[data-tool="ev__get-sum"]');
    expect(await allowed.textContent()).toContain('allow');
    expect(await allowed.textContent()).toContain('default-allow');
    await shot('toolcalls');
  });

  it('scales a pool from the Pools view', async () => {
    await json(
      await api(sidecar, 'FabricService/CreatePool', {
        poolId: 'builders',
        model: 'demo-model',
        minAgents: 1,
        maxAgents: 4,
        executor: 'remote',
      }),
    );
    await tab('pools');
    const row = page.locator('#view-pools tr[data-pool="builders"]');
    await row.locator('input').fill('3');
    await row.locator('button').click();
    await until(async () => {
      const { pool } = await json<{ pool: { agentIds?: string[] } }>(
        await api(sidecar, 'FabricService/GetPool', { poolId: 'builders' }),
      );
      return pool.agentIds?.length === 3;
    });
    await expect
      .poll(() => page.textContent('#view-pools tr[data-pool="builders"]'), POLL)
      .toContain('3 (1–4)');
    await shot('pools');
  });

  it('cancels a task from the Tasks view', async () => {
    const { task } = await json<{ task: { taskId: string } }>(
      await api(sidecar, 'FabricService/ScheduleTask', {
        agentId: agentId(sidecar, 'helper'),
        taskType: 'report',
        payload: { week: 48 },
        options: { priority: 'TASK_PRIORITY_HIGH' },
      }),
    );
    await tab('tasks');
    const row = page.locator(`#view-tasks tr[data-task="${task.taskId}"]`);
    expect(await row.textContent()).toContain('HIGH');
    await row.locator('button.danger').click(); // arms it
    await row.locator('button.danger.armed').click(); // confirms
    await until(async () => {
      const got = await json<{ task: { status: string } }>(
        await api(sidecar, 'FabricService/GetTask', { taskId: task.taskId }),
      );
      return got.task.status === 'TASK_STATUS_CANCELLED';
    });
    await expect
      .poll(() => page.textContent(`#view-tasks tr[data-task="${task.taskId}"]`), POLL)
      .toContain('CANCELLED');
    await shot('tasks');
  });

  it('shows budgets as bars with the warning line and the reset time', async () => {
    await json(
      await api(sidecar, 'BudgetService/SetBudgetLimits', {
        scope: { fabric: true },
        limits: { maxTokensPerHour: 5000, maxCostPerDay: 10, warnAtPercent: 70 },
      }),
    );
    await tab('budgets');
    const card = await page.waitForSelector('#view-budgets .card[data-scope="fabric"]');
    expect(await card.$$('.bar')).toHaveLength(2);
    const warnLines = page.locator('#view-budgets .card[data-scope="fabric"] .bar-warn');
    expect(await warnLines.count()).toBe(2);
    for (const line of await warnLines.all()) {
      expect(await line.getAttribute('style')).toBe('left: 70%;');
    }
    expect(await card.textContent()).toContain('warning at 70%');
    // The CSP allows no inline style attribute: the bars are sized through the CSSOM.
    const used = await page
      .locator('#view-budgets .card[data-scope="fabric"] .bar-used')
      .first()
      .boundingBox();
    expect(used!.width).toBeGreaterThan(0);
    await shot('budgets');
  });

  it('shows upstream health', async () => {
    await tab('upstreams');
    const row = await page.waitForSelector('#view-upstreams tr[data-upstream="ev"]');
    expect(await row.textContent()).toContain('connected');
    await shot('upstreams');
  });

  it('terminates an agent and reassigns its abandoned hook', async () => {
    const { spawned } = await json<{ spawned: { agent: { agentId: string } } }>(
      await api(sidecar, 'FabricService/SpawnAgent', { name: 'doomed', model: 'demo-model' }),
    );
    const doomed = spawned.agent.agentId;
    const { hook } = await json<{ hook: { hookId: string } }>(
      await api(sidecar, 'FabricService/CreateHook', {
        agentId: doomed,
        workItem: { fix: 'flaky test' },
        branch: 'fix/flaky-test',
      }),
    );
    await tab('agents');
    const row = page.locator(`#view-agents tr[data-agent="${doomed}"]`);
    await row.locator('button.danger').click(); // arms it
    await row.locator('button.danger.armed').click(); // confirms
    await until(async () => {
      const got = await json<{ agent: { status: string } }>(
        await api(sidecar, 'FabricService/GetAgent', { agentId: doomed }),
      );
      return got.agent.status === 'AGENT_STATUS_TERMINATED';
    });
    await until(async () => {
      const got = await json<{ hook: { status: string } }>(
        await api(sidecar, 'FabricService/GetHook', { hookId: hook.hookId }),
      );
      return got.hook.status === 'HOOK_STATUS_ABANDONED';
    });
    await tab('hooks');
    const hookRow = page.locator(`#view-hooks tr[data-hook="${hook.hookId}"]:has(select)`);
    await hookRow.waitFor();
    expect(await hookRow.textContent()).toContain('fix/flaky-test');
    expect(await hookRow.textContent()).toContain('ABANDONED');
    await shot('hooks');
    const helper = agentId(sidecar, 'helper');
    await hookRow.locator('select').selectOption(helper);
    await hookRow.locator('button').click();
    await until(async () => {
      const got = await json<{ hook: { status: string; agentId: string } }>(
        await api(sidecar, 'FabricService/GetHook', { hookId: hook.hookId }),
      );
      return got.hook.agentId === helper && got.hook.status === 'HOOK_STATUS_PENDING';
    });
  });

  it('logs out: the cookie is gone and the API refuses the old session', async () => {
    const [cookie] = await page.context().cookies();
    await page.click('#logout');
    await page.waitForSelector('#login:not([hidden])');
    expect(await page.context().cookies()).toEqual([]);
    const res = await fetch(new URL('/api/fabric.v1.FabricService/ListAgents', sidecar.url!), {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        cookie: `fabric_session=${cookie!.value}`,
        origin: new URL(sidecar.url!).origin,
      },
      body: '{}',
    });
    expect(res.status).toBe(401);
  });
});
