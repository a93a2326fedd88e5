// secret-guard: a first-party policy plugin. It refuses tool calls whose parameters carry
// something that looks like a credential (cloud keys, private keys, tokens, the fabric's own
// agent and admin credentials), so an agent cannot hand a secret to a tool — by mistake or
// because a prompt injection told it to. It loads through the same PluginHost as a user's file.
//
// Options (checked by `optionsSchema`; a bad one fails loading with FABRIC_ERR_PLUGIN naming it):
// { action?: 'deny' | 'require_approval' (default 'deny'), priority?: number (default 1000,
// above ordinary policies), patterns?: { [name]: regexSource } (added to the built-in ones) }.
// Reasons name the parameter and the kind of secret, never the secret itself. Every string is
// scanned whole at any depth, object keys too, and a secret is found anywhere in a string (glued
// to other characters too); a value too large to scan (more than MAX_SCAN_NODES values, which
// the gateway's input bound never admits) is denied.
//
// It also checks an agent's answers to an upstream's callbacks (`checkCallbackAnswer`): a
// sampling result, elicitation content, a roots list, or the agent's error answer (message and
// data), scanned the same way before the gateway sends it to the upstream that asked. An answer
// carrying a secret (or too large to scan) is refused whatever `action` says — no human can
// approve an answer while the upstream waits for it: the upstream gets an error naming the
// answer's part and the kind of secret instead, and the answer is dropped.
//
// What it cannot see: a secret the agent transforms before sending it — split across arguments
// or strings, base64-, percent- or otherwise encoded, reversed — is not one to a pattern. It stops
// accidents and naive prompt injections, not a determined exfiltrator (see the README).
import { z } from 'zod';

/** A regular expression's source that compiles. */
const regexSource = z
  .string()
  .min(1)
  .superRefine((source, ctx) => {
    try {
      new RegExp(source);
    } catch (err) {
      ctx.addIssue({ code: 'custom', message: `is not a regular expression: ${err.message}` });
    }
  });

export const optionsSchema = z
  .object({
    /** What a call carrying a secret gets. */
    action: z.enum(['deny', 'require_approval']).default('deny'),
    /** Above ordinary policies, so a rule's allow does not outrank the guard. */
    priority: z.number().finite().default(1000),
    /** Extra detectors, name → regular expression source, added to the built-in ones. */
    patterns: z.record(z.string().min(1), regexSource).default({}),
  })
  .strict();

/**
 * Built-in detectors: name → pattern. Each is a distinctive prefix and the fixed number of
 * characters after it, matched anywhere in a string: no word boundary is asked for, since a
 * secret glued to other characters (`x` + credential, credential + `_`) is still the secret to
 * whoever receives it and drops the glue. Fixed-length runs (`X{n}`, nothing after them) keep
 * each `test` linear on megabyte strings (V8 runs them as a fast loop; `{10,}` took ~0.6 s on a
 * 4 MiB run, `{10}` under a millisecond).
 */
export const BUILT_IN_PATTERNS = Object.freeze({
  'AWS access key id': /(?:AKIA|ASIA)[0-9A-Z]{16}/,
  'private key': /-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----/,
  'GitHub token': /gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9_]{22}/,
  'Slack token': /xox[abprs]-[A-Za-z0-9-]{10}/,
  // Agent (`afk_`) and issued admin (`afa_`) credentials, and the admin token a sidecar
  // generates when none is configured (`fab_admin_` + 32 characters).
  'Agent Fabric credential': /af[ka]_[A-Za-z0-9_-]{40}|fab_admin_[A-Za-z0-9_-]{32}/,
});

/**
 * Most values one scan visits (keys are checked with their values). Far above what the gateway
 * admits (`gateway.maxArgumentNodes`, 100 000 by default), so it only ends scans of values that
 * never passed that bound (a library caller's, or a cycle); those calls are refused, never let
 * through unscanned.
 */
export const MAX_SCAN_NODES = 1_000_000;

/** Longest path quoted in a reason (a key may be megabytes long). */
const MAX_PATH_CHARS = 200;

/**
 * Finds the first secret-looking string in `value` — every string, whole, at any depth, object
 * keys included — and returns `{ path, kind }` (`path` starts at `root`); `{ path, kind:
 * undefined, unscannable: true }` when the value holds more than `maxNodes` values; otherwise
 * undefined.
 *
 * The walk is iterative (no depth limit can be hit) and allocates nothing per value on the
 * common path: paths are only built when something was found, by a second walk in the same
 * order. The built-in patterns have no nested quantifiers, so each `test` is linear in the
 * string's length (a 4 MiB argument is a few milliseconds).
 */
export function findSecret(value, patterns, maxNodes = MAX_SCAN_NODES, root = 'params') {
  const found = scan(value, patterns, maxNodes, false, root);
  if (found === undefined) return undefined;
  if (found.unscannable) return { path: root, kind: undefined, unscannable: true };
  return scan(value, patterns, maxNodes, true, root);
}

function matchKind(s, patterns) {
  for (const [kind, re] of patterns) if (re.test(s)) return kind;
  return undefined;
}

function scan(value, patterns, maxNodes, withPaths, root) {
  const stack = [value];
  const paths = withPaths ? [root] : undefined;
  let seen = 0;
  while (stack.length > 0) {
    if (++seen > maxNodes) return { unscannable: true };
    const v = stack.pop();
    const path = withPaths ? paths.pop() : undefined;
    if (typeof v === 'string') {
      const kind = matchKind(v, patterns);
      if (kind !== undefined) return { path: shorten(path), kind };
    } else if (v !== null && typeof v === 'object') {
      // Nothing is pushed past the limit, so the stack stays bounded too (a cycle, a huge array).
      if (seen + stack.length + (Array.isArray(v) ? v.length : 0) > maxNodes) {
        return { unscannable: true };
      }
      if (Array.isArray(v)) {
        for (let i = 0; i < v.length; i++) {
          stack.push(v[i]);
          if (withPaths) paths.push(`${path}[${i}]`);
        }
      } else {
        for (const k in v) {
          // A key travels to the tool as much as its value does.
          const kind = matchKind(k, patterns);
          if (kind !== undefined) return { path: `${shorten(path)} (a key)`, kind };
          if (seen + stack.length >= maxNodes) return { unscannable: true };
          stack.push(v[k]);
          if (withPaths) paths.push(`${path}.${k}`);
        }
      }
    }
  }
  return undefined;
}

function shorten(path) {
  return path === undefined || path.length <= MAX_PATH_CHARS
    ? path
    : `${path.slice(0, MAX_PATH_CHARS)}…`;
}

/** @type {import('agent-fabric').Plugin<'policy'>} */
const plugin = {
  name: 'secret-guard',
  version: '1.0.0',
  kind: 'policy',
  fabric: '>=0.1.0',
  options: optionsSchema,
  create(options) {
    // The host hands over parsed options; a direct call (tests, embedding) is checked here too.
    const { action, priority, patterns: extra } = optionsSchema.parse(options ?? {});
    const patterns = Object.entries(BUILT_IN_PATTERNS);
    for (const [name, source] of Object.entries(extra)) patterns.push([name, new RegExp(source)]);
    return {
      name: 'secret-guard',
      priority,
      decide(ctx) {
        // What is forwarded, not the policy's resolved view of it (paths resolved for matching).
        const hit = findSecret(ctx.rawParams ?? ctx.params, patterns);
        if (hit === undefined) return undefined;
        if (hit.unscannable) {
          // What was not scanned is not forwarded: refused whatever `action` says.
          return {
            action: 'deny',
            reason: `params hold more than ${MAX_SCAN_NODES} values, too many to scan for secrets (secret-guard)`,
          };
        }
        return {
          action,
          reason: `${hit.path} looks like a secret (${hit.kind}); secrets may not be passed to tools (secret-guard)`,
        };
      },
      checkCallbackAnswer(ctx) {
        // What the upstream would receive: the result, or the error answer's message and data.
        const [root, value] =
          ctx.error === undefined ? ['result', ctx.result] : ['error', ctx.error];
        const hit = findSecret(value, patterns, MAX_SCAN_NODES, root);
        if (hit === undefined) return undefined;
        // Always a deny: `require_approval` cannot hold an answer the upstream is waiting for.
        if (hit.unscannable) {
          return {
            action: 'deny',
            reason: `the answer holds more than ${MAX_SCAN_NODES} values, too many to scan for secrets (secret-guard)`,
          };
        }
        return {
          action: 'deny',
          reason: `${hit.path} looks like a secret (${hit.kind}); secrets may not be sent to an upstream (secret-guard)`,
        };
      },
    };
  },
};

export default plugin;
