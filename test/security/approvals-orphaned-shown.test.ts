/**
 * A pending approval that no call waits for any more (`orphaned`: its client cancelled the
 * call, its session went, or the sidecar restarted) can still be decided, and approving it runs
 * nothing — but the operator's views did not say so: `approvals list` showed it as PENDING like
 * the call an agent is waiting on, `approvals approve` answered "APPROVED (tool by agent)", and
 * the dashboard's inbox showed it with the same Approve button. An operator approving it thought
 * the call had run. Now the CLI's tables and `approvals show` mark it, `approve`/`deny` say that nothing runs, and the
 * inbox shows a warning on it (and the decided list says nothing ran).
 *
 * Real parts: a real sidecar, server-filesystem as the upstream over stdio (its writes checked
 * on disk), the official MCP SDK client as the agent, the real CLI as a child process, and
 * Chromium (playwright-core) for the dashboard.
 */
import { execFile } from 'node:child_process';
import { existsSync, readFileSync, realpathSync } from 'node:fs';
import { join } from 'node:path';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import type { Browser, Page } from 'playwright-core';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import { listApprovals } from '../fixtures/api.js';
import {
  chromiumAvailable,
  launchChromium,
  logInDashboard,
  newDashboardPage,
} from '../fixtures/browser.js';
import { startFsApprovalSidecar } from '../fixtures/fs-approvals.js';
import {
  ADMIN_TOKEN,
  agentToken,
  CLI_MAIN,
  closeSidecar,
  httpClient,
  tempDir,
  text,
  TSX,
  until,
} from '../fixtures/gateway/harness.js';

interface Ran {
  code: number | null;
  out: string;
  err: string;
}

const POLL = { timeout: 20_000, interval: 100 };

describe('an approval no call waits for any more, as the operator sees it', () => {
  const root = realpathSync(tempDir('orphaned-shown'));
  const left = join(root, 'left.txt');
  const waited = join(root, 'waited.txt');
  let sidecar: Sidecar;
  let agent: Client;
  let leftId = '';
  let waitedId = '';
  let waiting: Promise<CallToolResult>;

  const pending = () => listApprovals(sidecar.url!, ADMIN_TOKEN, 'pending');

  /** Runs the real `agent-fabric` CLI against the sidecar with the admin token. */
  const cli = (args: readonly string[]): Promise<Ran> =>
    new Promise((resolve) => {
      const env = { ...process.env, FABRIC_URL: sidecar.url!, FABRIC_ADMIN_TOKEN: ADMIN_TOKEN };
      execFile(
        process.execPath,
        ['--import', TSX, CLI_MAIN, ...args],
        { cwd: root, env, timeout: 60_000 },
        (error, out, err) => {
          const code = error ? (typeof error.code === 'number' ? error.code : null) : 0;
          resolve({ code, out, err });
        },
      );
    });

  beforeAll(async () => {
    sidecar = await startFsApprovalSidecar(root, 'fs__write_file');
    agent = await httpClient(sidecar.url!, agentToken(sidecar, 'worker'));

    // One call parks, then its client gives up on it: its approval is left with no caller.
    const abandon = new AbortController();
    const abandoned = agent
      .callTool({ name: 'fs__write_file', arguments: { path: left, content: 'left' } }, undefined, {
        signal: abandon.signal,
        timeout: 600_000,
      })
      .catch((error: unknown) => error);
    await until(async () => (await pending()).length === 1, 30_000);
    leftId = (await pending())[0]!.id;
    abandon.abort();
    await abandoned;
    await until(async () => (await pending())[0]?.orphaned === true, 30_000);

    // Another one parks and its caller waits for the decision.
    waiting = agent.callTool(
      { name: 'fs__write_file', arguments: { path: waited, content: 'waited' } },
      undefined,
      { timeout: 600_000 },
    ) as Promise<CallToolResult>;
    await until(async () => (await pending()).length === 2, 30_000);
    waitedId = (await pending()).find((a) => a.id !== leftId)!.id;
  }, 120_000);

  afterAll(async () => {
    await agent?.close();
    await closeSidecar(sidecar);
  });

  it('`approvals list` marks the one nobody waits for, not the other', async () => {
    const listed = await cli(['approvals', 'list']);
    expect(listed.code).toBe(0);
    const line = (id: string): string => listed.out.split('\n').find((l) => l.includes(id)) ?? '';
    expect(line(leftId)).toContain('PENDING (NO CALL WAITS)');
    expect(line(waitedId)).toContain('PENDING');
    expect(line(waitedId)).not.toContain('NO CALL WAITS');
  }, 120_000);

  it('`approvals show` says it of the one nobody waits for, not of the other', async () => {
    const status = async (id: string): Promise<string> => {
      const shown = await cli(['approvals', 'show', id]);
      expect(shown.code, shown.err).toBe(0);
      return shown.out.split('\n').find((l) => l.startsWith('status:')) ?? '';
    };
    expect(await status(leftId)).toMatch(
      /^status: +PENDING \(NO CALL WAITS\) — .*approving it runs nothing$/,
    );
    expect(await status(waitedId)).toMatch(/^status: +PENDING$/);
  }, 120_000);

  describe.skipIf(!chromiumAvailable())('the dashboard', () => {
    let browser: Browser;
    let page: Page;
    const pageErrors: string[] = [];

    beforeAll(async () => {
      browser = await launchChromium();
      page = await newDashboardPage(browser, pageErrors);
      await logInDashboard(page, sidecar.url!, ADMIN_TOKEN);
      await page.click('#tab-approvals');
      await page.waitForSelector('#view-approvals:not([hidden])');
    }, 120_000);

    afterEach(() => expect(pageErrors).toEqual([]));
    afterAll(async () => browser?.close());

    it('warns on the pending approval nobody waits for, not on the other', async () => {
      const row = (id: string) => page.locator(`#view-approvals tr[data-approval="${id}"]`);
      await row(leftId).waitFor();
      await row(waitedId).waitFor();
      await expect
        .poll(() => row(leftId).locator('.orphaned').textContent(), POLL)
        .toContain('approving it runs nothing');
      expect(await row(waitedId).locator('.orphaned').count()).toBe(0);
    }, 60_000);
  });

  it('`approvals approve` says nothing runs for it, and nothing is written; the waited one runs', async () => {
    const approved = await cli(['approvals', 'approve', leftId]);
    expect(approved.code).toBe(0);
    expect(approved.out).toContain(`${leftId} APPROVED`);
    expect(approved.out).toContain('nothing runs');
    expect(existsSync(left)).toBe(false);

    const other = await cli(['approvals', 'approve', waitedId]);
    expect(other.code).toBe(0);
    expect(other.out).not.toContain('nothing runs');
    const result = await waiting;
    expect(result.isError, text(result)).toBeFalsy();
    expect(readFileSync(waited, 'utf8')).toBe('waited');
    expect(existsSync(left)).toBe(false);
  }, 120_000);
});
