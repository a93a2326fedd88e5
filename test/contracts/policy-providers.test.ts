import { fileURLToPath } from 'node:url';
import type { PolicyProvider } from '../../src/policy/policy-engine.js';
import { AgentFabric } from '../../src/fabric.js';
import { PluginHost } from '../../src/plugins/plugin-host.js';
import { runPolicyProviderContract } from './policy-provider.contract.js';

const secretGuard = fileURLToPath(new URL('../../plugins/secret-guard/index.js', import.meta.url));

/** Loads a policy plugin through a real PluginHost and hands back its provider. */
export async function loadPolicyPlugin(source: string, options?: unknown): Promise<PolicyProvider> {
  const fabric = new AgentFabric();
  const host = new PluginHost(fabric);
  const loaded = await host.load(source, options);
  const provider = host.instanceOf<'policy'>(loaded.name)!;
  await fabric.close();
  return provider;
}

runPolicyProviderContract({
  name: 'plugins/secret-guard',
  create: () => loadPolicyPlugin(secretGuard),
  deniedCall: {
    agentId: 'a',
    tool: 'fs__write_file',
    params: { path: '/tmp/notes.txt', content: 'aws_access_key_id = AKIAIOSFODNN7EXAMPLE' },
  },
  allowedCall: {
    agentId: 'a',
    tool: 'fs__write_file',
    params: { path: '/tmp/notes.txt', content: 'hello' },
  },
});
