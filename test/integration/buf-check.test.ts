import { spawnSync, execFileSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('../../', import.meta.url));

const PING = (field: string, request = 'PingRequest') => `syntax = "proto3";

package demo.v1;

// Pings.
service PingService {
  // One ping.
  rpc Ping(${request}) returns (PingResponse);
}

// Request of Ping.
message ${request} {
  // How long.
  ${field} wait = 1;
}

// Response of Ping.
message PingResponse {}
`;

/**
 * scripts/buf-check.sh (what `npm run lint` runs for proto/) in a fresh git repository: the
 * repository's own buf.yaml and script, the real buf binary from node_modules.
 */
describe('npm run lint: buf lint and buf breaking against HEAD~1', () => {
  let dir: string;

  const git = (...args: string[]): string =>
    execFileSync('git', args, { cwd: dir, encoding: 'utf8' });
  const commit = (message: string): void => {
    git('add', '-A');
    git('commit', '-q', '-m', message);
  };
  const check = (): { status: number | null; output: string } => {
    const r = spawnSync(join(dir, 'scripts', 'buf-check.sh'), { cwd: tmpdir(), encoding: 'utf8' });
    return { status: r.status, output: `${r.stdout}${r.stderr}` };
  };
  const writeProto = (text: string, file = 'ping.proto'): void => {
    mkdirSync(join(dir, 'proto', 'demo', 'v1'), { recursive: true });
    writeFileSync(join(dir, 'proto', 'demo', 'v1', file), text);
  };

  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), 'fabric-buf-'));
    git('init', '-q');
    writeFileSync(join(dir, 'README'), 'no protos yet\n');
    writeFileSync(join(dir, '.gitignore'), 'node_modules\n');
    commit('first');
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('passes on the first commit (nothing to compare)', () => {
    // The script and buf.yaml in the work tree; HEAD is the repository's only commit.
    mkdirSync(join(dir, 'scripts'));
    copyFileSync(join(root, 'scripts', 'buf-check.sh'), join(dir, 'scripts', 'buf-check.sh'));
    copyFileSync(join(root, 'buf.yaml'), join(dir, 'buf.yaml'));
    symlinkSync(join(root, 'node_modules'), join(dir, 'node_modules'));
    writeProto(PING('double'));
    const r = check();
    expect(r.output).toContain('first commit');
    expect(r.status).toBe(0);
  });

  it('passes when HEAD~1 has none of the new files (not even buf.yaml or proto/)', () => {
    commit('protos, buf.yaml and the check');
    expect(check()).toEqual({
      status: 0,
      output: 'buf breaking: HEAD~1 has no .proto files in proto/; nothing to compare against\n',
    });
    writeProto(
      PING('double').replace('PingService', 'EchoService').replace(/Ping/g, 'Echo'),
      'echo.proto',
    );
    commit('a second service in a new file');
    expect(check().status).toBe(0);
  });

  it('fails a commit that changes a field the wire or the JSON would notice', () => {
    writeProto(PING('string'));
    commit('wait becomes a string');
    const r = check();
    expect(r.status).not.toBe(0);
    expect(r.output).toContain('changed type from "double" to "string"');
  });

  it('fails on lint errors', () => {
    writeProto(
      PING('string').replace(
        'message PingResponse {}',
        'message PingResponse {}\nmessage bad_name {}',
      ),
    );
    commit('lint error');
    const r = check();
    expect(r.status).not.toBe(0);
    expect(r.output).toContain('bad_name');
    writeProto(PING('string'));
    commit('lint fixed');
    expect(check()).toEqual({ status: 0, output: '' });
  });

  it('accepts a change buf flags but the wire keeps, when the commit says so in a Proto-Breaking trailer', () => {
    writeProto(PING('string', 'PingServicePingRequest'));
    commit('renamed request message');
    expect(check().status).not.toBe(0);
    git(
      'commit',
      '-q',
      '--amend',
      '-m',
      'renamed request message\n\nProto-Breaking: same fields, same numbers',
    );
    const r = check();
    expect(r.status).toBe(0);
    expect(r.output).toContain('accepted by the Proto-Breaking trailer');
  });

  it('passes a commit that repairs protos HEAD~1 could not build (nothing to compare against)', () => {
    writeProto('syntax = "proto3";\npackage demo.v1;\nmessage PingResponse {}\n', 'dup.proto');
    commit('two files declare PingResponse');
    expect(check().status).not.toBe(0);
    rmSync(join(dir, 'proto', 'demo', 'v1', 'dup.proto'));
    commit('the duplicate removed');
    expect(check()).toEqual({
      status: 0,
      output: "buf breaking: HEAD~1's protos do not build; nothing to compare against\n",
    });
  });
});
