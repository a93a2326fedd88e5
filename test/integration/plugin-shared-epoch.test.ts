/**
 * The first-party policy plugins that tell `retryAt` on the wall clock (policy-rate-limit,
 * policy-loop-guard) share one `epochOf`, exported by the package, instead of each keeping a copy
 * of it. They are dropped-in files that import it from `agent-fabric` by name: loaded by a real
 * `agent-fabric serve` (which resolves the name as a user's install does, not through the test
 * runner's alias), both still load and refuse with a `retryAt` of now on the wall clock, and
 * nothing they refused ran (the upstream's count on disk).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { epochOf } from 'agent-fabric';
import { afterAll, describe, expect, it } from 'vitest';
import { CLI_MAIN, httpClient, tempDir, text, TSX, until } from '../fixtures/gateway/harness.js';

const COUNTER_SERVER = fileURLToPath(
  new URL('../fixtures/gateway/counter-server.mjs', import.meta.url),
);

describe('epochOf, shared by the policy plugins', () => {
  it('reads an instant the same while the wall clock keeps pace, and follows a step', () => {
    let mono = 1000;
    let wall = 1_800_000_000_000;
    const epoch = epochOf(
      () => mono,
      () => wall,
    );
    expect(epoch(1500.2)).toBe(1_800_000_000_501);
    mono += 400;
    wall += 400.5; // slewed, not stepped: the same instant, the same time
    expect(epoch(1500.2)).toBe(1_800_000_000_501);
    wall += 3_600_000; // stepped an hour ahead
    expect(epoch(1500.2)).toBe(1_800_003_600_501);
  });

  describe('loaded by agent-fabric serve', () => {
    let serve: ChildProcess | undefined;
    afterAll(() => {
      if (serve?.exitCode === null) serve.kill('SIGKILL');
    });

    it('both plugins load and refuse with retryAt on the wall clock', async () => {
      const cwd = tempDir('plugin-shared-epoch');
      const countFile = join(cwd, 'count.txt');
      writeFileSync(countFile, '');
      writeFileSync(
        join(cwd, 'fabric.yaml'),
        JSON.stringify({
          http: { port: 0 },
          state: 'memory',
          agents: [{ name: 'a' }],
          plugins: [
            {
              module: 'policy-rate-limit',
              options: { perAgent: { capacity: 2, refillPerSecond: 0.001 } },
            },
            { module: 'policy-loop-guard', options: { maxRepeats: 1 } },
          ],
          upstreams: {
            c: {
              command: process.execPath,
              args: [COUNTER_SERVER],
              env: { COUNT_FILE: countFile },
            },
          },
          policies: [{ name: 'allow', rules: [{ tool: '*', action: 'allow' }] }],
        }),
      );
      serve = spawn(
        process.execPath,
        ['--import', TSX, CLI_MAIN, 'serve', '--config', 'fabric.yaml'],
        { cwd, stdio: ['ignore', 'pipe', 'pipe'] },
      );
      let out = '';
      serve.stdout!.on('data', (c: Buffer) => (out += c.toString()));
      serve.stderr!.on('data', (c: Buffer) => (out += c.toString()));
      await until(() => out.includes('"mcpServers"') || serve!.exitCode !== null, 25_000);
      expect(out).toContain('plugin policy-rate-limit@');
      expect(out).toContain('plugin policy-loop-guard@');
      const url = /MCP URL:\s+(\S+)/.exec(out)![1]!;
      const token = /agent token:\s+(\S+)/.exec(out)![1]!;
      const client = await httpClient(url, token);
      try {
        const bump = async (label: string) =>
          (await client.callTool({ name: 'c__bump', arguments: { label } })) as CallToolResult;
        const retryAt = (r: CallToolResult): number =>
          Date.parse(/(?:wait until|retry at) (\S+Z)/.exec(text(r))![1]!);

        expect(text(await bump('x'))).toBe('bumped x');
        const from = Date.now();
        const looped = await bump('x');
        expect(looped.isError).toBe(true);
        expect(text(looped)).toContain('(policy-loop-guard)');
        // The window's end: a minute after the first call, on the wall clock.
        expect(retryAt(looped)).toBeGreaterThan(from);
        expect(retryAt(looped)).toBeLessThanOrEqual(Date.now() + 60_000);

        expect(text(await bump('y'))).toBe('bumped y');
        const limited = await bump('z');
        expect(limited.isError).toBe(true);
        expect(text(limited)).toContain('(policy-rate-limit)');
        // One token back at 0.001/s: about 1000 s from now, on the wall clock.
        expect(retryAt(limited)).toBeGreaterThan(Date.now() + 900_000);
        expect(retryAt(limited)).toBeLessThanOrEqual(Date.now() + 1_001_000);

        // What ran: the two calls let through, nothing refused.
        expect(readFileSync(countFile, 'utf8')).toBe('x\ny\n');
      } finally {
        await client.close();
      }
    });
  });
});
