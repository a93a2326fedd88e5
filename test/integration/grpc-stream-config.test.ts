/**
 * The gRPC server's stream cap comes from the config (`grpc.maxStreams`, as `http.apiMaxStreams`
 * for the `/api/` door): a real sidecar started with a small value enforces it on a real grpc-js
 * client with RESOURCE_EXHAUSTED and `FABRIC_ERR_STREAM_LIMIT`, and values the server cannot use
 * are refused at start-up naming the key and its line.
 */
import { create } from '@bufbuild/protobuf';
import { status, type Client } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { ConfigFileError, type ConfigFileProblem } from '../../src/errors.js';
import {
  ApprovalServiceWatchRequestSchema,
  type ApprovalServiceWatchResponse,
} from '../../src/gen/fabric/v1/approval_pb.js';
import { APPROVAL_SERVICE_DEFINITION } from '../../src/rpc/approval-service.js';
import { parseSidecarConfig } from '../../src/server/config-file.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import { ADMIN_TOKEN, closeSidecar, startTestSidecar } from '../fixtures/gateway/harness.js';
import { grpcClient, openStream } from '../fixtures/grpc-client.js';

describe('grpc.maxStreams', () => {
  it('refuses values the server cannot use, naming the key and its line', () => {
    for (const value of ['0', '-3', '1.5', '"64"', '1000000']) {
      const yaml = `state: memory\ngrpc:\n  port: 0\n  maxStreams: ${value}\n`;
      let error: unknown;
      try {
        parseSidecarConfig(yaml, 'f.yaml', { env: {} });
      } catch (e) {
        error = e;
      }
      expect(error, value).toBeInstanceOf(ConfigFileError);
      const problems = (error as ConfigFileError).details.problems as ConfigFileProblem[];
      expect(problems.map((p) => [p.path, p.line])).toEqual([['grpc.maxStreams', 4]]);
    }
  });

  it('defaults to 64 streams, as http.apiMaxStreams', () => {
    const config = parseSidecarConfig('state: memory\ngrpc: {}\n', 'f.yaml', { env: {} });
    expect(config.grpc).toMatchObject({ maxStreams: 64 });
    const set = parseSidecarConfig('state: memory\ngrpc: { maxStreams: 5 }\n', 'f.yaml', {
      env: {},
    });
    expect(set.grpc).toMatchObject({ maxStreams: 5 });
  });

  describe('a sidecar with grpc.maxStreams 1', () => {
    let sidecar: Sidecar;
    let client: Client;

    beforeAll(async () => {
      sidecar = await startTestSidecar({ upstreams: {}, grpc: { port: 0, maxStreams: 1 } });
      client = grpcClient(APPROVAL_SERVICE_DEFINITION, sidecar.grpcAddress!);
    });
    afterAll(async () => {
      client?.close();
      await closeSidecar(sidecar);
    });

    const listeners = (): number => sidecar.fabric!.approvals.listenerCount('created');
    const watch = (): ReturnType<typeof openStream<ApprovalServiceWatchResponse>> =>
      openStream<ApprovalServiceWatchResponse>(
        client,
        'watch',
        create(ApprovalServiceWatchRequestSchema),
        ADMIN_TOKEN,
      );

    it('serves one stream; a second is RESOURCE_EXHAUSTED FABRIC_ERR_STREAM_LIMIT and subscribes nothing', async () => {
      const before = listeners();
      const first = watch();
      await vi.waitFor(() => expect(listeners()).toBe(before + 1));
      const second = watch();
      const refused = await second.ended;
      expect(refused).toMatchObject({ code: status.RESOURCE_EXHAUSTED });
      expect(refused!.metadata.get('fabric-error-code')).toEqual(['FABRIC_ERR_STREAM_LIMIT']);
      expect(JSON.parse(String(refused!.metadata.get('fabric-error-details')[0]))).toEqual({
        limit: 1,
      });
      expect(listeners()).toBe(before + 1);
      first.stream.cancel();
      await first.ended;
      await vi.waitFor(() => expect(listeners()).toBe(before));
      // Its place is free again.
      const third = watch();
      await vi.waitFor(() => expect(listeners()).toBe(before + 1));
      third.stream.cancel();
      await third.ended;
      await vi.waitFor(() => expect(listeners()).toBe(before));
    });
  });
});
