/**
 * Policies and policy providers (plugins) share one namespace: `addProvider` refuses a
 * policy's name, and a policy named as a loaded provider is refused too — over the operator
 * API (real grpc-js client, real `secret-guard` plugin loaded by the plugin host) as through the
 * library. Before, `AddPolicy` of a policy named `secret-guard` was accepted beside the plugin,
 * and decisions, refusals and audit lines naming "secret-guard" could be either. A change stored
 * by an earlier run under such a name (real SQLite state file) still applies at the next start.
 */
import { join } from 'node:path';
import { create } from '@bufbuild/protobuf';
import { status, type Client, type ServiceError } from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { PolicyExistsError } from '../../src/errors.js';
import { AgentFabric } from '../../src/fabric.js';
import type { AgentRecord } from '../../src/lifecycle/lifecycle-manager.js';
import { AddPolicyRequestSchema } from '../../src/gen/fabric/v1/policy_pb.js';
import { PluginHost } from '../../src/plugins/plugin-host.js';
import type { PoolRecord } from '../../src/pools/pool-manager.js';
import { startGrpcServer, type GrpcServer } from '../../src/rpc/grpc-server.js';
import { POLICY_SERVICE_DEFINITION } from '../../src/rpc/policy-service.js';
import type { TaskRecord } from '../../src/scheduler/task-record.js';
import { SqliteStore } from '../../src/store/sqlite-store.js';
import { tempDir } from '../fixtures/gateway/harness.js';
import { grpcClient, unary } from '../fixtures/grpc-client.js';

const ADMIN = 'admin-credential-for-name-clash-0123456789';
const CLASH = { name: 'secret-guard', rules: [{ tool: '*', action: 'allow' }] };

const cleanup: (() => Promise<unknown> | void)[] = [];
afterEach(async () => {
  for (const c of cleanup.splice(0).reverse()) await c();
});

async function fabricOn(path: string): Promise<AgentFabric> {
  const store = await SqliteStore.open<TaskRecord, AgentRecord, PoolRecord>(path);
  const fabric = new AgentFabric({}, { store, adminCredentials: [ADMIN] });
  cleanup.push(() => fabric.close());
  return fabric;
}

describe('a policy named as a loaded policy provider', () => {
  it('is refused over PolicyService.AddPolicy (ALREADY_EXISTS), not stored nor written', async () => {
    const path = join(tempDir('ops-name-clash'), 'state.db');
    const fabric = await fabricOn(path);
    await new PluginHost(fabric).load('secret-guard', {});
    fabric.restorePolicies();
    const server: GrpcServer = await startGrpcServer(fabric);
    cleanup.push(() => server.close());
    const policies: Client = grpcClient(POLICY_SERVICE_DEFINITION, server.address);
    cleanup.push(() => policies.close());

    const err = await unary(
      policies,
      'addPolicy',
      create(AddPolicyRequestSchema, {
        policyJson: new TextEncoder().encode(JSON.stringify(CLASH)),
      }),
      ADMIN,
    ).then(
      () => undefined,
      (e: ServiceError) => e,
    );
    expect(err?.code).toBe(status.ALREADY_EXISTS);
    expect(err?.metadata.get('fabric-error-code')).toEqual([PolicyExistsError.code]);
    expect(fabric.policies.getPolicy('secret-guard')).toBeUndefined();
    // The plugin still decides: a call carrying a private key is denied by it.
    const d = fabric.policies.evaluateSync({
      agentId: 'a',
      tool: 't',
      params: { text: '-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----' },
    });
    expect(d).toMatchObject({ action: 'deny', policy: 'secret-guard', rule: null });
    await fabric.close();
    // Nothing was written: a fresh start on the file has no such policy.
    const again = await fabricOn(path);
    expect(again.restorePolicies()).toEqual([]);
    expect(again.policies.getPolicy('secret-guard')).toBeUndefined();
  });

  it('a state file holding one (stored by an earlier version) still starts with it', async () => {
    const path = join(tempDir('ops-name-clash'), 'state.db');
    const before = await fabricOn(path);
    before.restorePolicies();
    before.policies.addPolicy(CLASH); // no provider of that name yet: stored
    await before.close();

    const after = await fabricOn(path);
    await new PluginHost(after).load('secret-guard', {});
    expect(after.restorePolicies()).toMatchObject([{ name: 'secret-guard', effect: 'added' }]);
    expect(after.policies.getPolicy('secret-guard')).toBeDefined();
  });
});
