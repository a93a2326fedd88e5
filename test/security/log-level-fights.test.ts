/**
 * `logging/setLevel` from one agent must not silence a shared upstream for the others. Upstreams
 * are told one level for every agent; it was the most verbose level any session *set*, so an agent
 * setting `emergency` made the upstream drop everything below it for every agent whose client
 * never sets a level (most clients don't) — they stopped hearing the upstream's warnings and
 * errors. A session that set no level wants what the upstream sends unasked: everything.
 *
 * Found by a hostile review of what agents send besides tool calls. Real sidecar, an SDK server
 * that honours `logging/setLevel` (its own level `info` until told), official SDK clients.
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { LoggingMessageNotificationSchema } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  httpClient,
  loggingUpstream,
  startTestSidecar,
  text,
  until,
} from '../fixtures/gateway/harness.js';

const FROM_INFO = ['info', 'notice', 'warning', 'error', 'critical', 'alert', 'emergency'];

describe("one agent's logging/setLevel and the agents that set none", () => {
  let sidecar: Sidecar;
  let plain: Client;
  let hush: Client;
  const heard: string[] = [];

  /** The levels the upstream was told, in order (asked through `client`). */
  const upstreamLevels = async (client: Client): Promise<string[]> =>
    JSON.parse(text(await client.callTool({ name: 'log__levels', arguments: {} }))) as string[];

  /** What `plain` hears of one `log_all` call (the messages come before its answer). */
  async function plainHears(): Promise<string[]> {
    heard.length = 0;
    const sent = text(await plain.callTool({ name: 'log__log_all', arguments: {} })).split(',');
    await until(() => heard.length >= sent.length);
    return [...heard];
  }

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstreams: { log: loggingUpstream() },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'plain' }, { name: 'hush' }],
    });
    plain = await httpClient(sidecar.url!, agentToken(sidecar, 'plain'));
    plain.setNotificationHandler(LoggingMessageNotificationSchema, (n) => {
      heard.push(String(n.params.data));
    });
    hush = await httpClient(sidecar.url!, agentToken(sidecar, 'hush'));
  });

  afterAll(async () => {
    await plain?.close();
    await hush?.close();
    await closeSidecar(sidecar);
  });

  it('an agent that set no level still hears what the upstream sends unasked', async () => {
    expect(await plainHears()).toEqual(FROM_INFO);
    await hush.setLoggingLevel('emergency');
    expect(await plainHears()).toEqual(expect.arrayContaining(FROM_INFO));
    // The upstream was never told to drop what plain hears.
    expect(await upstreamLevels(plain)).not.toContain('emergency');
  });

  it('once the agent that set none leaves, the upstream gets the most verbose level set', async () => {
    await (plain.transport as StreamableHTTPClientTransport).terminateSession();
    await plain.close();
    await until(async () => (await upstreamLevels(hush)).at(-1) === 'emergency');
  });
});
