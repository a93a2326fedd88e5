/**
 * A plain forwarded `tools/call` on the fast path makes no AbortController: its cancellation is
 * a flag, and the call's `signal` (which makes one) is read only where a cancel hook cannot
 * serve. Found by the bench: a default parameter that read `extra.signal` for every forwarded
 * call (the exclusive turn's signal) made one per call and cost about 40 % more CPU per call over
 * stdio (stdio-cpu-per-call 1.5x the JSON relay → 2.2x).
 */
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { InMemoryTransport } from '@modelcontextprotocol/sdk/inMemory.js';
import { afterEach, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  closeSidecar,
  DEFAULT_ALLOW,
  HANGING_SERVER,
  startTestSidecar,
  text,
} from '../fixtures/gateway/harness.js';

describe('the fast path and AbortControllers', () => {
  let sidecar: Sidecar | undefined;
  const Original = globalThis.AbortController;

  afterEach(async () => {
    globalThis.AbortController = Original;
    await closeSidecar(sidecar);
    sidecar = undefined;
  });

  it('a plain forwarded call makes none (in-process session, real upstream)', async () => {
    sidecar = await startTestSidecar(
      {
        upstreams: {
          up: { command: process.execPath, args: [HANGING_SERVER], stderr: 'ignore' },
        },
        policies: [DEFAULT_ALLOW],
        agents: [{ name: 'caller' }],
      },
      { http: false },
    );
    const identity = await sidecar.backend.authenticate(sidecar.agents[0]!.credential);
    if (identity.kind !== 'agent') throw new Error('expected an agent identity');
    const session = sidecar.gateway.createSession(identity);
    const [ct, st] = InMemoryTransport.createLinkedPair();
    await session.connect(st);
    const client = new Client({ name: 'caller', version: '1.0.0' });
    await client.connect(ct);
    // Warm up (the first call of a tool goes through paths of its own), then count.
    expect(text(await client.callTool({ name: 'up__ping', arguments: {} }))).toBe('pong');
    let made = 0;
    globalThis.AbortController = class extends Original {
      constructor() {
        super();
        made++;
      }
    };
    for (let i = 0; i < 20; i++) {
      expect(text(await client.callTool({ name: 'up__ping', arguments: {} }))).toBe('pong');
    }
    globalThis.AbortController = Original;
    expect(made).toBe(0);
    await client.close();
  });
});
