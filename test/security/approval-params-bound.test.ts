/**
 * The arguments an approval keeps. An approval holds its call's parameters for the human who
 * decides it, in memory and in the state file, also once decided (within `maxResolved`, 1000):
 * one agent sending megabyte-sized calls that need approval, abandoning them or letting them
 * expire, filled the history and the state file with up to 1000 × its request size (4 MiB over
 * HTTP). A call needing approval whose arguments are more JSON than
 * `approvals.maxParamsBytes` is now refused before any approval exists. Real sidecar with a
 * state file, real upstream, the official SDK client; the store is read back.
 */
import { join } from 'node:path';
import Database from 'better-sqlite3';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEFAULT_MAX_APPROVAL_PARAMS_BYTES } from '../../src/policy/approval-manager.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import { listApprovals } from '../fixtures/api.js';
import {
  ADMIN_TOKEN,
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  httpClient,
  startTestSidecar,
  tempDir,
  text,
  until,
} from '../fixtures/gateway/harness.js';

const echoNeedsApproval = {
  name: 'echo-approval',
  priority: 100,
  rules: [{ tool: 'ev__echo', action: 'require_approval', reason: 'a human reads it' }],
};

function storedApprovals(statePath: string): number {
  const db = new Database(statePath, { readonly: true, fileMustExist: true });
  try {
    return (
      db.prepare("SELECT count(*) AS n FROM records WHERE kind = 'approval'").get() as {
        n: number;
      }
    ).n;
  } finally {
    db.close();
  }
}

describe('approvals.maxParamsBytes', () => {
  let sidecar: Sidecar;
  let agent: Client;
  let statePath: string;

  beforeAll(async () => {
    statePath = join(tempDir('approval-params'), 'state.db');
    sidecar = await startTestSidecar({
      upstreams: {
        ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
      },
      policies: [echoNeedsApproval, DEFAULT_ALLOW],
      approvals: { maxParamsBytes: 1024 },
      agents: [{ name: 'mallory' }],
      state: { path: statePath },
      gateway: { shutdownGraceSeconds: 0 },
    } as never);
    agent = await httpClient(sidecar.url!, agentToken(sidecar, 'mallory'));
  });

  afterAll(async () => {
    await agent?.close();
    await closeSidecar(sidecar);
  });

  it('refuses a call needing approval with larger arguments; no approval is kept or stored', async () => {
    for (const message of ['x'.repeat(2000), 'é'.repeat(600)]) {
      const result = await agent.callTool({ name: 'ev__echo', arguments: { message } });
      expect(result.isError).toBe(true);
      expect(text(result)).toContain('FABRIC_ERR_APPROVAL_LIMIT');
      expect(text(result)).toContain('approvals.maxParamsBytes');
    }
    expect(await listApprovals(sidecar.url!, ADMIN_TOKEN)).toEqual([]);
    expect(storedApprovals(statePath)).toBe(0);
  });

  it('a call within the bound waits for a human as before', async () => {
    const call = agent
      .callTool({ name: 'ev__echo', arguments: { message: 'y'.repeat(900) } })
      .catch((e: unknown) => e);
    await until(async () => (await listApprovals(sidecar.url!, ADMIN_TOKEN)).length === 1);
    expect(storedApprovals(statePath)).toBe(1);
    const [approval] = await listApprovals(sidecar.url!, ADMIN_TOKEN, 'pending');
    expect(approval?.params).toEqual({ message: 'y'.repeat(900) });
    await agent.close(); // the parked call ends with its session
    await call;
  });
});

describe('the default bound', () => {
  it(`is ${DEFAULT_MAX_APPROVAL_PARAMS_BYTES} bytes: a 300 KiB call needing approval is refused`, async () => {
    const sidecar = await startTestSidecar({
      upstreams: {
        ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
      },
      policies: [echoNeedsApproval, DEFAULT_ALLOW],
      agents: [{ name: 'mallory' }],
    } as never);
    const agent = await httpClient(sidecar.url!, agentToken(sidecar, 'mallory'));
    try {
      const result = await agent.callTool({
        name: 'ev__echo',
        arguments: { message: 'x'.repeat(300 * 1024) },
      });
      expect(text(result)).toContain('FABRIC_ERR_APPROVAL_LIMIT');
      expect(await listApprovals(sidecar.url!, ADMIN_TOKEN)).toEqual([]);
    } finally {
      await agent.close();
      await closeSidecar(sidecar);
    }
  });
});
