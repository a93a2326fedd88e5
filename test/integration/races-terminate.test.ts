/**
 * An operator terminates an agent while its calls are in flight (a real sidecar over HTTP with a
 * SQLite state file, a real slow upstream that does not stop on a cancel, a real
 * server-filesystem upstream, the official SDK client, the Operator API):
 *
 * - a call already at its upstream is cancelled there; its cost reservation is settled — charged
 *   (the upstream may have done the work), never left reserved — and the charge is in the state
 *   file after the sidecar closes;
 * - a call parked for a human approval ends with the agent (`FABRIC_ERR_AGENT_UNAVAILABLE`), and
 *   approving its approval afterwards runs nothing.
 */
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  DEFAULT_ALLOW,
  agentId,
  agentToken,
  api,
  filesystemUpstream,
  httpClient,
  tempDir,
  text,
  until,
} from '../fixtures/gateway/harness.js';
import {
  APPROVE_WRITES,
  closeRaceSidecar,
  closeRaceSidecarAfterEach,
  firstPendingApproval,
  startRaceSidecar,
} from '../fixtures/races.js';
import { costOnDisk } from '../fixtures/state/budget-rows.js';

const SLOW_SERVER = fileURLToPath(new URL('../fixtures/gateway/slow-server.mjs', import.meta.url));

closeRaceSidecarAfterEach();

describe('an agent terminated while its calls are in flight', () => {
  it('settles the reservation of a call at its upstream, on disk too', async () => {
    const dir = tempDir('races-terminate');
    const statePath = join(dir, 'state.db');
    const countFile = join(dir, 'count.txt');
    const s = await startRaceSidecar({
      state: { path: statePath },
      upstreams: {
        slow: {
          command: process.execPath,
          args: [SLOW_SERVER],
          env: { COUNT_FILE: countFile },
          stderr: 'ignore',
        },
      },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'worker', budget: { maxCostPerDay: 10 } }],
      toolCosts: { slow__slow: 3 },
    });
    const id = agentId(s, 'worker');
    const client = await httpClient(s.url!, agentToken(s, 'worker'));
    const call = client.callTool({ name: 'slow__slow', arguments: { label: 'a', ms: 3000 } }).then(
      (r) => ({ result: r }),
      (error: unknown) => ({ error }),
    );
    await until(() => existsSync(countFile) && readFileSync(countFile, 'utf8').includes('start a'));
    expect(s.fabric!.budgets.getStatus(id).costReserved).toBe(3);
    const res = await api(s, 'FabricService/TerminateAgent', { agentId: id, drainTimeout: '0s' });
    expect(res.status).toBe(200);
    await call; // ends with the agent, whichever way
    await until(() => s.fabric!.budgets.getStatus(id).costReserved === 0);
    const status = s.fabric!.budgets.getStatus(id);
    expect(status.costUsed).toBe(3);
    await closeRaceSidecar();
    expect(costOnDisk(statePath, `agent:${id}`)).toBe(3);
  }, 60_000);

  it('ends a call parked for approval; approving it afterwards runs nothing', async () => {
    const root = tempDir('races-terminate-fs');
    const s = await startRaceSidecar({
      upstreams: { fs: filesystemUpstream(root) },
      policies: [APPROVE_WRITES, DEFAULT_ALLOW],
      agents: [{ name: 'worker' }],
    });
    const id = agentId(s, 'worker');
    const client = await httpClient(s.url!, agentToken(s, 'worker'));
    const target = join(root, 'late.txt');
    const call = client
      .callTool({ name: 'fs__write_file', arguments: { path: target, content: 'x' } }, undefined, {
        timeout: 60_000,
      })
      .then(
        (r) => ({ result: r }),
        (error: unknown) => ({ error }),
      );
    const parked = await firstPendingApproval(s);
    const res = await api(s, 'FabricService/TerminateAgent', { agentId: id, drainTimeout: '0s' });
    expect(res.status).toBe(200);
    const ended = await call;
    if ('result' in ended) expect(text(ended.result)).toContain('FABRIC_ERR_AGENT_UNAVAILABLE');
    await api(s, 'ApprovalService/Approve', { id: parked!.id });
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(existsSync(target)).toBe(false);
  }, 60_000);
});
