/**
 * NatsAgentLink against a real nats-server: acks wait for the end of the turn (to leave in one
 * write with that turn's reports), so a link closed in the same turn must still send them before
 * its connection closes — else the message would stay in the work queue until AckWait.
 */
import { expect, it } from 'vitest';
import { AckPolicy, RetentionPolicy, jetstream, jetstreamManager } from '@nats-io/jetstream';
import { connect, nanos } from '@nats-io/transport-node';
import { NatsAgentLink } from '../../src/transport/nats/nats-agent-link.js';
import { natsNames } from '../../src/transport/nats/subjects.js';
import { until } from '../fixtures/gateway/harness.js';
import { describeNats, natsServerPerSuite } from '../fixtures/nats-server.js';

describeNats('NatsAgentLink', () => {
  const server = natsServerPerSuite();

  it('sends the acks due when it is closed in the same turn, before its connection closes', async () => {
    const admin = await connect({ servers: server().url });
    const jsm = await jetstreamManager(admin);
    await jsm.streams.add({
      name: 'LINK',
      subjects: ['link.>'],
      retention: RetentionPolicy.Workqueue,
    });
    // AckWait far beyond the test: only an ack removes the message.
    await jsm.consumers.add('LINK', {
      durable_name: 'c',
      ack_policy: AckPolicy.Explicit,
      ack_wait: nanos(120_000),
    });
    await jetstream(admin).publish('link.x', 'a');

    const nc = await connect({ servers: server().url });
    const link = new NatsAgentLink(nc, natsNames('link'), 'agent-1', 'c'.repeat(32), 1000);
    const consumer = await jetstream(nc).consumers.get('LINK', 'c');
    const m = await consumer.next({ expires: 5000 });
    expect(m?.string()).toBe('a');
    link.ack(m!);
    await link.close(true); // the same turn: the end-of-turn flush has not run
    expect(nc.isClosed()).toBe(true);

    await until(async () => (await jsm.streams.info('LINK')).state.messages === 0, 10_000);
    const info = await jsm.consumers.info('LINK', 'c');
    expect(info.num_ack_pending).toBe(0);
    await admin.close();
  });
});
