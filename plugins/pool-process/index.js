// pool-process: a first-party pool plugin. Each agent of a pool that names this provider is a
// child process running the configured command, with its credential and the sidecar's URL in
// its environment; it connects back as a worker (e.g. with the worker SDK) and claims its tasks
// through the `remote` executor. Its stdout and stderr go to the log, line by line, with the
// agent's id (its credential masked), each line cut at maxLogLineChars as it arrives (memory
// stays bounded whatever a child writes), at most maxLogLinesPerSecond lines a second (the rest
// dropped and counted in the log). Stopping an agent ends its whole process tree; so does
// closing the plugin, and so does the sidecar's process exiting. See README.md.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { StringDecoder } from 'node:string_decoder';
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
     * Pass the sidecar's environment on (it may hold secrets), less FABRIC_ADMIN_TOKEN and
     * FABRIC_AGENT_TOKEN. By default a child only gets PATH, HOME, LANG, TMPDIR, `env` and the
     * FABRIC_* variables listed in the README.
     */
    inheritEnv: z.boolean().default(false),
    /** The executor the agents claim work through. */
    executor: z.string().min(1).default('remote'),
    /** How long a child has to exit after SIGTERM before its process group gets SIGKILL. */
    stopTimeoutMs: z.number().int().positive().default(5000),
    /** The MCP endpoint handed to children; by default the sidecar's own. */
    url: z.string().url().optional(),
    /**
     * Longest log line kept: the rest, up to the next newline, is dropped unread into memory and
     * the line is logged at once with `cut: true`.
     */
    maxLogLineChars: z.number().int().positive().default(8192),
    /**
     * Most log lines per second an agent's process gets into the log (stdout and stderr
     * together; bursts up to one second's worth): the lines past it are dropped and counted, and
     * the count is logged once lines pass again, and when the process's output ends.
     */
    maxLogLinesPerSecond: z.number().int().positive().default(200),
  })
  .strict();

const KEPT_ENV = ['PATH', 'HOME', 'LANG', 'TMPDIR'];
/**
 * Never passed on, not even with inheritEnv: the sidecar's admin token (the master key of the
 * fabric, which an agent process must not hold) and a bridge's agent token.
 */
const WITHHELD_ENV = ['FABRIC_ADMIN_TOKEN', 'FABRIC_AGENT_TOKEN'];

function childEnv(options, agent, endpoints) {
  const env = {};
  if (options.inheritEnv) {
    Object.assign(env, process.env);
    for (const k of WITHHELD_ENV) delete env[k];
  } else for (const k of KEPT_ENV) if (process.env[k] !== undefined) env[k] = process.env[k];
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

/**
 * A token bucket of log lines, shared by one process's stdout and stderr: `rate` lines a second,
 * up to `rate` at once; the lines refused are counted until {@link takeDropped} takes the count.
 * On the monotonic clock (a wall-clock step neither silences a process nor lets it flood).
 */
class LineLimit {
  #tokens;
  #last = performance.now();
  #dropped = 0;
  #reported = Number.NEGATIVE_INFINITY;

  constructor(rate) {
    this.rate = rate;
    this.#tokens = rate;
  }

  /** Whether one more line may be logged now (counted as dropped when not). */
  pass() {
    const now = performance.now();
    this.#tokens = Math.min(this.rate, this.#tokens + ((now - this.#last) * this.rate) / 1000);
    this.#last = now;
    if (this.#tokens >= 1) {
      this.#tokens -= 1;
      return true;
    }
    this.#dropped++;
    return false;
  }

  /**
   * The lines dropped since the count was last taken; 0 (the count kept) when it was taken less
   * than a second ago, unless `now` — so a steady flood adds one count line a second, not one
   * before every line that passes.
   */
  takeDropped(now = false) {
    const at = performance.now();
    if (this.#dropped === 0 || (!now && at - this.#reported < 1000)) return 0;
    const n = this.#dropped;
    this.#dropped = 0;
    this.#reported = at;
    return n;
  }
}

/** Signals a child's whole process group; a group that is gone already (or never was) is fine. */
function signalGroup(child, signal) {
  if (child.pid === undefined) return; // the spawn itself failed: there is no process
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
    // Recorded at once: a stop (or close) while the process is being spawned finds it and reaps it.
    this.#children.set(agent.agentId, child);
    const started = once(child, 'spawn');
    // 'error' after 'spawn' (a kill that failed) must not crash the sidecar.
    child.on('error', (err) => {
      if (child.pid !== undefined)
        this.#log.warn(`process error: ${err.message}`, { agentId: agent.agentId });
    });
    const limit = new LineLimit(this.#o.maxLogLinesPerSecond);
    for (const stream of ['stdout', 'stderr']) this.#pipe(child[stream], stream, agent, limit);
    child.once('exit', (code, signal) =>
      this.#log.info(`process ${child.pid} exited (${signal ?? code})`, { agentId: agent.agentId }),
    );
    try {
      await started; // rejects with the spawn error (ENOENT, EACCES)
    } catch (err) {
      if (this.#children.get(agent.agentId) === child) this.#children.delete(agent.agentId);
      throw err;
    }
    if (agent.signal.aborted || this.#children.get(agent.agentId) !== child) {
      // Stopped while it was being spawned: a stop or close that found it reaps it; else here.
      if (this.#children.get(agent.agentId) === child) {
        this.#children.delete(agent.agentId);
        await this.#reap(child);
      }
      agent.signal.throwIfAborted();
      throw new Error(`agent ${agent.agentId} was stopped while its process was starting`);
    }
  }

  /**
   * Logs a child's output line by line without holding more than one cut line: each line keeps
   * at most maxLogLineChars (plus the credential's length, so a credential across the cut is
   * still masked); past that the line is logged at once, marked cut, and the rest up to the next
   * newline is dropped as it arrives. Lines end at `\n` (a `\r` before it is dropped). Lines
   * past `limit` are dropped and counted (see {@link LineLimit}).
   */
  #pipe(readable, stream, agent, limit) {
    const max = this.#o.maxLogLineChars;
    const keep = max + agent.credential.length;
    const decoder = new StringDecoder('utf8');
    const level = stream === 'stderr' ? 'warn' : 'info';
    let line = '';
    let dropping = false;
    const dropped = (now = false) => {
      const n = limit.takeDropped(now);
      if (n === 0) return;
      this.#log.warn(`${n} log lines dropped: over maxLogLinesPerSecond (${limit.rate})`, {
        agentId: agent.agentId,
        dropped: n,
      });
    };
    const emit = (text, cut) => {
      if (!limit.pass()) return;
      dropped();
      let masked = text.split(agent.credential).join('[credential]');
      if (masked.length > max) {
        masked = masked.slice(0, max);
        cut = true;
      }
      this.#log[level](
        cut ? `${masked}… [cut: longer than ${max} characters]` : masked,
        cut ? { agentId: agent.agentId, stream, cut: true } : { agentId: agent.agentId, stream },
      );
    };
    const take = (s) => {
      let from = 0;
      while (from < s.length) {
        const nl = s.indexOf('\n', from);
        const end = nl < 0 ? s.length : nl;
        if (!dropping) {
          const room = keep - line.length;
          if (end - from > room) {
            // Longer than can be kept: logged now, cut; the rest of the line is dropped.
            emit(line + s.slice(from, from + room), true);
            line = '';
            dropping = true;
          } else {
            line += s.slice(from, end);
          }
        }
        if (nl < 0) return;
        if (!dropping) emit(line.endsWith('\r') ? line.slice(0, -1) : line, false);
        line = '';
        dropping = false;
        from = nl + 1;
      }
    };
    readable.on('data', (chunk) => take(decoder.write(chunk)));
    readable.on('end', () => {
      take(decoder.end());
      if (!dropping && line.length > 0) emit(line, false);
      line = '';
      dropped(true);
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
