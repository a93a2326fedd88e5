import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { CreateMessageRequestSchema } from '@modelcontextprotocol/sdk/types.js';
import { afterEach, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  httpClient,
  startTestSidecar,
  text,
} from '../fixtures/gateway/harness.js';

/**
 * Several agents share one upstream connection. When the upstream calls back (sampling), the
 * gateway must hand the request to the session that caused it — never to another agent.
 */
describe('server→client requests with several agents on one upstream', () => {
  let sidecar: Sidecar | undefined;
  const clients: Client[] = [];
  afterEach(async () => {
    for (const c of clients.splice(0)) await c.close();
    await closeSidecar(sidecar);
  });

  async function setup(exclusive: boolean) {
    sidecar = await startTestSidecar({
      upstreams: {
        ev: {
          command: process.execPath,
          args: [EVERYTHING_BIN, 'stdio'],
          stderr: 'ignore',
          exclusive,
        },
      },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'alice' }, { name: 'bob' }],
    });
    for (const name of ['alice', 'bob']) {
      const c = await httpClient(sidecar.url!, agentToken(sidecar, name), { sampling: {} });
      c.setRequestHandler(CreateMessageRequestSchema, async () => {
        // Answer slowly, so both agents' calls are in flight together.
        await new Promise((r) => setTimeout(r, 150));
        return {
          role: 'assistant',
          model: 'm',
          content: { type: 'text', text: `answered by ${name}` },
        };
      });
      clients.push(c);
    }
    return clients;
  }

  const sample = (c: Client, prompt: string) =>
    c.callTool({ name: 'ev__trigger-sampling-request', arguments: { prompt, maxTokens: 5 } });

  it('with exclusive: true, each agent’s sampling request reaches that agent, even when concurrent', async () => {
    const [alice, bob] = await setup(true);
    const results = await Promise.all([
      sample(alice!, 'from alice'),
      sample(bob!, 'from bob'),
      sample(alice!, 'again'),
    ]);
    expect(text(results[0])).toContain('answered by alice');
    expect(text(results[1])).toContain('answered by bob');
    expect(text(results[2])).toContain('answered by alice');
  });

  it('without it, an ambiguous callback is refused with a typed error rather than misrouted', async () => {
    const [alice, bob] = await setup(false);
    const results = await Promise.all([sample(alice!, 'from alice'), sample(bob!, 'from bob')]);
    for (const [i, who] of ['alice', 'bob'].entries()) {
      const t = text(results[i]);
      // Either it reached the right agent, or the upstream was told the callback could not be
      // routed (FABRIC_ERR_ROUTING); never the other agent's answer.
      expect(t.includes(`answered by ${who}`) || /originating one is ambiguous/.test(t)).toBe(true);
      expect(t).not.toContain(`answered by ${who === 'alice' ? 'bob' : 'alice'}`);
    }
  });
});
