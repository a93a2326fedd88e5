/**
 * plugins/policy-grpc over TLS, against REAL Python policy services (grpcio,
 * grpc.ssl_server_credentials) with certificates made by `openssl` at test time: the right CA
 * gets decisions; a wrong CA, the system roots, a plaintext server, a plaintext client, a host name
 * the certificate does not cover, and (mutual TLS) a missing or foreign client certificate all
 * fail closed with FABRIC_ERR_POLICY_UNAVAILABLE — and no request reaches the service. Files that
 * are missing or hold no usable PEM fail the load with FABRIC_ERR_PLUGIN naming the option.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import type { ToolCallAuthorization } from '../../src/policy/tool-call-authorizer.js';
import { PluginHost } from '../../src/plugins/plugin-host.js';
import { FIRST_PARTY } from '../contracts/load-plugin.js';
import { DEFAULT_ALLOW } from '../fixtures/gateway/harness.js';
import {
  pythonGrpc,
  startPythonPolicyService,
  type PythonPolicyService,
} from '../fixtures/grpc/python-policy-service.js';
import {
  certFactory,
  opensslAvailable,
  type CertFactory,
  type CertFiles,
} from '../fixtures/tls-certs.js';

const PLUGIN = FIRST_PARTY('policy-grpc');
const runs = (pythonGrpc && opensslAvailable) || process.env.CI !== undefined;

/** Loads the plugin with `options` next to an allow-all rule and asks about one call of `tool`. */
async function decide(
  options: Record<string, unknown>,
  tool = 'py__allow',
): Promise<ToolCallAuthorization> {
  const fabric = new AgentFabric();
  const host = new PluginHost(fabric);
  try {
    // The rule allows everything: only the plugin can refuse, so a refusal is the plugin's.
    fabric.policies.addPolicy(DEFAULT_ALLOW);
    await host.load(PLUGIN, { deadlineMs: 5000, ...options });
    const { id } = await fabric.spawn({ model: 'm', name: 'a', executor: 'remote' });
    return await fabric.authorizeToolCall({ agentId: id, tool, params: { over: 'tls' } });
  } finally {
    await host.close();
    await fabric.close();
  }
}

/** Loads the plugin with `options`: the call is denied, failing closed, for reason `why`. */
async function failsClosed(options: Record<string, unknown>, why: RegExp): Promise<void> {
  const a = await decide(options);
  if (a.allowed) throw new Error(`allowed: ${a.decision.reason}`);
  expect(a.code).toBe('FABRIC_ERR_POLICY_UNAVAILABLE');
  expect(a.reason).toMatch(/UNAVAILABLE.*failing closed/);
  expect(a.reason).not.toMatch(/\n/); // OpenSSL's multi-line errors come as one line
  expect(a.reason).toMatch(why);
}

describe.runIf(runs)('policy-grpc over TLS with Python policy services', () => {
  let certs: CertFactory;
  let ca: CertFiles;
  let otherCa: CertFiles;
  let client: CertFiles;
  let strangerClient: CertFiles;
  /** TLS, certificate for localhost and 127.0.0.1. */
  let tls: PythonPolicyService;
  /** TLS, certificate for policy.internal only. */
  let named: PythonPolicyService;
  /** Mutual TLS: client certificates signed by `ca` required. */
  let mtls: PythonPolicyService;
  /** Plaintext. */
  let plain: PythonPolicyService;

  beforeAll(async () => {
    certs = certFactory();
    ca = certs.ca('Fabric Test CA');
    otherCa = certs.ca('Other CA');
    const server = certs.server(ca, 'server', ['localhost', '127.0.0.1']);
    const internal = certs.server(ca, 'internal', ['policy.internal']);
    client = certs.client(ca, 'client', 'fabric-sidecar');
    strangerClient = certs.client(otherCa, 'stranger', 'stranger');
    const serve = (c: CertFiles, clientCa?: string) => ({
      POLICY_TLS_CERT: c.cert,
      POLICY_TLS_KEY: c.key,
      ...(clientCa === undefined ? {} : { POLICY_TLS_CLIENT_CA: clientCa }),
    });
    [tls, named, mtls, plain] = await Promise.all([
      startPythonPolicyService(undefined, [], serve(server)),
      startPythonPolicyService(undefined, [], serve(internal)),
      startPythonPolicyService(undefined, [], serve(server, ca.cert)),
      startPythonPolicyService(),
    ]);
  });

  afterAll(async () => {
    await Promise.all([tls, named, mtls, plain].map((s) => s?.close()));
    certs?.close();
  });

  it('the right CA: decisions work (allow, and a deny with the service reason)', async () => {
    const allowed = await decide({ target: tls.address, tls: { caFile: ca.cert } });
    expect(allowed.allowed).toBe(true);
    const denied = await decide({ target: tls.address, tls: { caFile: ca.cert } }, 'py__deny');
    expect(denied).toMatchObject({ allowed: false, code: 'FABRIC_ERR_POLICY_DENIED' });
    expect(denied.allowed === false && denied.reason).toMatch(/python denies py__deny/);
    expect(tls.calls.map((c) => [c.tool, c.args, c.client])).toEqual([
      ['py__allow', '{"over":"tls"}', null],
      ['py__deny', '{"over":"tls"}', null],
    ]);
  });

  it('a CA that did not sign the server certificate, or the system roots: fail closed, nothing asked', async () => {
    const before = tls.calls.length;
    const unverified = /unable to verify the first certificate/;
    await failsClosed({ target: tls.address, tls: { caFile: otherCa.cert } }, unverified);
    await failsClosed({ target: tls.address, tls: {} }, unverified);
    expect(tls.calls.length).toBe(before);
  });

  it('a TLS client and a plaintext server, or a plaintext client and a TLS server: fail closed', async () => {
    const before = tls.calls.length;
    await failsClosed({ target: plain.address, tls: { caFile: ca.cert } }, /wrong version number/);
    await failsClosed({ target: tls.address, insecure: true }, /No connection established/);
    expect(plain.calls).toEqual([]);
    expect(tls.calls.length).toBe(before);
  });

  it('a host name the certificate does not cover fails closed; serverName names the one it does', async () => {
    // The certificate is for policy.internal; the target is 127.0.0.1.
    await failsClosed(
      { target: named.address, tls: { caFile: ca.cert } },
      /ERR_TLS_CERT_ALTNAME_INVALID/,
    );
    await failsClosed(
      {
        target: named.address,
        tls: { caFile: ca.cert, serverName: 'other.internal' },
      },
      /ERR_TLS_CERT_ALTNAME_INVALID/,
    );
    expect(named.calls).toEqual([]);
    const ok = await decide({
      target: named.address,
      tls: { caFile: ca.cert, serverName: 'policy.internal' },
    });
    expect(ok.allowed).toBe(true);
    expect(named.calls).toHaveLength(1);
  });

  it('mutual TLS: the client certificate gets through and the service sees its name', async () => {
    const ok = await decide({
      target: mtls.address,
      tls: { caFile: ca.cert, certFile: client.cert, keyFile: client.key },
    });
    expect(ok.allowed).toBe(true);
    expect(mtls.calls.map((c) => c.client)).toEqual(['fabric-sidecar']);
  });

  it('mutual TLS: no client certificate, or one from another CA, fails closed and asks nothing', async () => {
    const before = mtls.calls.length;
    await failsClosed(
      { target: mtls.address, tls: { caFile: ca.cert } },
      /No connection established/,
    );
    await failsClosed(
      {
        target: mtls.address,
        tls: { caFile: ca.cert, certFile: strangerClient.cert, keyFile: strangerClient.key },
      },
      /No connection established/,
    );
    expect(mtls.calls.length).toBe(before);
  });

  it.each([
    ['a missing caFile', () => ({ caFile: join(certs.dir, 'nope.pem') }), /options\.tls\.caFile/],
    [
      'a caFile that is not PEM',
      () => ({ caFile: junk('junk-ca.pem') }),
      /options\.tls\.caFile.*no PEM certificate/,
    ],
    [
      'a certFile that is not PEM',
      () => ({ caFile: ca.cert, certFile: junk('junk-cert.pem'), keyFile: client.key }),
      /options\.tls/,
    ],
    [
      'a keyFile that does not match certFile',
      () => ({ caFile: ca.cert, certFile: client.cert, keyFile: strangerClient.key }),
      /options\.tls/,
    ],
  ])('%s: the load fails with FABRIC_ERR_PLUGIN naming the option', async (_, tlsOptions, why) => {
    const err = await decide({ target: tls.address, tls: tlsOptions() }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toMatchObject({ code: 'FABRIC_ERR_PLUGIN' });
    expect((err as Error).message).toMatch(/policy-grpc/);
    expect((err as Error).message).toMatch(why);
  });

  const junk = (name: string): string => {
    const file = join(certs.dir, name);
    writeFileSync(file, 'this is not a certificate\n');
    return file;
  };
});
