/**
 * Numbers of a request body over the HTTP door in a form other than a decimal one, against a
 * real sidecar with fetch: protobuf-es's `fromJson` read `"tokens": "0x10"` as 16 (and `" 16"`,
 * `"0b1"`, `"  "` as 0, a cost of `"0x10"` as 16), and `JSON.parse` rounded an integer beyond
 * 2^53 silently. Each is refused naming the field, and nothing is recorded.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import { postJson } from '../fixtures/api.js';
import { ADMIN_TOKEN, closeSidecar, startTestSidecar } from '../fixtures/gateway/harness.js';

describe('the HTTP door refuses numbers given in non-decimal forms', () => {
  let sidecar: Sidecar;
  let base: URL;
  let agentId: string;
  let credential: string;

  beforeAll(async () => {
    sidecar = await startTestSidecar({ upstreams: {} });
    base = new URL('/api/', sidecar.url);
    const res = await postJson(
      new URL('fabric.v1.FabricService/SpawnAgent', base),
      { name: 'reporter', model: 'm', executor: 'remote' },
      ADMIN_TOKEN,
    );
    const body = (await res.json()) as {
      spawned: { agent: { agentId: string }; credential: string };
    };
    agentId = body.spawned.agent.agentId;
    credential = body.spawned.credential;
  });
  afterAll(() => closeSidecar(sidecar));

  const record = (text: string): Promise<Response> =>
    postJson(new URL('fabric.v1.AgentService/RecordUsage', base), text, credential);

  it('records decimal forms (a float with an exponent too, as the protobuf JSON mapping allows), refuses hex, binary, octal, signs, padding, integer exponents and rounded integers', async () => {
    for (const good of ['{"tokens":16,"cost":0.5}', '{"tokens":"16","cost":"5e-1"}']) {
      const r = await record(good);
      expect({ good, status: r.status }).toEqual({ good, status: 200 });
    }
    const used = sidecar.fabric!.budgets.getStatus(agentId);
    expect(used).toMatchObject({ tokensUsed: 32, costUsed: 1 });
    const bad: [string, string][] = [
      ['{"tokens":"0x10"}', 'body.tokens'],
      ['{"tokens":" 16"}', 'body.tokens'],
      ['{"tokens":"16 "}', 'body.tokens'],
      ['{"tokens":"  "}', 'body.tokens'],
      ['{"tokens":"0b1"}', 'body.tokens'],
      ['{"tokens":"0o7"}', 'body.tokens'],
      ['{"tokens":"+16"}', 'body.tokens'],
      ['{"tokens":"016"}', 'body.tokens'],
      ['{"tokens":"1e1"}', 'body.tokens'],
      ['{"tokens":9007199254740993}', 'body.tokens'],
      ['{"tokens":1e20}', 'body.tokens'],
      ['{"cost":"0x10"}', 'body.cost'],
      ['{"cost":"1e"}', 'body.cost'],
      ['{"cost":"0x1p3"}', 'body.cost'],
      ['{"cost":" 1"}', 'body.cost'],
      ['{"cost":"1."}', 'body.cost'],
      ['{"cost":".5"}', 'body.cost'],
    ];
    for (const [text, field] of bad) {
      const r = await record(text);
      const body = (await r.json()) as {
        code: string;
        message: string;
        details: { field?: string };
      };
      expect({ text, status: r.status, code: body.code, field: body.details.field }).toEqual({
        text,
        status: 400,
        code: 'FABRIC_ERR_INVALID_ARGUMENT',
        field,
      });
      expect(body.message).toContain(field);
    }
    // Refused before anything reads them: tokens and cost as they were.
    expect(sidecar.fabric!.budgets.getStatus(agentId)).toMatchObject({
      tokensUsed: 32,
      costUsed: 1,
    });
  });

  it('refuses non-finite, negative and fractional amounts with a typed error, recording none', async () => {
    const bad: [string, string][] = [
      ['{"tokens":1.5}', 'FABRIC_ERR_INVALID_ARGUMENT'],
      ['{"tokens":"NaN"}', 'FABRIC_ERR_INVALID_ARGUMENT'],
      ['{"tokens":"Infinity"}', 'FABRIC_ERR_INVALID_ARGUMENT'],
      ['{"tokens":-1}', 'FABRIC_ERR_INVALID_ARGUMENT'],
      ['{"tokens":"9007199254740993"}', 'FABRIC_ERR_INVALID_ARGUMENT'],
      ['{"cost":"NaN"}', 'FABRIC_ERR_INVALID_USAGE'],
      ['{"cost":"Infinity"}', 'FABRIC_ERR_INVALID_USAGE'],
      ['{"cost":"-Infinity"}', 'FABRIC_ERR_INVALID_USAGE'],
      ['{"cost":-1}', 'FABRIC_ERR_INVALID_USAGE'],
    ];
    for (const [text, code] of bad) {
      const r = await record(text);
      const body = (await r.json()) as { code: string };
      expect({ text, status: r.status, code: body.code }).toEqual({ text, status: 400, code });
    }
    expect(sidecar.fabric!.budgets.getStatus(agentId)).toMatchObject({
      tokensUsed: 32,
      costUsed: 1,
    });
  });
});
