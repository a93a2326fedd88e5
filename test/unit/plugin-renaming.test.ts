/**
 * A plugin whose instance changes its `name` after it was plugged in (a getter, or a field it
 * reassigns later) is still unplugged when it is unloaded: the host and the engine keep the name
 * it was plugged in under. Before, `host.unload` removed whatever provider bore the new name —
 * none — and the unloaded (and closed) plugin went on deciding every call; it could also take a
 * name another provider had.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import { definePlugin } from '../../src/plugins/plugin.js';
import { PluginHost } from '../../src/plugins/plugin-host.js';

describe('a policy plugin that renames itself once plugged in', () => {
  let fabric: AgentFabric;
  let host: PluginHost;
  beforeEach(() => {
    fabric = new AgentFabric();
    fabric.policies.addPolicy({ name: 'allow-all', rules: [{ tool: '*', action: 'allow' }] });
    host = new PluginHost(fabric, { initTimeoutMs: 200 });
  });
  afterEach(async () => {
    await host.close();
    await fabric.close();
  });

  it('is unplugged on unload, and its decisions keep the name it was plugged in under', async () => {
    let closed = false;
    await host.load(
      definePlugin({ name: 'renamer', version: '1.0.0', kind: 'policy' }, () => ({
        name: 'renamer',
        priority: 100,
        decide(this: { name: string }) {
          this.name = 'someone-else';
          return { action: 'deny' as const, reason: 'no' };
        },
        close: () => void (closed = true),
      })),
    );
    const ctx = { agentId: 'a', tool: 't', params: {} };
    expect(fabric.policies.evaluateSync(ctx)).toMatchObject({ action: 'deny', policy: 'renamer' });
    expect(fabric.policies.evaluateSync(ctx)).toMatchObject({ action: 'deny', policy: 'renamer' });
    await host.unload('renamer');
    expect(closed).toBe(true);
    expect(fabric.policies.evaluateSync(ctx)).toMatchObject({
      action: 'allow',
      policy: 'allow-all',
    });
  });
});
