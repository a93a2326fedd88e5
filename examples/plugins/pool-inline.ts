import { definePlugin } from 'agent-fabric';
import { z } from 'zod';

// A pool provider whose agents need no runtime of their own: their tasks run on the fabric's
// in-process executor. A real one starts a process or a container in `start` and ends it in
// `stop` (see plugins/pool-process).
export default definePlugin(
  {
    name: 'pool-inline',
    version: '1.0.0',
    kind: 'pool',
    options: z.object({ label: z.string().default('inline') }).strict(),
  },
  (options, context) => {
    const { label } = options as { label: string };
    const live = new Set<string>();
    return {
      name: label,
      executor: 'inprocess',
      start: async (agent) => {
        context.log.info('agent started', { agentId: agent.agentId });
        live.add(agent.agentId);
      },
      healthCheck: (agentId) => live.has(agentId),
      stop: async (agentId) => void live.delete(agentId),
    };
  },
);
