/**
 * Usage accounting of one tool call: cost from the `toolCosts` table (glob → cost per call) and
 * tokens estimated from the size of the result.
 *
 * @module
 */
import { rawResultBytes } from './raw-results.js';

/** Bytes of JSON per estimated token: the common ~4 characters per token rule of thumb. */
export const BYTES_PER_TOKEN = 4;

/**
 * Estimated tokens of a result: `ceil(JSON byte length / 4)`. The agent's model reads the result,
 * so its size is what the call costs in context; this is an estimate, not a tokenizer.
 */
export function estimateTokens(result: unknown): number {
  const bytes =
    (typeof result === 'object' && result !== null ? rawResultBytes(result) : undefined) ??
    Buffer.byteLength(JSON.stringify(result) ?? '', 'utf8');
  return Math.ceil(bytes / BYTES_PER_TOKEN);
}

/** Compiles a glob (`*` any run of characters, `?` one character) to an anchored RegExp. */
export function globToRegExp(glob: string): RegExp {
  let source = '';
  for (const ch of glob) {
    if (ch === '*') source += '.*';
    else if (ch === '?') source += '.';
    else source += ch.replace(/[.+^${}()|[\]\\]/g, '\\$&');
  }
  return new RegExp(`^${source}$`);
}

/**
 * Per-call cost by tool name. Globs are tried in declaration order and the first match wins;
 * lookups are cached per tool name, so the hot path is one Map lookup.
 *
 * @example
 * const costs = new ToolCosts({ 'fs__write_*': 0.01, '*': 0.001 });
 * costs.costOf('fs__write_file'); // 0.01
 */
export class ToolCosts {
  readonly #rules: readonly { re: RegExp; cost: number }[];
  readonly #cache = new Map<string, number>();

  constructor(table: Readonly<Record<string, number>> = {}) {
    this.#rules = Object.entries(table).map(([glob, cost]) => ({ re: globToRegExp(glob), cost }));
  }

  /** Cost of one call of `tool` (0 when no glob matches). */
  costOf(tool: string): number {
    let cost = this.#cache.get(tool);
    if (cost === undefined) {
      cost = this.#rules.find((r) => r.re.test(tool))?.cost ?? 0;
      this.#cache.set(tool, cost);
    }
    return cost;
  }
}
