import { fileURLToPath } from 'node:url';
import type { Plugin } from '../../src/plugins/plugin.js';
import { AgentFabric } from '../../src/fabric.js';
import { runPolicyProviderContract } from './policy-provider.contract.js';

const secretGuard = fileURLToPath(new URL('../../plugins/secret-guard/index.js', import.meta.url));

runPolicyProviderContract({
  name: 'plugins/secret-guard',
  create: async () => {
    const plugin = ((await import(secretGuard)) as { default: Plugin<'policy'> }).default;
    const fabric = new AgentFabric();
    const provider = await plugin.create({}, { fabric, signal: new AbortController().signal });
    await fabric.close();
    return provider;
  },
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
