/**
 * A gRPC call whose metadata value holds a character metadata cannot carry (a tab, a non-ASCII
 * byte: `Bearer<TAB><token>`, a token read from a file with stray bytes) is dropped by grpc-js,
 * which logged the whole entry — the credential in clear — on the sidecar's stderr. Now the
 * value is left out of that line. Real sidecar, raw HTTP/2 client, the process's console.
 */
import { connect } from 'node:http2';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import { agentToken, closeSidecar, startTestSidecar, until } from '../fixtures/gateway/harness.js';

describe('gRPC metadata values grpc-js cannot read', () => {
  let sidecar: Sidecar | undefined;
  afterEach(async () => {
    vi.restoreAllMocks();
    await closeSidecar(sidecar);
    sidecar = undefined;
  });

  it('are refused without the credential appearing in what the sidecar logs', async () => {
    sidecar = await startTestSidecar({ agents: [{ name: 'a' }], grpc: { port: 0 } } as never);
    const token = agentToken(sidecar, 'a');
    const lines: string[] = [];
    const capture = (...args: unknown[]): void => void lines.push(args.map(String).join(' '));
    vi.spyOn(console, 'error').mockImplementation(capture);
    vi.spyOn(console, 'warn').mockImplementation(capture);
    vi.spyOn(console, 'log').mockImplementation(capture);
    const write = process.stderr.write.bind(process.stderr);
    vi.spyOn(process.stderr, 'write').mockImplementation((chunk, ...rest) => {
      lines.push(String(chunk));
      return write(chunk, ...(rest as []));
    });

    const session = connect(`http://${sidecar.grpcAddress!}`);
    session.on('error', () => {});
    const statuses: string[] = [];
    for (const value of [`Bearer\t${token}`, `Bearer ${token}\u00e9`]) {
      const call = session.request({
        ':method': 'POST',
        ':path': '/fabric.v1.AgentService/Heartbeat',
        'content-type': 'application/grpc',
        te: 'trailers',
        authorization: value,
      });
      const trailers: Record<string, unknown> = {};
      call.on('response', (h) => Object.assign(trailers, h));
      call.on('trailers', (h) => Object.assign(trailers, h));
      call.on('data', () => {});
      call.on('error', () => {});
      await new Promise<void>((resolve) => {
        call.on('close', resolve);
        call.end(Buffer.from([0, 0, 0, 0, 0]));
      });
      statuses.push(String(trailers['grpc-status']));
    }
    session.close();
    // Both refused: the entry was dropped, so the call has no credential.
    expect(statuses).toEqual(['16', '16']);
    // grpc-js did say it dropped them (this test would pass vacuously otherwise)...
    await until(() => lines.filter((l) => l.includes('authorization')).length >= 2);
    // ...but not what they held.
    expect(lines.join('\n')).not.toContain(token);
    expect(lines.join('\n')).not.toContain(token.slice(8, 24));
  });
});
