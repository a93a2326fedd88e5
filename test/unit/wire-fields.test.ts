/**
 * `countFieldsOver`: the field count of a request's bytes, walked with its descriptor before
 * decoding — lists, maps (entries, keys, message values), oneofs and nesting all count; what is
 * malformed is left to the decoder.
 */
import { create, fromJson, toBinary } from '@bufbuild/protobuf';
import { StructSchema, ValueSchema } from '@bufbuild/protobuf/wkt';
import { describe, expect, it } from 'vitest';
import { CompleteTaskRequestSchema } from '../../src/gen/fabric/v1/agent_pb.js';
import { countFieldsOver } from '../../src/rpc/wire-fields.js';

/** The smallest `max` the bytes are not over: their field count. */
function count(schema: Parameters<typeof countFieldsOver>[0], bytes: Uint8Array): number {
  let lo = 0;
  let hi = 1;
  while (countFieldsOver(schema, bytes, hi, 100)) hi *= 2;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (countFieldsOver(schema, bytes, mid, 100)) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

describe('countFieldsOver', () => {
  it('counts every field at every depth', () => {
    // task_id, attempt, result → list_value → 3 × (values → null_value | number_value).
    const bytes = toBinary(
      CompleteTaskRequestSchema,
      create(CompleteTaskRequestSchema, {
        taskId: 't',
        attempt: 1,
        result: fromJson(ValueSchema, [null, 1, 2]),
      }),
    );
    expect(count(CompleteTaskRequestSchema, bytes)).toBe(2 + 1 + 1 + 3 * 2);
  });

  it('walks map entries: key, and a message value all the way down', () => {
    // fields (map entry) → key, value → struct_value → fields (entry) → key, value → bool_value.
    const bytes = toBinary(StructSchema, fromJson(StructSchema, { a: { b: true } }));
    expect(count(StructSchema, bytes)).toBe(8);
    const wide = Object.fromEntries(Array.from({ length: 1000 }, (_, i) => [`k${i}`, null]));
    expect(count(StructSchema, toBinary(StructSchema, fromJson(StructSchema, wide)))).toBe(4000);
  });

  it('stops at the bound, and leaves malformed or too deep bytes to the decoder', () => {
    const bytes = toBinary(ValueSchema, fromJson(ValueSchema, [1, 2, 3]));
    expect(countFieldsOver(ValueSchema, bytes, 6, 100)).toBe(true);
    expect(countFieldsOver(ValueSchema, bytes, 7, 100)).toBe(false);
    const cut = bytes.subarray(0, bytes.length - 1);
    expect(countFieldsOver(ValueSchema, cut, 1_000, 100)).toBe(false); // truncated
    expect(countFieldsOver(ValueSchema, cut, 0, 100)).toBe(true); // over before the cut
    expect(countFieldsOver(ValueSchema, Uint8Array.of(0xff, 0xff, 0xff), 1_000, 100)).toBe(false);
    expect(countFieldsOver(ValueSchema, Uint8Array.of(0x0b), 1_000, 100)).toBe(false); // a group
    let deep: unknown = 1;
    for (let i = 0; i < 10; i++) deep = [deep];
    const nested = toBinary(ValueSchema, fromJson(ValueSchema, deep as never));
    expect(countFieldsOver(ValueSchema, nested, 1, 100)).toBe(true);
    expect(countFieldsOver(ValueSchema, nested, 1_000, 5)).toBe(false);
  });
});
