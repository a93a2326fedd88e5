/**
 * An upstream's log messages reach only the agent whose call could have caused them.
 *
 * Found by a hostile review of the gateway's routing: upstream connections are shared, and over
 * stdio a log message names no call, so the gateway sent each one to every session with a call
 * in flight on that upstream. A message an upstream logged during one agent's call (a path it
 * read, a query it ran) reached every other agent with a call there at the time. Now it goes to
 * the one session with calls in flight, and to no agent when those are of several sessions (the
 * sidecar's log says so, without the message's data).
 *
 * Found later: a call the agent cancelled (or that timed out) goes on upstream when its handler
 * does not stop, and what it logged after the gateway gave up on it came with no call in flight
 * — the upstream's own news, sent to every agent. Now such a message reaches no agent for
 * `callTimeoutSeconds` after a call was given up on.
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { GatewayLogEntry } from '../../src/gateway/tool-call-pipeline.js';
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

describe("an upstream's log messages and the calls in flight of several agents", () => {
  let sidecar: Sidecar;
  let victim: Client;
  let attacker: Client;
  const heard = new Map<Client, string[]>();
  const logs: GatewayLogEntry[] = [];

  async function agent(name: string): Promise<Client> {
    const got: string[] = [];
    const client = await listeningClient(sidecar, name, got);
    heard.set(client, got);
    return client;
  }

  const logText = (client: Client, message: string, ms: number) =>
    client.callTool({ name: 'log__log_text', arguments: { text: message, ms } }).then(text);

  beforeAll(async () => {
    sidecar = await startTestSidecar(
      {
        upstreams: {
          log: loggingUpstream(),
          // The same server with a short call timeout: how long a given-up call keeps it quiet.
          short: loggingUpstream({ callTimeoutSeconds: 2 }),
        },
        policies: [DEFAULT_ALLOW],
        agents: [{ name: 'victim' }, { name: 'attacker' }],
      },
      { logger: (entry) => void logs.push(entry) },
    );
    victim = await agent('victim');
    attacker = await agent('attacker');
  });

  afterAll(async () => {
    await victim?.close();
    await attacker?.close();
    await closeSidecar(sidecar);
  });

  it('a message logged during one agent call reaches that agent', async () => {
    expect(await logText(victim, 'victim-alone', 0)).toBe('logged');
    await until(() => heard.get(victim)!.includes('victim-alone'));
    expect(heard.get(attacker)).not.toContain('victim-alone');
  });

  it('reaches no other agent with a call in flight there (before: every one of them)', async () => {
    // The attacker's own call is in flight (its log message came back to it alone) …
    let attackerDone = false;
    const waiting = logText(attacker, 'attacker-waits', 5000).finally(() => (attackerDone = true));
    await until(() => heard.get(attacker)!.includes('attacker-waits'));
    // … when the upstream logs the victim's data.
    expect(await logText(victim, 'victim-secret', 0)).toBe('logged');
    expect(attackerDone).toBe(false); // both calls were in flight when the message came
    expect(await waiting).toBe('logged');
    expect(heard.get(attacker)).not.toContain('victim-secret');
    // With two agents' calls in flight the message names neither: it reaches no agent, and the
    // sidecar's log says so without its data.
    expect(heard.get(victim)).not.toContain('victim-secret');
    const dropped = logs.filter((e) =>
      e.msg.startsWith('upstream log message delivered to no agent'),
    );
    expect(dropped).toHaveLength(1);
    expect(dropped[0]).toMatchObject({ upstream: 'log', logLevel: 'info' });
    expect(JSON.stringify(logs)).not.toContain('victim-secret');
  });

  it('what a cancelled call logs after the agent gave up on it reaches no agent (before: every one)', async () => {
    const dropped = () =>
      logs.filter((e) => e.msg.includes('a call the gateway gave up on')).length;
    const before = dropped();
    const cancel = new AbortController();
    const call = victim
      .callTool(
        { name: 'short__log_later', arguments: { text: 'victim-late', ms: 300 } },
        undefined,
        { signal: cancel.signal },
      )
      .catch((e: Error) => e.message);
    // The handler runs upstream (its first message came back to the victim alone) …
    await until(() => heard.get(victim)!.includes('started:victim-late'));
    cancel.abort();
    await call;
    // … and logs after the gateway gave up on it, with no call in flight.
    await until(() => dropped() > before || heard.get(attacker)!.includes('victim-late'));
    expect(heard.get(attacker)).not.toContain('victim-late');
    expect(heard.get(victim)).not.toContain('victim-late');
    expect(dropped()).toBe(before + 1);
    expect(JSON.stringify(logs)).not.toContain('"victim-late');

    // callTimeoutSeconds (2 s here) after that, a message with no call in flight is the
    // upstream's own news again: every agent hears it.
    await new Promise((resolve) => setTimeout(resolve, 2100));
    await victim.callTool({
      name: 'short__log_later',
      arguments: { text: 'news', ms: 200, answerFirst: true },
    });
    await until(() => heard.get(attacker)!.includes('news') && heard.get(victim)!.includes('news'));
    expect(dropped()).toBe(before + 1);
  });
});
