/**
 * Secrets in a plugin's options never reach the sidecar's log. The log already knew the admin
 * token, agent credentials, NATS secrets and upstreams' secret-named env and header values; a
 * plugin's options (pool-process `env` for its agents, policy-grpc `authToken` and `metadata`,
 * the collector's `telemetry.otlp.headers`) were not taught to it, so a value written bare (an
 * agent process printing `using key <value>`, no name before it) was logged as it was. A real
 * `agent-fabric serve` with pool-process runs an agent that prints its key; the log must not.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { CLI_MAIN, tempDir, TSX, until } from '../fixtures/gateway/harness.js';

const POOL_PROCESS = fileURLToPath(new URL('../../plugins/pool-process/index.js', import.meta.url));
const SECRET = `svc-${randomBytes(12).toString('hex')}`;
const HEADER_SECRET = `otlp-${randomBytes(12).toString('hex')}`;

describe("a plugin's secret options and the log", () => {
  it('an agent process printing its key bare: the sidecar logs the line without it', async () => {
    const dir = tempDir('plugin-secrets');
    const file = join(dir, 'fabric.json');
    // The agent prints its key and the collector header (both bare), then waits.
    const agent = [
      `console.error('agent ready, using key ' + process.env.SERVICE_API_KEY + ' and ${HEADER_SECRET}');`,
      'setInterval(() => {}, 1000);',
    ].join('\n');
    writeFileSync(
      file,
      JSON.stringify({
        http: { host: '127.0.0.1', port: 0 },
        state: 'memory',
        adminToken: 'admin-token-for-plugin-secrets-0123456',
        telemetry: {
          otlp: { endpoint: 'http://127.0.0.1:9', headers: { 'x-api-key': HEADER_SECRET } },
        },
        plugins: [
          {
            module: POOL_PROCESS,
            options: {
              command: process.execPath,
              args: ['-e', agent],
              env: { SERVICE_API_KEY: SECRET },
            },
          },
        ],
        pools: [{ id: 'workers', minAgents: 1, maxAgents: 1, provider: 'process' }],
      }),
    );
    const child = spawn(
      process.execPath,
      ['--import', TSX, CLI_MAIN, 'serve', '--config', file, '--log-format', 'json'],
      { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (out += c.toString()));
    try {
      await until(() => out.includes('agent ready'), 30_000);
    } finally {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('close', r));
    }
    expect(out).toMatch(/agent ready, using key \[redacted\] and \[redacted\]/);
    expect(out).not.toContain(SECRET);
    expect(out).not.toContain(HEADER_SECRET);
  });

  it('inheritEnv: true passes the environment on, but not the admin token', async () => {
    const dir = tempDir('plugin-inherit-env');
    const file = join(dir, 'fabric.json');
    const envFile = join(dir, 'agent-env.json');
    const admin = `adm-${randomBytes(16).toString('hex')}`;
    // The agent writes the environment it got to a file, then waits.
    const agent = [
      `require('node:fs').writeFileSync(${JSON.stringify(envFile)}, JSON.stringify(process.env));`,
      'setInterval(() => {}, 1000);',
    ].join('\n');
    writeFileSync(
      file,
      JSON.stringify({
        http: { host: '127.0.0.1', port: 0 },
        state: 'memory',
        plugins: [
          {
            module: POOL_PROCESS,
            options: { command: process.execPath, args: ['-e', agent], inheritEnv: true },
          },
        ],
        pools: [{ id: 'workers', minAgents: 1, maxAgents: 1, provider: 'process' }],
      }),
    );
    const child = spawn(process.execPath, ['--import', TSX, CLI_MAIN, 'serve', '--config', file], {
      cwd: dir,
      env: { ...process.env, FABRIC_ADMIN_TOKEN: admin, OPERATOR_MARKER: 'kept' },
      stdio: ['ignore', 'ignore', 'ignore'],
    });
    try {
      await until(() => existsSync(envFile) && readFileSync(envFile, 'utf8').length > 0, 30_000);
    } finally {
      child.kill('SIGTERM');
      await new Promise((r) => child.once('close', r));
    }
    const env = JSON.parse(readFileSync(envFile, 'utf8')) as Record<string, string>;
    expect(env.OPERATOR_MARKER).toBe('kept');
    expect(env.FABRIC_CREDENTIAL).toMatch(/^afk_/);
    expect(env.FABRIC_ADMIN_TOKEN).toBeUndefined();
    expect(JSON.stringify(env)).not.toContain(admin);
  });
});
