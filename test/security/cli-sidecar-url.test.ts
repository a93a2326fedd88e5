/**
 * Found in review: what the CLI did with the address it was given.
 * - It followed redirects. A POST answered 307/308 was sent again, body and all, where the
 *   redirect pointed: `approvals approve <id> --reason …` delivered the decision and its reason
 *   to another server (fetch drops the token on the way to another origin, so the operator was
 *   then told the token was refused). Now a redirect is not followed: exit 3, naming where it
 *   pointed; the other server sees nothing.
 * - A URL with a user name and password (`--url http://admin:pw@host`, or FABRIC_URL) was
 *   repeated whole in the error line (`cannot reach the sidecar at http://admin:pw@host/`) — into
 *   CI logs and terminals — and for `mcp` the same. Now it is refused as a usage error (exit 2)
 *   naming the URL without them.
 * - A token with a control character (FABRIC_ADMIN_TOKEN, --token-file, FABRIC_AGENT_TOKEN)
 *   made fetch fail before sending, and the CLI said the sidecar could not be reached (exit 3,
 *   `UND_ERR_INVALID_ARG`). Now exit 4 naming where the token came from and the character.
 * Real CLI processes against real HTTP servers on free ports.
 */
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { runCli } from '../fixtures/cli-process.js';
import { ADMIN_TOKEN, tempDir } from '../fixtures/gateway/harness.js';

const servers: Server[] = [];
afterEach(async () => {
  for (const s of servers.splice(0)) await new Promise((resolve) => s.close(resolve));
});

/** A server on a free port that records each request (with its body) and answers `answer`. */
async function server(
  seen: string[],
  answer: (req: IncomingMessage) => { status: number; headers?: Record<string, string> },
): Promise<string> {
  const s = createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => {
      seen.push(`${req.method} ${req.url} ${req.headers.authorization ?? '-'} ${body}`);
      const { status, headers = {} } = answer(req);
      res.writeHead(status, { 'content-type': 'application/json', ...headers });
      res.end('{}');
    });
  });
  servers.push(s);
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  return `http://127.0.0.1:${(s.address() as AddressInfo).port}`;
}

describe('agent-fabric --url', () => {
  it.each([307, 308])(
    'a redirect (%i) is not followed: the request goes nowhere else, exit 3 naming it',
    async (status) => {
      const elsewhere: string[] = [];
      const target = await server(elsewhere, () => ({ status: 401 }));
      const first: string[] = [];
      const url = await server(first, (req) => ({
        status,
        headers: { location: `${target.replace('127.0.0.1', 'localhost')}${req.url}` },
      }));
      const run = await runCli(
        ['approvals', 'approve', 'ap-1', '--reason', 'ticket OPS-4711', '--url', url],
        { FABRIC_ADMIN_TOKEN: ADMIN_TOKEN },
      );
      expect(run.code).toBe(3);
      expect(run.err).toContain(`redirect (HTTP ${status} to http://localhost:`);
      expect(run.err).not.toContain(ADMIN_TOKEN);
      expect(first).toHaveLength(1);
      expect(first[0]).toContain('ticket OPS-4711'); // the sidecar's address got it …
      expect(elsewhere).toEqual([]); // … and nothing went where the redirect pointed
    },
  );

  it('agent-fabric mcp: the start-up check follows no redirect (307 to another port with a 401): exit 3, the token went nowhere else', async () => {
    const elsewhere: string[] = [];
    const target = await server(elsewhere, () => ({ status: 401 }));
    const first: string[] = [];
    const url = await server(first, (req) => ({
      status: 307,
      headers: { location: `${target}${req.url}` },
    }));
    // Before, fetch followed it (dropping the token across origins) and the 401 there made the
    // bridge exit 4, "the sidecar refused the agent token"; a same-origin redirect took the token.
    const run = await runCli(['mcp', '--url', `${url}/mcp`], {
      FABRIC_AGENT_TOKEN: 'agent-token-secret',
    });
    expect(run.code).toBe(3);
    expect(run.err).toContain('answered with a redirect (HTTP 307)');
    expect(run.err).not.toContain('agent-token-secret');
    expect(first).toEqual(['GET /mcp Bearer agent-token-secret ']);
    expect(elsewhere).toEqual([]);
  });

  it('agent-fabric mcp: a sidecar that never answers the start-up check ends it, exit 3', async () => {
    const silent = createServer(() => undefined); // accepts, reads, never answers
    servers.push(silent);
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const port = (silent.address() as AddressInfo).port;
    const run = await runCli(['mcp', '--url', `http://127.0.0.1:${port}/mcp`], {
      FABRIC_AGENT_TOKEN: 'agent-token-secret',
    });
    expect(run.code).toBe(3);
    expect(run.err).toContain('no answer within 10 s');
    silent.closeAllConnections();
  });

  it('a URL with a user name and password is refused, exit 2, the password not repeated', async () => {
    const seen: string[] = [];
    const url = new URL(await server(seen, () => ({ status: 200 })));
    url.username = 'admin';
    url.password = 'hunter2-secret';
    const status = await runCli(['status', '--url', url.href], {
      FABRIC_ADMIN_TOKEN: ADMIN_TOKEN,
    });
    expect(status.code).toBe(2);
    expect(status.err).toContain('--url: must not hold a user name or password');
    const mcp = await runCli(['mcp', '--agent-token', 'x'], { FABRIC_URL: url.href });
    expect(mcp.code).toBe(2);
    expect(mcp.err).toContain('FABRIC_URL: must not hold a user name or password');
    for (const run of [status, mcp]) {
      expect(`${run.out}${run.err}`).not.toContain('hunter2-secret');
    }
    expect(seen).toEqual([]);
  });

  it('a token with a control character: exit 4 naming its source and the character, nothing sent', async () => {
    const seen: string[] = [];
    const url = await server(seen, () => ({ status: 200 }));
    const file = join(tempDir('cli-token-control'), 'token');
    writeFileSync(file, 'admin\u001b[2Jtoken-secret\n', { mode: 0o600 });
    const runs = await Promise.all([
      runCli(['pools', '--url', url], { FABRIC_ADMIN_TOKEN: 'admin\u0001token-secret' }),
      runCli(['pools', '--url', url, '--token-file', file]),
      runCli(['mcp', '--url', `${url}/mcp`], { FABRIC_AGENT_TOKEN: 'agent\ntoken-secret' }),
    ]);
    expect(runs.map((r) => r.code)).toEqual([4, 4, 4]);
    expect(runs[0]!.err).toContain(
      'FABRIC_ADMIN_TOKEN: the token holds a character an HTTP header cannot carry (U+0001 at index 5)',
    );
    expect(runs[1]!.err).toContain(
      `--token-file ${file}: the token holds a character an HTTP header cannot carry (U+001B at index 5)`,
    );
    expect(runs[2]!.err).toContain(
      'FABRIC_AGENT_TOKEN: the token holds a character an HTTP header cannot carry (U+000A at index 5)',
    );
    for (const r of runs) expect(`${r.out}${r.err}`).not.toContain('token-secret');
    expect(seen).toEqual([]);
  });
});
