import { ErrorCode, type JSONRPCMessage } from '@modelcontextprotocol/sdk/types.js';
import { describe, expect, it } from 'vitest';
import { LineWriter } from '../../src/gateway/line-writer.js';
import { serializeMessage } from '../../src/gateway/serialize-message.js';
import {
  APPROXIMATE_JSON_MAX_NODES,
  approximateJsonBytes,
  BYTES_PER_TOKEN,
  estimateTokens,
} from '../../src/gateway/tool-costs.js';

/** What an upstream can answer: JSON nested far past what JSON.stringify can serialize. */
function deepResult(levels: number): Record<string, unknown> {
  return JSON.parse(
    `{"content":[{"type":"text","text":"x"}],"structuredContent":${'{"a":'.repeat(levels)}1${'}'.repeat(levels)}}`,
  ) as Record<string, unknown>;
}

describe('estimateTokens never throws', () => {
  it('measures a result JSON.stringify cannot serialize without recursion', () => {
    const result = deepResult(200_000);
    expect(() => JSON.stringify(result)).toThrow(RangeError);
    const tokens = estimateTokens(result);
    // About the size of its JSON: 200 000 × `{"a":` + `}`.
    expect(tokens).toBeGreaterThan((200_000 * 6) / BYTES_PER_TOKEN - 100);
    expect(tokens).toBeLessThan((200_000 * 7) / BYTES_PER_TOKEN);
  });

  it('measures values with a BigInt or a cycle, and stops on a cycle', () => {
    expect(estimateTokens({ n: 10n })).toBeGreaterThan(0);
    const loop: unknown[] = [];
    loop.push(loop, loop);
    expect(Number.isFinite(estimateTokens(loop))).toBe(true);
    expect(approximateJsonBytes(loop)).toBeGreaterThanOrEqual(APPROXIMATE_JSON_MAX_NODES);
  });

  it('is close to the real JSON size where both work', () => {
    const value = { s: 'héllo', n: [1, 22, 333], b: true, z: null, o: { k: 'v' } };
    expect(approximateJsonBytes(value)).toBe(Buffer.byteLength(JSON.stringify(value)));
  });
});

describe('serializeMessage (what the transports write)', () => {
  it('answers a response it cannot serialize with an InternalError for the same id', () => {
    const response = { jsonrpc: '2.0', id: 7, result: deepResult(100_000) } as JSONRPCMessage;
    const parsed = JSON.parse(serializeMessage(response)) as Record<string, unknown>;
    expect(parsed).toMatchObject({
      jsonrpc: '2.0',
      id: 7,
      error: { code: ErrorCode.InternalError, data: { code: 'FABRIC_ERR_INTERNAL' } },
    });
    expect(JSON.stringify(parsed)).toMatch(/could not be serialized/);
    const bigint = { jsonrpc: '2.0', id: 'a', result: { n: 1n } } as unknown as JSONRPCMessage;
    expect(JSON.parse(serializeMessage(bigint))).toMatchObject({ id: 'a', error: {} });
  });

  it('throws for a request or a notification (its sender handles the error)', () => {
    const params = deepResult(100_000);
    expect(() =>
      serializeMessage({ jsonrpc: '2.0', method: 'notifications/message', params }),
    ).toThrow(RangeError);
    expect(() => serializeMessage({ jsonrpc: '2.0', id: 1, method: 'x', params })).toThrow(
      RangeError,
    );
  });

  it('LineWriter writes the error response, and rejects an unserializable notification', async () => {
    let out = '';
    const writer = new LineWriter(() => ({
      write: (c: string) => (out += c),
      once: () => undefined,
    }));
    await writer.send({ jsonrpc: '2.0', id: 3, result: deepResult(100_000) } as JSONRPCMessage);
    await expect(
      writer.send({ jsonrpc: '2.0', method: 'notifications/message', params: deepResult(100_000) }),
    ).rejects.toThrow(RangeError);
    writer.flush();
    const lines = out.trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(JSON.parse(lines[0]!)).toMatchObject({
      id: 3,
      error: { code: ErrorCode.InternalError },
    });
  });
});
