/**
 * The default pool provider, `threads`: a pool's agents are agents of the fabric's `local`
 * executor — their tasks run on the shared piscina worker-thread pool, and they heartbeat by
 * themselves while the fabric runs. There is no per-agent runtime to spawn: `start` admits the
 * agent, `healthCheck` says whether the provider still holds it, `stop` lets it go.
 *
 * The fabric uses a built-in instance for every pool that names no provider and whose agents
 * would run on `local` (so a fabric configured with nothing behaves as before providers
 * existed); the first-party plugin `plugins/pool-threads` packages the same class.
 *
 * @module
 */
import { ClosedError } from '../errors.js';
import { LOCAL_EXECUTOR } from '../scheduler/piscina-executor.js';
import type { PoolAgentStart, PoolProvider } from './pool-provider.js';

/** Name of the default pool provider. */
export const THREADS_POOL_PROVIDER = 'threads';

/** Options of a {@link ThreadPoolProvider}. */
export interface ThreadPoolProviderOptions {
  /** @default 'threads' */
  name?: string;
  /** The executor the agents' tasks run on. @default 'local' (the piscina worker threads) */
  executor?: string;
}

/** Pool agents that are worker-thread agents of the fabric (see the module comment). */
export class ThreadPoolProvider implements PoolProvider {
  readonly name: string;
  readonly executor: string;
  readonly #agents = new Set<string>();
  #closed = false;

  constructor(options: ThreadPoolProviderOptions = {}) {
    this.name = options.name ?? THREADS_POOL_PROVIDER;
    this.executor = options.executor ?? LOCAL_EXECUTOR;
  }

  async start(agent: PoolAgentStart): Promise<void> {
    agent.signal.throwIfAborted();
    if (this.#closed) throw new ClosedError(`pool provider ${this.name}`);
    this.#agents.add(agent.agentId);
  }

  healthCheck(agentId: string): boolean {
    return !this.#closed && this.#agents.has(agentId);
  }

  async stop(agentId: string): Promise<void> {
    this.#agents.delete(agentId);
  }

  /** Agents started and not stopped. */
  get size(): number {
    return this.#agents.size;
  }

  close(): void {
    this.#closed = true;
    this.#agents.clear();
  }
}
