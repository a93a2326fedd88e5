/**
 * Hostile agent vs. a task's callbacks: an upstream task (passed through by the gateway) asks
 * for sampling while the gateway waits for its `tasks/result`. A task's call has no session to
 * answer it, so the README promises a routing error — it must never reach another agent that
 * happens to have a call in flight on the same upstream at that moment (it did: that agent read
 * the victim's prompt and its answer became the victim's result). The real sidecar
 * over Streamable HTTP, official SDK clients, a real stdio upstream built on the SDK's task
 * support with a task message queue (test/fixtures/gateway/task-callback-server.mjs).
 */
import { fileURLToPath } from 'node:url';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import {
  CallToolResultSchema,
  CreateMessageRequestSchema,
  type CreateMessageRequest,
} from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  httpClient,
  startTestSidecar,
  text,
  until,
} from '../fixtures/gateway/harness.js';
import { callAsTask } from '../fixtures/gateway/tasks.js';

const SERVER = fileURLToPath(
  new URL('../fixtures/gateway/task-callback-server.mjs', import.meta.url),
);

describe("an upstream task's sampling request never reaches a bystander agent", () => {
  let sidecar: Sidecar;
  let victim: Client;
  let attacker: Client;
  const seen: Record<'victim' | 'attacker', CreateMessageRequest[]> = { victim: [], attacker: [] };

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstreams: { cb: { command: process.execPath, args: [SERVER], stderr: 'ignore' } },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'victim' }, { name: 'attacker' }],
      gateway: { tasks: { maxTtlSeconds: 60 }, shutdownGraceSeconds: 0 },
    });
    for (const name of ['victim', 'attacker'] as const) {
      const c = await httpClient(sidecar.url!, agentToken(sidecar, name), { sampling: {} });
      c.setRequestHandler(CreateMessageRequestSchema, (request) => {
        seen[name].push(request);
        return {
          role: 'assistant',
          model: 'm',
          content: { type: 'text', text: `answered by ${name}` },
        };
      });
      if (name === 'victim') victim = c;
      else attacker = c;
    }
  });

  afterAll(async () => {
    await victim?.close();
    await attacker?.close();
    await closeSidecar(sidecar);
  });

  it.each([
    ['naming its task', false],
    ['not naming its task', true],
  ])('is refused (%s) while another agent has a call in flight there', async (_, untagged) => {
    const message = `victim secret prompt ${String(untagged)}`;
    const { task } = await callAsTask(victim, 'cb__ask', { message, untagged });
    await until(async () => {
      const r = await victim.callTool({ name: 'cb__holding', arguments: { message } });
      return text(r) === '1';
    });
    // The attacker's call stays in flight until the victim's task has had its answer: the only
    // other call on this upstream while the sampling request arrives.
    const released = await attacker.callTool({ name: 'cb__release', arguments: { message } });
    expect(text(released)).toBe('Released: 1');
    const result = await victim.request(
      { method: 'tasks/result', params: { taskId: task.taskId } },
      CallToolResultSchema,
    );
    expect(text(result)).toMatch(
      /^Refused: .*FABRIC_ERR_ROUTING|^Refused: .*sampling\/createMessage/,
    );
    expect(seen.attacker).toEqual([]);
    expect(seen.victim).toEqual([]);
  });
});
