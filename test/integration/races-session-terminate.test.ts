/**
 * MCP sessions of an agent opened while an operator terminates it (a real sidecar over HTTP, a
 * real server-everything upstream, the official SDK client, the Operator API): however the
 * `initialize` requests and the termination interleave, no session of the agent is left that
 * can call a tool, and a new session is refused.
 */
import { describe, expect, it } from 'vitest';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import {
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  agentId,
  agentToken,
  api,
  httpClient,
  text,
} from '../fixtures/gateway/harness.js';
import { closeRaceSidecarAfterEach, startRaceSidecar } from '../fixtures/races.js';

closeRaceSidecarAfterEach();

describe('sessions opened while their agent is terminated', () => {
  it('leaves no session that can call a tool', async () => {
    const s = await startRaceSidecar({
      upstreams: {
        ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
      },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'worker' }],
    });
    const token = agentToken(s, 'worker');
    const opening = Array.from({ length: 8 }, () =>
      httpClient(s.url!, token).then(
        (c) => c,
        () => undefined,
      ),
    );
    const terminated = api(s, 'FabricService/TerminateAgent', {
      agentId: agentId(s, 'worker'),
      drainTimeout: '0s',
    });
    const more = Array.from({ length: 8 }, () =>
      httpClient(s.url!, token).then(
        (c) => c,
        () => undefined,
      ),
    );
    expect((await terminated).status).toBe(200);
    const clients = (await Promise.all([...opening, ...more])).filter(
      (c): c is Client => c !== undefined,
    );
    for (const c of clients) {
      const outcome = await c.callTool({ name: 'ev__echo', arguments: { message: 'after' } }).then(
        (r) => text(r),
        (error: unknown) => String(error),
      );
      expect(outcome).not.toContain('Echo: after');
      await c.close().catch(() => undefined);
    }
    await expect(httpClient(s.url!, token)).rejects.toThrow();
  }, 60_000);
});
