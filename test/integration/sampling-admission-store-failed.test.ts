/**
 * A sampling request whose budget hold cannot be covered on disk (the state file's disk is
 * full) is refused with `FABRIC_ERR_STATE_STORE`, and `/metrics` counts it as an error, not as
 * a denial: the budget had room, the store failed. Real sidecar on a SQLite state file in this
 * process (its file size limit set to 0 with `prlimit`), the SDK-built callback fixture, the
 * official SDK client, the real `/metrics`.
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { CreateMessageRequestSchema } from '@modelcontextprotocol/sdk/types.js';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import { diskFullHere as diskFull } from '../fixtures/state/disk-full.js';
import {
  agentToken,
  CALLBACK_SERVER,
  closeSidecar,
  DEFAULT_ALLOW,
  httpClient,
  metricValue,
  startTestSidecar,
  tempDir,
  text,
  untilTool,
} from '../fixtures/gateway/harness.js';

describe('a sampling request whose budget hold the store cannot cover', () => {
  let sidecar: Sidecar | undefined;
  let client: Client | undefined;
  afterEach(() => diskFull(false));
  afterAll(async () => {
    diskFull(false);
    await client?.close().catch(() => undefined);
    await closeSidecar(sidecar);
  });

  it('is refused with FABRIC_ERR_STATE_STORE and counted as an error', async () => {
    const dir = tempDir('sampling-store-failed');
    sidecar = await startTestSidecar({
      state: { path: join(dir, 'state.db') },
      upstreams: { cb: { command: process.execPath, args: [CALLBACK_SERVER], stderr: 'ignore' } },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'a', budget: { maxTokensPerHour: 20_000 } }],
    });
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'a'), { sampling: {} });
    let runs = 0;
    client.setRequestHandler(CreateMessageRequestSchema, () => {
      runs += 1;
      return { role: 'assistant', model: 'm', content: { type: 'text', text: 'ok' } };
    });
    await untilTool(client, 'cb__sample_many');
    // A first call: the tool's estimate is learned and the budget's lease is on disk.
    await client.callTool({ name: 'cb__sample_many', arguments: { count: 1, chars: 10 } });
    expect(runs).toBe(1);
    diskFull(true);
    // A request far past what the lease covers: its hold needs a commit, which fails.
    const result = await client.callTool({
      name: 'cb__sample_many',
      arguments: { count: 1, chars: 40_000 },
    });
    diskFull(false);
    expect(runs).toBe(1);
    expect(text(result)).toContain('"errors":1');
    const series = (outcome: string) =>
      `agent_fabric_request_failures_total{outcome="${outcome}",code="FABRIC_ERR_STATE_STORE"}`;
    expect(await metricValue(sidecar, series('error'))).toBe(1);
    expect(await metricValue(sidecar, series('denied'))).toBeNaN();
  });
});
