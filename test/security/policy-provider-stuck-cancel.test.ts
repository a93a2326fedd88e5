/**
 * A call its client cancels while a policy provider's `decideAsync` is asked ends at once, even
 * when the provider never answers and ignores the signal it was given. Before, the engine waited
 * for every asked provider before it looked at the signal (`PolicyEngine.evaluateAsync`, whose
 * contract says it throws the signal's reason when it aborts while a provider is asked): a
 * cancelled call behind a hung policy service was never ended — no audit line, and whatever it
 * held kept held — for as long as the provider took, forever for one that never answers.
 *
 * Real sidecar with a user policy plugin loaded from a file (a service that never answers), a
 * real stdio upstream that counts the calls it gets, the official SDK client as the agent. The
 * audit log on disk is what is asserted, and that the upstream never got the call.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { create } from '@bufbuild/protobuf';
import { status, type ClientUnaryCall, type ServiceError } from '@grpc/grpc-js';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CallToolRequestSchema, type CallToolResponse } from '../../src/gen/fabric/v1/tool_pb.js';
import { EvaluatePolicyRequestSchema } from '../../src/gen/fabric/v1/policy_pb.js';
import { POLICY_SERVICE_DEFINITION } from '../../src/rpc/policy-service.js';
import { TOOL_SERVICE_DEFINITION } from '../../src/rpc/tool-service.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  ADMIN_TOKEN,
  agentToken,
  auditLines,
  closeSidecar,
  DEFAULT_ALLOW,
  httpClient,
  recorded,
  recorderUpstream,
  startTestSidecar,
  tempDir,
  until,
} from '../fixtures/gateway/harness.js';
import { grpcClient, unary } from '../fixtures/grpc-client.js';

const STUCK = fileURLToPath(
  new URL('../fixtures/plugins/stuck-policy-service.mjs', import.meta.url),
);

/** The tools the stuck service was asked about, in order (it appends each to `file`). */
function askedIn(file: string): string[] {
  try {
    return readFileSync(file, 'utf8').split('\n').filter(Boolean);
  } catch {
    return [];
  }
}

describe('a call cancelled while a policy provider that never answers is asked', () => {
  const dir = tempDir('stuck-policy');
  const askedFile = join(dir, 'asked');
  const auditPath = join(dir, 'audit.jsonl');
  let sidecar: Sidecar | undefined;
  let client: Client;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstreams: { rec: recorderUpstream() },
      policies: [DEFAULT_ALLOW],
      plugins: [{ module: STUCK, options: { askedFile, tool: 'rec__work' } }],
      audit: { path: auditPath, flushIntervalMs: 0 },
      agents: [{ name: 'agent' }],
    });
    client = await httpClient(sidecar.url!, agentToken(sidecar, 'agent'));
  }, 60_000);

  afterAll(async () => {
    await client?.close();
    await closeSidecar(sidecar);
  });

  const asked = (): string[] => askedIn(askedFile);

  it('ends as cancelled (audited on disk) and never reaches the upstream', async () => {
    const ac = new AbortController();
    const call = client.callTool({ name: 'rec__work', arguments: {} }, undefined, {
      signal: ac.signal,
    });
    call.catch(() => undefined);
    await until(() => asked().includes('rec__work'));
    ac.abort('given up');
    await expect(call).rejects.toBeDefined();
    await until(() => auditLines(sidecar!, auditPath, 'agent', 'rec__work').length > 0);
    expect(auditLines(sidecar!, auditPath, 'agent', 'rec__work')).toEqual([
      expect.objectContaining({ outcome: 'cancelled', code: 'FABRIC_ERR_CANCELLED' }),
    ]);
    // The upstream never got it.
    const seen = await recorded(client, 'rec');
    expect(seen.held).toBe(0);
  });
});

/*
 * A call of a tool that does not exist, given up while a policy service that never answers (and
 * ignores its signal) is asked about it as if the tool were hidden, ends when it is given up —
 * as a call of a tool that exists (or that the rules hide) does since the engine stops waiting
 * for providers on abort (`policy-provider-stuck-cancel.test.ts`). Before, the wait for an
 * unknown tool (`PolicyEngine.askAsLikeHidden`) ignored the abort: the call's handler never
 * settled, so over gRPC it held its agent's in-flight slot for as long as the service took,
 * forever for one that never answers — and a hidden tool's cancelled call freed its slot where an
 * unknown one's did not, which told the agent the two apart (what that wait is for).
 *
 * Real sidecar, a user policy plugin loaded from a file, a real stdio upstream, real grpc-js.
 */
describe('an unknown tool cancelled while a policy service that never answers is asked', () => {
  const dir = tempDir('stuck-unknown');
  const askedFile = join(dir, 'asked');
  let sidecar: Sidecar | undefined;
  let tools: ReturnType<typeof grpcClient>;
  let token: string;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      grpc: { port: 0, maxInflightPerAgent: 1 },
      upstreams: { rec: recorderUpstream() },
      // A rule hiding a tool (below the service's priority 500): an unknown tool waits for the
      // service as a hidden one does.
      policies: [
        DEFAULT_ALLOW,
        { name: 'hide', priority: 10, rules: [{ tool: 'rec__hidden', action: 'deny' }] },
      ],
      plugins: [{ module: STUCK, options: { askedFile, tool: 'ghost' } }],
      agents: [{ name: 'agent' }],
    } as never);
    tools = grpcClient(TOOL_SERVICE_DEFINITION, sidecar.grpcAddress!);
    token = agentToken(sidecar, 'agent');
  }, 60_000);

  afterAll(async () => {
    tools?.close();
    await closeSidecar(sidecar);
  });

  const asked = (): string[] => askedIn(askedFile);
  const call = (name: string, started?: (c: ClientUnaryCall) => void): Promise<CallToolResponse> =>
    unary<CallToolResponse>(
      tools,
      'callTool',
      create(CallToolRequestSchema, { name }),
      token,
      started === undefined ? {} : { started },
    );

  it('frees its in-flight slot once cancelled', async () => {
    let started: ClientUnaryCall | undefined;
    const ghost = call('ghost', (c) => (started = c)).then(
      () => undefined,
      (e: ServiceError) => e.code,
    );
    await until(() => asked().includes('ghost'));
    started!.cancel();
    expect(await ghost).toBe(status.CANCELLED);
    // The agent's one slot is free again: its next call is served (before: refused with
    // FABRIC_ERR_INFLIGHT_LIMIT for as long as the service does not answer).
    let last: unknown;
    await until(async () => {
      try {
        await call('rec__seen');
        return true;
      } catch (error) {
        last = (error as ServiceError).metadata?.get('fabric-error-code');
        return false;
      }
    }).catch(() => {
      throw new Error(`the agent's slot stayed held: ${String(last)}`);
    });
  });

  it("PolicyService.EvaluatePolicy: a dry run its client cancels ends, and the provider's signal aborts", async () => {
    const policies = grpcClient(POLICY_SERVICE_DEFINITION, sidecar!.grpcAddress!);
    try {
      let started: ClientUnaryCall | undefined;
      const dryRun = unary(
        policies,
        'evaluatePolicy',
        create(EvaluatePolicyRequestSchema, { tool: 'ghost', agentId: 'someone' }),
        ADMIN_TOKEN,
        { started: (c) => (started = c) },
      ).then(
        () => undefined,
        (e: ServiceError) => e.code,
      );
      const count = (line: string): number => asked().filter((l) => l === line).length;
      const before = count('ghost');
      const abortedBefore = count('aborted ghost'); // the test above's call aborted too
      await until(() => count('ghost') > before);
      started!.cancel();
      expect(await dryRun).toBe(status.CANCELLED);
      // Before, the engine got no signal: the provider was never told, and the handler waited
      // for it for good.
      await until(() => count('aborted ghost') > abortedBefore);
    } finally {
      policies.close();
    }
  });
});
