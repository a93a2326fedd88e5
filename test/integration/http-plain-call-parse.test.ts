/**
 * A plain `tools/call` POSTed to `/mcp` — `{"method":"tools/call","params":{"name":N,
 * "arguments":A},"jsonrpc":"2.0","id":I}` as the SDK's client writes it, or the members in
 * JSON-RPC's order — is read with a parse of its arguments alone (as over stdio), not a parse of
 * the whole body; every other body is parsed whole. Either way the call is the same: the
 * upstream gets the arguments `JSON.parse` of the whole body gives, and the answer carries the
 * agent's id. Real sidecar, server-everything upstream, raw Streamable HTTP.
 */
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_UPSTREAM,
  openRawSession,
  startTestSidecar,
} from '../fixtures/gateway/harness.js';

describe('POST /mcp: a plain tools/call is read with a parse of its arguments alone', () => {
  let sidecar: Sidecar;
  let headers: Record<string, string>;

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstreams: { ev: EVERYTHING_UPSTREAM },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'caller' }],
    });
    headers = await openRawSession(sidecar, 'caller');
  }, 30_000);

  afterAll(() => closeSidecar(sidecar));

  async function post(body: string): Promise<{ status: number; answer: Record<string, unknown> }> {
    const res = await fetch(sidecar.url!, { method: 'POST', headers, body });
    return { status: res.status, answer: (await res.json()) as Record<string, unknown> };
  }

  /** The echo's text in an answer. */
  const echoed = (answer: Record<string, unknown>): string =>
    ((answer.result as { content: { text: string }[] }).content[0]!.text ?? '').replace(
      /^Echo: /,
      '',
    );

  it('does not parse the whole body of a plain call (either member order)', async () => {
    const bodies = [
      '{"method":"tools/call","params":{"name":"ev__echo","arguments":{"message":"sdk order"}},"jsonrpc":"2.0","id":101}',
      '{"jsonrpc":"2.0","id":"a-102","method":"tools/call","params":{"name":"ev__echo","arguments":{"message":"rpc order"}}}',
    ];
    const parse = vi.spyOn(JSON, 'parse');
    try {
      for (const body of bodies) {
        const { status, answer } = await post(body);
        expect(status).toBe(200);
        expect(answer.id).toBe((JSON.parse(body) as { id: unknown }).id);
        expect(echoed(answer)).toBe(
          (JSON.parse(body) as { params: { arguments: { message: string } } }).params.arguments
            .message,
        );
      }
      const wholeBodies = parse.mock.calls.filter(([text]) => bodies.includes(text));
      // The test's own two parses of each body above, and none by the gateway.
      expect(wholeBodies).toHaveLength(bodies.length * 2);
    } finally {
      parse.mockRestore();
    }
  });

  it('gives the upstream what a parse of the whole body gives, plain or not', async () => {
    const cases: [string, string][] = [
      // A duplicate key inside the arguments: the last one, as JSON.parse reads it.
      [
        '{"method":"tools/call","params":{"name":"ev__echo","arguments":{"message":"first","message":"last"}},"jsonrpc":"2.0","id":201}',
        'last',
      ],
      // Escapes in the tool name and the arguments.
      [
        '{"jsonrpc":"2.0","id":202,"method":"tools/call","params":{"name":"ev\\u005f_echo","arguments":{"message":"a\\"b\\u00e9\\n"}}}',
        'a"bé\n',
      ],
      // Not plain (whitespace, a trailing newline, another member order): parsed whole.
      [
        '{ "jsonrpc": "2.0", "id": 203, "method": "tools/call", "params": { "name": "ev__echo", "arguments": { "message": "spaced" } } }\n',
        'spaced',
      ],
      [
        '{"id":204,"jsonrpc":"2.0","params":{"arguments":{"message":"reordered"},"name":"ev__echo"},"method":"tools/call"}',
        'reordered',
      ],
    ];
    for (const [body, message] of cases) {
      const { status, answer } = await post(body);
      expect({ status, id: answer.id }).toEqual({
        status: 200,
        id: (JSON.parse(body) as { id: unknown }).id,
      });
      expect(echoed(answer)).toBe(message);
    }
  });

  it('refuses what is not one JSON text as before, plain-looking or not', async () => {
    const bodies = [
      // Something after the arguments' object inside the plain layout.
      '{"method":"tools/call","params":{"name":"ev__echo","arguments":{"message":"x"}},"jsonrpc":"2.0","id":301}}',
      // A duplicate member outside the arguments ends them early: not one JSON text either.
      '{"method":"tools/call","params":{"name":"ev__echo","arguments":{"message":"x"}},"x":1},"jsonrpc":"2.0","id":302}',
      '{"method":"tools/call","params":{"name":"ev__echo","arguments":{"message":"x"}',
    ];
    for (const body of bodies) {
      const { status, answer } = await post(body);
      expect(status).toBe(400);
      expect((answer.error as { code: number }).code).toBe(-32700);
    }
  });
});
