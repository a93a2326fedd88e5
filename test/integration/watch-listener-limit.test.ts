import { create } from '@bufbuild/protobuf';
import type { Client } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EventServiceWatchRequestSchema } from '../../src/gen/fabric/v1/events_pb.js';
import { EVENT_SERVICE_DEFINITION } from '../../src/rpc/events-service.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  ADMIN_TOKEN,
  closeSidecar,
  DEFAULT_ALLOW,
  startTestSidecar,
  until,
} from '../fixtures/gateway/harness.js';
import { grpcClient, openStream, type StreamReader } from '../fixtures/grpc-client.js';

/**
 * Every EventService watch adds one listener per event to the fabric's emitters, and the two
 * doors' stream caps (grpc.maxStreams, http.apiMaxStreams) allow more watches together than
 * Node's listener warning threshold: a sidecar within its own limits printed
 * "MaxListenersExceededWarning: Possible EventEmitter memory leak detected", a false leak alarm.
 */
describe('watches within the configured stream caps (real sidecar, both doors)', () => {
  const PER_DOOR = 60;
  let sidecar: Sidecar;
  let events: Client;
  const warnings: string[] = [];
  const onWarning = (w: Error): void => void warnings.push(`${w.name}: ${w.message}`);

  beforeAll(async () => {
    process.on('warning', onWarning);
    sidecar = await startTestSidecar({
      http: { apiMaxStreams: PER_DOOR },
      grpc: { port: 0, maxStreams: PER_DOOR },
      policies: [DEFAULT_ALLOW],
    });
    events = grpcClient(EVENT_SERVICE_DEFINITION, sidecar.grpcAddress!);
  });
  afterAll(async () => {
    process.off('warning', onWarning);
    events?.close();
    await closeSidecar(sidecar);
  });

  it('print no MaxListenersExceededWarning; ending them frees every listener', async () => {
    const lifecycle = sidecar.fabric!.lifecycle.events;
    const calls = sidecar.gateway.toolCalls;
    const base = lifecycle.listenerCount('agent.status');
    const baseCalls = calls.listenerCount('call.ended');
    const grpcStreams: StreamReader<unknown>[] = [];
    const httpStreams: AbortController[] = [];
    for (let i = 0; i < PER_DOOR; i++) {
      grpcStreams.push(
        openStream(events, 'watch', create(EventServiceWatchRequestSchema, {}), ADMIN_TOKEN),
      );
      const ac = new AbortController();
      httpStreams.push(ac);
      const res = await fetch(new URL('/api/fabric.v1.EventService/Watch', sidecar.url), {
        method: 'POST',
        signal: ac.signal,
        headers: { 'content-type': 'application/json', authorization: `Bearer ${ADMIN_TOKEN}` },
        body: '{}',
      });
      expect(res.status).toBe(200);
    }
    await until(() => lifecycle.listenerCount('agent.status') === base + 2 * PER_DOOR);
    expect(calls.listenerCount('call.ended')).toBe(baseCalls + 2 * PER_DOOR);
    // An event on every emitter a watch listens to is delivered (a warning is emitted on add;
    // Node reports it on the next tick).
    await new Promise((r) => setImmediate(r));
    expect(warnings.filter((w) => w.startsWith('MaxListenersExceededWarning'))).toEqual([]);

    for (const s of grpcStreams) s.stream.cancel();
    for (const ac of httpStreams) ac.abort();
    await until(() => lifecycle.listenerCount('agent.status') === base);
    expect(calls.listenerCount('call.ended')).toBe(baseCalls);
  });
});
