/**
 * A resource, prompt or template a policy refuses to an agent, and one that does not exist: an
 * agent must not tell them apart — neither by the answer nor by which policy services the
 * answer waited for. Before, a `resources/read`, `resources/subscribe`, `prompts/get` or
 * `completion/complete` naming a target no upstream serves was answered at once
 * (`FABRIC_ERR_TOOL_NOT_FOUND`, `no resource named …`) without asking policy, while a served one
 * the rules deny was refused with `FABRIC_ERR_POLICY_DENIED`: an agent could probe which
 * resources and prompts exist behind a deny rule (`demo://…/i*`) by the code it got back, or by
 * whether its request waited for a policy service. Now a target no upstream serves is decided by
 * policy as a served one is (the same pseudo-tool and parameters, the same services asked), and
 * only a request policy lets through learns that nothing serves it (one a rule sends to a human
 * waits for the human first). Real sidecar, real
 * server-everything upstream plus a second resource upstream (so a URI can have no owner), the
 * official SDK client over Streamable HTTP with the raw HTTP answers compared byte for byte (but
 * for the name and the request id), a real policy service over gRPC, the audit file on disk.
 */
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Request } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Approval } from '../../src/policy/approval-manager.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  api,
  auditLines,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  tempDir,
  until,
} from '../fixtures/gateway/harness.js';
import {
  holdingService,
  policyService,
  watched,
  type HoldingService,
} from '../fixtures/gateway/policy-service.js';
import { mcpProbe, startProbedSidecar, type McpProbe } from '../fixtures/gateway/probe.js';

const FILE_RESOURCE_SERVER = fileURLToPath(
  new URL('../fixtures/gateway/file-resource-server.mjs', import.meta.url),
);

const DOCS = 'demo://resource/static/document';
/** Served by server-everything; denied by {@link SECRETS}. */
const SERVED_URI = `${DOCS}/instructions.md`;
/** Served by no upstream (no listing, no template); denied by {@link SECRETS} as well. */
const UNSERVED_URI = `${DOCS}/internal-roadmap.md`;
const SERVED_PROMPT = 'ev__resource-prompt';
const UNSERVED_PROMPT = 'ev__resource-secrets';
const SERVED_TEMPLATE = 'demo://resource/dynamic/text/{resourceId}';
const UNSERVED_TEMPLATE = 'demo://resource/dynamic/texts/{resourceId}';

/** Rules that refuse reads, subscriptions, prompts and completions of some names, by glob. */
const SECRETS = {
  name: 'secret-policy-name',
  priority: 100,
  rules: [
    {
      tool: 'resources/read',
      action: 'deny',
      conditions: { uri: `${DOCS}/i*` },
      reason: 'internal notes',
    },
    { tool: 'resources/subscribe', action: 'deny', conditions: { uri: `${DOCS}/i*` } },
    { tool: 'prompts/get', action: 'deny', conditions: { name: 'ev__resource-*' } },
    {
      tool: 'completion/complete',
      action: 'deny',
      conditions: { uri: 'demo://resource/dynamic/text*' },
    },
    { tool: 'resources/read', action: 'require_approval', conditions: { uri: 'demo://ask/*' } },
  ],
};

const UPSTREAMS = {
  ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' as const },
  // A second upstream with resources: a URI no one serves has no owner (with one, it goes to
  // that one, and the rules decide it before the upstream says it has none).
  files: { command: process.execPath, args: [FILE_RESOURCE_SERVER], stderr: 'ignore' as const },
};

/** The requests of one kind: for the served target and for the unserved one. */
const PAIRS: { what: string; tool: string; served: Request; unserved: Request; names: string[] }[] =
  [
    {
      what: 'resources/read',
      tool: 'resources/read',
      served: { method: 'resources/read', params: { uri: SERVED_URI } },
      unserved: { method: 'resources/read', params: { uri: UNSERVED_URI } },
      names: [SERVED_URI, UNSERVED_URI],
    },
    {
      what: 'resources/subscribe',
      tool: 'resources/subscribe',
      served: { method: 'resources/subscribe', params: { uri: SERVED_URI } },
      unserved: { method: 'resources/subscribe', params: { uri: UNSERVED_URI } },
      names: [SERVED_URI, UNSERVED_URI],
    },
    {
      what: 'prompts/get',
      tool: 'prompts/get',
      served: { method: 'prompts/get', params: { name: SERVED_PROMPT, arguments: {} } },
      unserved: { method: 'prompts/get', params: { name: UNSERVED_PROMPT, arguments: {} } },
      names: [SERVED_PROMPT, UNSERVED_PROMPT],
    },
    {
      what: 'completion/complete of a resource template',
      tool: 'completion/complete',
      served: {
        method: 'completion/complete',
        params: {
          ref: { type: 'ref/resource', uri: SERVED_TEMPLATE },
          argument: { name: 'resourceId', value: '1' },
        },
      },
      unserved: {
        method: 'completion/complete',
        params: {
          ref: { type: 'ref/resource', uri: UNSERVED_TEMPLATE },
          argument: { name: 'resourceId', value: '1' },
        },
      },
      names: [SERVED_TEMPLATE, UNSERVED_TEMPLATE],
    },
  ];

describe('a resource, prompt or template policy refuses, and one no upstream serves', () => {
  const auditPath = join(tempDir('hidden-resource'), 'audit.log');
  let sidecar: Sidecar;
  let mcp: McpProbe;

  beforeAll(async () => {
    sidecar = await startProbedSidecar(auditPath, {
      upstreams: UPSTREAMS,
      policies: [SECRETS, DEFAULT_ALLOW],
    });
    mcp = await mcpProbe(sidecar, 'prober');
  });

  afterAll(async () => {
    await mcp?.client.close();
    await closeSidecar(sidecar);
  });

  for (const pair of PAIRS) {
    it(`${pair.what}: the same refusal for both, byte for byte; the audit says the rule denied both`, async () => {
      const [servedName, unservedName] = pair.names as [string, string];
      const served = await mcp.refusedRequest(pair.served, servedName);
      const unserved = await mcp.refusedRequest(pair.unserved, unservedName);
      // Before: the unserved one was `FABRIC_ERR_TOOL_NOT_FOUND`, the served one denied.
      expect(unserved.raw).toBe(served.raw);
      expect(served.raw).toContain('FABRIC_ERR_POLICY_DENIED');
      expect(served.raw).not.toContain('TOOL_NOT_FOUND');
      expect(served.error.data).toEqual(unserved.error.data);

      const lines = () => auditLines(sidecar, auditPath, 'prober', pair.tool);
      await until(() => lines().length >= 2);
      const [a, b] = lines().slice(-2);
      const decided = (l: Record<string, unknown> | undefined) => ({
        decision: l?.decision,
        rule: l?.rule,
        outcome: l?.outcome,
        code: l?.code,
      });
      expect(decided(a)).toEqual({
        decision: 'deny',
        rule: expect.stringMatching(/^secret-policy-name#\d$/) as string,
        outcome: 'denied',
        code: 'FABRIC_ERR_POLICY_DENIED',
      });
      expect(decided(b)).toEqual(decided(a));
    });
  }

  it('an unserved target policy lets through is still answered as unknown, after policy', async () => {
    const read = await mcp.refusedRequest(
      { method: 'resources/read', params: { uri: 'nope://resource/nope.md' } },
      'nope://resource/nope.md',
    );
    expect(read.error.data).toMatchObject({ code: 'FABRIC_ERR_TOOL_NOT_FOUND' });
    expect(read.raw).toContain('no resource named');
    const prompt = await mcp.refusedRequest(
      { method: 'prompts/get', params: { name: 'ev__no-such-prompt' } },
      'ev__no-such-prompt',
    );
    expect(prompt.error.data).toMatchObject({ code: 'FABRIC_ERR_TOOL_NOT_FOUND' });
    // Decided as allowed (by the default rule), then nothing served it.
    const last = () => auditLines(sidecar, auditPath, 'prober', 'prompts/get').at(-1);
    await until(() => last()?.code === 'FABRIC_ERR_TOOL_NOT_FOUND');
    expect(last()).toMatchObject({
      decision: 'allow',
      rule: 'default-allow#0',
      outcome: 'error',
      code: 'FABRIC_ERR_TOOL_NOT_FOUND',
    });
  });

  it('a read of an unserved URI a rule sends to a human waits for the human, then is not found', async () => {
    const read = watched(
      mcp.refusedRequest({ method: 'resources/read', params: { uri: 'demo://ask/x' } }, 'x'),
    );
    let pending: Approval[] = [];
    await until(async () => {
      const res = await api(sidecar, 'ApprovalService/ListApprovals', {
        status: 'APPROVAL_STATUS_PENDING',
      });
      pending = ((await res.json()) as { approvals?: Approval[] }).approvals ?? [];
      return pending.length === 1;
    });
    expect(pending[0]).toMatchObject({ tool: 'resources/read', params: { uri: 'demo://ask/x' } });
    expect(read.settled()).toBe(false);
    expect((await api(sidecar, 'ApprovalService/Approve', { id: pending[0]!.id })).status).toBe(
      200,
    );
    const { error } = await read.promise;
    expect(error.data).toMatchObject({ code: 'FABRIC_ERR_TOOL_NOT_FOUND' });
    const last = () => auditLines(sidecar, auditPath, 'prober', 'resources/read').at(-1);
    await until(() => last()?.decision === 'approved');
    expect(last()).toMatchObject({ outcome: 'error', code: 'FABRIC_ERR_TOOL_NOT_FOUND', cost: 0 });
  });
});

describe('a refused resource or prompt and an unserved one under a policy service that outranks the rules', () => {
  const auditPath = join(tempDir('hidden-resource-wait'), 'audit.log');
  let service: HoldingService;
  let sidecar: Sidecar;
  let mcp: McpProbe;

  beforeAll(async () => {
    service = await holdingService();
    sidecar = await startProbedSidecar(auditPath, {
      upstreams: UPSTREAMS,
      policies: [SECRETS, DEFAULT_ALLOW],
      plugins: [policyService(service.target, 500)],
      // A pseudo-tool's first calls wait (up to this) for the first one's tokens to be known:
      // not the service this test looks at.
      gateway: { budgetWaitSeconds: 0 },
    });
    mcp = await mcpProbe(sidecar, 'prober');
  });

  afterAll(async () => {
    service?.release();
    await mcp?.client.close();
    await closeSidecar(sidecar);
    service?.close();
  });

  for (const pair of PAIRS) {
    it(`${pair.what}: both wait for the service, then get the same answer`, async () => {
      const [servedName, unservedName] = pair.names as [string, string];
      service.release(); // what an earlier test left waiting, if one failed
      const served = watched(mcp.refusedRequest(pair.served, servedName));
      const unserved = watched(mcp.refusedRequest(pair.unserved, unservedName));
      // Before: the unserved one was answered without the service being asked.
      await until(() => service.asked().length === 2);
      expect(service.asked()).toEqual([pair.tool, pair.tool]);
      expect([served.settled(), unserved.settled()]).toEqual([false, false]);
      service.release();
      const [s, u] = await Promise.all([served.promise, unserved.promise]);
      expect(u.raw).toBe(s.raw);
      expect(s.raw).toContain('FABRIC_ERR_POLICY_DENIED');
    });
  }
});
