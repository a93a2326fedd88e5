/**
 * The vouch question (`fabric.<ns>.vouch`) capped the report's agent and task ids at 200
 * characters where a report allows 256 (`MAX_ID_LENGTH`): the agent's own sidecar could not read
 * the question about a report with a longer id and stayed silent, so the asking sidecar waited
 * out its vouch timeout and refused a report it had read as valid. (The fabric's own ids — UUID
 * agents, `t_…` tasks — are far shorter, so only a report with an id from elsewhere reaches it.)
 * Now both bounds are the one constant: every report a sidecar reads makes a question the
 * agent's sidecar reads and answers. Real sidecar and nats-server; the question asked by a raw
 * client that holds the namespace's sidecar key.
 */
import { randomBytes } from 'node:crypto';
import { connect } from '@nats-io/transport-node';
import { expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import { hashCredential } from '../../src/lifecycle/lifecycle-manager.js';
import { natsNames } from '../../src/transport/nats/subjects.js';
import { MAX_ID_LENGTH } from '../../src/validate.js';
import type { Report, Vouch } from '../../src/transport/nats/wire.js';
import {
  asReport,
  decodeJson,
  encodeJson,
  reportContentDigest,
  reportProof,
  vouchMac,
  vouchSchema,
} from '../../src/transport/nats/wire.js';
import { describeNats, natsServerPerSuite } from '../fixtures/nats-server.js';

const sidecarKey = 'vouch-id-length-test-key-0123456789abcdef';

describeNats('NATS: the vouch question reads every id a report may carry', () => {
  const server = natsServerPerSuite();

  it('answers, under the sidecar key, for a report with a task id of 201–256 characters', async () => {
    const nats = { url: server().url, namespace: 'vouchlen', sidecarKey };
    const fabric = new AgentFabric({}, { nats });
    await fabric.start();
    const nc = await connect({ servers: nats.url });
    try {
      await fabric.createPool({ poolId: 'p', model: 'm', executor: 'nats', minAgents: 0 });
      const agent = await fabric.spawn({ name: 'w', model: 'm', executor: 'nats', poolId: 'p' });
      for (const length of [201, MAX_ID_LENGTH]) {
        const taskId = 't'.repeat(length);
        const body = { kind: 'progress' as const, taskId, attempt: 1, agentId: agent.id };
        const extra = { take: 'take-1', nonce: 'n-1', counter: 2, progress: { pct: 5 } };
        const report = asReport({
          ...body,
          ...extra,
          lease: 'lease',
          proof: reportProof(hashCredential(agent.credential), { ...body, ...extra }),
        }) as Report;
        expect(report).toBeDefined(); // a report a sidecar reads
        // The question another sidecar asks about it, as it asks it.
        const v: Vouch = {
          agentId: report.agentId,
          kind: report.kind,
          taskId: report.taskId,
          attempt: report.attempt,
          take: report.take,
          reportNonce: report.nonce,
          counter: report.counter,
          content: reportContentDigest(report),
          proof: report.proof,
          nonce: randomBytes(18).toString('base64url'),
        };
        expect(vouchSchema.safeParse(v).success).toBe(true);
        const answer = decodeJson(
          (await nc.request(natsNames(nats.namespace).vouch, encodeJson(v), { timeout: 5000 }))
            .data,
        ) as { ok: boolean; poolId: string | null; mac: string };
        expect(answer).toMatchObject({ ok: true, poolId: 'p' });
        expect(answer.mac).toBe(vouchMac(sidecarKey, nats.namespace, v, true, 'p'));
      }
    } finally {
      await nc.close();
      await fabric.close();
    }
  }, 60_000);
});
