/**
 * What a call the gateway gave up on does later never reaches another agent.
 *
 * Found on main (carried over from earlier reviews): upstream connections are shared, and over
 * stdio an upstream's log message or sampling request names no call, so the gateway routes each
 * to the one session with calls in flight there. A call the victim cancelled goes on upstream
 * when its handler does not stop; what it logged or asked later, while the attacker alone had a
 * call in flight on that upstream, went to the attacker: the victim's data in the log message,
 * the victim's prompt in the sampling request (whose answer the attacker then wrote). Now a
 * given-up call counts as its session's until the upstream is done with it or
 * `callTimeoutSeconds` pass: with one of another session pending, neither reaches the one
 * session in flight. The real sidecar over Streamable HTTP, official SDK clients, a real stdio
 * upstream on the SDK (test/fixtures/gateway/logging-server.mjs).
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { CreateMessageRequestSchema } from '@modelcontextprotocol/sdk/types.js';
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

describe('a call the gateway gave up on, and another agent’s call in flight', () => {
  let sidecar: Sidecar;
  let victim: Client;
  let attacker: Client;
  const heard = new Map<Client, string[]>();
  const asked = new Map<Client, string[]>();
  const logs: GatewayLogEntry[] = [];

  async function agent(name: string): Promise<Client> {
    const got: string[] = [];
    const client = await listeningClient(sidecar, name, got, { sampling: {} });
    heard.set(client, got);
    asked.set(client, []);
    client.setRequestHandler(CreateMessageRequestSchema, (request) => {
      const content = request.params.messages[0]?.content;
      asked
        .get(client)!
        .push(
          content !== undefined && !Array.isArray(content) && content.type === 'text'
            ? content.text
            : '?',
        );
      return { role: 'assistant', model: 'm', content: { type: 'text', text: `by ${name}` } };
    });
    return client;
  }

  /** Starts `tool` for the victim and cancels it once its handler runs upstream. */
  async function victimGivesUp(tool: string, secret: string): Promise<void> {
    const cancel = new AbortController();
    const call = victim
      .callTool({ name: tool, arguments: { text: secret, ms: 400 } }, undefined, {
        signal: cancel.signal,
      })
      .catch((e: Error) => e.message);
    await until(() => heard.get(victim)!.includes(`started:${secret}`));
    cancel.abort();
    await call;
  }

  beforeAll(async () => {
    sidecar = await startTestSidecar(
      {
        upstreams: {
          log: loggingUpstream({ callTimeoutSeconds: 30 }),
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

  it('its late log message does not reach the one other agent with a call in flight (before: it did)', async () => {
    const before = logs.length;
    await victimGivesUp('log__log_later', 'victim-late-log');
    // The attacker's call is the only one in flight when the victim's handler logs its data.
    const waiting = attacker.callTool({ name: 'log__wait', arguments: { ms: 1500 } });
    // Until the message was either dropped (the sidecar's log says why) or delivered.
    await until(
      () =>
        heard.get(attacker)!.includes('victim-late-log') ||
        logs
          .slice(before)
          .some((e) => e.msg.includes('a call of another agent session the gateway gave up on')),
    );
    expect(text(await waiting)).toBe('waited');
    expect(heard.get(attacker)).not.toContain('victim-late-log');
    expect(heard.get(victim)).not.toContain('victim-late-log');
    expect(JSON.stringify(logs)).not.toContain('"victim-late-log');
  });

  it('its late sampling request is refused, never handed to the one other agent with a call in flight (before: the attacker read the prompt)', async () => {
    const before = logs.length;
    await victimGivesUp('log__ask_later', 'victim-late-prompt');
    const waiting = attacker.callTool({ name: 'log__wait', arguments: { ms: 1500 } });
    await until(
      () =>
        asked.get(attacker)!.length > 0 ||
        logs
          .slice(before)
          .some(
            (e) =>
              e.level === 'warn' &&
              e.msg.includes('sampling/createMessage') &&
              e.msg.includes('gave up on'),
          ),
    );
    expect(text(await waiting)).toBe('waited');
    expect(asked.get(attacker)).toEqual([]);
    expect(asked.get(victim)).toEqual([]);
  });

  it('the agent’s own calls still get their log messages and callbacks while its given-up call may run', async () => {
    await victimGivesUp('log__log_later', 'victim-own-late');
    // Only the victim's own given-up call may still run: its new call is routed to it.
    expect(
      text(await victim.callTool({ name: 'log__log_text', arguments: { text: 'mine', ms: 0 } })),
    ).toBe('logged');
    await until(() => heard.get(victim)!.includes('mine'));
    const answer = await victim.callTool({
      name: 'log__ask_later',
      arguments: { text: 'my-own-prompt', ms: 0 },
    });
    expect(text(answer)).toBe('sampled:by victim');
    expect(asked.get(victim)).toContain('my-own-prompt');
    expect(asked.get(attacker)).toEqual([]);
  });

  it('a given-up call with progress ends with its upstream connection: a restarted upstream asks the one agent in flight again (before: refused for callTimeoutSeconds)', async () => {
    // A call with a progress token goes through the SDK's client, whose late answer the gateway
    // cannot see; the connection closing still ends it.
    const cancel = new AbortController();
    const call = victim
      .callTool(
        { name: 'log__log_later', arguments: { text: 'victim-progress', ms: 600_000 } },
        undefined,
        { signal: cancel.signal, onprogress: () => undefined },
      )
      .catch((e: Error) => e.message);
    await until(() => heard.get(victim)!.includes('started:victim-progress'));
    cancel.abort();
    await call;
    const upstream = sidecar.gateway.upstreams.get('log')!;
    const before = upstream.connectCount;
    upstream.killProcess('SIGKILL');
    await until(() => upstream.connectCount > before && upstream.state === 'ready');
    const answer = await attacker.callTool({
      name: 'log__ask_later',
      arguments: { text: 'after-restart', ms: 0 },
    });
    expect(text(answer)).toBe('sampled:by attacker');
    expect(asked.get(attacker)).toEqual(['after-restart']);
  });
});
