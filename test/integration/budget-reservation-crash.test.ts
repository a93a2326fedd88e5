/**
 * The estimates of tool calls in flight across SIGKILL, on a real `agent-fabric serve` with a
 * SQLite state file (default budget lease, 1 %): an agent whose cost budget is 1,000 (a lease of
 * 10) has 40 calls of cost 1 forwarded to a slow upstream (test/fixtures/gateway/slow-server.mjs
 * writes `start <label>` to a file as each call arrives) when the sidecar is SIGKILLed. The
 * state file must already count every forwarded call: the reservation is covered on disk before
 * the call is forwarded, so a restart cannot let the agent spend the in-flight calls' cost
 * again (before, the file held the settled usage plus one lease: 11 of the 41 the upstream ran).
 * After the restart the sidecar resumes at what the file held: a clean stop after one more
 * call writes exactly that plus the call.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { tempDir, text, until } from '../fixtures/gateway/harness.js';
import { costOnDisk } from '../fixtures/state/budget-rows.js';
import { diskFull } from '../fixtures/state/disk-full.js';
import { cleanUp, connect, freePort, serve, stop } from '../fixtures/state/serve.js';

afterAll(cleanUp);

const SLOW_SERVER = fileURLToPath(new URL('../fixtures/gateway/slow-server.mjs', import.meta.url));
const ADMIN = `fab_admin_${'Lr4q'.repeat(8)}`;
const IN_FLIGHT = 40;
const LEASE = 10; // 1 % of maxCostPerDay

function started(file: string): number {
  try {
    return readFileSync(file, 'utf8')
      .split('\n')
      .filter((l) => l.startsWith('start '))
      .filter((l) => l !== 'start warm').length;
  } catch {
    return 0;
  }
}

/** A temp dir with `fabric.json`: the slow upstream, cost 1 a call, agent `spender` (1,000). */
async function setUp(): Promise<{ dir: string; count: string; statePath: string }> {
  const dir = tempDir('budget-reservation-crash');
  const count = join(dir, 'ran.txt');
  const statePath = join(dir, 'state', 'state.db');
  writeFileSync(
    join(dir, 'fabric.json'),
    JSON.stringify({
      http: { host: '127.0.0.1', port: await freePort() },
      adminToken: ADMIN,
      state: { path: statePath },
      upstreams: {
        slow: {
          command: process.execPath,
          args: [SLOW_SERVER],
          env: { COUNT_FILE: count },
          stderr: 'ignore',
        },
      },
      policies: [{ name: 'default-allow', rules: [{ tool: '*', action: 'allow' }] }],
      toolCosts: { slow__slow: 1 },
      agents: [{ name: 'spender', budget: { maxCostPerDay: 1000 } }],
    }),
  );
  return { dir, count, statePath };
}

/**
 * {@link setUp}, `serve` started on it, and one call made: it teaches the gateway the tool's
 * estimate (until then calls of the tool wait for the first) and settles cost 1.
 */
async function warmServe() {
  const { dir, count, statePath } = await setUp();
  const r = await serve(dir);
  const agentId = /agent token:\s+\S+\s+\(spender, ([0-9a-f-]+)\)/.exec(r.out)![1]!;
  const client = await connect(r.url, r.token);
  const warm = await client.callTool({ name: 'slow__slow', arguments: { label: 'warm', ms: 0 } });
  expect(text(warm)).toBe('slept warm');
  return { dir, count, statePath, r, scope: `agent:${agentId}`, client };
}

describe('budget reservations across SIGKILL (agent-fabric serve)', () => {
  it('counts every forwarded call in the state file before a kill -9', async () => {
    const { dir, count, statePath, r, scope, client } = await warmServe();
    const calls = Array.from({ length: IN_FLIGHT }, (_, i) =>
      client
        .callTool({ name: 'slow__slow', arguments: { label: `c${i}`, ms: 600_000 } }, undefined, {
          timeout: 600_000,
        })
        .catch(() => undefined),
    );
    // Every call reached the upstream: forwarded, its cost about to be spent.
    await until(() => started(count) === IN_FLIGHT, 30_000);
    await stop(r, 'SIGKILL');
    void Promise.all(calls);

    const forwarded = 1 + IN_FLIGHT; // the warm-up settled, the rest in flight
    const held = costOnDisk(statePath, scope);
    // Never less than what was forwarded (before: 1 + one lease = 11); at most a lease more.
    expect(held).toBeGreaterThanOrEqual(forwarded);
    expect(held).toBeLessThanOrEqual(forwarded + LEASE);
    expect(held).toBeLessThanOrEqual(1000);

    // The restart resumes at what the file held: one more call, then a clean stop writes it
    // exactly (what was held plus that call).
    const again = await serve(dir);
    const after = await connect(again.url, again.token);
    const one = await after.callTool({ name: 'slow__slow', arguments: { label: 'after', ms: 0 } });
    expect(text(one)).toBe('slept after');
    expect(await stop(again, 'SIGTERM')).toBe(0);
    expect(costOnDisk(statePath, scope)).toBe(held + 1);
  });

  it('refuses a call whose reservation cannot be committed, and forwards none uncovered', async () => {
    const { count, statePath, r, scope, client } = await warmServe();
    const ceiling = costOnDisk(statePath, scope); // 1 used + a lease of 10
    expect(ceiling).toBe(1 + LEASE);
    diskFull(r, true);
    const refused: string[] = [];
    try {
      for (let i = 0; i < 20; i++) {
        void client
          .callTool({ name: 'slow__slow', arguments: { label: `f${i}`, ms: 600_000 } }, undefined, {
            timeout: 600_000,
          })
          .then(
            (res) => {
              const said = (res.content as { text: string }[]).map((c) => c.text).join('\n');
              refused.push(res.isError === true ? said : `answered: ${said}`);
            },
            (error: unknown) => refused.push(`threw: ${String(error)}`),
          );
      }
      // The calls the ceiling covers go ahead (and never answer); the others are refused.
      await until(() => refused.length + started(count) === 20, 30_000);
    } finally {
      diskFull(r, false);
    }
    const forwarded = started(count);
    // Past the ceiling, every call was refused with the store's error, none forwarded: the
    // first whose reservation could not be committed, the rest as the store could not commit.
    expect(forwarded).toBeLessThanOrEqual(ceiling - 1);
    expect(refused.length).toBeGreaterThan(0);
    for (const said of refused) {
      expect(said).toContain('FABRIC_ERR_STATE_STORE');
      expect(said).toContain('tool calls are refused until it can'); // retry once it can
    }
    await stop(r, 'SIGKILL');
    expect(started(count)).toBe(forwarded);
    expect(costOnDisk(statePath, scope)).toBeGreaterThanOrEqual(1 + forwarded);
  });
});
