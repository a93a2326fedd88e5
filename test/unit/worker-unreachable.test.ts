import { StreamableHTTPError } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { describe, expect, it } from 'vitest';
import { sidecarUnreachable } from '../../src/worker/mcp-worker-transport.js';
import { RemoteFabricError } from '../../src/worker/worker-transport.js';

/** What `FabricWorker.run()` waits out (the sidecar down) and what still ends it (an answer). */
describe('sidecarUnreachable (MCP worker transport)', () => {
  const socket = (code: string) => Object.assign(new Error(`connect ${code}`), { code });
  it.each([
    [
      'fetch failed, connection refused',
      new TypeError('fetch failed', { cause: socket('ECONNREFUSED') }),
    ],
    ['fetch failed, reset', new TypeError('fetch failed', { cause: socket('ECONNRESET') })],
    ['a body cut off', new TypeError('terminated', { cause: socket('UND_ERR_SOCKET') })],
    [
      'wrapped by the SDK',
      new Error('SSE stream disconnected', { cause: new TypeError('terminated') }),
    ],
    ['a proxy’s 502', new StreamableHTTPError(502, 'Bad Gateway')],
    ['a proxy’s 503', new StreamableHTTPError(503, 'Service Unavailable')],
  ])('%s: unreachable', (_what, err) => {
    expect(sidecarUnreachable(err)).toBe(true);
  });

  it.each([
    ['a 401', new StreamableHTTPError(401, 'Unauthorized')],
    ['a 404 (session gone: renewed, not waited out)', new StreamableHTTPError(404, 'Not Found')],
    ['a refusal', new RemoteFabricError('FABRIC_ERR_POLICY_DENIED', 'permission_denied', 'no', {})],
    ['a plain error', new Error('boom')],
    ['not an error', 'ECONNREFUSED'],
  ])('%s: an answer, not unreachable', (_what, err) => {
    expect(sidecarUnreachable(err)).toBe(false);
  });
});
