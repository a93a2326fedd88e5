/**
 * A hostile review of the first-party policy plugins, from an agent holding one credential. Real
 * sidecar (harness), official MCP SDK client, real upstreams that write what they ran to a file
 * (counted on disk).
 *
 * - policy-rate-limit / policy-loop-guard: a call the budget made wait (only other calls'
 *   in-flight reservations kept it out) was counted when admitted without a second look, so an
 *   agent that held its budget with one slow call could park any number of calls behind it and
 *   have them all run past the limit when it ended (10 of 10 under a capacity of 4, and under
 *   `maxRepeats: 2`).
 * - secret-guard: its patterns asked for a word boundary around the secret, so a credential glued
 *   to one letter (`x` + the agent's own credential, a GitHub token + `_`, letters + an AWS key id)
 *   reached the upstream, and the admin token a sidecar generates (`fab_admin_…`) matched nothing.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import {
  CreateMessageRequestSchema,
  type CallToolResult,
} from '@modelcontextprotocol/sdk/types.js';
import { afterEach, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentId,
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  httpClient,
  startTestSidecar,
  tempDir,
  text,
  until,
} from '../fixtures/gateway/harness.js';

const COUNTER = fileURLToPath(new URL('../fixtures/gateway/counter-server.mjs', import.meta.url));
const HOLD_COUNTER = fileURLToPath(
  new URL('../fixtures/gateway/hold-counter-server.mjs', import.meta.url),
);
const plugin = (name: string) =>
  fileURLToPath(new URL(`../../plugins/${name}/index.js`, import.meta.url));

/** The labels of the calls the upstream ran, from its file. */
function ran(file: string): string[] {
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((l) => l !== '');
}

const bump = (client: Client, label: string) =>
  client.callTool({ name: 'c__bump', arguments: { label } }) as Promise<CallToolResult>;

let sidecar: Sidecar | undefined;
const clients: Client[] = [];
afterEach(async () => {
  await Promise.all(clients.splice(0).map((c) => c.close()));
  await closeSidecar(sidecar);
  sidecar = undefined;
});

describe('counting plugins: calls parked behind the agent’s own held budget (real sidecar)', () => {
  /**
   * The attack: `c__hold` is estimated at the agent's whole token budget, so while it runs every
   * other call of the agent is kept out by that in-flight reservation only — and waits for it
   * (gateway.budgetWaitSeconds). The agent parks 10 calls behind it, then ends the hold (it
   * answers the upstream's sampling request); the hold's real result is small, so all 10 fit.
   */
  async function parkBehindHold(counting: object, label: (i: number) => string) {
    const count = join(tempDir('park'), 'count.txt');
    sidecar = await startTestSidecar({
      upstreams: {
        c: {
          command: process.execPath,
          args: [HOLD_COUNTER],
          env: { COUNT_FILE: count },
          stderr: 'ignore',
        },
      },
      policies: [DEFAULT_ALLOW],
      plugins: [counting],
      agents: [{ name: 'a', budget: { maxTokensPerHour: 1_000_000 } }],
      tokenEstimates: { c__hold: 1000, c__bump: 10 },
      gateway: { budgetWaitSeconds: 120 },
    } as never);
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    let sampled!: () => void;
    const sampling = new Promise<void>((r) => (sampled = r));
    const client = await httpClient(sidecar.url!, agentToken(sidecar, 'a'), { sampling: {} });
    clients.push(client);
    client.setRequestHandler(CreateMessageRequestSchema, async () => {
      sampled();
      await released;
      return { role: 'assistant', model: 'm', content: { type: 'text', text: 'go' } };
    });
    // A first call teaches the gateway what a bump costs (calls of a tool not seen yet wait for
    // the first one's result instead of the budget).
    const warm = await bump(client, 'warm');
    expect(warm.isError, text(warm)).toBeFalsy();
    // The operator tightens the budget to what is used plus the hold's estimate: the hold fits
    // exactly, and while it runs nothing else does.
    const budgets = sidecar.fabric!.budgets;
    const id = agentId(sidecar, 'a');
    budgets.setBudget(id, { maxTokensPerHour: budgets.getStatus(id).tokensUsed + 1000 });
    const hold = client.callTool({ name: 'c__hold', arguments: {} }, undefined, {
      timeout: 120_000,
    }) as Promise<CallToolResult>;
    await sampling; // the hold runs upstream: its reservation holds the whole budget
    const parked = Array.from(
      { length: 10 },
      (_, i) =>
        client.callTool({ name: 'c__bump', arguments: { label: label(i) } }, undefined, {
          timeout: 120_000,
        }) as Promise<CallToolResult>,
    );
    // Every one of them waits for the budget (none refused, none run yet).
    await until(() => budgets.waiting === 10, 30_000);
    expect(ran(count)).toEqual(['warm']);
    release();
    const held = await hold;
    expect(held.isError, text(held)).toBeFalsy();
    const results = await Promise.all(parked);
    return { ran: ran(count).slice(1), results };
  }

  it('policy-rate-limit (capacity 4): of 10 calls parked behind a held budget, 2 run', async () => {
    const { ran: burst, results } = await parkBehindHold(
      {
        module: plugin('policy-rate-limit'),
        options: { perAgent: { capacity: 4, refillPerSecond: 0.0001 } },
      },
      (i) => `burst-${i}`,
    );
    // The warm-up and the hold took one token each: two are left.
    expect(burst).toHaveLength(2);
    const refused = results.filter((r) => r.isError === true);
    expect(refused).toHaveLength(8);
    for (const r of refused) {
      expect(text(r)).toMatch(/rate limit \(agent: 4 calls.*\(policy-rate-limit\)/);
      expect(r._meta?.['agent-fabric/error']).toMatchObject({ code: 'FABRIC_ERR_POLICY_DENIED' });
    }
    // What the refused calls reserved was given back.
    const status = sidecar!.fabric!.budgets.getStatus(agentId(sidecar!, 'a'));
    expect(status.tokensReserved).toBe(0);
  }, 120_000);

  it('policy-loop-guard (maxRepeats 2): of 10 identical calls parked behind a held budget, 2 run', async () => {
    const { ran: burst, results } = await parkBehindHold(
      { module: plugin('policy-loop-guard'), options: { maxRepeats: 2, windowSeconds: 600 } },
      () => 'same',
    );
    expect(burst).toEqual(['same', 'same']);
    const refused = results.filter((r) => r.isError === true);
    expect(refused).toHaveLength(8);
    for (const r of refused) expect(text(r)).toMatch(/ran 2 times within 600 s/);
  }, 120_000);
});

describe('secret-guard: a secret glued to other characters (real sidecar, counter upstream)', () => {
  const AWS = 'AKIAIOSFODNN7EXAMPLE';
  const GITHUB = `ghp_${'A1b2C3d4E5'.repeat(4).slice(0, 36)}`;
  /** The format the sidecar generates for its admin token when none is configured. */
  const ADMIN = `fab_admin_${'Zq9-x_Y3'.repeat(4)}`;

  it('refuses each one, naming the parameter, and the upstream never sees it', async () => {
    const count = join(tempDir('glued'), 'count.txt');
    sidecar = await startTestSidecar({
      upstreams: {
        c: {
          command: process.execPath,
          args: [COUNTER],
          env: { COUNT_FILE: count },
          stderr: 'ignore',
        },
      },
      policies: [DEFAULT_ALLOW],
      plugins: [{ module: plugin('secret-guard') }],
      agents: [{ name: 'a' }],
    } as never);
    const own = agentToken(sidecar, 'a');
    const client = await httpClient(sidecar.url!, own);
    clients.push(client);
    const ok = await bump(client, 'clean');
    expect(ok.isError, text(ok)).toBeFalsy();
    // The receiver drops the glue; each of these is the secret, whole.
    const attempts: [string, string][] = [
      ['x + own agent credential', `x${own}`],
      ['own agent credential in a word', `token=tok${own}end`],
      ['GitHub token + _', `${GITHUB}_`],
      ['GitHub token + _ + more', `${GITHUB}_x`],
      ['letters + AWS key id', `key${AWS}`],
      ['AWS key id + digit', `${AWS}0`],
      ['generated admin token', ADMIN],
      ['generated admin token glued', `admin${ADMIN}x`],
    ];
    for (const [what, label] of attempts) {
      const r = await bump(client, label);
      expect(r.isError, `${what}: ${text(r)}`).toBe(true);
      expect(text(r), what).toMatch(/params\.label looks like a secret \(.*\).*\(secret-guard\)/);
      expect(text(r), what).not.toContain(label);
    }
    expect(ran(count)).toEqual(['clean']);
  }, 60_000);
});
