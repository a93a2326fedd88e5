/**
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
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { create } from '@bufbuild/protobuf';
import { status, type ClientUnaryCall, type ServiceError } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CallToolRequestSchema, type CallToolResponse } from '../../src/gen/fabric/v1/tool_pb.js';
import { TOOL_SERVICE_DEFINITION } from '../../src/rpc/tool-service.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  recorderUpstream,
  startTestSidecar,
  tempDir,
  until,
} from '../fixtures/gateway/harness.js';
import { grpcClient, unary } from '../fixtures/grpc-client.js';

const STUCK = fileURLToPath(
  new URL('../fixtures/plugins/stuck-policy-service.mjs', import.meta.url),
);

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

  const asked = (): string[] => {
    try {
      return readFileSync(askedFile, 'utf8').split('\n').filter(Boolean);
    } catch {
      return [];
    }
  };
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
});
