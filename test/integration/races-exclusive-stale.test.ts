/**
 * An approved call that waits for its turn on an `exclusive` upstream after the human approved
 * it (a real sidecar over HTTP, a real server-filesystem upstream marked exclusive, the
 * official SDK client, MCP tasks, the Operator API). The gateway checks an approved call's
 * paths again before it is sent, so a symlink changed after the human looked cannot make it
 * touch another file — and that check must come when the turn comes, not before the wait for
 * it: another session can hold the turn as long as it likes (here: a read of a FIFO nobody
 * writes yet), and the agent can move the symlink meanwhile.
 */
import { execFileSync } from 'node:child_process';
import {
  closeSync,
  constants,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  symlinkSync,
  unlinkSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import {
  CallToolResultSchema,
  McpError,
  type CallToolResult,
} from '@modelcontextprotocol/sdk/types.js';
import { describe, expect, it } from 'vitest';
import { AgentStatus } from '../../src/agent.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import { listApprovals } from '../fixtures/api.js';
import {
  ADMIN_TOKEN,
  DEFAULT_ALLOW,
  agentId,
  agentToken,
  api,
  auditLines,
  type ClaimedTask,
  filesystemUpstream,
  httpClient,
  scheduleAndClaim,
  startHttpUpstream,
  tempDir,
  text,
  until,
} from '../fixtures/gateway/harness.js';
import {
  APPROVE_WRITES,
  closeRaceSidecarAfterEach,
  firstPendingApproval,
  startRaceSidecar,
} from '../fixtures/races.js';
import { callAsTask } from '../fixtures/gateway/tasks.js';

closeRaceSidecarAfterEach();

/** Points `root/link` at `root/secret` (the human approved it pointing at `root/public`). */
function relinkToSecret(root: string): void {
  unlinkSync(join(root, 'link'));
  symlinkSync(join(root, 'secret'), join(root, 'link'));
}

/** A writer's fd on `fifo` once a reader has it open (a non-blocking open fails before). */
function writerOnceRead(fifo: string): number | undefined {
  try {
    return openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK);
  } catch {
    return undefined;
  }
}

/**
 * A session of `token` holding an exclusive upstream's turn: its read of the FIFO `fifo` — the
 * tool `tool` (a `path` argument) or, without it, `resources/read` — waits for a writer.
 */
async function holdTurn(s: Sidecar, token: string, fifo: string, tool?: string) {
  const client = await httpClient(s.url!, token);
  const held: Promise<unknown> =
    tool === undefined
      ? client.readResource({ uri: pathToFileURL(fifo).href })
      : client.callTool({ name: tool, arguments: { path: fifo } });
  let writer: number | undefined;
  await until(() => (writer = writerOnceRead(fifo)) !== undefined);
  return {
    client,
    held,
    /** Ends the held read (it gets its data): the turn goes on. */
    release(): void {
      if (writer === undefined) return;
      writeSync(writer, 'held');
      closeSync(writer);
      writer = undefined;
    },
    /**
     * Waits until a call waits for the turn: the holder keeps it only while nobody does, so its
     * next `resources/read` of `other` must queue behind (a probe that returns: not yet).
     */
    async untilQueuedBehind(other: string): Promise<void> {
      await until(async () => {
        const probe = await client
          .readResource({ uri: pathToFileURL(other).href }, { signal: AbortSignal.timeout(300) })
          .then(
            () => 'read',
            () => 'queued',
          );
        return probe === 'queued';
      });
    },
    async close(): Promise<void> {
      if (writer !== undefined) closeSync(writer);
      writer = undefined;
      await client.close();
    },
  };
}

/**
 * Approves the call parked for approval (the human sees it resolve into `root/public/data.txt`),
 * waits until it waits for the turn `holder` holds, re-points `root/link` at `root/secret`, and
 * lets the turn go.
 */
async function approveThenRelink(
  s: Sidecar,
  holder: Awaited<ReturnType<typeof holdTurn>>,
  root: string,
): Promise<void> {
  const parked = await firstPendingApproval(s);
  expect(JSON.stringify(parked!.params)).toContain(join(root, 'public', 'data.txt'));
  expect((await api(s, 'ApprovalService/Approve', { id: parked!.id })).status).toBe(200);
  await holder.untilQueuedBehind(join(root, 'other.txt'));
  relinkToSecret(root);
  holder.release();
  await holder.held;
}

describe('an approved call waiting for its turn on an exclusive upstream', () => {
  it('is refused when a symlink on its path moved while it waited; nothing is written', async () => {
    const root = tempDir('races-exclusive');
    mkdirSync(join(root, 'public'));
    mkdirSync(join(root, 'secret'));
    symlinkSync(join(root, 'public'), join(root, 'link'));
    const fifo = join(root, 'hold.fifo');
    execFileSync('mkfifo', [fifo]);
    const s = await startRaceSidecar({
      upstreams: { fs: { ...filesystemUpstream(root), exclusive: true } },
      policies: [
        {
          name: 'guard',
          priority: 100,
          rules: [
            { tool: 'fs__*', action: 'deny', conditions: { path: '**/secret/**' } },
            { tool: 'fs__write_file', action: 'require_approval' },
          ],
        },
        DEFAULT_ALLOW,
      ],
      agents: [{ name: 'worker' }],
      gateway: { tasks: { maxTtlSeconds: 120 } },
    });
    const token = agentToken(s, 'worker');
    // Session B holds the upstream's turn: its read waits for a writer of the FIFO.
    const holder = await holdTurn(s, token, fifo, 'fs__read_text_file');
    try {
      // Session A's write parks for approval; the human sees it resolve into public/.
      const agent = await httpClient(s.url!, token);
      const { task } = await callAsTask(agent, 'fs__write_file', {
        path: join(root, 'link', 'out.txt'),
        content: 'approved for public',
      });
      const parked = await firstPendingApproval(s);
      expect(JSON.stringify(parked!.params)).toContain(join(root, 'public', 'out.txt'));
      expect((await api(s, 'ApprovalService/Approve', { id: parked!.id })).status).toBe(200);
      // Checked and forwarded: now it waits for its turn.
      await until(
        async () => (await agent.experimental.tasks.getTask(task.taskId)).status === 'working',
      );
      relinkToSecret(root);
      // B's read ends; A's turn comes.
      holder.release();
      expect(((await holder.held) as CallToolResult).isError).toBeFalsy();
      await until(async () => {
        const t = await agent.experimental.tasks.getTask(task.taskId);
        return t.status === 'failed' || t.status === 'completed';
      });
      const result = await agent.experimental.tasks.getTaskResult(
        task.taskId,
        CallToolResultSchema,
      );
      expect(text(result)).toContain('FABRIC_ERR_APPROVAL_STALE');
      expect(existsSync(join(root, 'secret', 'out.txt'))).toBe(false);
      expect(existsSync(join(root, 'public', 'out.txt'))).toBe(false);
      await agent.close();
    } finally {
      await holder.close();
    }
  }, 60_000);

  it('passed through as an MCP task to a task-taking upstream, is refused the same way', async () => {
    const root = tempDir('races-exclusive-task');
    mkdirSync(join(root, 'public'));
    mkdirSync(join(root, 'secret'));
    symlinkSync(join(root, 'public'), join(root, 'link'));
    // Over HTTP, so the test can release the call holding the turn without a turn of its own.
    const upstream = await startHttpUpstream([TASK_SERVER, 'http'], '/mcp');
    const direct = await httpClient(upstream.url, undefined);
    try {
      const s = await startRaceSidecar({
        upstreams: {
          // Its tools take `message` as a path (resolved on our disk, symlinks followed).
          tk: {
            url: upstream.url,
            exclusive: true,
            // Its calls only read: they share the path lock (see path-lock.ts).
            paths: { params: ['message'], realpath: true, keepNames: ['*'] },
          },
        },
        policies: [
          {
            name: 'guard',
            priority: 100,
            rules: [
              { tool: 'tk__*', action: 'deny', conditions: { message: '**/secret/**' } },
              {
                tool: 'tk__slow_echo',
                action: 'require_approval',
                conditions: { message: '**/public/**' },
              },
            ],
          },
          DEFAULT_ALLOW,
        ],
        agents: [{ name: 'worker' }],
        gateway: { tasks: { maxTtlSeconds: 120 } },
      });
      const token = agentToken(s, 'worker');
      // Session B holds the turn: its task-augmented call is not answered until released.
      const hold = join(root, 'hold');
      const holder = await httpClient(s.url!, token);
      await callAsTask(holder, 'tk__slow_echo', { message: hold, gate: true });
      await until(async () => (await upstreamState(direct)).waiting.includes(hold));
      const agent = await httpClient(s.url!, token);
      try {
        // Session A's call parks for approval; the human sees it resolve into public/.
        const { task } = await callAsTask(agent, 'tk__slow_echo', {
          message: join(root, 'link', 'out.txt'),
        });
        const parked = await firstPendingApproval(s);
        expect(JSON.stringify(parked!.params)).toContain(join(root, 'public', 'out.txt'));
        expect((await api(s, 'ApprovalService/Approve', { id: parked!.id })).status).toBe(200);
        await until(
          async () => (await agent.experimental.tasks.getTask(task.taskId)).status === 'working',
        );
        relinkToSecret(root);
        // B's call is answered; A's turn comes.
        await direct.callTool({ name: 'release', arguments: { message: hold } });
        await until(async () => {
          const t = await agent.experimental.tasks.getTask(task.taskId);
          return t.status === 'failed' || t.status === 'completed';
        });
        const result = await agent.experimental.tasks.getTaskResult(
          task.taskId,
          CallToolResultSchema,
        );
        expect(text(result)).toContain('FABRIC_ERR_APPROVAL_STALE');
        // The upstream never got A's call: the only task it made is B's.
        expect((await upstreamState(direct)).tasks).toHaveLength(1);
      } finally {
        await agent.close();
        await holder.close();
      }
    } finally {
      await direct.close();
      await upstream.close();
    }
  }, 60_000);
});

describe('an approved resources/read waiting for its turn on an exclusive upstream', () => {
  it('is refused when a symlink on its path moved while it waited; the secret is not read', async () => {
    const root = tempDir('races-exclusive-resource');
    mkdirSync(join(root, 'public'));
    mkdirSync(join(root, 'secret'));
    writeFileSync(join(root, 'public', 'data.txt'), 'public data');
    writeFileSync(join(root, 'secret', 'data.txt'), 'secret data');
    writeFileSync(join(root, 'other.txt'), 'other');
    symlinkSync(join(root, 'public'), join(root, 'link'));
    const fifo = join(root, 'hold.fifo');
    execFileSync('mkfifo', [fifo]);
    const s = await startRaceSidecar({
      upstreams: {
        files: {
          command: process.execPath,
          args: [FILE_RESOURCE_SERVER],
          stderr: 'ignore' as const,
          exclusive: true,
          // It only reads: its reads and subscribes share the path lock (see path-lock.ts).
          paths: { keepNames: ['resources/read', 'resources/subscribe'] },
        },
      },
      policies: [
        {
          name: 'guard',
          priority: 100,
          rules: [
            { tool: 'resources/read', action: 'deny', conditions: { path: '**/secret/**' } },
            {
              tool: 'resources/read',
              action: 'require_approval',
              conditions: { path: '**/public/**' },
            },
          ],
        },
        DEFAULT_ALLOW,
      ],
      agents: [{ name: 'worker' }],
    });
    const token = agentToken(s, 'worker');
    // Session B holds the turn: its read of a FIFO waits for a writer.
    const holder = await holdTurn(s, token, fifo);
    const agent = await httpClient(s.url!, token);
    try {
      const read = agent
        .readResource({ uri: pathToFileURL(join(root, 'link', 'data.txt')).href })
        .then(
          (r) => r,
          (e: unknown) => e,
        );
      await approveThenRelink(s, holder, root);
      const outcome = await read;
      expect(outcome).toBeInstanceOf(McpError);
      expect((outcome as McpError).message).toContain('FABRIC_ERR_APPROVAL_STALE');
    } finally {
      await agent.close();
      await holder.close();
    }
  }, 60_000);
});

describe('an approved resources/subscribe waiting for its turn on an exclusive upstream', () => {
  it('is refused when a symlink on its path moved while it waited; the upstream is not asked', async () => {
    const root = tempDir('races-exclusive-subscribe');
    mkdirSync(join(root, 'public'));
    mkdirSync(join(root, 'secret'));
    writeFileSync(join(root, 'public', 'data.txt'), 'public data');
    writeFileSync(join(root, 'secret', 'data.txt'), 'secret data');
    writeFileSync(join(root, 'other.txt'), 'other');
    symlinkSync(join(root, 'public'), join(root, 'link'));
    const fifo = join(root, 'hold.fifo');
    execFileSync('mkfifo', [fifo]);
    const subscribeLog = join(tempDir('races-exclusive-subscribe-log'), 'subscribed.txt');
    const auditPath = join(tempDir('races-exclusive-subscribe-audit'), 'audit.jsonl');
    const s = await startRaceSidecar({
      upstreams: {
        files: {
          command: process.execPath,
          args: [FILE_RESOURCE_SERVER],
          stderr: 'ignore' as const,
          env: { SUBSCRIBE_LOG: subscribeLog },
          exclusive: true,
          // It only reads: its reads and subscribes share the path lock (see path-lock.ts).
          paths: { keepNames: ['resources/read', 'resources/subscribe'] },
        },
      },
      policies: [
        {
          name: 'guard',
          priority: 100,
          rules: [
            { tool: 'resources/*', action: 'deny', conditions: { path: '**/secret/**' } },
            {
              tool: 'resources/subscribe',
              action: 'require_approval',
              conditions: { path: '**/public/**' },
            },
          ],
        },
        DEFAULT_ALLOW,
      ],
      agents: [{ name: 'worker' }],
      audit: { path: auditPath, flushIntervalMs: 0 },
    });
    const token = agentToken(s, 'worker');
    // Session B holds the turn: its read of a FIFO waits for a writer.
    const holder = await holdTurn(s, token, fifo);
    const agent = await httpClient(s.url!, token);
    try {
      const uri = pathToFileURL(join(root, 'link', 'data.txt')).href;
      const subscribed = agent.subscribeResource({ uri }).then(
        (r) => r,
        (e: unknown) => e,
      );
      await approveThenRelink(s, holder, root);
      const outcome = await subscribed;
      expect(outcome).toBeInstanceOf(McpError);
      expect((outcome as McpError).message).toContain('FABRIC_ERR_APPROVAL_STALE');
      await until(() => auditLines(s, auditPath, 'worker', 'resources/subscribe').length > 0);
      expect(auditLines(s, auditPath, 'worker', 'resources/subscribe')).toMatchObject([
        { decision: 'approved', outcome: 'denied', code: 'FABRIC_ERR_APPROVAL_STALE' },
      ]);
      // The upstream never got the subscribe (a later one, after these, would be logged).
      await agent.subscribeResource({ uri: pathToFileURL(join(root, 'other.txt')).href });
      expect(readFileSync(subscribeLog, 'utf8')).toBe(
        `subscribe ${pathToFileURL(join(root, 'other.txt')).href}\n`,
      );
    } finally {
      await agent.close();
      await holder.close();
    }
  }, 60_000);
});

describe("a resources/subscribe that waits for another session's subscribe of the same URI", () => {
  it('is decided again when the rules changed meanwhile: a deny added for its agent refuses it', async () => {
    const root = tempDir('races-exclusive-subscribe-pending');
    writeFileSync(join(root, 'data.txt'), 'data');
    writeFileSync(join(root, 'other.txt'), 'other');
    const fifo = join(root, 'hold.fifo');
    execFileSync('mkfifo', [fifo]);
    const subscribeLog = join(tempDir('races-exclusive-subscribe-pending-log'), 'log.txt');
    const auditPath = join(tempDir('races-exclusive-subscribe-pending-audit'), 'audit.jsonl');
    const s = await startRaceSidecar({
      upstreams: {
        files: {
          command: process.execPath,
          args: [FILE_RESOURCE_SERVER],
          stderr: 'ignore' as const,
          env: { SUBSCRIBE_LOG: subscribeLog },
          exclusive: true,
          // It only reads: its reads and subscribes share the path lock (see path-lock.ts).
          paths: { keepNames: ['resources/read', 'resources/subscribe'] },
        },
      },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'alice' }, { name: 'bob' }],
      audit: { path: auditPath, flushIntervalMs: 0 },
    });
    const uri = pathToFileURL(join(root, 'data.txt')).href;
    const bobId = agentId(s, 'bob');
    // Alice's first session holds the turn: its read of a FIFO waits for a writer.
    const holder = await holdTurn(s, agentToken(s, 'alice'), fifo);
    const alice = await httpClient(s.url!, agentToken(s, 'alice'));
    const bob = await httpClient(s.url!, agentToken(s, 'bob'));
    try {
      // Alice's subscribe waits for its turn once the holder's next read must queue behind it.
      const aliceSubscribed = alice.subscribeResource({ uri });
      await holder.untilQueuedBehind(join(root, 'other.txt'));
      // Bob's subscribe of the same URI is let through and waits for Alice's.
      const bobSubscribed = bob.subscribeResource({ uri }).then(
        (r) => r,
        (e: unknown) => e,
      );
      const bobSession = (): { subscriptions: Set<string> } | undefined =>
        [...s.gateway.sessions].find((x) => x.identity.agentId === bobId) as
          { subscriptions: Set<string> } | undefined;
      await until(() => bobSession()?.subscriptions.has(uri) === true);
      // The operator shuts Bob out of subscriptions meanwhile.
      s.fabric!.policies.addPolicy({
        name: 'no-bob',
        priority: 100,
        rules: [
          {
            tool: 'resources/subscribe',
            action: 'deny',
            reason: 'not bob',
            when: { '==': [{ var: 'agent.id' }, bobId] },
          },
        ],
      });
      holder.release();
      await holder.held;
      expect(await aliceSubscribed).toEqual({});
      const outcome = await bobSubscribed;
      expect(outcome).toBeInstanceOf(McpError);
      expect((outcome as McpError).message).toContain('FABRIC_ERR_POLICY_DENIED');
      expect(bobSession()?.subscriptions.has(uri)).toBe(false);
      await until(() => auditLines(s, auditPath, 'bob', 'resources/subscribe').length > 0);
      expect(auditLines(s, auditPath, 'bob', 'resources/subscribe')).toMatchObject([
        { decision: 'deny', rule: 'no-bob#0', outcome: 'denied' },
      ]);
      // Alice's subscribe is the only one the upstream got; nothing was unsubscribed.
      expect(readFileSync(subscribeLog, 'utf8')).toBe(`subscribe ${uri}\n`);
    } finally {
      await bob.close();
      await alice.close();
      await holder.close();
    }
  }, 60_000);
});

const FILE_RESOURCE_SERVER = fileURLToPath(
  new URL('../fixtures/gateway/file-resource-server.mjs', import.meta.url),
);
const TASK_SERVER = fileURLToPath(new URL('../fixtures/gateway/task-server.mjs', import.meta.url));

/** What the task server holds, as it reports it itself (asked directly, not through the gateway). */
async function upstreamState(
  client: Client,
): Promise<{ tasks: Array<{ taskId: string; status: string }>; waiting: string[] }> {
  const r = await client.callTool({ name: 'upstream_tasks', arguments: {} });
  return JSON.parse(text(r)) as {
    tasks: Array<{ taskId: string; status: string }>;
    waiting: string[];
  };
}

/**
 * A write of `worker` that waits for its turn on an exclusive server-filesystem upstream while
 * another session of the agent holds the turn (a read of a FIFO), over MCP tasks so the test
 * sees when it was let through and waits for the turn. `change` runs then (an operator changing
 * the policy); the turn is released and the task's result returned, with the budget the agent
 * had reserved and used before and after.
 */
async function writeAtTurnAfter(
  policies: unknown[],
  change: (s: Sidecar) => Promise<void>,
  approve: boolean,
): Promise<{ s: Sidecar; root: string; auditPath: string; result: string; budget: number[] }> {
  const root = tempDir('races-exclusive-rules');
  const auditPath = join(tempDir('races-exclusive-rules-audit'), 'audit.jsonl');
  const fifo = join(root, 'hold.fifo');
  execFileSync('mkfifo', [fifo]);
  const s = await startRaceSidecar({
    upstreams: { fs: { ...filesystemUpstream(root), exclusive: true } },
    policies: policies as never,
    agents: [{ name: 'worker' }],
    gateway: { tasks: { maxTtlSeconds: 120 } },
    audit: { path: auditPath },
  });
  const token = agentToken(s, 'worker');
  const id = agentId(s, 'worker');
  const holder = await holdTurn(s, token, fifo, 'fs__read_text_file');
  const agent = await httpClient(s.url!, token);
  try {
    const { task } = await callAsTask(agent, 'fs__write_file', {
      path: join(root, 'out.txt'),
      content: 'written at its turn',
    });
    if (approve) {
      const parked = await firstPendingApproval(s);
      expect((await api(s, 'ApprovalService/Approve', { id: parked!.id })).status).toBe(200);
    }
    // Let through (a task is `working` from its start; `running` once forwarded): it waits for
    // its turn now.
    await until(async () => {
      const t = await agent.experimental.tasks.getTask(task.taskId);
      return t.status === 'working' && t.statusMessage === 'running';
    });
    const before = s.fabric!.budgets.getStatus(id);
    expect(auditLines(s, auditPath, 'worker', 'fs__read_text_file')).toEqual([]);
    await change(s);
    holder.release();
    expect(((await holder.held) as CallToolResult).isError).toBeFalsy();
    await until(async () => {
      const t = await agent.experimental.tasks.getTask(task.taskId);
      return t.status === 'failed' || t.status === 'completed';
    });
    const result = await agent.experimental.tasks.getTaskResult(task.taskId, CallToolResultSchema);
    await until(() => auditLines(s, auditPath, 'worker', 'fs__write_file').length > 0);
    const after = s.fabric!.budgets.getStatus(id);
    // What the holder's read used is charged meanwhile.
    const [read] = auditLines(s, auditPath, 'worker', 'fs__read_text_file');
    return {
      s,
      root,
      auditPath,
      result: text(result),
      budget: [before.tokensUsed + Number(read?.tokens), after.tokensUsed, after.tokensReserved],
    };
  } finally {
    await agent.close();
    await holder.close();
  }
}

const READS = {
  name: 'reads',
  rules: [{ tool: 'fs__read_text_file', action: 'allow' }],
};

describe('a call waiting for its turn on an exclusive upstream while the rules change', () => {
  it('a deny rule added meanwhile refuses an allowed write at its turn; nothing is written or charged', async () => {
    const { s, root, auditPath, result, budget } = await writeAtTurnAfter(
      [DEFAULT_ALLOW],
      async (s) => {
        const added = await api(s, 'PolicyService/AddPolicy', {
          policy: {
            name: 'lockdown',
            priority: 200,
            rules: [{ tool: 'fs__write_file', action: 'POLICY_ACTION_DENY', reason: 'frozen' }],
          },
        });
        expect(added.status).toBe(200);
      },
      false,
    );
    expect(result).toContain('FABRIC_ERR_POLICY_DENIED');
    expect(result).toContain('frozen');
    expect(existsSync(join(root, 'out.txt'))).toBe(false);
    // Nothing charged, the reservation given back.
    expect(budget[1]).toBe(budget[0]);
    expect(budget[2]).toBe(0);
    expect(auditLines(s, auditPath, 'worker', 'fs__write_file')).toMatchObject([
      { decision: 'deny', rule: 'lockdown#0', outcome: 'denied', code: 'FABRIC_ERR_POLICY_DENIED' },
    ]);
  }, 60_000);

  it('the approval rule removed meanwhile leaves the default action (deny) to refuse an approved write', async () => {
    const { s, root, auditPath, result, budget } = await writeAtTurnAfter(
      [APPROVE_WRITES, READS],
      async (s) => {
        expect((await api(s, 'PolicyService/RemovePolicy', { name: 'approvals' })).status).toBe(
          200,
        );
      },
      true,
    );
    expect(result).toContain('FABRIC_ERR_POLICY_DENIED');
    expect(existsSync(join(root, 'out.txt'))).toBe(false);
    expect(budget[1]).toBe(budget[0]);
    expect(budget[2]).toBe(0);
    expect(auditLines(s, auditPath, 'worker', 'fs__write_file')).toMatchObject([
      { decision: 'deny', outcome: 'denied', code: 'FABRIC_ERR_POLICY_DENIED' },
    ]);
  }, 60_000);

  it('an approval rule added meanwhile refuses an allowed write, saying the rules changed; nobody is asked', async () => {
    const { s, root, auditPath, result } = await writeAtTurnAfter(
      [DEFAULT_ALLOW],
      async (s) => {
        const added = await api(s, 'PolicyService/AddPolicy', {
          policy: {
            name: 'approvals',
            priority: 100,
            rules: [{ tool: 'fs__write_file', action: 'POLICY_ACTION_REQUIRE_APPROVAL' }],
          },
        });
        expect(added.status).toBe(200);
      },
      false,
    );
    expect(result).toContain('FABRIC_ERR_POLICY_DENIED');
    expect(result).toContain('rules changed');
    expect(existsSync(join(root, 'out.txt'))).toBe(false);
    expect(await listApprovals(s.url!, ADMIN_TOKEN)).toEqual([]);
    expect(auditLines(s, auditPath, 'worker', 'fs__write_file')).toMatchObject([
      { decision: 'require_approval', rule: 'approvals#0', outcome: 'denied' },
    ]);
  }, 60_000);

  it('a change that still lets the call through runs it', async () => {
    const { root, result } = await writeAtTurnAfter(
      [DEFAULT_ALLOW],
      async (s) => {
        const added = await api(s, 'PolicyService/AddPolicy', {
          policy: {
            name: 'unrelated',
            priority: 200,
            rules: [{ tool: 'fs__move_file', action: 'POLICY_ACTION_DENY' }],
          },
        });
        expect(added.status).toBe(200);
      },
      false,
    );
    expect(result).not.toContain('FABRIC_ERR');
    expect(readFileSync(join(root, 'out.txt'), 'utf8')).toBe('written at its turn');
  }, 60_000);
});

describe('a call waiting for its turn on an exclusive upstream while its agent is terminated', () => {
  it('is refused with FABRIC_ERR_AGENT_UNAVAILABLE at its turn once the agent drains; nothing is written', async () => {
    let terminating: Promise<Response> | undefined;
    let task: ClaimedTask | undefined;
    const { s, root, auditPath, result, budget } = await writeAtTurnAfter(
      [DEFAULT_ALLOW],
      async (s) => {
        const id = agentId(s, 'worker');
        // A task of the agent running keeps it DRAINING (its sessions open) for the drain time.
        task = await scheduleAndClaim(s, 'worker', { taskType: 'review' });
        terminating = api(s, 'FabricService/TerminateAgent', { agentId: id, drainTimeout: '30s' });
        await until(() => s.fabric!.lifecycle.peek(id)?.status === AgentStatus.DRAINING);
      },
      false,
    );
    expect(result).toContain('FABRIC_ERR_AGENT_UNAVAILABLE');
    expect(existsSync(join(root, 'out.txt'))).toBe(false);
    expect(budget[1]).toBe(budget[0]);
    expect(budget[2]).toBe(0);
    expect(auditLines(s, auditPath, 'worker', 'fs__write_file')).toMatchObject([
      { outcome: 'denied', code: 'FABRIC_ERR_AGENT_UNAVAILABLE' },
    ]);
    // The task done, the drain ends.
    const done = await api(
      s,
      'AgentService/CompleteTask',
      { taskId: task!.taskId, attempt: task!.attempt, result: { done: true } },
      agentToken(s, 'worker'),
    );
    expect(done.status).toBe(200);
    expect((await terminating!).status).toBe(200);
  }, 60_000);
});
