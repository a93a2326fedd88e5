import {
  isJSONRPCErrorResponse,
  isJSONRPCNotification,
  isJSONRPCRequest,
  isJSONRPCResultResponse,
  JSONRPCMessageSchema,
  RELATED_TASK_META_KEY,
} from '@modelcontextprotocol/sdk/types.js';
import { describe, expect, it } from 'vitest';
import {
  answerIdOf,
  classifyMessage,
  invalidMessageResponse,
  type MessageKind,
} from '../../src/gateway/jsonrpc-message.js';

/** What the SDK's Protocol makes of a message (its own order of checks). */
function sdkKind(m: unknown): MessageKind {
  if (isJSONRPCResultResponse(m) || isJSONRPCErrorResponse(m)) return 'response';
  if (isJSONRPCRequest(m)) return 'request';
  if (isJSONRPCNotification(m)) return 'notification';
  return 'invalid';
}

/** Deterministic PRNG (mulberry32), so a failure can be replayed. */
function prng(seed: number): () => number {
  let a = seed;
  return () => {
    a = (a + 0x6d2b79f5) | 0;
    let t = Math.imul(a ^ (a >>> 15), 1 | a);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const ABSENT = Symbol('absent');
const badIds = [2 ** 53, -(2 ** 53), 1.5, 1e300, null, {}, [], true];
const goodIds = [0, 1, -7, 2 ** 53 - 1, -(2 ** 53 - 1), 'a', '', '1'];
const goodMetas = [
  {},
  { progressToken: 'p' },
  { progressToken: 3 },
  { [RELATED_TASK_META_KEY]: { taskId: 't' } },
  { [RELATED_TASK_META_KEY]: { taskId: 't', extra: 1 } },
  { other: [1, 2] },
];
const badMetas = [
  [],
  null,
  'm',
  { progressToken: 3.5 },
  { progressToken: 2 ** 60 },
  { progressToken: null },
  { [RELATED_TASK_META_KEY]: { taskId: 1 } },
  { [RELATED_TASK_META_KEY]: [] },
  { [RELATED_TASK_META_KEY]: null },
];

function pick<T>(rand: () => number, list: readonly T[]): T {
  return list[Math.floor(rand() * list.length)]!;
}

/** Mostly one of `good`, sometimes one of `bad`: each field is wrong about one time in five. */
function field<T>(rand: () => number, good: readonly T[], bad: readonly T[]): T {
  return rand() < 0.8 ? pick(rand, good) : pick(rand, bad);
}

function withMeta(rand: () => number, base: Record<string, unknown>): unknown {
  if (rand() < 0.5) return base;
  return { ...base, _meta: field<unknown>(rand, goodMetas, badMetas) };
}

/** A random message near the valid shapes: most fields plausible, some wrong. */
function randomMessage(rand: () => number): unknown {
  const m: Record<string, unknown> = {};
  const set = (key: string, value: unknown): void => {
    if (value !== ABSENT) m[key] = value;
  };
  set('jsonrpc', field<unknown>(rand, ['2.0'], ['1.0', 2, null, ABSENT]));
  const shape = rand();
  if (shape < 0.3) {
    // request
    set('id', field<unknown>(rand, goodIds, badIds));
    set('method', field<unknown>(rand, ['tools/call', 'ping'], ['', 5, null, {}]));
    set('params', field<unknown>(rand, [ABSENT, withMeta(rand, { name: 'x' })], [[], null, 'p']));
  } else if (shape < 0.5) {
    // notification
    set('id', field<unknown>(rand, [ABSENT], badIds));
    set('method', field<unknown>(rand, ['notifications/cancelled'], [5, null]));
    set('params', field<unknown>(rand, [ABSENT, withMeta(rand, { requestId: 1 })], [[], 'p']));
  } else if (shape < 0.75) {
    set('id', field<unknown>(rand, goodIds, [...badIds, ABSENT]));
    set('result', field<unknown>(rand, [withMeta(rand, { content: [] })], [[], null, 'r', 0]));
  } else {
    set('id', field<unknown>(rand, [...goodIds, ABSENT], badIds));
    set(
      'error',
      field<unknown>(
        rand,
        [
          { code: -32600, message: 'm' },
          { code: -32600, message: 'm', data: { x: 1 } },
          { code: -32600, message: 'm', extra: true },
        ],
        [{ code: 1.5, message: 'm' }, { code: 2 ** 60, message: 'm' }, { code: -1 }, [], null],
      ),
    );
  }
  // Sometimes a stray key, or a second kind's key.
  const r = rand();
  if (r < 0.05) m.extra = 1;
  else if (r < 0.08) m.result = {};
  else if (r < 0.11) m.method = 'x';
  else if (r < 0.14) m.error = { code: 1, message: 'm' };
  else if (r < 0.17) m.params = {};
  // Through JSON, as every message arrives.
  return JSON.parse(JSON.stringify(m)) as unknown;
}

describe('classifyMessage (the SDK-equivalent JSON-RPC check)', () => {
  it('agrees with the SDK on a fuzzed corpus of near-valid messages (seeded)', () => {
    const rand = prng(20240611);
    const counts: Record<MessageKind, number> = {
      request: 0,
      notification: 0,
      response: 0,
      invalid: 0,
    };
    for (let i = 0; i < 8_000; i++) {
      const m = randomMessage(rand);
      const expected = sdkKind(m);
      const actual = classifyMessage(m);
      if (actual !== expected) {
        throw new Error(`case ${i}: ${JSON.stringify(m)}: SDK ${expected}, ours ${actual}`);
      }
      expect(JSONRPCMessageSchema.safeParse(m).success).toBe(actual !== 'invalid');
      counts[actual]++;
    }
    // The corpus reaches every kind often enough to mean something.
    for (const n of Object.values(counts)) expect(n).toBeGreaterThan(300);
  });

  it('agrees with the SDK on hand-picked edge cases', () => {
    const cases: unknown[] = [
      null,
      123,
      'str',
      [],
      [{ jsonrpc: '2.0', id: 1, method: 'ping' }],
      {},
      { jsonrpc: '2.0' },
      { jsonrpc: '2.0', id: 1, method: 'ping' },
      { jsonrpc: '2.0', id: -0, method: 'ping' },
      { jsonrpc: '2.0', id: 9007199254740992, method: 'ping' },
      { jsonrpc: '2.0', id: 1, method: 'ping', params: { __proto__: [] } },
      JSON.parse('{"jsonrpc":"2.0","id":1,"method":"x","__proto__":{}}'),
      JSON.parse('{"jsonrpc":"2.0","id":1,"method":"x","params":{"__proto__":[]}}'),
      { jsonrpc: '2.0', error: { code: 1, message: 'no id' } },
      { jsonrpc: '2.0', id: null, error: { code: 1, message: 'null id' } },
      { jsonrpc: '2.0', id: 1, result: {}, error: { code: 1, message: 'both' } },
      { jsonrpc: '2.0', method: 'notifications/cancelled', params: { requestId: 1 } },
    ];
    for (const m of cases) expect(classifyMessage(m), JSON.stringify(m)).toBe(sdkKind(m));
  });

  it('answers an invalid request with its id only when the id is valid and it is no response', () => {
    expect(answerIdOf({ jsonrpc: '1.0', id: 5, method: 'ping' })).toBe(5);
    expect(answerIdOf({ jsonrpc: '2.0', id: 'a', method: 7 })).toBe('a');
    expect(answerIdOf({ jsonrpc: '2.0', id: 3 })).toBe(3);
    expect(answerIdOf({ jsonrpc: '2.0', id: 1.5, method: 'ping' })).toBeNull();
    expect(answerIdOf({ jsonrpc: '2.0', id: 2 ** 53, method: 'ping' })).toBeNull();
    expect(answerIdOf({ jsonrpc: '2.0', id: { a: 1 }, method: 'ping' })).toBeNull();
    expect(answerIdOf({ jsonrpc: '2.0', id: 4, result: [] })).toBeNull();
    expect(answerIdOf(null)).toBeNull();
    const answer = invalidMessageResponse({ jsonrpc: '2.0', id: 9, method: 'x', params: [] });
    expect(answer).toEqual({
      jsonrpc: '2.0',
      id: 9,
      error: { code: -32600, message: 'Invalid Request: params must be an object' },
    });
  });

  it('never echoes what the agent sent besides a valid id', () => {
    const evil = '<script>alert(1)</script>';
    for (const m of [
      { jsonrpc: evil, id: 1, method: 'x' },
      { jsonrpc: '2.0', id: 1, method: 'x', [evil]: 1 },
      { jsonrpc: '2.0', id: 1, result: evil },
      { [evil]: evil },
    ]) {
      expect(JSON.stringify(invalidMessageResponse(m))).not.toContain('script');
    }
  });
});
