// policy-rate-limit: a first-party policy plugin. Token buckets per agent (all its tool calls)
// and per agent and tool (the tools configured in `perTool`); a call that finds a bucket empty
// is denied with `retryAt`, the moment the bucket holds a token again. It loads through the same
// PluginHost as a user's file. See README.md for the options and their defaults.
//
// Counting: `decide` only looks (it also answers tools/list probes and may be asked more than
// once about a call); a call takes its tokens in `admitted`, once the pipeline lets it through,
// in the same synchronous step as a `decide` of that call (asked again at admission when a policy
// service was awaited, and again when a call that waited for budget is let in), so calls sent at
// once cannot all pass on the same tokens. Calls a human approved are counted without that
// second look and can therefore overdraw a bucket by the number approved at once; the debt is
// repaid by the refill before the next call passes.
import { epochOf } from 'agent-fabric';
import { z } from 'zod';

const bucket = z
  .object({
    /** Most calls in a burst. */
    capacity: z.number().int().positive(),
    /** Calls regained per second. */
    refillPerSecond: z.number().positive(),
  })
  .strict();

export const optionsSchema = z
  .object({
    /** Every tool call of one agent. `null` turns the agent-wide limit off. */
    perAgent: bucket.nullable().default({ capacity: 60, refillPerSecond: 1 }),
    /** Per agent and tool: a tool name, or a prefix ending in `*` (`fs__*`). */
    perTool: z.record(z.string().min(1), bucket).default({}),
    /** Above ordinary policies, so a rule's allow does not outrank the limit. */
    priority: z.number().finite().default(900),
    /** Buckets kept before full (idle) ones are dropped; bounds memory. */
    maxBuckets: z.number().int().positive().default(100_000),
  })
  .strict();

/** One token bucket: `tokens` as of `at` (monotonic ms). */
function level(b, spec, now) {
  return Math.min(spec.capacity, b.tokens + ((now - b.at) / 1000) * spec.refillPerSecond);
}

export class RateLimiter {
  #o;
  #tools;
  /** key -> { tokens, at } */
  #buckets = new Map();
  #now;
  #epoch;

  /**
   * @param now - the clock buckets refill by: monotonic, so a step of the wall clock (NTP, an
   *   operator setting the date) neither empties every bucket until the clock catches up again
   *   nor refills them; `retryAt` is told on `wall` (epoch ms).
   */
  constructor(options, now = () => performance.now(), wall = Date.now) {
    this.#o = options;
    this.#now = now;
    this.#epoch = epochOf(now, wall);
    this.#tools = Object.entries(options.perTool).map(([pattern, spec]) =>
      pattern.endsWith('*')
        ? { prefix: pattern.slice(0, -1), exact: undefined, pattern, spec }
        : { prefix: undefined, exact: pattern, pattern, spec },
    );
  }

  /** The buckets a call draws from: [key, spec, label]. */
  #limits(agentId, tool) {
    const out = [];
    if (this.#o.perAgent !== null) out.push([`a\0${agentId}`, this.#o.perAgent, 'agent']);
    for (const t of this.#tools) {
      if (t.exact === undefined ? tool.startsWith(t.prefix) : tool === t.exact) {
        out.push([`t\0${agentId}\0${t.pattern}`, t.spec, `tool ${t.pattern}`]);
      }
    }
    return out;
  }

  /** Undefined when every bucket has a token; else the emptiest bucket's label and retryAt. */
  check(agentId, tool) {
    const now = this.#now();
    let worst;
    for (const [key, spec, label] of this.#limits(agentId, tool)) {
      const b = this.#buckets.get(key);
      const tokens = b === undefined ? spec.capacity : level(b, spec, now);
      if (tokens >= 1) continue;
      // When the bucket holds a token again (monotonic): the same instant however often asked.
      const at = now + ((1 - tokens) / spec.refillPerSecond) * 1000;
      if (worst === undefined || at > worst.at) worst = { label, spec, at };
    }
    if (worst === undefined) return undefined;
    return { label: worst.label, spec: worst.spec, retryAt: this.#epoch(worst.at) };
  }

  /** Takes one token from each bucket of the call. */
  take(agentId, tool) {
    const now = this.#now();
    for (const [key, spec] of this.#limits(agentId, tool)) {
      const b = this.#buckets.get(key);
      const tokens = b === undefined ? spec.capacity : level(b, spec, now);
      this.#buckets.set(key, { tokens: tokens - 1, at: now });
    }
    if (this.#buckets.size > this.#o.maxBuckets) this.#sweep(now);
  }

  /** Drops buckets that have refilled (the same as never used). */
  #sweep(now) {
    for (const [key, b] of this.#buckets) {
      const spec = key.startsWith('a\0')
        ? this.#o.perAgent
        : this.#tools.find((t) => key.endsWith(`\0${t.pattern}`))?.spec;
      if (spec == null || level(b, spec, now) >= spec.capacity) this.#buckets.delete(key);
    }
  }

  get size() {
    return this.#buckets.size;
  }
}

/** @type {import('agent-fabric').Plugin<'policy'>} */
const plugin = {
  name: 'policy-rate-limit',
  version: '1.0.0',
  kind: 'policy',
  fabric: '>=0.1.0',
  api: 2,
  options: optionsSchema,
  create(options) {
    const limiter = new RateLimiter(options);
    return {
      name: 'policy-rate-limit',
      priority: options.priority,
      decide(ctx) {
        const hit = limiter.check(ctx.agentId, ctx.tool);
        if (hit === undefined) return undefined;
        const { capacity, refillPerSecond } = hit.spec;
        return {
          action: 'deny',
          retryAt: hit.retryAt,
          reason: `rate limit (${hit.label}: ${capacity} calls, ${refillPerSecond}/s) reached; retry at ${new Date(hit.retryAt).toISOString()} (policy-rate-limit)`,
        };
      },
      admitted(ctx) {
        limiter.take(ctx.agentId, ctx.tool);
      },
    };
  },
};

export default plugin;
