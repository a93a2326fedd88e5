// secret-guard: a first-party policy plugin. It refuses tool calls whose parameters carry
// something that looks like a credential (cloud keys, private keys, tokens, the fabric's own
// agent and admin credentials), so an agent cannot hand a secret to a tool — by mistake or
// because a prompt injection told it to. It loads through the same PluginHost as a user's file.
//
// Options: { action?: 'deny' | 'require_approval' (default 'deny'), priority?: number
// (default 1000, above ordinary policies), patterns?: { [name]: regexSource } (added to the
// built-in ones) }. Reasons name the parameter and the kind of secret, never the secret itself.

/** Built-in detectors: name → pattern. */
export const BUILT_IN_PATTERNS = Object.freeze({
  'AWS access key id': /\b(?:AKIA|ASIA)[0-9A-Z]{16}\b/,
  'private key': /-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----/,
  'GitHub token': /\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})\b/,
  'Slack token': /\bxox[abprs]-[A-Za-z0-9-]{10,}/,
  'Agent Fabric credential': /\baf[ka]_[A-Za-z0-9_-]{40,}/,
});

const MAX_NODES = 10_000;
const MAX_DEPTH = 16;
const MAX_STRING = 1 << 20;

/**
 * Finds the first secret-looking string in `value`; returns `{ path, kind }` or undefined.
 * Bounded: at most MAX_NODES values, MAX_DEPTH levels, the first MiB of each string.
 */
export function findSecret(value, patterns) {
  const stack = [{ v: value, path: 'params', depth: 0 }];
  let seen = 0;
  while (stack.length > 0 && seen++ < MAX_NODES) {
    const { v, path, depth } = stack.pop();
    if (typeof v === 'string') {
      const s = v.length > MAX_STRING ? v.slice(0, MAX_STRING) : v;
      for (const [kind, re] of patterns) if (re.test(s)) return { path, kind };
    } else if (v !== null && typeof v === 'object' && depth < MAX_DEPTH) {
      for (const [k, child] of Object.entries(v))
        stack.push({ v: child, path: `${path}.${k}`, depth: depth + 1 });
    }
  }
  return undefined;
}

/** @type {import('agent-fabric').Plugin<'policy'>} */
const plugin = {
  name: 'secret-guard',
  version: '1.0.0',
  kind: 'policy',
  fabric: '>=0.1.0',
  create(options = {}) {
    const action = options.action ?? 'deny';
    if (action !== 'deny' && action !== 'require_approval') {
      throw new Error(
        `options.action must be 'deny' or 'require_approval', got ${JSON.stringify(action)}`,
      );
    }
    const patterns = Object.entries(BUILT_IN_PATTERNS);
    for (const [name, source] of Object.entries(options.patterns ?? {})) {
      if (typeof source !== 'string')
        throw new Error(`options.patterns.${name} must be a regular expression source`);
      patterns.push([name, new RegExp(source)]);
    }
    return {
      name: 'secret-guard',
      priority: options.priority ?? 1000,
      decide(ctx) {
        // What is forwarded, not the policy's resolved view of it (paths resolved for matching).
        const hit = findSecret(ctx.rawParams ?? ctx.params, patterns);
        if (hit === undefined) return undefined;
        return {
          action,
          reason: `${hit.path} looks like a secret (${hit.kind}); secrets may not be passed to tools (secret-guard)`,
        };
      },
    };
  },
};

export default plugin;
