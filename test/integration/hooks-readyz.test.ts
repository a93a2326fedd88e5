/**
 * `GET /readyz` of a real sidecar counts its hook store (a real git store in a temp dir): when a
 * hook commit fails with a store error — the store's `.git` gone from under the running sidecar —
 * `CreateHook` over the Operator API answers 500 FABRIC_ERR_HOOK_STORE and `/readyz` answers 503
 * with `hooks: false` (and gRPC health of the server and of `hooks` NOT_SERVING), until a commit
 * succeeds again (the `.git` back). Before, `/readyz` stayed 200 while every hook write failed.
 * A caller's error (an unknown agent) does not count.
 */
import { existsSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { create } from '@bufbuild/protobuf';
import {
  credentials,
  makeGenericClientConstructor,
  type Client as GrpcClient,
  type ServiceError,
} from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  HealthCheckRequestSchema,
  HealthCheckResponse_ServingStatus as Serving,
  type HealthCheckResponse,
} from '../../src/gen/grpc/health/v1/health_pb.js';
import { HEALTH_SERVICE_DEFINITION } from '../../src/rpc/health-service.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentId,
  api,
  closeSidecar,
  DEFAULT_ALLOW,
  startTestSidecar,
  tempDir,
} from '../fixtures/gateway/harness.js';
import { committedHook } from '../fixtures/hooks/temp-store.js';

const HealthClient = makeGenericClientConstructor(HEALTH_SERVICE_DEFINITION, 'Health');

describe('GET /readyz with hooks: configured', () => {
  let dir: string;
  let storagePath: string;
  let sidecar: Sidecar;
  let health: GrpcClient & {
    check(req: unknown, cb: (err: ServiceError | null, res: HealthCheckResponse) => void): void;
  };

  beforeAll(async () => {
    dir = tempDir('hooks-readyz');
    storagePath = join(dir, 'hooks');
    sidecar = await startTestSidecar({
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'worker' }],
      hooks: { storagePath, useGitWorktree: false },
      grpc: { host: '127.0.0.1', port: 0 },
    });
    health = new HealthClient(
      sidecar.grpcAddress!,
      credentials.createInsecure(),
    ) as unknown as typeof health;
  }, 60_000);

  afterAll(async () => {
    health?.close();
    await closeSidecar(sidecar);
    rmSync(dir, { recursive: true, force: true });
  });

  const readyz = async (): Promise<{
    status: number;
    body: { checks: Record<string, boolean> };
  }> => {
    const res = await fetch(new URL('/readyz', sidecar.url));
    return { status: res.status, body: (await res.json()) as { checks: Record<string, boolean> } };
  };

  /** gRPC health of `service` (`""`: the whole server; `hooks`: the hook store). */
  const grpcHealth = (service: string): Promise<Serving | ServiceError> =>
    new Promise((resolve) =>
      health.check(create(HealthCheckRequestSchema, { service }), (err, res) =>
        resolve(err ?? res.status),
      ),
    );

  const createHook = async (agent: string, n: number) => {
    const res = await api(sidecar, 'FabricService/CreateHook', { agentId: agent, workItem: { n } });
    return { status: res.status, body: (await res.json()) as { hook: { hookId: string } } };
  };

  it('is unready, naming hooks, while hook commits fail, and ready again once one succeeds', async () => {
    const worker = agentId(sidecar, 'worker');
    const first = await createHook(worker, 1);
    expect(first.status).toBe(200);
    expect(await readyz()).toMatchObject({ status: 200, body: { checks: { hooks: true } } });
    expect(await grpcHealth('hooks')).toBe(Serving.SERVING);
    expect(await grpcHealth('')).toBe(Serving.SERVING);

    // A caller's error is not the store's.
    const unknown = await createHook('no-such-agent', 0);
    expect(unknown.status).toBeGreaterThanOrEqual(400);
    expect(unknown.status).toBeLessThan(500);
    expect(await readyz()).toMatchObject({ status: 200, body: { checks: { hooks: true } } });

    // The store's git directory gone from under the sidecar.
    const gitDir = join(storagePath, '.git');
    const away = join(dir, 'git-away');
    renameSync(gitDir, away);
    const failed = await createHook(worker, 2);
    expect(failed.status).toBe(500);
    expect(JSON.stringify(failed.body)).toContain('FABRIC_ERR_HOOK_STORE');
    expect(await readyz()).toMatchObject({
      status: 503,
      body: { ready: false, checks: { hooks: false, state: true } },
    });
    // gRPC health says the same: the server as a whole and the `hooks` probe are not serving.
    expect(await grpcHealth('hooks')).toBe(Serving.NOT_SERVING);
    expect(await grpcHealth('')).toBe(Serving.NOT_SERVING);
    // Reads answer from memory and do not make it ready.
    const listed = await api(sidecar, 'FabricService/ListHooks', {});
    expect(listed.status).toBe(200);
    expect((await readyz()).status).toBe(503);

    // Back (the failed write left loose-object folders where `.git` was): the next commit
    // succeeds, and the store is ready again.
    rmSync(gitDir, { recursive: true, force: true });
    renameSync(away, gitDir);
    const again = await createHook(worker, 3);
    expect(again.status).toBe(200);
    expect(await readyz()).toMatchObject({ status: 200, body: { checks: { hooks: true } } });
    expect(await grpcHealth('hooks')).toBe(Serving.SERVING);
    expect(existsSync(gitDir)).toBe(true);
    expect(committedHook(storagePath, first.body.hook.hookId)).toMatchObject({
      workItem: { n: 1 },
    });
    expect(committedHook(storagePath, again.body.hook.hookId)).toMatchObject({
      workItem: { n: 3 },
    });
  }, 60_000);
});
