/**
 * A FabricWorker whose agent is terminated while a handler runs (an operator's TerminateAgent, a
 * pool scaled down, past the drain): the fabric ended the attempt — CANCELLED, or retried on
 * another agent of the pool — but the terminated agent gets no ended-task notice (it is gone, and
 * its credential no longer authenticates). Before, the worker swallowed its refused heartbeats and
 * the handler ran on, beside the retry, until it returned. Now a heartbeat refused because the
 * agent is gone (the MCP transport reports the sidecar's 401 as FABRIC_ERR_UNAUTHENTICATED) aborts
 * the running handler (a RemoteFabricError, FABRIC_ERR_AGENT_UNAVAILABLE), and `run()` ends with
 * the refusal of its next call.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import { TaskStatus } from '../../src/task.js';
import { FabricWorker, RemoteFabricError } from '../../src/worker/fabric-worker.js';
import {
  agentId,
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  startTestSidecar,
  until,
} from '../fixtures/gateway/harness.js';
import { runUntilAborted } from '../fixtures/worker-until-aborted.js';

let sidecar: Sidecar;

beforeAll(async () => {
  sidecar = await startTestSidecar({ policies: [DEFAULT_ALLOW], agents: [{ name: 'w' }] });
});

afterAll(async () => closeSidecar(sidecar));

describe('FabricWorker.run when its agent is terminated mid-task', () => {
  it("aborts the running handler and ends run() with the agent's refusal", async () => {
    const fabric = sidecar.fabric!;
    const id = agentId(sidecar, 'w');
    const task = await fabric.schedule({ agentId: id, taskType: 'job', timeoutSeconds: 600 });
    const worker = await FabricWorker.connect({
      url: sidecar.url!,
      credential: agentToken(sidecar, 'w'),
      claimWaitSeconds: 1,
      heartbeatSeconds: 0.2,
    });
    const { started, reason, running, stop } = runUntilAborted(worker);
    try {
      await until(started, 10_000);
      await fabric.terminate(id, { drainTimeoutSeconds: 0.1 });
      expect((await fabric.getTask(task.id)).status).toBe(TaskStatus.CANCELLED);
      await until(() => reason() !== undefined, 10_000);
      expect(reason()).toBeInstanceOf(RemoteFabricError);
      expect((reason() as RemoteFabricError).code).toBe('FABRIC_ERR_AGENT_UNAVAILABLE');
      const ended = await running;
      expect(ended).toBeInstanceOf(RemoteFabricError);
      expect((ended as RemoteFabricError).code).toBe('FABRIC_ERR_UNAUTHENTICATED');
    } finally {
      stop.abort();
      await running;
      await worker.close();
    }
  });
});
