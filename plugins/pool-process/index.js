// pool-process: a first-party pool plugin. Each agent of a pool that names this provider is a
// child process running the configured command, with its credential and the sidecar's URL in
// its environment; it connects back as a worker (e.g. with the worker SDK) and claims its tasks
// through the `remote` executor. Its stdout and stderr go to the log, line by line, with the
// agent's id (its credential masked). Stopping an agent ends its whole process tree; so does
// closing the plugin, and so does the sidecar's process exiting. See README.md.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { z } from 'zod';

export const optionsSchema = z
  .object({
    /** The provider's name, as pools name it in `provider`. */
    name: z.string().min(1).default('process'),
    /** The program each agent runs. */
    command: z.string().min(1),
    args: z.array(z.string()).default([]),
    cwd: z.string().min(1).optional(),
    /** Added to the child's environment. */
    env: z.record(z.string(), z.string()).default({}),
    /**
     * Pass the sidecar's whole environment on (it may hold secrets). By default a child only
     * gets PATH, HOME, LANG, TMPDIR, `env` and the FABRIC_* variables.
     */
    inheritEnv: z.boolean().default(false),
    /** The executor the agents claim work through. */
    executor: z.string().min(1).default('remote'),
    /** How long a child has to exit after SIGTERM before its process group gets SIGKILL. */
    stopTimeoutMs: z.number().int().positive().default(5000),
    /** The MCP endpoint handed to children; by default the sidecar's own. */
    url: z.string().url().optional(),
    /** Longest log line kept (longer lines are cut). */
    maxLogLineChars: z.number().int().positive().default(8192),
  })
  .strict();

const KEPT_ENV = ['PATH', 'HOME', 'LANG', 'TMPDIR'];

function childEnv(options, agent, endpoints) {
  const env = {};
  if (options.inheritEnv) Object.assign(env, process.env);
  else for (const k of KEPT_ENV) if (process.env[k] !== undefined) env[k] = process.env[k];
  Object.assign(env, options.env, {
    FABRIC_AGENT_ID: agent.agentId,
    FABRIC_CREDENTIAL: agent.credential,
    FABRIC_POOL_ID: agent.poolId,
  });
  const url = options.url ?? endpoints.mcpUrl;
  if (url !== undefined) env.FABRIC_URL = url;
  if (endpoints.grpcAddress !== undefined) env.FABRIC_GRPC_ADDRESS = endpoints.grpcAddress;
  return env;
}

/** Signals a child's whole process group; a group that is gone already is fine. */
function signalGroup(child, signal) {
  try {
    process.kill(-child.pid, signal);
  } catch (err) {
    if (err.code !== 'ESRCH') throw err;
  }
}

function exited(child) {
  return child.exitCode !== null || child.signalCode !== null;
}

export class ProcessPool {
  #o;
  #log;
  #endpoints;
  /** agentId -> child */
  #children = new Map();
  #onExit = () => {
    // The sidecar is exiting (synchronously): take every process group with it.
    for (const child of this.#children.values()) signalGroup(child, 'SIGKILL');
  };

  constructor(options, context) {
    this.#o = options;
    this.#log = context.log;
    this.#endpoints = () => context.endpoints();
    this.name = options.name;
    this.executor = options.executor;
    process.on('exit', this.#onExit);
  }

  async start(agent) {
    const endpoints =
      this.#o.url !== undefined
        ? {}
        : await new Promise((resolve, reject) => {
            agent.signal.addEventListener('abort', () => reject(agent.signal.reason), {
              once: true,
            });
            this.#endpoints().then(resolve, reject);
          });
    agent.signal.throwIfAborted();
    // Its own process group, so the whole tree can be ended with one signal.
    const child = spawn(this.#o.command, this.#o.args, {
      cwd: this.#o.cwd,
      env: childEnv(this.#o, agent, endpoints),
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const started = once(child, 'spawn');
    // 'error' after 'spawn' (a kill that failed) must not crash the sidecar.
    child.on('error', (err) => {
      if (child.pid !== undefined)
        this.#log.warn(`process error: ${err.message}`, { agentId: agent.agentId });
    });
    await started; // rejects with the spawn error (ENOENT, EACCES)
    this.#children.set(agent.agentId, child);
    for (const stream of ['stdout', 'stderr']) this.#pipe(child[stream], stream, agent);
    child.once('exit', (code, signal) =>
      this.#log.info(`process ${child.pid} exited (${signal ?? code})`, { agentId: agent.agentId }),
    );
  }

  #pipe(readable, stream, agent) {
    const lines = createInterface({ input: readable, crlfDelay: Infinity });
    const max = this.#o.maxLogLineChars;
    lines.on('line', (line) => {
      const text = line.split(agent.credential).join('[credential]');
      const cut = text.length > max ? `${text.slice(0, max)}…` : text;
      this.#log[stream === 'stderr' ? 'warn' : 'info'](cut, { agentId: agent.agentId, stream });
    });
  }

  healthCheck(agentId) {
    const child = this.#children.get(agentId);
    return child !== undefined && !exited(child);
  }

  async stop(agentId) {
    const child = this.#children.get(agentId);
    if (child === undefined) return;
    this.#children.delete(agentId);
    await this.#reap(child);
  }

  /** SIGTERM to the group, SIGKILL after the timeout, and SIGKILL again for what outlived the leader. */
  async #reap(child) {
    if (!exited(child)) {
      const gone = once(child, 'exit');
      signalGroup(child, 'SIGTERM');
      let timer;
      const late = new Promise((resolve) => {
        timer = setTimeout(resolve, this.#o.stopTimeoutMs);
      });
      await Promise.race([gone, late]);
      clearTimeout(timer);
      if (!exited(child)) {
        signalGroup(child, 'SIGKILL');
        await gone;
      }
    }
    signalGroup(child, 'SIGKILL');
  }

  /** Process ids of the running children (for operators and tests). */
  pids() {
    return Object.fromEntries([...this.#children].map(([id, c]) => [id, c.pid]));
  }

  async close() {
    const children = [...this.#children.values()];
    this.#children.clear();
    await Promise.all(children.map((c) => this.#reap(c)));
    process.off('exit', this.#onExit);
  }
}

/** @type {import('agent-fabric').Plugin<'pool'>} */
const plugin = {
  name: 'pool-process',
  version: '1.0.0',
  kind: 'pool',
  fabric: '>=0.1.0',
  api: 2,
  options: optionsSchema,
  create: (options, context) => new ProcessPool(options, context),
};

export default plugin;
