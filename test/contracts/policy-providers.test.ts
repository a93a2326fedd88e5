import { afterAll } from 'vitest';
import {
  pythonGrpc,
  startPythonPolicyService,
  type PythonPolicyService,
} from '../fixtures/grpc/python-policy-service.js';
import { FIRST_PARTY, loadPlugin, userPluginDir } from './load-plugin.js';
import { runPolicyProviderContract } from './policy-provider.contract.js';

const closers: (() => Promise<void>)[] = [];
afterAll(async () => {
  for (const c of closers) await c();
});

async function load(source: string, options?: unknown) {
  const p = await loadPlugin<'policy'>(source, options);
  closers.push(p.close);
  return p.instance;
}

runPolicyProviderContract({
  name: 'plugins/secret-guard',
  create: () => load(FIRST_PARTY('secret-guard')),
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
  answers: {
    denied: {
      agentId: 'a',
      upstream: 'up',
      method: 'sampling/createMessage',
      result: { role: 'assistant', content: { type: 'text', text: 'AKIAIOSFODNN7EXAMPLE' } },
    },
    allowed: {
      agentId: 'a',
      upstream: 'up',
      method: 'sampling/createMessage',
      result: { role: 'assistant', content: { type: 'text', text: 'hello' } },
    },
  },
});

runPolicyProviderContract({
  name: 'plugins/policy-rate-limit',
  create: async () => {
    const p = await load(FIRST_PARTY('policy-rate-limit'), {
      perAgent: { capacity: 2, refillPerSecond: 0.001 },
    });
    // `flood` has used its burst; `calm` has not.
    for (let i = 0; i < 2; i++) p.admitted!({ agentId: 'flood', tool: 'fs__read', params: {} });
    return p;
  },
  deniedCall: { agentId: 'flood', tool: 'fs__read', params: { path: 'a' } },
  allowedCall: { agentId: 'calm', tool: 'fs__read', params: { path: 'a' } },
});

runPolicyProviderContract({
  name: 'plugins/policy-loop-guard',
  create: async () => {
    const p = await load(FIRST_PARTY('policy-loop-guard'), { maxRepeats: 3 });
    for (let i = 0; i < 3; i++) {
      p.admitted!({ agentId: 'a', tool: 'search', params: { q: 'same', page: 1 } });
    }
    return p;
  },
  // Same call, keys reordered and whitespace changed: still the same call.
  deniedCall: { agentId: 'a', tool: 'search', params: { page: 1, q: '  same ' } },
  allowedCall: { agentId: 'a', tool: 'search', params: { q: 'same', page: 2 } },
});

// A user's plugin, written outside the repository without importing anything, loaded by path.
const user = userPluginDir({
  'no-rm.mjs': `export default {
  name: 'user-no-rm', version: '0.1.0', kind: 'policy', api: 2,
  create: () => ({
    name: 'user-no-rm',
    decide: (ctx) => (ctx.tool === 'shell__rm' ? { action: 'deny', reason: 'no rm' } : undefined),
  }),
};
`,
});
afterAll(() => user.remove());

runPolicyProviderContract({
  name: 'user plugin from a temp dir',
  create: () => load(`${user.dir}/no-rm.mjs`),
  deniedCall: { agentId: 'a', tool: 'shell__rm', params: { path: '/' } },
  allowedCall: { agentId: 'a', tool: 'shell__ls', params: {} },
});

// policy-grpc against a real Python policy service (tool `*__deny` denied, `*__allow` allowed).
if (pythonGrpc || process.env.CI !== undefined) {
  let service: PythonPolicyService | undefined;
  afterAll(() => service?.close());
  runPolicyProviderContract({
    name: 'plugins/policy-grpc (Python service)',
    create: async () => {
      service ??= await startPythonPolicyService();
      return load(FIRST_PARTY('policy-grpc'), {
        target: service.address,
        insecure: true,
        deadlineMs: 5000,
      });
    },
    deniedCall: { agentId: 'a', tool: 'py__deny', params: { path: '/etc/passwd' } },
    allowedCall: { agentId: 'a', tool: 'py__allow', params: { path: '/tmp/x' } },
  });
}
