/**
 * The stdio bridge (`agent-fabric mcp --agent-token <token>`) does not keep the agent's
 * credential in its command line: /proc/<pid>/cmdline (what `ps` shows) is readable by every
 * local user, and the bridge lives as long as its MCP client's session. Before, the token stayed
 * there for the process's whole life; now the bridge replaces its process title before it does
 * anything else (the token is visible only while node loads the CLI). FABRIC_AGENT_TOKEN keeps
 * it out of the command line altogether.
 */
import { readFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentToken,
  cliStdioClient,
  closeSidecar,
  DEFAULT_ALLOW,
  startTestSidecar,
} from '../fixtures/gateway/harness.js';

let sidecar: Sidecar | undefined;
afterEach(async () => {
  await closeSidecar(sidecar);
  sidecar = undefined;
});

describe('agent-fabric mcp --agent-token', () => {
  it('leaves no credential in the command line of the running bridge (Linux /proc)', async () => {
    sidecar = await startTestSidecar({ agents: [{ name: 'a' }], policies: [DEFAULT_ALLOW] });
    const token = agentToken(sidecar, 'a');
    const bridge = await cliStdioClient(['mcp', '--agent-token', token, '--url', sidecar.url!]);
    try {
      // Connected: the bridge has started and answered initialize through the sidecar.
      expect((await bridge.client.listTools()).tools.length).toBeGreaterThan(0);
      const cmdline = readFileSync(`/proc/${bridge.transport.pid}/cmdline`, 'utf8');
      expect(cmdline).not.toContain(token);
      expect(cmdline).not.toContain(token.slice(0, 12));
      expect(cmdline).toMatch(/^agent-fabric mcp/);
    } finally {
      await bridge.client.close();
    }
  });
});
