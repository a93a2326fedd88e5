/**
 * `decodeJson` (the HTTP door's body reader) refuses numbers in non-decimal forms wherever a
 * message holds them: a nested message's field, a map's values, before protobuf-es reads
 * `"0x10"` as 16.
 */
import { describe, expect, it } from 'vitest';
import { InvalidArgumentError } from '../../src/errors.js';
import { GetStatsResponseSchema } from '../../src/gen/fabric/v1/fabric_pb.js';
import { AddPolicyRequestSchema } from '../../src/gen/fabric/v1/policy_pb.js';
import { decodeJson } from '../../src/rpc/http-door.js';

const refusal = (f: () => unknown): InvalidArgumentError => {
  try {
    f();
  } catch (error) {
    expect(error).toBeInstanceOf(InvalidArgumentError);
    return error as InvalidArgumentError;
  }
  throw new Error('not refused');
};

describe('decodeJson and numbers', () => {
  it('refuses a nested message field in hex, and reads it in decimal', () => {
    const e = refusal(() =>
      decodeJson(AddPolicyRequestSchema, '{"policy":{"name":"p","priority":"0x10"}}'),
    );
    expect(e.details.field).toBe('body.policy.priority');
    expect(
      decodeJson(AddPolicyRequestSchema, '{"policy":{"name":"p","priority":"16"}}'),
    ).toMatchObject({
      policy: { priority: 16n },
    });
  });

  it("refuses a map's value given with whitespace or an exponent", () => {
    for (const v of ['" 3"', '"3e0"', '"0b11"']) {
      const e = refusal(() =>
        decodeJson(GetStatsResponseSchema, `{"agentsByStatus":{"IDLE":${v}}}`),
      );
      expect(e.details.field).toBe('body.agentsByStatus[IDLE]');
    }
  });
});
