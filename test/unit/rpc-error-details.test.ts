import { describe, expect, it } from 'vitest';
import {
  BudgetExceededError,
  FabricError,
  MAX_WIRE_ERROR_TEXT,
  PolicyDeniedError,
  UnauthenticatedError,
} from '../../src/errors.js';
import {
  errorDetailsJson,
  MAX_ERROR_DETAILS_LENGTH,
  toServiceError,
} from '../../src/rpc/rpc-call.js';
import { refusalError, refusalResult } from '../../src/gateway/map-error.js';

describe('toServiceError: catalog errors to gRPC statuses with their details', () => {
  it('puts the code and the details (rule, policy, retryAt) in trailers', () => {
    const denied = toServiceError(
      new PolicyDeniedError('fs__write', 'no writes', { policy: 'ro', rule: 2 }),
    );
    expect(denied.code).toBe(7);
    expect(denied.metadata.get('fabric-error-code')).toEqual(['FABRIC_ERR_POLICY_DENIED']);
    expect(JSON.parse(denied.metadata.get('fabric-error-details')[0] as string)).toEqual({
      tool: 'fs__write',
      policy: 'ro',
      rule: 2,
    });
    const budget = toServiceError(
      new BudgetExceededError({ scope: 'agent:a', limit: 'cost', used: 3, max: 3, retryAt: 42 }),
    );
    expect(budget.code).toBe(8);
    expect(JSON.parse(budget.metadata.get('fabric-error-details')[0] as string)).toMatchObject({
      retryAt: 42,
      limit: 'cost',
    });
  });

  it('anything else is INTERNAL without details', () => {
    const e = toServiceError(new TypeError('boom'));
    expect(e.code).toBe(13);
    expect(e.metadata.get('fabric-error-code')).toEqual(['FABRIC_ERR_INTERNAL']);
    expect(e.metadata.get('fabric-error-details')).toEqual([]);
    expect(toServiceError(new UnauthenticatedError('who?')).code).toBe(16);
  });
});

describe('errorDetailsJson (a hostile error detail cannot break or leak through the trailer)', () => {
  it('drops members named like secrets', () => {
    const json = errorDetailsJson({
      agentId: 'a1',
      credential: 'fab_secret',
      adminToken: 'x',
      token: 'y',
      apiKey: 'z',
      password: 'p',
      tokens: 5,
    });
    expect(JSON.parse(json)).toEqual({ agentId: 'a1', tokens: 5 });
  });

  it('is ASCII (a metadata value must be) and still the same JSON value', () => {
    const details = { reason: 'naïve ☃ \u{1F600} "quoted" \n' };
    const json = errorDetailsJson(details);
    expect(/^[\x20-\x7e]*$/.test(json)).toBe(true);
    expect(JSON.parse(json)).toEqual(details);
  });

  it('skips values with no JSON form and cuts what does not fit, saying so', () => {
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    expect(JSON.parse(errorDetailsJson({ a: 1, cyclic, big: 10n }))).toEqual({ a: 1 });
    const json = errorDetailsJson({ small: 1, huge: 'x'.repeat(100_000), after: 'kept' });
    expect(json.length).toBeLessThanOrEqual(MAX_ERROR_DETAILS_LENGTH);
    expect(JSON.parse(json)).toEqual({ small: 1, after: 'kept', truncated: true });
  });
});

describe('FabricError.toJSON (the one wire form of every door)', () => {
  it('leaves secret-named members out at every level and cuts strings, depth and width', () => {
    const cyclic: Record<string, unknown> = { name: 'c' };
    cyclic.self = cyclic;
    const error = new FabricError('FABRIC_ERR_X', 'internal', `${'m'.repeat(5000)}`, {
      tool: 't',
      apiKey: 'k1',
      nested: { password: 'p', authorization: 'Bearer s', kept: 1, deep: { a: { b: { c: 1 } } } },
      list: Array.from({ length: 100 }, (_, i) => ({ i, token: 'tok' })),
      long: `${'😀'.repeat(600)}`,
      big: 10n,
      fn: () => 1,
      when: new Date(0),
      cyclic,
    });
    const wire = error.toJSON();
    const text = JSON.stringify(wire);
    expect(text).not.toMatch(/k1|"p"|Bearer s|tok/);
    expect(wire.message).toHaveLength(MAX_WIRE_ERROR_TEXT);
    expect(wire.message.endsWith('…')).toBe(true);
    expect(wire.details.tool).toBe('t');
    expect(wire.details.nested).toEqual({ kept: 1, deep: { a: { b: '…' } } });
    expect(wire.details.list).toHaveLength(32);
    const long = wire.details.long as string;
    expect(long.length).toBeLessThanOrEqual(MAX_WIRE_ERROR_TEXT);
    expect(long).not.toMatch(/[\uD800-\uDBFF](?![\uDC00-\uDFFF])/);
    expect(wire.details.big).toBe('10');
    expect('fn' in wire.details).toBe(false);
    expect(wire.details.when).toBe('1970-01-01T00:00:00.000Z');
    expect(text.length).toBeLessThan(16 * MAX_WIRE_ERROR_TEXT);
    // The trailer is built from the same form.
    const trailer = toServiceError(error).metadata.get('fabric-error-details')[0] as string;
    expect(trailer).not.toMatch(/k1|Bearer s|tok/);
  });
});

describe("the pipeline's refusals over MCP (refusalResult, refusalError)", () => {
  it('are bounded and secret-free as every error on a wire', () => {
    const refusal = {
      allowed: false as const,
      code: 'FABRIC_ERR_POLICY_DENIED',
      reason: 'r'.repeat(5000),
      details: {
        policy: 'p',
        password: 'hunter2',
        nested: { sessionToken: 'tok', kept: 1 },
        list: Array.from({ length: 100 }, (_, i) => i),
      },
    };
    for (const [text, data] of [
      (() => {
        const r = refusalResult(refusal);
        return [(r.content[0] as { text: string }).text, r._meta] as const;
      })(),
      (() => {
        const e = refusalError(refusal);
        return [e.message, e.data] as const;
      })(),
    ]) {
      expect(text.length).toBeLessThan(MAX_WIRE_ERROR_TEXT + 300);
      const json = JSON.stringify(data);
      expect(json).not.toMatch(/hunter2|"tok"/);
      expect(json.length).toBeLessThan(4 * MAX_WIRE_ERROR_TEXT);
      expect(json).toContain('"policy":"p"');
      expect(json).toContain('"kept":1');
    }
  });
});
