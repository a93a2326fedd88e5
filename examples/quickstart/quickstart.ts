import { AgentFabric } from 'agent-fabric';

// Create the fabric with configuration (these are the defaults).
const fabric = new AgentFabric({
  maxConcurrentAgents: 100,
  maxConcurrentTasksPerAgent: 5,
  defaultTimeoutSeconds: 300,
  heartbeatIntervalSeconds: 30,
});

// Local agents run task handlers on worker threads: one ES module per task type.
fabric.registerHandler('code_review', new URL('./handlers/code-review.js', import.meta.url));

// Spawn an agent.
const agent = await fabric.spawn({ model: 'claude-3-opus', name: 'code-review-agent' });

// Schedule a task.
const task = await fabric.schedule({
  agentId: agent.id,
  taskType: 'code_review',
  payload: { prUrl: 'https://github.com/org/repo/pull/123' },
});

// Wait for completion.
const done = await fabric.waitForTask(task.id);
console.log(`Result: ${JSON.stringify(done.result)}`);

// Terminate the agent, then release threads and timers.
await fabric.terminate(agent.id);
await fabric.close();

export { done };
