/**
 * Seeded hostile input on the Operator API of a real sidecar with a pool, hooks in a git
 * repository, durable state and the audit log — as JSON (`POST /api/fabric.v1.<Service>/<Method>`)
 * and over gRPC (the same bodies' protobuf bytes, some mutated): bodies built from each
 * method's own protobuf descriptor (so most reach the code behind decoding), ids learned from
 * earlier answers, a field of junk now and then, under the admin token, an agent's or a wrong
 * one, some sent concurrently. What must hold: no 5xx and no gRPC code that is a server fault,
 * every JSON refusal a typed error (`FABRIC_ERR_…`), nothing thrown nobody caught; afterwards
 * the fabric answers as before.
 *
 * Written as a standing check after the hardening rounds; it found nothing on the code it was
 * written against (`FUZZ_SEED`, `FUZZ_SCALE` explore further).
 */
import { join } from 'node:path';
import type {
  DescField,
  DescMessage,
  DescMethod,
  DescService,
  JsonValue,
} from '@bufbuild/protobuf';
import { fromJson, ScalarType, toBinary } from '@bufbuild/protobuf';
import { status, type ServiceDefinition, type ServiceError } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentService } from '../../src/gen/fabric/v1/agent_pb.js';
import { ApprovalService } from '../../src/gen/fabric/v1/approval_pb.js';
import { BudgetService } from '../../src/gen/fabric/v1/budget_pb.js';
import { FabricService } from '../../src/gen/fabric/v1/fabric_pb.js';
import { PolicyService } from '../../src/gen/fabric/v1/policy_pb.js';
import { ToolService } from '../../src/gen/fabric/v1/tool_pb.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import { grpcDefinition } from '../../src/rpc/grpc-definition.js';
import { callApi } from '../fixtures/api.js';
import { grpcClient, unary } from '../fixtures/grpc-client.js';
import { Fuzz, fuzzCount, fuzzSeed, type Uncaught, watchUncaught } from '../fixtures/fuzz.js';
import {
  ADMIN_TOKEN,
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  EVERYTHING_BIN,
  startTestSidecar,
  tempDir,
} from '../fixtures/gateway/harness.js';

const SERVICES: readonly DescService[] = [
  AgentService,
  ApprovalService,
  BudgetService,
  FabricService,
  PolicyService,
  ToolService,
];

/** Every unary method of the API, by `<Service>/<Method>`. */
const METHODS: readonly { path: string; method: DescMethod }[] = SERVICES.flatMap((service) =>
  service.methods
    .filter((m) => m.methodKind === 'unary')
    .map((method) => ({ path: `${service.name}/${method.name}`, method })),
);

/** What answers carry that later requests may name. */
const LEARNED = ['id', 'taskId', 'poolId', 'agentId', 'hookId', 'approvalId', 'name'];

/** Waits kept short: a long poll or a drain the fuzzer asks for is legitimate, and slow. */
const SHORT_DURATIONS = ['0s', '0.1s', '1s', '-1s', 'x', '1e9'];

function scalar(fuzz: Fuzz, type: ScalarType, name: string): unknown {
  if (/wait|timeout/i.test(name)) return fuzz.pick([0, 0.1, 1, -1, 'NaN']);
  switch (type) {
    case ScalarType.STRING:
      return fuzz.string();
    case ScalarType.BOOL:
      return fuzz.chance(0.5);
    case ScalarType.BYTES:
      return fuzz.pick(['', 'AAAA', '!!!', 'eyJhIjoxfQ==']);
    case ScalarType.DOUBLE:
    case ScalarType.FLOAT:
      return fuzz.pick([0, 1, -1, 0.5, 1e9, 1e308, 'NaN', 'Infinity', 3600]);
    default:
      return fuzz.pick([0, 1, 2, 5, 100, -1, 1000, '9223372036854775807', '18446744073709551615']);
  }
}

function fieldValue(fuzz: Fuzz, f: DescField, depth: number): unknown {
  if (fuzz.chance(0.01)) return fuzz.junk();
  switch (f.fieldKind) {
    case 'scalar':
      return scalar(fuzz, f.scalar, f.name);
    case 'enum':
      return fuzz.chance(0.9) ? fuzz.pick(f.enum.values).name : fuzz.pick([99, 'X', -1]);
    case 'message':
      return messageValue(fuzz, f.message, depth + 1);
    case 'list':
      return Array.from({ length: Math.floor(fuzz.next() * 3) }, () =>
        f.listKind === 'scalar'
          ? scalar(fuzz, f.scalar, f.name)
          : f.listKind === 'enum'
            ? fuzz.pick(f.enum.values).name
            : messageValue(fuzz, f.message, depth + 1),
      );
    case 'map': {
      const o: Record<string, unknown> = {};
      for (let i = Math.floor(fuzz.next() * 3); i > 0; i--) {
        o[fuzz.string()] =
          f.mapKind === 'scalar'
            ? scalar(fuzz, f.scalar, f.name)
            : f.mapKind === 'enum'
              ? fuzz.pick(f.enum.values).name
              : messageValue(fuzz, f.message, depth + 1);
      }
      return o;
    }
  }
}

/** A JSON body for message type `m`, one of each oneof at most. */
function messageValue(fuzz: Fuzz, m: DescMessage, depth = 0): unknown {
  switch (m.typeName) {
    case 'google.protobuf.Value':
      return fuzz.chance(0.5) ? { tool: 'ev__*', action: 'allow' } : fuzz.junk();
    case 'google.protobuf.Struct':
      return fuzz.chance(0.5)
        ? { tool: 'ev__*', action: 'allow', when: { '==': [{ var: 'x' }, 1] } }
        : { a: fuzz.junk() };
    case 'google.protobuf.Duration':
      return fuzz.pick(SHORT_DURATIONS);
    case 'google.protobuf.Timestamp':
      return fuzz.pick([
        '2026-12-05T00:00:00Z',
        'x',
        '9999-12-31T23:59:59Z',
        '1970-01-01T00:00:00Z',
      ]);
  }
  if (depth > 4) return {};
  const o: Record<string, unknown> = {};
  const oneofs = new Set<unknown>();
  for (const f of m.fields) {
    if (f.oneof) {
      if (oneofs.has(f.oneof) || fuzz.chance(0.5)) continue;
      oneofs.add(f.oneof);
    }
    if (fuzz.chance(0.75)) o[f.jsonName] = fieldValue(fuzz, f, depth);
  }
  return o;
}

describe('seeded hostile input on the Operator API (a real sidecar)', () => {
  let sidecar: Sidecar;
  let uncaught: Uncaught;

  beforeAll(async () => {
    uncaught = watchUncaught();
    const dir = tempDir('operator-fuzz');
    sidecar = await startTestSidecar({
      upstreams: {
        ev: { command: process.execPath, args: [EVERYTHING_BIN, 'stdio'], stderr: 'ignore' },
      },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'a' }, { name: 'b' }],
      pools: [{ id: 'p1', minAgents: 1, maxAgents: 3 }],
      hooks: { storagePath: join(dir, 'hooks') },
      state: { path: join(dir, 'state.db') },
      audit: { path: join(dir, 'audit.log') },
      grpc: { port: 0 },
    });
  });

  afterAll(async () => {
    await closeSidecar(sidecar);
    uncaught.stop();
  });

  it('refuses with typed errors, never a server fault, and goes on answering', async () => {
    const fuzz = new Fuzz(fuzzSeed(20261205));
    fuzz.seen.push('p1', 'ev__echo', 'default-allow');
    const tokens = [ADMIN_TOKEN, ADMIN_TOKEN, ADMIN_TOKEN, agentToken(sidecar, 'a'), 'wrong'];
    const faults: string[] = [];
    const succeeded = new Set<string>();
    let refused = 0;
    const inFlight: Promise<void>[] = [];

    for (let i = fuzzCount(1500); i > 0; i--) {
      const { path, method } = fuzz.pick(METHODS);
      const body = messageValue(fuzz, method.input);
      const done = callApi(sidecar.url!, path, body, fuzz.pick(tokens)).then(async (res) => {
        const text = await res.text();
        fuzz.learn(text, LEARNED);
        const what = `${path} ${JSON.stringify(body).slice(0, 300)} → ${res.status} ${text.slice(0, 300)}`;
        if (res.status >= 500) faults.push(`server fault: ${what}`);
        else if (res.status === 200) succeeded.add(path);
        else if (/^\{"code":"FABRIC_ERR_[A-Z_]+"/.test(text)) refused++;
        else faults.push(`untyped: ${what}`);
      });
      if (fuzz.chance(0.7)) await done;
      else inFlight.push(done);
    }
    await Promise.all(inFlight);

    expect(faults).toEqual([]);
    expect(uncaught.errors).toEqual([]);
    // The run reached past decoding and authorisation into the fabric.
    expect(succeeded.size).toBeGreaterThan(10);
    expect(refused).toBeGreaterThan(100);
    const stats = await callApi(sidecar.url!, 'FabricService/GetStats', {}, ADMIN_TOKEN);
    expect(stats.status).toBe(200);
    const pools = await callApi(sidecar.url!, 'FabricService/ListPools', {}, ADMIN_TOKEN);
    expect(pools.status).toBe(200);
  }, 300_000);

  it('over gRPC too: bytes of the same bodies, some mutated, never a server fault', async () => {
    const fuzz = new Fuzz(fuzzSeed(20261205) + 1);
    fuzz.seen.push('p1', 'ev__echo', 'default-allow');
    const tokens = [ADMIN_TOKEN, ADMIN_TOKEN, ADMIN_TOKEN, agentToken(sidecar, 'a'), 'wrong'];
    const clients = new Map(
      SERVICES.map((service) => [
        service.name,
        grpcClient(rawRequests(grpcDefinition(service)), sidecar.grpcAddress!),
      ]),
    );
    const faults: string[] = [];
    const codes = new Map<number, number>();
    const inFlight: Promise<void>[] = [];
    try {
      for (let i = fuzzCount(1500); i > 0; i--) {
        const { path, method } = fuzz.pick(METHODS);
        const body = messageValue(fuzz, method.input);
        let bytes: Uint8Array;
        try {
          bytes = toBinary(method.input, fromJson(method.input, body as JsonValue));
        } catch {
          bytes = new Uint8Array(Array.from({ length: 8 }, () => Math.floor(fuzz.next() * 256)));
        }
        if (fuzz.chance(0.1) && bytes.length > 0) {
          bytes = bytes.slice();
          bytes[Math.floor(fuzz.next() * bytes.length)] = Math.floor(fuzz.next() * 256);
        }
        const client = clients.get(path.split('/')[0]!)!;
        const done = unary(client, method.localName, Buffer.from(bytes), fuzz.pick(tokens), {
          deadline: Date.now() + 30_000,
        }).then(
          (res) => {
            fuzz.learn(JSON.stringify(res), LEARNED);
            codes.set(status.OK, (codes.get(status.OK) ?? 0) + 1);
          },
          (e: ServiceError) => {
            codes.set(e.code, (codes.get(e.code) ?? 0) + 1);
            if (SERVER_FAULTS.includes(e.code)) {
              faults.push(`${path} ${JSON.stringify(body).slice(0, 300)} → ${e.code} ${e.details}`);
            }
          },
        );
        if (fuzz.chance(0.7)) await done;
        else inFlight.push(done);
      }
      await Promise.all(inFlight);
    } finally {
      for (const client of clients.values()) client.close();
    }

    expect(faults).toEqual([]);
    expect(uncaught.errors).toEqual([]);
    expect(codes.get(status.OK)).toBeGreaterThan(50);
    expect(codes.get(status.INVALID_ARGUMENT)).toBeGreaterThan(50);
    const stats = await callApi(sidecar.url!, 'FabricService/GetStats', {}, ADMIN_TOKEN);
    expect(stats.status).toBe(200);
  }, 300_000);
});

/** gRPC codes that are the server's fault, never an answer to bad input. */
const SERVER_FAULTS: readonly number[] = [
  status.UNKNOWN,
  status.INTERNAL,
  status.DATA_LOSS,
  status.UNIMPLEMENTED,
];

/** `definition` with requests sent as the given bytes and answers kept as bytes. */
function rawRequests(definition: ServiceDefinition): ServiceDefinition {
  return Object.fromEntries(
    Object.entries(definition).map(([name, m]) => [
      name,
      { ...m, requestSerialize: (b: Buffer) => b, responseDeserialize: (b: Buffer) => b.length },
    ]),
  );
}
