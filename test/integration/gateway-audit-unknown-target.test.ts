/**
 * A `tools/call` of a tool the gateway does not expose gets an audit line (`decision: "none"`,
 * `outcome: "error"`, `FABRIC_ERR_TOOL_NOT_FOUND`); a `prompts/get` of an unknown prompt, a
 * `resources/read` or `resources/subscribe` of an unknown resource and a `completion/complete`
 * whose `ref` names neither used to get the same not-found error and no line, so an agent
 * probing for prompts and resources left no trace. Now each gets a line with the unknown
 * tool's outcome and code, its method as `tool` and the digest of what policy decided it on, as a served one's — and,
 * since such a request is decided by policy as a served one is (else an agent could tell a
 * name a rule refuses from one that does not exist, `hidden-resource-disclosure.test.ts`), the
 * decision and rule that let it through, where an unknown tool's line says `decision: "none"`.
 * Real sidecar, real server-everything upstream, the official SDK client, the audit file on
 * disk.
 */
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { ResultSchema, type Request } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentId,
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  httpClient,
  startTestSidecar,
  tempDir,
  until,
  auditFileLines,
} from '../fixtures/gateway/harness.js';

const FILE_RESOURCE_SERVER = fileURLToPath(
  new URL('../fixtures/gateway/file-resource-server.mjs', import.meta.url),
);

describe('audit line of a request naming an unknown prompt, resource or completion target', () => {
  const path = join(tempDir('audit-unknown-target'), 'audit.log');
  let sidecar: Sidecar;
  let client: Client;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstreams: {
        ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
        // A second upstream with resources: a URI no one serves has no owner (with one, it goes
        // to that one).
        files: { command: process.execPath, args: [FILE_RESOURCE_SERVER], stderr: 'ignore' },
      },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'prober' }],
      audit: { path, flushIntervalMs: 0 },
    });
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'prober'));
  });

  afterAll(async () => {
    await client?.close();
    await closeSidecar(sidecar);
  });

  const lines = (): Record<string, unknown>[] => auditFileLines(path);

  it('writes the not-found line for each, its method as tool, with the decision that let it through', async () => {
    // `audited`: what the line digests — a call's arguments, or what policy decides a request
    // on, as a served one's line has it (a completion's `name` or template `uri`, `argument`).
    const requests: { method: string; params: Record<string, unknown>; audited: unknown }[] = [
      {
        method: 'tools/call',
        params: { name: 'ev__no-such-tool', arguments: { a: 1 } },
        audited: { a: 1 },
      },
      {
        method: 'prompts/get',
        params: { name: 'ev__no-such-prompt', arguments: { x: 'y' } },
        audited: { name: 'ev__no-such-prompt', arguments: { x: 'y' } },
      },
      {
        method: 'resources/read',
        params: { uri: 'nope://resource/nope.md' },
        audited: { uri: 'nope://resource/nope.md' },
      },
      {
        method: 'resources/subscribe',
        params: { uri: 'nope://nowhere/at-all' },
        audited: { uri: 'nope://nowhere/at-all' },
      },
      {
        method: 'completion/complete',
        params: {
          ref: { type: 'ref/prompt', name: 'ev__no-such-prompt' },
          argument: { name: 'a', value: 'b' },
        },
        audited: { name: 'ev__no-such-prompt', argument: { name: 'a', value: 'b' } },
      },
      {
        method: 'completion/complete',
        params: {
          ref: { type: 'ref/resource', uri: 'nope://template/{id}' },
          argument: { name: 'id', value: '1' },
        },
        audited: { uri: 'nope://template/{id}', argument: { name: 'id', value: '1' } },
      },
    ];
    for (const r of requests) {
      const answer = await client
        .request({ method: r.method, params: r.params } as Request, ResultSchema)
        .then(
          (result) => ({ result }),
          (error: unknown) => ({ error }),
        );
      // Each is refused as before (the unknown tool as the SDK's InvalidParams "Unknown tool").
      expect(answer).toHaveProperty('error');
      const { message, data } = (answer as { error: { message: string; data?: unknown } }).error;
      if (r.method === 'tools/call') expect(message).toContain('Unknown tool');
      else expect(data).toMatchObject({ code: 'FABRIC_ERR_TOOL_NOT_FOUND' });
    }
    // The tools/call line is written; the others, when written, in the same order with it.
    await until(() => lines().length >= 1);
    await new Promise((resolve) => setTimeout(resolve, 50));
    const written = lines();
    const agent = agentId(sidecar, 'prober');
    expect(written).toEqual(
      requests.map((r) =>
        expect.objectContaining({
          agent,
          tool: r.method === 'tools/call' ? r.params.name : r.method,
          ...(r.method === 'tools/call'
            ? { decision: 'none' }
            : { decision: 'allow', rule: 'default-allow#0' }),
          outcome: 'error',
          code: 'FABRIC_ERR_TOOL_NOT_FOUND',
          argsDigest: sidecar.gateway.auditDigest(r.audited),
        }),
      ),
    );
  });
});
