/**
 * TLS for the gRPC and HTTP listeners, with a self-signed certificate made by `openssl` in a
 * temp dir, and real clients (grpc-js with the certificate as root, node:https with it as CA);
 * and the refusal to serve plaintext beyond loopback.
 */
import { execFileSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { get as httpGet } from 'node:http';
import { get as httpsGet } from 'node:https';
import { readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { create } from '@bufbuild/protobuf';
import {
  credentials,
  makeGenericClientConstructor,
  Metadata,
  status,
  type ChannelCredentials,
  type ServiceError,
} from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { InsecureListenerError } from '../../src/errors.js';
import { AgentFabric } from '../../src/fabric.js';
import {
  HeartbeatRequestSchema,
  type HeartbeatResponse,
} from '../../src/gen/fabric/v1/agent_pb.js';
import {
  HealthCheckRequestSchema,
  HealthCheckResponse_ServingStatus as Serving,
  type HealthCheckResponse,
} from '../../src/gen/grpc/health/v1/health_pb.js';
import { AGENT_SERVICE_DEFINITION } from '../../src/rpc/agent-service.js';
import { startGrpcServer } from '../../src/rpc/grpc-server.js';
import { HEALTH_SERVICE_DEFINITION } from '../../src/rpc/health-service.js';
import { parseSidecarConfig } from '../../src/server/config-file.js';
import { Sidecar } from '../../src/server/sidecar.js';
import { isLoopbackHost, readTlsFiles, type TlsMaterial } from '../../src/server/tls.js';

const AgentClient = makeGenericClientConstructor(AGENT_SERVICE_DEFINITION, 'AgentService');
const HealthClient = makeGenericClientConstructor(HEALTH_SERVICE_DEFINITION, 'Health');

function heartbeat(
  address: string,
  creds: ChannelCredentials,
  credential: string,
): Promise<HeartbeatResponse | ServiceError> {
  const client = new AgentClient(address, creds);
  const md = new Metadata();
  md.set('authorization', `Bearer ${credential}`);
  return new Promise((resolve) => {
    (
      client as unknown as {
        heartbeat: (
          r: unknown,
          m: Metadata,
          o: { deadline: number },
          cb: (e: ServiceError | null, r: HeartbeatResponse) => void,
        ) => void;
      }
    ).heartbeat(
      create(HeartbeatRequestSchema),
      md,
      { deadline: Date.now() + 5_000 },
      (err, res) => {
        client.close();
        resolve(err ?? res);
      },
    );
  });
}

function httpsJson(url: string, ca: Buffer): Promise<{ status: number; body: unknown }> {
  return new Promise((resolve, reject) => {
    httpsGet(url, { ca }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (text += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) }));
    }).on('error', reject);
  });
}

describe('TLS listeners', () => {
  let dir: string;
  let files: { cert: string; key: string };
  let tls: TlsMaterial;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'fabric-tls-'));
    files = { cert: join(dir, 'cert.pem'), key: join(dir, 'key.pem') };
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'rsa:2048',
        '-nodes',
        '-keyout',
        files.key,
        '-out',
        files.cert,
        '-days',
        '1',
        '-subj',
        '/CN=localhost',
        '-addext',
        'subjectAltName=DNS:localhost,IP:127.0.0.1',
      ],
      { stdio: 'ignore' },
    );
    tls = readTlsFiles('test', files);
  });

  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('serves gRPC over TLS to a client that trusts the certificate, and only over TLS', async () => {
    const fabric = new AgentFabric();
    const agent = await fabric.spawn({ model: 'm', name: 'a', executor: 'remote' });
    const server = await startGrpcServer(fabric, { tls });
    try {
      const ok = await heartbeat(server.address, credentials.createSsl(tls.cert), agent.credential);
      expect(ok).toMatchObject({ agentId: agent.id, status: 'HEALTHY' });
      const plain = await heartbeat(server.address, credentials.createInsecure(), agent.credential);
      expect(plain).toMatchObject({ code: status.UNAVAILABLE });
      // A client that does not trust the certificate does not get through either.
      const untrusted = await heartbeat(server.address, credentials.createSsl(), agent.credential);
      expect(untrusted).toMatchObject({ code: status.UNAVAILABLE });
    } finally {
      await server.close();
      await fabric.close();
    }
  });

  it('with a CA, requires a client certificate it issued (mutual TLS)', async () => {
    const fabric = new AgentFabric();
    const agent = await fabric.spawn({ model: 'm', name: 'a', executor: 'remote' });
    // The self-signed certificate is its own CA: a client holding it and its key is admitted.
    const server = await startGrpcServer(fabric, { tls: { ...tls, ca: tls.cert } });
    try {
      const withCert = await heartbeat(
        server.address,
        credentials.createSsl(tls.cert, tls.key, tls.cert),
        agent.credential,
      );
      expect(withCert).toMatchObject({ agentId: agent.id });
      const without = await heartbeat(
        server.address,
        credentials.createSsl(tls.cert),
        agent.credential,
      );
      expect(without).toMatchObject({ code: status.UNAVAILABLE });
    } finally {
      await server.close();
      await fabric.close();
    }
  });

  it('the sidecar serves HTTPS and gRPC over TLS from the config’s shared tls files', async () => {
    const config = parseSidecarConfig(
      JSON.stringify({
        adminToken: 'fab_admin_test_token_0123456789',
        state: 'memory',
        tls: files,
        http: { port: 0 },
        grpc: { port: 0 },
        agents: [{ name: 'g' }],
      }),
      'tls-config.json',
      { env: {} },
    );
    const sidecar = await Sidecar.start({ config });
    try {
      expect(sidecar.url).toMatch(/^https:\/\//);
      const health = await httpsJson(new URL('/healthz', sidecar.url).href, tls.cert);
      expect(health).toEqual({ status: 200, body: { ok: true } });
      // Plain HTTP on the same port gets no answer as HTTP.
      const plain = await new Promise<string>((resolve) => {
        httpGet(new URL('/healthz', sidecar.url!.replace('https:', 'http:')).href, (res) =>
          resolve(`status ${res.statusCode}`),
        ).on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
      });
      expect(plain).not.toBe('status 200');

      const credential = sidecar.agents.find((a) => a.name === 'g')!.credential;
      const hb = await heartbeat(sidecar.grpcAddress!, credentials.createSsl(tls.cert), credential);
      expect(hb).toMatchObject({ status: 'HEALTHY' });
      const hc = new HealthClient(sidecar.grpcAddress!, credentials.createSsl(tls.cert));
      const serving = await new Promise<Serving>((resolve, reject) =>
        (
          hc as unknown as {
            check: (r: unknown, cb: (e: Error | null, r: HealthCheckResponse) => void) => void;
          }
        ).check(create(HealthCheckRequestSchema, { service: '' }), (e, r) =>
          e ? reject(e) : resolve(r.status),
        ),
      );
      hc.close();
      expect(serving).toBe(Serving.SERVING);
    } finally {
      await sidecar.close();
    }
  });

  it('refuses to start a listener beyond loopback without TLS, naming it, unless allowed', async () => {
    const start = (input: Record<string, unknown>): Promise<Sidecar> =>
      Sidecar.start({
        config: parseSidecarConfig(
          JSON.stringify({
            adminToken: 'fab_admin_test_token_0123456789',
            state: 'memory',
            ...input,
          }),
          'insecure.json',
          { env: {} },
        ),
      });
    const http = await start({ http: { host: '0.0.0.0', port: 0 } }).catch((e: unknown) => e);
    expect(http).toBeInstanceOf(InsecureListenerError);
    expect(http).toMatchObject({ details: { listener: 'HTTP', host: '0.0.0.0' } });
    const grpc = await start({
      http: { port: 0 },
      grpc: { host: '0.0.0.0', port: 0 },
    }).catch((e: unknown) => e);
    expect(grpc).toBeInstanceOf(InsecureListenerError);
    expect(grpc).toMatchObject({ details: { listener: 'gRPC', host: '0.0.0.0' } });

    // Explicitly allowed, or with TLS, it starts.
    const allowed = await start({ http: { host: '0.0.0.0', port: 0, allowInsecure: true } });
    await allowed.close();
    const secure = await start({ http: { host: '0.0.0.0', port: 0 }, tls: files });
    await secure.close();

    // The library entry point refuses too.
    const fabric = new AgentFabric();
    await expect(startGrpcServer(fabric, { host: '0.0.0.0' })).rejects.toBeInstanceOf(
      InsecureListenerError,
    );
    await fabric.close();
  });

  it('names the listener and file when a tls file cannot be read', async () => {
    const config = parseSidecarConfig(
      JSON.stringify({
        adminToken: 'fab_admin_test_token_0123456789',
        state: 'memory',
        http: { port: 0, tls: { cert: join(dir, 'missing.pem'), key: files.key } },
      }),
      'bad-tls.json',
      { env: {} },
    );
    await expect(Sidecar.start({ config })).rejects.toMatchObject({
      code: 'FABRIC_ERR_CONFIG',
      details: { field: 'http.tls.cert' },
    });
  });

  it('knows loopback when it sees it', () => {
    for (const h of ['127.0.0.1', '127.1.2.3', 'localhost', '::1', '[::1]', '::ffff:127.0.0.1'])
      expect(isLoopbackHost(h)).toBe(true);
    for (const h of ['0.0.0.0', '::', '10.0.0.1', 'example.com', '128.0.0.1', '::2'])
      expect(isLoopbackHost(h)).toBe(false);
    expect(readFileSync(files.cert, 'utf8')).toContain('BEGIN CERTIFICATE');
  });
});
