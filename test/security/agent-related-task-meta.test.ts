/**
 * What an agent can put in `_meta` of the requests the gateway forwards as they came
 * (`resources/read`, `prompts/get`, `completion/complete`): the related-task entry
 * (`io.modelcontextprotocol/related-task`) names an upstream task the request belongs to. An agent
 * knows no upstream task (it only sees the gateway's `tt_` ids), so such an entry can only be made
 * up — and an SDK server with a task message queue (server-everything) then queues its answer
 * for that task instead of sending it: the request never got an answer (its caller waited
 * `callTimeoutSeconds`), and the answer stayed in the shared upstream's memory under a task
 * nobody fetches — an agent sending such requests (and cancelling each: a cancelled request frees
 * its in-flight slot at once) grew a process every agent uses without bound.
 *
 * Found by a hostile review of what agents send besides tool calls. Real sidecar, real
 * server-everything, the official SDK client.
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import {
  CompleteResultSchema,
  GetPromptResultSchema,
  ReadResourceResultSchema,
} from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  httpClient,
  startTestSidecar,
} from '../fixtures/gateway/harness.js';

const RELATED_TASK = 'io.modelcontextprotocol/related-task';

describe("an agent's related-task _meta on forwarded requests (server-everything)", () => {
  let sidecar: Sidecar;
  let agent: Client;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstreams: {
        // A short call timeout: without the fix each request below fails with it.
        ev: {
          command: process.execPath,
          args: [EVERYTHING_BIN, 'stdio'],
          stderr: 'ignore',
          callTimeoutSeconds: 3,
        },
      },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'agent' }],
    });
    agent = await httpClient(sidecar.url!, agentToken(sidecar, 'agent'));
  });

  afterAll(async () => {
    await agent?.close();
    await closeSidecar(sidecar);
  });

  const meta = (taskId: string) => ({ [RELATED_TASK]: { taskId }, note: 'kept' });

  it('resources/read is answered by the upstream, not queued for a made-up task', async () => {
    const uri = 'demo://resource/dynamic/text/1';
    const read = await agent.request(
      { method: 'resources/read', params: { uri, _meta: meta('made-up-task') } },
      ReadResourceResultSchema,
    );
    expect(read.contents[0]?.uri).toBe(uri);
    expect(read.contents[0]).toHaveProperty('text');
  });

  it('prompts/get is answered by the upstream', async () => {
    const got = await agent.request(
      { method: 'prompts/get', params: { name: 'ev__simple-prompt', _meta: meta('tt_x') } },
      GetPromptResultSchema,
    );
    expect(got.messages.length).toBeGreaterThan(0);
  });

  it('completion/complete is answered by the upstream', async () => {
    const done = await agent.request(
      {
        method: 'completion/complete',
        params: {
          ref: { type: 'ref/prompt', name: 'ev__completable-prompt' },
          argument: { name: 'department', value: 'Eng' },
          _meta: meta('00000000-0000-0000-0000-000000000000'),
        },
      },
      CompleteResultSchema,
    );
    expect(done.completion.values).toContain('Engineering');
  });
});
