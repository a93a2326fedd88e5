/**
 * Pinned start-up credentials in the sidecar (in-process, no HTTP; a real SQLite state file in a
 * temp dir): the pinned token authenticates with `state: memory` and over a state file; removing
 * the pin gives the agent its derived token back and revokes the pinned one; a pin equal to the
 * admin token is refused; nothing the sidecar logs contains the token.
 */
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/errors.js';
import type { GatewayLogEntry } from '../../src/gateway/gateway.js';
import { parseSidecarConfig } from '../../src/server/config-file.js';
import { Sidecar } from '../../src/server/sidecar.js';
import { tempDir } from '../fixtures/gateway/harness.js';

const PIN = 'pin_Lm3Np8Qr2St7Uv1Wx6Yz0Ab4Cd9Ef5Gh';
const logs: GatewayLogEntry[] = [];
const running: Sidecar[] = [];
afterEach(async () => {
  for (const s of running.splice(0)) await s.close();
});

async function start(yaml: string, state: string): Promise<Sidecar> {
  const config = parseSidecarConfig(yaml, 'fabric.yaml', { env: { PIN, FABRIC_STATE: state } });
  const s = await Sidecar.start({ config, http: false, logger: (e) => logs.push(e) });
  running.push(s);
  return s;
}

const pinned = 'agents: [{ name: w, credential: "${env:PIN}" }]';

describe('sidecar: pinned credentials', () => {
  it('authenticates the pinned token with state: memory', async () => {
    const s = await start(pinned, 'memory');
    expect(s.agents[0]).toMatchObject({ name: 'w', pinned: true });
    const id = s.fabric!.authenticate(PIN);
    expect(id.kind === 'agent' && id.agentId).toBe(s.agents[0]!.id);
  });

  it('over a state file: the pin holds across a restart, and unpinning revokes it', async () => {
    const state = join(tempDir('sidecar-pin'), 'state.db');
    const first = await start(pinned, state);
    const id = first.agents[0]!.id;
    await first.close();
    const second = await start(pinned, state);
    expect(second.agents[0]!.id).toBe(id);
    expect(second.fabric!.authenticate(PIN)).toMatchObject({ kind: 'agent', agentId: id });
    await second.close();
    const third = await start('agents: [{ name: w }]', state);
    expect(third.agents[0]).toMatchObject({ id, pinned: false });
    expect(third.agents[0]!.credential).not.toBe(PIN);
    expect(third.fabric!.authenticate(third.agents[0]!.credential)).toMatchObject({
      agentId: id,
    });
    expect(() => third.fabric!.authenticate(PIN)).toThrow(/unknown or revoked/);
    expect(JSON.stringify(logs)).not.toContain(PIN);
  });

  it('refuses a pin equal to the admin token', async () => {
    const config = parseSidecarConfig(`adminToken: "${PIN}"\n${pinned}`, 'fabric.yaml', {
      env: { PIN, FABRIC_STATE: 'memory' },
    });
    await expect(Sidecar.start({ config, http: false })).rejects.toThrow(ConfigError);
    await expect(Sidecar.start({ config, http: false })).rejects.toThrow(
      /agents\.0\.credential.*must differ from the admin token/,
    );
  });
});
