/**
 * An embedder that set its own grpc-js logger (`setLogger`) before starting the fabric's gRPC
 * server keeps it: the sidecar's redaction of credentials (a dropped `authorization` entry's
 * value) wraps that logger instead of replacing it with one that writes on stderr. A real
 * sidecar in this process, a raw HTTP/2 client sending `Bearer<TAB><token>`.
 */
import { connect } from 'node:http2';
import { setLogger } from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import { agentToken, closeSidecar, startTestSidecar, until } from '../fixtures/gateway/harness.js';

describe("an embedder's grpc-js logger", () => {
  let sidecar: Sidecar | undefined;
  afterEach(async () => {
    await closeSidecar(sidecar);
    sidecar = undefined;
  });

  it('gets grpc-js lines, redacted, after the gRPC server starts', async () => {
    const lines: string[] = [];
    const capture =
      (severity: string) =>
      (...args: unknown[]): void =>
        void lines.push(`${severity} ${args.map(String).join(' ')}`);
    setLogger({ error: capture('error'), info: capture('info'), debug: capture('debug') });
    sidecar = await startTestSidecar({ agents: [{ name: 'a' }], grpc: { port: 0 } } as never);
    const token = agentToken(sidecar, 'a');

    const session = connect(`http://${sidecar.grpcAddress!}`);
    session.on('error', () => {});
    const call = session.request({
      ':method': 'POST',
      ':path': '/fabric.v1.AgentService/Heartbeat',
      'content-type': 'application/grpc',
      te: 'trailers',
      authorization: `Bearer\t${token}`,
    });
    call.on('data', () => {});
    call.on('error', () => {});
    await new Promise<void>((resolve) => {
      call.on('close', resolve);
      call.end(Buffer.from([0, 0, 0, 0, 0]));
    });
    session.close();

    // grpc-js's line about the dropped entry reached the embedder's logger, at its severity...
    await until(() => lines.some((l) => l.includes('metadata entry authorization')));
    // ...redacted: the key, never the credential.
    expect(lines.join('\n')).not.toContain(token);
    expect(lines.join('\n')).not.toContain(token.slice(8, 24));
  });
});
