/**
 * `forwardRoots: true` on an upstream every agent shares: the roots one agent's client gave the
 * upstream are the connection's, and an upstream that keeps them (server-everything keeps a
 * connection's roots, server-filesystem replaces its allowed folders with them) applies them to
 * every later call — of any agent. Before, agent b's call of such an upstream got agent a's roots
 * (here: the fixture's `kept_roots` answered b with a's private folder). Now the connection that
 * got one agent's roots serves that agent alone until it restarts: another agent's request is
 * refused before it is sent (`FABRIC_ERR_UPSTREAM_UNAVAILABLE`, naming no agent), and after a
 * restart the next agent's roots are asked afresh.
 *
 * Real sidecar, the official SDK client as both agents (each answering `roots/list` with its own
 * folder), a stdio fixture upstream that keeps the roots it asked for once, and a real
 * server-filesystem, whose allowed folders no agent's roots reach: it asks only when it starts
 * (no agent's call in flight: answered with none) and on `roots/list_changed`, which the gateway
 * does not pass on.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import {
  CallToolResultSchema,
  CreateTaskResultSchema,
  ListRootsRequestSchema,
} from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  alive,
  CALLBACK_SERVER,
  closeSidecar,
  DEFAULT_ALLOW,
  filesystemUpstream,
  httpClient,
  startTestSidecar,
  tempDir,
  text,
  until,
} from '../fixtures/gateway/harness.js';

describe('forwardRoots: an upstream holding one agent roots serves no other agent', () => {
  let sidecar: Sidecar;
  let a: Client;
  let b: Client;
  const asked = { a: 0, b: 0 };
  const dir = tempDir('forward-roots');
  const sandbox = join(dir, 'sandbox');
  const privateA = join(dir, 'agent-a-private');
  mkdirSync(sandbox);
  mkdirSync(privateA);
  writeFileSync(join(privateA, 'secret.txt'), 'only for agent a');
  writeFileSync(join(sandbox, 'shared.txt'), 'for everyone');
  const rootsOf = { a: pathToFileURL(privateA).href, b: pathToFileURL(sandbox).href };

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstreams: {
        cb: {
          command: process.execPath,
          args: [CALLBACK_SERVER],
          stderr: 'ignore',
          forwardRoots: true,
          restart: { initialDelayMs: 20 },
        },
        fs: { ...filesystemUpstream(sandbox), forwardRoots: true },
      },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'a' }, { name: 'b' }, { name: 'c' }],
    });
    const caps = { roots: { listChanged: true } };
    a = await httpClient(sidecar.url!, agentToken(sidecar, 'a'), caps);
    b = await httpClient(sidecar.url!, agentToken(sidecar, 'b'), caps);
    a.setRequestHandler(ListRootsRequestSchema, () => {
      asked.a++;
      return { roots: [{ uri: rootsOf.a, name: 'a-private' }] };
    });
    b.setRequestHandler(ListRootsRequestSchema, () => {
      asked.b++;
      return { roots: [{ uri: rootsOf.b, name: 'b' }] };
    });
  });

  afterAll(async () => {
    await a?.close();
    await b?.close();
    await closeSidecar(sidecar);
  });

  /** The answer of tool `name` to `client` (a refusal is an `isError` result). */
  const answer = async (client: Client, name: string, args = {}): Promise<string> =>
    text(await client.callTool({ name, arguments: args }));

  it("refuses agent b on the connection that holds agent a's roots, until it restarts", async () => {
    const first = await answer(a, 'cb__kept_roots');
    expect(first).toContain(rootsOf.a);
    expect(asked.a).toBe(1);

    // Before: `kept: [{"uri":"file:///…/agent-a-private",…}]` — a's folder, to b.
    const other = await answer(b, 'cb__kept_roots');
    expect(other).not.toContain(rootsOf.a);
    expect(other).not.toContain('a-private');
    expect(other).toMatch(/^Tool call failed: upstream cb holds the roots of another agent/);
    expect(other).toContain('FABRIC_ERR_UPSTREAM_UNAVAILABLE');
    expect(asked.b).toBe(0);
    // As a task (run by the gateway, with no session): refused alike.
    const { task } = await b.request(
      {
        method: 'tools/call',
        params: { name: 'cb__kept_roots', arguments: {}, task: {} },
      },
      CreateTaskResultSchema,
    );
    const asTask = await b.experimental.tasks
      .getTaskResult(task.taskId, CallToolResultSchema)
      .then(text, (error: Error) => error.message);
    expect(asTask).toMatch(/upstream cb holds the roots of another agent/);
    expect(asTask).not.toContain(rootsOf.a);
    expect(asked.b).toBe(0);
    // The agent whose roots it holds goes on.
    expect(await answer(a, 'cb__kept_roots')).toContain(rootsOf.a);

    // A new connection (a new process) holds no roots: the next agent's are asked.
    const upstream = sidecar.gateway.upstreams.get('cb')!;
    const pid = upstream.pid!;
    process.kill(pid, 'SIGKILL');
    await until(() => !alive(pid) && upstream.state === 'ready' && upstream.pid !== pid);
    const after = await answer(b, 'cb__kept_roots');
    expect(after).toContain(rootsOf.b);
    expect(after).not.toContain(rootsOf.a);
    expect(asked.b).toBe(1);
    expect(await answer(a, 'cb__kept_roots')).toMatch(/holds the roots of another agent/);
  });

  it('an agent that gives no roots (its client has no roots capability) does not keep the connection', async () => {
    const upstream = sidecar.gateway.upstreams.get('cb')!;
    const pid = upstream.pid!;
    process.kill(pid, 'SIGKILL');
    await until(() => !alive(pid) && upstream.state === 'ready' && upstream.pid !== pid);
    const c = await httpClient(sidecar.url!, agentToken(sidecar, 'c'));
    try {
      // The upstream asked for c's roots; c's client has none: it keeps an empty list.
      const none = await answer(c, 'cb__kept_roots');
      expect(none).toBe('kept: []');
      // Before, that request alone made the connection c's: b was refused from then on.
      const askedB = asked.b;
      expect(await answer(b, 'cb__kept_roots')).toBe(none);
      expect(asked.b).toBe(askedB);
    } finally {
      await c.close();
    }
  });

  it("server-filesystem keeps its declared folder: agent a's roots never reach it", async () => {
    const dirs = await answer(a, 'fs__list_allowed_directories');
    expect(dirs).not.toContain(privateA);
    const read = await answer(b, 'fs__read_text_file', { path: join(privateA, 'secret.txt') });
    expect(read).not.toContain('only for agent a');
    expect(await answer(b, 'fs__read_text_file', { path: join(sandbox, 'shared.txt') })).toBe(
      'for everyone',
    );
  });
});
