import { describe, expect, it } from 'vitest';
import { BudgetExceededError, PolicyDeniedError, UnauthenticatedError } from '../../src/errors.js';
import {
  errorDetailsJson,
  MAX_ERROR_DETAILS_LENGTH,
  toServiceError,
} from '../../src/rpc/rpc-call.js';

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
