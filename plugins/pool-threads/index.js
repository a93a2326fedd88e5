// pool-threads: the first-party default pool provider, packaged as a plugin. A pool's agents
// are agents of the fabric's `local` executor: their tasks run on the shared piscina
// worker-thread pool and they heartbeat by themselves while the fabric runs — there is no
// per-agent process to spawn. The fabric uses a built-in instance of the same provider for
// every pool that names no provider and runs on `local`; loading this plugin (name `threads`)
// takes that built-in's place, and unloading it brings the built-in back. See README.md.
import { ThreadPoolProvider } from 'agent-fabric';
import { z } from 'zod';

export const optionsSchema = z
  .object({
    /** The provider's name, as pools name it in `provider`. */
    name: z.string().min(1).default('threads'),
    /** The executor the agents' tasks run on. */
    executor: z.string().min(1).default('local'),
  })
  .strict();

/** @type {import('agent-fabric').Plugin<'pool'>} */
const plugin = {
  name: 'pool-threads',
  version: '1.0.0',
  kind: 'pool',
  fabric: '>=0.1.0',
  api: 2,
  options: optionsSchema,
  create: (options) => new ThreadPoolProvider(options),
};

export default plugin;
