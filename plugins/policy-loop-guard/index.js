// policy-loop-guard: a first-party policy plugin against runaway agent loops. An agent that
// makes the same call — same tool, same normalized arguments — more than `maxRepeats` times
// within `windowSeconds` is refused until the oldest of those calls leaves the window. See
// README.md for the defaults and how to tune them.
//
// Counting happens in `admitted` (calls the pipeline let through), never in `decide`, which
// only looks: `decide` also answers tools/list probes and may be asked more than once about a
// call. The pipeline calls `admitted` in the same synchronous step as a `decide` of the call
// (asked again at admission when a policy service was awaited, and when a call that waited for
// budget is let in), so identical calls sent at once are counted one by one; only calls a human
// approved are counted without that second look.
import { createHash } from 'node:crypto';
import { epochOf } from 'agent-fabric';
import { z } from 'zod';

export const optionsSchema = z
  .object({
    /** Identical calls allowed within the window; the next one is refused. */
    maxRepeats: z.number().int().positive().default(5),
    /** The window, in seconds. */
    windowSeconds: z.number().positive().default(60),
    /** Tools never counted (polling tools that legitimately repeat, e.g. `fabric__claim_task`). */
    ignoreTools: z.array(z.string().min(1)).default([]),
    /** Above ordinary policies, so a rule's allow does not outrank the guard. */
    priority: z.number().finite().default(900),
    /** Distinct calls remembered per agent (oldest forgotten first); bounds memory. */
    maxCallsPerAgent: z.number().int().positive().default(1000),
    /** Values looked at when normalizing arguments; past it the rest is ignored. */
    maxNodes: z.number().int().positive().default(10_000),
  })
  .strict();

/**
 * A string as the guard compares it: compatibility forms folded (NFKC: `ｌｏｏｐ` is `loop`),
 * invisible format characters dropped (zero-width spaces and joiners, soft hyphens, word joiners,
 * bidi marks: `\p{Cf}`), trimmed, whitespace runs collapsed — variations a looping model makes
 * without meaning another call.
 */
function normalizeString(s) {
  return s
    .normalize('NFKC')
    .replace(/\p{Cf}+/gu, '')
    .trim()
    .replace(/\s+/g, ' ');
}

/**
 * A call's identity: tool plus arguments with object keys sorted and strings normalized
 * ({@link normalizeString}), so `{"a":1,"b":" x "}` and `{"b":"x\u200b","a":1}` are the same
 * call. Numbers are compared as parsed (`1`, `1.0` and `1e0` are one; `"1"` is a string, another
 * call). Bounded: at most `maxNodes` values are visited, iteratively (no depth limit can be hit).
 */
export function normalizeCall(tool, args, maxNodes = 10_000) {
  const hash = createHash('sha256');
  hash.update(tool);
  hash.update('\0');
  const stack = [args];
  let seen = 0;
  while (stack.length > 0 && seen < maxNodes) {
    const v = stack.pop();
    seen++;
    if (v === null || v === undefined) hash.update('n;');
    else if (typeof v === 'string') hash.update(`s${JSON.stringify(normalizeString(v))};`);
    else if (typeof v === 'number' || typeof v === 'boolean' || typeof v === 'bigint')
      hash.update(`${(typeof v)[0]}${String(v)};`);
    else if (Array.isArray(v)) {
      hash.update(`[${v.length};`);
      for (let i = v.length - 1; i >= 0; i--) stack.push(v[i]);
    } else if (typeof v === 'object') {
      const keys = Object.keys(v).sort();
      hash.update(`{${keys.length};`);
      // Pushed in reverse so keys are visited in sorted order.
      for (let i = keys.length - 1; i >= 0; i--) {
        stack.push(v[keys[i]]);
        stack.push(keys[i]);
      }
    } else hash.update('?;');
  }
  return hash.digest('base64url');
}

export class LoopGuard {
  #o;
  #ignore;
  /** agentId -> Map(callKey -> timestamps, oldest first) */
  #agents = new Map();
  #now;
  #epoch;
  #last = { ctx: undefined, key: '' };

  /**
   * @param now - the clock call times are kept on: monotonic, so a step of the wall clock (NTP,
   *   an operator setting the date) neither keeps a refusal for as long as the clock went back
   *   nor forgets the window; `retryAt` is told on `wall` (epoch ms).
   */
  constructor(options, now = () => performance.now(), wall = Date.now) {
    this.#o = options;
    this.#ignore = new Set(options.ignoreTools);
    this.#now = now;
    this.#epoch = epochOf(now, wall);
  }

  #key(ctx) {
    // decide and admitted get the same context object: normalize once.
    if (this.#last.ctx === ctx) return this.#last.key;
    const key = normalizeCall(ctx.tool, ctx.rawParams ?? ctx.params, this.#o.maxNodes);
    this.#last = { ctx, key };
    return key;
  }

  #recent(times, now) {
    const from = now - this.#o.windowSeconds * 1000;
    let i = 0;
    while (i < times.length && times[i] <= from) i++;
    if (i > 0) times.splice(0, i);
    return times;
  }

  /** Undefined when the call may run; else how often it ran and when it may run again. */
  check(ctx) {
    if (this.#ignore.has(ctx.tool)) return undefined;
    const calls = this.#agents.get(ctx.agentId);
    if (calls === undefined) return undefined;
    const times = calls.get(this.#key(ctx));
    if (times === undefined) return undefined;
    const now = this.#now();
    const recent = this.#recent(times, now);
    if (recent.length < this.#o.maxRepeats) return undefined;
    return { count: recent.length, retryAt: this.#epoch(recent[0] + this.#o.windowSeconds * 1000) };
  }

  record(ctx) {
    if (this.#ignore.has(ctx.tool)) return;
    const key = this.#key(ctx);
    let calls = this.#agents.get(ctx.agentId);
    if (calls === undefined) this.#agents.set(ctx.agentId, (calls = new Map()));
    const now = this.#now();
    const times = calls.get(key);
    if (times === undefined) {
      calls.set(key, [now]);
      // Oldest first: a Map keeps insertion order.
      if (calls.size > this.#o.maxCallsPerAgent) calls.delete(calls.keys().next().value);
    } else {
      this.#recent(times, now).push(now);
      // Most recent last.
      calls.delete(key);
      calls.set(key, times);
    }
  }

  forget(agentId) {
    this.#agents.delete(agentId);
  }

  /** Distinct calls remembered for an agent. */
  remembered(agentId) {
    return this.#agents.get(agentId)?.size ?? 0;
  }
}

/** @type {import('agent-fabric').Plugin<'policy'>} */
const plugin = {
  name: 'policy-loop-guard',
  version: '1.0.0',
  kind: 'policy',
  fabric: '>=0.1.0',
  api: 2,
  options: optionsSchema,
  create(options, context) {
    const guard = new LoopGuard(options);
    // A terminated agent makes no more calls: forget it.
    context.agents.onStatus((agent) => {
      if (agent.status === 'TERMINATED') guard.forget(agent.id);
    });
    return {
      name: 'policy-loop-guard',
      priority: options.priority,
      decide(ctx) {
        const hit = guard.check(ctx);
        if (hit === undefined) return undefined;
        return {
          action: 'deny',
          retryAt: hit.retryAt,
          reason: `the same ${ctx.tool} call (same arguments) ran ${hit.count} times within ${options.windowSeconds} s; refused as a likely loop — change the arguments or wait until ${new Date(hit.retryAt).toISOString()} (policy-loop-guard)`,
        };
      },
      admitted(ctx) {
        guard.record(ctx);
      },
    };
  },
};

export default plugin;
