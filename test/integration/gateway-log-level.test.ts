import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  closeSidecar,
  DEFAULT_ALLOW,
  listeningClient,
  loggingUpstream,
  startTestSidecar,
  text,
  until,
} from '../fixtures/gateway/harness.js';

const ALL = ['debug', 'info', 'notice', 'warning', 'error', 'critical', 'alert', 'emergency'];

describe('logging/setLevel through the gateway (SDK fixture server that honours it)', () => {
  let sidecar: Sidecar;
  let quiet: Client;
  let verbose: Client;
  const heard = new Map<Client, string[]>();

  async function agent(name: string): Promise<Client> {
    const got: string[] = [];
    const client = await listeningClient(sidecar, name, got);
    heard.set(client, got);
    return client;
  }

  const upstreamLevels = async (client: Client): Promise<string[]> =>
    JSON.parse(text(await client.callTool({ name: 'log__levels', arguments: {} }))) as string[];

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstreams: {
        log: loggingUpstream({ restart: { initialDelayMs: 50 } }),
      },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'quiet' }, { name: 'verbose' }],
    });
    quiet = await agent('quiet');
    verbose = await agent('verbose');
  });

  afterAll(async () => {
    await quiet?.close();
    await verbose?.close();
    await closeSidecar(sidecar);
  });

  it('sends the upstream the most verbose level any session wants', async () => {
    // verbose set none yet: it wants all the upstream sends, so quiet's `error` is not sent.
    await quiet.setLoggingLevel('error');
    expect(await upstreamLevels(quiet)).toEqual(['debug']);
    await verbose.setLoggingLevel('debug');
    expect(await upstreamLevels(quiet)).toEqual(['debug']);
    await quiet.setLoggingLevel('error'); // unchanged overall: nothing new upstream
    expect(await upstreamLevels(quiet)).toEqual(['debug']);
  });

  it('still filters each session by its own level', async () => {
    const sent = text(await verbose.callTool({ name: 'log__log_all', arguments: {} }));
    expect(sent.split(',')).toEqual(ALL);
    await until(() => heard.get(verbose)!.length >= ALL.length);
    expect(heard.get(verbose)).toEqual(ALL);

    const sentToQuiet = text(await quiet.callTool({ name: 'log__log_all', arguments: {} }));
    expect(sentToQuiet.split(',')).toEqual(ALL); // the upstream logs at debug for verbose
    await until(() => heard.get(quiet)!.length >= 4);
    expect(heard.get(quiet)).toEqual(['error', 'critical', 'alert', 'emergency']);
  });

  it('lowers the upstream level when the verbose session leaves', async () => {
    await (verbose.transport as StreamableHTTPClientTransport).terminateSession();
    await verbose.close();
    await until(async () => (await upstreamLevels(quiet)).at(-1) === 'error');
    expect(await upstreamLevels(quiet)).toEqual(['debug', 'error']);
  });

  it('tells a restarted upstream the level again', async () => {
    const upstream = sidecar.gateway.upstreams.get('log')!;
    const before = upstream.connectCount;
    upstream.killProcess('SIGKILL');
    await until(() => upstream.connectCount > before && upstream.state === 'ready');
    await until(async () => (await upstreamLevels(quiet)).length > 0);
    expect(await upstreamLevels(quiet)).toEqual(['error']);
  });
});
