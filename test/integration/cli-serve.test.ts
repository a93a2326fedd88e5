import { spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import { fabricServices } from '../../src/rpc/services.js';
import {
  alive,
  CLI_MAIN,
  descendants,
  httpClient,
  tempDir,
  TSX,
  until,
} from '../fixtures/gateway/harness.js';

describe('agent-fabric serve', () => {
  let child: ChildProcess | undefined;
  afterAll(() => {
    if (child?.exitCode === null) child.kill('SIGKILL');
  });

  it('starts with no config, prints URL and token, serves a client, and exits cleanly on SIGTERM', async () => {
    const cwd = tempDir('cli');
    child = spawn(process.execPath, ['--import', TSX, CLI_MAIN, 'serve'], {
      cwd,
      env: { ...process.env, FABRIC_HTTP_PORT: '0' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout!.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr!.on('data', () => undefined);
    await until(() => out.includes('"mcpServers"'), 25_000);
    const url = /MCP URL:\s+(\S+)/.exec(out)?.[1];
    const token = /agent token:\s+(\S+)/.exec(out)?.[1];
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/mcp$/);
    expect(token).toBeTruthy();
    expect(out).toContain(
      `claude mcp add --transport http agent-fabric ${url} --header "Authorization: Bearer ${token}"`,
    );

    // The dashboard's URL, served on the same port; the banner shows it.
    const dashboard = /dashboard:\s+(\S+)/.exec(out)?.[1];
    expect(dashboard).toBe(new URL('/ui/', url).href);
    const page = await fetch(dashboard!);
    expect(page.status).toBe(200);
    expect(await page.text()).toContain('<title>');

    const client = await httpClient(url!, token);
    const { tools } = await client.listTools();
    expect(tools.map((t) => t.name)).toContain('fs__read_text_file');
    await client.close();

    const kids = descendants(child.pid!);
    expect(kids.length).toBeGreaterThan(0); // the filesystem upstream
    const exited = new Promise<number | null>((resolve) =>
      child!.once('exit', (code) => resolve(code)),
    );
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    await until(() => kids.every((pid) => !alive(pid)));
  });

  it('names every gRPC service it serves in the banner, each under the credential it takes', async () => {
    const cwd = tempDir('cli-grpc');
    writeFileSync(
      join(cwd, 'fabric.yaml'),
      'http: { port: 0 }\ngrpc: { port: 0 }\nstate: memory\nagents: [{ name: a }]\n',
    );
    const serve = spawn(
      process.execPath,
      ['--import', TSX, CLI_MAIN, 'serve', '--config', 'fabric.yaml'],
      { cwd, env: { ...process.env, FABRIC_HTTP_PORT: '0' }, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    try {
      let out = '';
      serve.stdout.on('data', (c: Buffer) => (out += c.toString()));
      serve.stderr.on('data', () => undefined);
      await until(() => out.includes('"mcpServers"'), 25_000);
      const line = /gRPC: +\S+ \(fabric\.v1: (.*)\)/.exec(out)?.[1];
      expect(line).toBeDefined();
      const [agentPart = '', adminPart = ''] = line!.split('; with the admin token ');
      const fabric = new AgentFabric();
      const served = fabricServices(fabric);
      await fabric.close();
      const names = (part: string) => part.split(', ').sort();
      expect(names(agentPart)).toEqual(
        served
          .filter((s) => s.caller === 'agent')
          .map((s) => s.service.name)
          .sort(),
      );
      expect(names(adminPart)).toEqual(
        served
          .filter((s) => s.caller === 'admin')
          .map((s) => s.service.name)
          .sort(),
      );
    } finally {
      serve.kill('SIGKILL');
    }
  });
});
