/**
 * grpc-js's `server_call` tracer (`GRPC_TRACE=server_call GRPC_VERBOSITY=DEBUG`, what an
 * operator sets to debug a client) logs every request's headers as JSON on stderr — an agent's
 * `authorization: Bearer <credential>` in clear, for every call. The sidecar's grpc-js logger
 * keeps the line but not the values of the headers that carry credentials. A real
 * `agent-fabric serve` with the tracer on, a grpc-js client, the process's stderr.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { create } from '@bufbuild/protobuf';
import type { Client as GrpcClient } from '@grpc/grpc-js';
import { afterAll, describe, expect, it } from 'vitest';
import { ListToolsRequestSchema } from '../../src/gen/fabric/v1/tool_pb.js';
import { TOOL_SERVICE_DEFINITION } from '../../src/rpc/tool-service.js';
import { grpcClient, unary } from '../fixtures/grpc-client.js';
import { CLI_MAIN, tempDir, TSX, until } from '../fixtures/gateway/harness.js';

describe("grpc-js's server_call trace", () => {
  let serve: ChildProcess | undefined;
  let grpc: GrpcClient | undefined;
  afterAll(() => {
    grpc?.close();
    if (serve?.exitCode === null) serve.kill('SIGKILL');
  });

  it("logs a request's headers without its credential", async () => {
    const cwd = tempDir('grpc-trace-not-logged');
    writeFileSync(
      join(cwd, 'fabric.yaml'),
      JSON.stringify({
        http: { port: 0 },
        grpc: { port: 0 },
        state: 'memory',
        agents: [{ name: 'a' }],
        policies: [{ name: 'allow', rules: [{ tool: '*', action: 'allow' }] }],
      }),
    );
    serve = spawn(
      process.execPath,
      ['--import', TSX, CLI_MAIN, 'serve', '--config', 'fabric.yaml'],
      {
        cwd,
        stdio: ['ignore', 'pipe', 'pipe'],
        env: { ...process.env, GRPC_TRACE: 'server_call', GRPC_VERBOSITY: 'DEBUG' },
      },
    );
    let out = '';
    let err = '';
    serve.stdout!.on('data', (c: Buffer) => (out += c.toString()));
    serve.stderr!.on('data', (c: Buffer) => (err += c.toString()));
    await until(() => /gRPC:\s+\S+/.test(out) || serve!.exitCode !== null, 25_000);
    const address = /gRPC:\s+(\S+)/.exec(out)![1]!;
    const token = /agent token:\s+(\S+)/.exec(out)![1]!;
    grpc = grpcClient(TOOL_SERVICE_DEFINITION, address);
    await unary(grpc, 'listTools', create(ListToolsRequestSchema), token);
    // The tracer did log the call's headers (the test would pass vacuously otherwise)...
    await until(() => /ListTools received headers .*"authorization"/.test(err));
    // ...but not the credential they carried.
    expect(err).not.toContain(token);
    expect(err).not.toContain(token.slice(8, 24));
    expect(err).toMatch(/"authorization":\["\(not logged\)"\]/);
  }, 60_000);
});
