/**
 * The README's examples that no other test runs, run as written: the `remote` executor's claim
 * loop (Executors), the pool walk-through (Pools), the worker SDK's `FabricWorker` against a real
 * sidecar (Remote workers) and the Operator API's curl calls. Each block is taken from the README
 * itself, so an example that stops working fails here.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import { loadSidecarConfig } from '../../src/server/config-file.js';
import { Sidecar } from '../../src/server/sidecar.js';
import { TaskStatus } from '../../src/task.js';
import { FabricWorker } from '../../src/worker/fabric-worker.js';
import { closeSidecar, tempDir, until } from '../fixtures/gateway/harness.js';

const README = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');

/** The first ```ts block after `heading`, its import lines left out. */
function block(heading: string): string {
  const at = README.indexOf(`\n${heading}\n`);
  if (at < 0) throw new Error(`README has no heading ${heading}`);
  const m = /```ts\n([\s\S]*?)```/.exec(README.slice(at))!;
  return m[1]!
    .split('\n')
    .filter((l) => !l.startsWith('import '))
    .join('\n');
}

// The blocks are plain JavaScript (no type annotations), so they run as an async function body.
const AsyncFunction = Object.getPrototypeOf(async () => {}).constructor as new (
  ...args: string[]
) => (...values: unknown[]) => Promise<unknown>;

describe('README library examples', () => {
  it('Executors: a remote agent claims, reports progress and completes its task', async () => {
    const code = block('### Executors: where tasks run');
    const fabric = new AgentFabric();
    try {
      // The block claims right after spawning: give ci-bot a task once it exists.
      const scheduled = (async () => {
        let id: string | undefined;
        await until(async () => {
          id = (await fabric.listAgents()).find((a) => a.name === 'ci-bot')?.id;
          return id !== undefined;
        });
        return fabric.schedule({ agentId: id!, taskType: 'review', payload: { pr: 42 } });
      })();
      await new AsyncFunction('fabric', code)(fabric);
      const task = await fabric.getTask((await scheduled).id);
      expect(task.status).toBe(TaskStatus.COMPLETED);
      expect(task.result).toEqual({ ok: true });
      expect(task.progress).toEqual({ step: 1 });
    } finally {
      await fabric.close();
    }
  });

  it('Pools: create, scale (clamped), schedule to the pool, pick an agent, delete', async () => {
    const code = block('### Pools');
    const fabric = new AgentFabric();
    try {
      const out = (await new AsyncFunction('fabric', `${code}\nreturn { pool, task, agent };`)(
        fabric,
      )) as {
        pool: { currentAgents: readonly string[] };
        task: { poolId?: string };
        agent: { poolId?: string } | undefined;
      };
      expect(out.pool.currentAgents).toHaveLength(2); // minAgents
      expect(out.task.poolId).toBe('pool-frontend');
      expect(out.agent?.poolId).toBe('pool-frontend');
      await expect(fabric.getPool('pool-frontend')).rejects.toMatchObject({
        code: 'FABRIC_ERR_POOL_NOT_FOUND',
      });
    } finally {
      await fabric.close();
    }
  });

  it('Remote workers: FabricWorker.connect and run() work a task on a real sidecar', async () => {
    const code = block('### Remote workers (worker SDK)');
    expect(code).toContain("url: 'http://127.0.0.1:8765/mcp'");
    expect(code).toContain('const stop = new AbortController();');
    const dir = tempDir('readme-worker');
    const file = join(dir, 'fabric.yaml');
    writeFileSync(
      file,
      `http: { host: 127.0.0.1, port: 0 }
state: memory
adminToken: admin-token-for-readme-tests-0123456789
policies:
  - name: default-allow
    rules: [{ tool: '*', action: allow }]
agents:
  - name: reviewer
`,
    );
    const sidecar = await Sidecar.start({ config: loadSidecarConfig(file) });
    try {
      const fabric = sidecar.fabric!;
      const { id: agentId, credential } = sidecar.agents[0]!;
      const task = await fabric.schedule({
        agentId,
        taskType: 'code_review',
        payload: { pr: 'https://github.com/org/repo/pull/123' },
      });
      // Stop the worker once its task is done (the block's `stop` is handed in).
      const stop = new AbortController();
      const done = fabric.waitForTask(task.id).then((t) => (stop.abort(), t));
      const run = new AsyncFunction(
        'FabricWorker',
        'credential',
        'stop',
        code
          .replace("'http://127.0.0.1:8765/mcp'", JSON.stringify(sidecar.url))
          .replace('const stop = new AbortController();', ''),
      );
      await run(FabricWorker, credential, stop);
      const t = await done;
      expect(t.status).toBe(TaskStatus.COMPLETED);
      expect(t.result).toEqual({ verdict: 'approve' });
      expect((await fabric.getTask(task.id)).progress).toBe('reading');
    } finally {
      await closeSidecar(sidecar);
    }
  });

  it('Operator API: the curl examples, run as written against a real sidecar', async () => {
    const at = README.indexOf('\n## Operator API\n');
    const section = README.slice(at, README.indexOf('\n### From other languages', at));
    const blocks = [...section.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1]!);
    expect(blocks).toHaveLength(2);
    /** `curl … $API/<Method> … -d '<json>'` (lines joined at `\`), with the `# →` line after it. */
    const curls = (text: string) =>
      [
        ...text
          .replace(/\\\n\s*/g, ' ')
          .matchAll(/curl -sN? (\S+) .*?-d '([^']*)'(?:\n# → (.*))?/g),
      ].map((m) => ({ url: m[1]!, body: m[2]!, shown: m[3] }));
    const dir = tempDir('readme-api');
    const file = join(dir, 'fabric.yaml');
    writeFileSync(file, 'http: { host: 127.0.0.1, port: 0 }\nstate: memory\n');
    const ADMIN = 'fab_admin_readme-api-test-0123456789abcdef';
    const sidecar = await Sidecar.start({
      config: loadSidecarConfig(file, { env: { FABRIC_ADMIN_TOKEN: ADMIN } }),
    });
    try {
      const base = new URL(sidecar.url!).origin;
      const post = (url: string, body: string, token = ADMIN) =>
        fetch(
          url
            .replace('http://127.0.0.1:8765', base)
            .replace('$API', `${base}/api/fabric.v1.FabricService`),
          {
            method: 'POST',
            headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
            body,
          },
        );
      // The event watch first, so it sees the task the second block schedules.
      const [watchCurl] = curls(blocks[0]!);
      const watch = await post(watchCurl!.url, watchCurl!.body);
      expect(watch.status).toBe(200);
      expect(watch.headers.get('content-type')).toContain('application/x-ndjson');
      const [spawn, schedule, wait, list] = curls(blocks[1]!);
      const spawned = (await (await post(spawn!.url, spawn!.body)).json()) as {
        spawned: { agent: { agentId: string; status: string }; credential: string };
      };
      expect(spawned.spawned.agent.status).toBe('AGENT_STATUS_STARTING');
      expect(spawned.spawned.credential).toMatch(/^afk_/);
      const agentId = spawned.spawned.agent.agentId;
      const scheduled = (await (
        await post(schedule!.url, schedule!.body.replace('<agentId>', agentId))
      ).json()) as { task: { taskId: string; priority: string; status: string } };
      expect(scheduled.task).toMatchObject({ priority: 'TASK_PRIORITY_HIGH' });
      const taskId = scheduled.task.taskId;
      const pending = (await (await post(list!.url, list!.body)).json()) as {
        tasks: { taskId: string }[];
      };
      expect(pending.tasks.map((t) => t.taskId)).toEqual([taskId]);
      // The worker's side, as the text after the block says: ClaimTask, then CompleteTask.
      const agentApi = `${base}/api/fabric.v1.AgentService`;
      const claimed = (await (
        await post(`${agentApi}/ClaimTask`, '{"waitSeconds":30}', spawned.spawned.credential)
      ).json()) as { task: { taskId: string; attempt: number } };
      expect(claimed.task.taskId).toBe(taskId);
      const completed = await post(
        `${agentApi}/CompleteTask`,
        JSON.stringify({ taskId, attempt: claimed.task.attempt, result: { verdict: 'approve' } }),
        spawned.spawned.credential,
      );
      expect(completed.status).toBe(200);
      const waited = (await (
        await post(wait!.url, wait!.body.replace('<taskId>', taskId))
      ).json()) as { task: { status: string; result: unknown } };
      expect(waited.task).toMatchObject({
        status: 'TASK_STATUS_COMPLETED',
        result: { verdict: 'approve' },
      });
      // The watch's first line is the one the README shows.
      const reader = watch.body!.getReader();
      let text = '';
      while (!text.includes('\n')) {
        const { value, done } = await reader.read();
        if (done) break;
        text += Buffer.from(value).toString();
      }
      await reader.cancel();
      const first = JSON.parse(text.split('\n')[0]!) as {
        message: { sequence: string; task: { kind: string } };
      };
      expect(watchCurl!.shown).toContain('"sequence":"1"');
      expect(first.message.sequence).toBe('1');
      expect(first.message.task.kind).toBe('TASK_EVENT_KIND_SCHEDULED');
    } finally {
      await closeSidecar(sidecar);
    }
  });
});
