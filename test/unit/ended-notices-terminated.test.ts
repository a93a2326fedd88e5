import { describe, expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';

describe('ended-task notices of a terminated remote agent', () => {
  it('are not put back once the agent is gone (nothing is kept for it)', async () => {
    const fabric = new AgentFabric();
    try {
      const agent = await fabric.spawn({ model: 'm', name: 'r', executor: 'remote' });
      const task = await fabric.schedule({ agentId: agent.id, taskType: 't', payload: {} });
      const claimed = await fabric.claimTask(agent.id);
      expect(claimed?.taskId).toBe(task.id);
      await fabric.cancelTask(task.id);
      // A Heartbeat took the notice; its answer did not reach the agent, and the agent was
      // terminated meanwhile (the door puts undelivered notices back: agent-service.ts).
      const notices = fabric.scheduler.takeEndedTasks(agent.id);
      expect(notices.map((n) => n.taskId)).toEqual([task.id]);
      await fabric.terminate(agent.id, { drainTimeoutSeconds: 0.01 });
      fabric.scheduler.restoreEndedTasks(agent.id, notices);
      expect(fabric.scheduler.takeEndedTasks(agent.id)).toEqual([]);
    } finally {
      await fabric.close();
    }
  });
});
