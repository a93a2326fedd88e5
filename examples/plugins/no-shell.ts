import { definePlugin } from 'agent-fabric';

export default definePlugin(
  { name: 'no-shell', version: '1.0.0', kind: 'policy', fabric: '^0.1.0' },
  () => ({
    name: 'no-shell',
    priority: 100,
    decide: (ctx) =>
      ctx.tool.startsWith('shell') ? { action: 'deny', reason: 'no shells' } : undefined,
  }),
);
