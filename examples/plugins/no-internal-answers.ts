import { definePlugin } from 'agent-fabric';

// Decides no tool call; refuses an agent's answer to an upstream's callback (a sampling result,
// elicitation content, a roots list, an error answer) that mentions INTERNAL-ONLY.
export default definePlugin(
  { name: 'no-internal-answers', version: '1.0.0', kind: 'policy' },
  () => ({
    name: 'no-internal-answers',
    decide: () => undefined,
    checkCallbackAnswer: (ctx) =>
      JSON.stringify(ctx.result ?? ctx.error).includes('INTERNAL-ONLY')
        ? { action: 'deny', reason: `internal text may not go to ${ctx.upstream}` }
        : undefined,
  }),
);
