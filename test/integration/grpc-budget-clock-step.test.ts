/**
 * A step of the wall clock reaches an operator watching `EventService/Watch` (topic `BUDGETS`)
 * as a `clockStep` event — how far the clock moved and when it was noticed — beside the
 * budget alerts, as the budget manager's `clockStep` event has it in process. A real fabric,
 * a real gRPC server and a real grpc-js client; `Date` and `performance.now` are the test's,
 * timers real, as test/integration/budget-clock-step.test.ts steps the clock.
 */
import { create } from '@bufbuild/protobuf';
import { timestampMs } from '@bufbuild/protobuf/wkt';
import type { Client } from '@grpc/grpc-js';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { BudgetClockStep } from '../../src/budget/budget-clock.js';
import { AgentFabric } from '../../src/fabric.js';
import {
  EventServiceWatchRequestSchema,
  EventTopic,
  type EventServiceWatchResponse,
} from '../../src/gen/fabric/v1/events_pb.js';
import { EVENT_SERVICE_DEFINITION } from '../../src/rpc/events-service.js';
import { startGrpcServer, type GrpcServer } from '../../src/rpc/grpc-server.js';
import { grpcClient, openStream } from '../fixtures/grpc-client.js';

const ADMIN = 'admin-credential-for-clock-step-tests-0123456789';
const HOUR = 3_600_000;

let fabric: AgentFabric | undefined;
let server: GrpcServer | undefined;
let events: Client | undefined;
afterEach(async () => {
  events?.close();
  await server?.close();
  await fabric?.close();
  events = server = fabric = undefined;
  vi.useRealTimers();
});

/** The wall clock alone is set (a step), then a second passes (the budgets look at the clock). */
function step(ms: number): void {
  vi.setSystemTime(Date.now() + ms);
  vi.advanceTimersByTime(1000);
}

describe('EventService/Watch when the wall clock steps (real gRPC server and client)', () => {
  it('sends one clockStep event per step, ahead and back, on the BUDGETS topic', async () => {
    vi.useFakeTimers({ toFake: ['Date', 'performance'] });
    vi.setSystemTime(Date.UTC(2026, 2, 2, 10, 0, 30));
    fabric = new AgentFabric({}, { adminCredentials: [ADMIN] });
    const seen: BudgetClockStep[] = [];
    fabric.budgets.on('clockStep', (s) => seen.push(s));
    const { id } = await fabric.spawn({
      name: 'spender',
      model: 'm',
      executor: 'inprocess',
      budget: { maxTokensPerHour: 1000 },
    });
    server = await startGrpcServer(fabric);
    events = grpcClient(EVENT_SERVICE_DEFINITION, server.address);
    const watch = openStream<EventServiceWatchResponse>(
      events,
      'watch',
      create(EventServiceWatchRequestSchema, { topics: [EventTopic.BUDGETS] }),
      ADMIN,
    );
    await vi.waitFor(() => expect(fabric!.budgets.listenerCount('clockStep')).toBe(2));
    // NTP finds the clock two hours behind and steps it; the next usage notices.
    step(2 * HOUR);
    await fabric.recordUsage(id, { tokens: 1 });
    // An operator sets it back an hour.
    step(-HOUR);
    await fabric.recordUsage(id, { tokens: 1 });
    expect(seen.map((s) => s.stepMs)).toEqual([2 * HOUR, -HOUR]);
    const sent = await watch.first(2);
    expect(sent.map((m) => m.sequence)).toEqual([1n, 2n]);
    expect(
      sent.map((m) =>
        m.event.case === 'clockStep'
          ? { stepMs: m.event.value.stepMs, at: timestampMs(m.event.value.at!) }
          : m.event.case,
      ),
    ).toEqual(seen.map((s) => ({ stepMs: s.stepMs, at: s.at })));
    watch.stream.cancel();
    await watch.ended;
    // The stream's listener went with it.
    await vi.waitFor(() => expect(fabric!.budgets.listenerCount('clockStep')).toBe(1));
  });

  it('sends none to a watch of other topics', async () => {
    vi.useFakeTimers({ toFake: ['Date', 'performance'] });
    vi.setSystemTime(Date.UTC(2026, 2, 2, 10, 0, 30));
    fabric = new AgentFabric({}, { adminCredentials: [ADMIN] });
    const { id } = await fabric.spawn({
      name: 'spender',
      model: 'm',
      executor: 'inprocess',
      budget: { maxTokensPerHour: 1000 },
    });
    server = await startGrpcServer(fabric);
    events = grpcClient(EVENT_SERVICE_DEFINITION, server.address);
    const watch = openStream<EventServiceWatchResponse>(
      events,
      'watch',
      create(EventServiceWatchRequestSchema, { topics: [EventTopic.AGENTS] }),
      ADMIN,
    );
    await vi.waitFor(() =>
      expect(fabric!.lifecycle.events.listenerCount('agent.spawned')).toBeGreaterThan(0),
    );
    step(2 * HOUR);
    await fabric.recordUsage(id, { tokens: 1 });
    expect(fabric.budgets.clockSteps).toBe(1);
    // Something of its topic after the step: the step, had it been sent, would come first.
    await fabric.spawn({ name: 'later', model: 'm', executor: 'inprocess' });
    const [first] = await watch.first(1);
    expect(first!.event.case).toBe('agent');
    watch.stream.cancel();
    await watch.ended;
  });
});
