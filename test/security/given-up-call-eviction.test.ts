/**
 * A call the gateway gave up on stays its session's for routing even when the upstream
 * connection's memory of stopped requests overflows.
 *
 * Found by the hostile review of c46f2fa: the fast path remembers at most 1024 stopped requests
 * per upstream connection for their late answers, and forgetting the oldest told the gateway the
 * upstream was done with it — which ended the victim's given-up call's routing at once. An
 * attacker that stopped 1024 calls of its own on the shared upstream (calls that never answer)
 * pushed the victim's out, and the victim's late log message then reached the attacker, the one
 * session with a call in flight. Now a forgotten request stays given up on until its late window
 * (`callTimeoutSeconds`) ends. The real sidecar over Streamable HTTP, official SDK clients, a
 * real stdio upstream on the SDK (test/fixtures/gateway/logging-server.mjs).
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

/** As many stopped requests as the fast path remembers per connection (fast-path.ts). */
const REMEMBERED = 1024;

describe('an attacker overflowing the stopped requests of a shared upstream', () => {
  let sidecar: Sidecar;
  let victim: Client;
  let attacker: Client;
  const victimHeard: string[] = [];
  const attackerHeard: string[] = [];
  const logs: GatewayLogEntry[] = [];

  beforeAll(async () => {
    sidecar = await startTestSidecar(
      {
        http: { maxInflightPerAgent: 4 * REMEMBERED },
        upstreams: {
          log: loggingUpstream({ callTimeoutSeconds: 120 }),
        },
        policies: [DEFAULT_ALLOW],
        agents: [{ name: 'victim' }, { name: 'attacker' }],
      },
      { logger: (entry) => void logs.push(entry) },
    );
    victim = await listeningClient(sidecar, 'victim', victimHeard);
    attacker = await listeningClient(sidecar, 'attacker', attackerHeard);
  }, 60_000);

  afterAll(async () => {
    await victim?.close();
    await attacker?.close();
    await closeSidecar(sidecar);
  });

  it('does not end the victim’s given-up call’s routing (before: its late log reached the attacker)', async () => {
    // The victim's call logs its data 20 s after it started, cancelled or not.
    const cancel = new AbortController();
    const call = victim
      .callTool(
        { name: 'log__log_later', arguments: { text: 'victim-late-log', ms: 20_000 } },
        undefined,
        { signal: cancel.signal },
      )
      .catch((e: Error) => e.message);
    await until(() => victimHeard.includes('started:victim-late-log'));
    cancel.abort();
    await call;

    // The attacker starts REMEMBERED calls that never answer; once each runs upstream (its
    // start message, dropped while the victim's call may run, is in the sidecar's log), it
    // cancels them all.
    const dropped = (): number =>
      logs.filter((e) => e.msg.includes('a call of another agent session the gateway gave up on'))
        .length;
    const before = dropped();
    const aborts: AbortController[] = [];
    const calls: Promise<unknown>[] = [];
    for (let i = 0; i < REMEMBERED; i++) {
      const abort = new AbortController();
      aborts.push(abort);
      calls.push(
        attacker
          .callTool(
            { name: 'log__log_later', arguments: { text: `a${i}`, ms: 600_000 } },
            undefined,
            { signal: abort.signal, timeout: 600_000 },
          )
          .catch(() => undefined),
      );
    }
    await until(() => dropped() - before >= REMEMBERED, 60_000);
    for (const abort of aborts) abort.abort();
    await Promise.all(calls);

    // The attacker alone has a call in flight when the victim's call logs.
    const waiting = attacker.callTool({ name: 'log__wait', arguments: { ms: 25_000 } });
    expect(text(await waiting)).toBe('waited');
    expect(attackerHeard).not.toContain('victim-late-log');
    expect(victimHeard).not.toContain('victim-late-log');
  }, 120_000);
});
