/**
 * Usage accounting of one tool call: cost from the `toolCosts` table (glob → cost per call) and
 * tokens estimated from the size of the result.
 *
 * @module
 */
import { MAX_USAGE_AMOUNT } from '../budget/budget-manager.js';
import { ConfigError } from '../errors.js';
import { rawResultBytes } from './raw-results.js';

/** Bytes of JSON per estimated token: the common ~4 characters per token rule of thumb. */
export const BYTES_PER_TOKEN = 4;

/**
 * Estimated tokens of a result: `ceil(JSON byte length / 4)`. The agent's model reads the result,
 * so its size is what the call costs in context; this is an estimate, not a tokenizer.
 *
 * Never throws: a result `JSON.stringify` cannot serialize (an upstream may answer with JSON
 * nested thousands of levels deep; a fabric tool's value may hold a BigInt or a cycle) is
 * measured by {@link approximateJsonBytes} instead.
 */
export function estimateTokens(result: unknown): number {
  let bytes = typeof result === 'object' && result !== null ? rawResultBytes(result) : undefined;
  if (bytes === undefined) {
    try {
      bytes = Buffer.byteLength(JSON.stringify(result) ?? '', 'utf8');
    } catch {
      bytes = approximateJsonBytes(result);
    }
  }
  return Math.ceil(bytes / BYTES_PER_TOKEN);
}

/** Most values {@link approximateJsonBytes} visits (a cycle would otherwise never end). */
export const APPROXIMATE_JSON_MAX_NODES = 1 << 22;

/**
 * About the UTF-8 size of `value`'s JSON, measured without recursion: strings and keys by their
 * UTF-8 length plus quotes, other scalars by their text, and a byte per separator or bracket.
 * Stops after {@link APPROXIMATE_JSON_MAX_NODES} values (what it counted so far is returned),
 * so it ends on any input, cycles included.
 */
export function approximateJsonBytes(value: unknown): number {
  let bytes = 0;
  let nodes = 0;
  const limit = APPROXIMATE_JSON_MAX_NODES;
  const stack: unknown[] = [value];
  // Nothing is pushed past the limit either, so the stack stays bounded on a cycle.
  while (stack.length > 0 && nodes++ < limit) {
    const v = stack.pop();
    if (typeof v === 'string') bytes += Buffer.byteLength(v, 'utf8') + 2;
    else if (typeof v === 'object' && v !== null) {
      if (Array.isArray(v)) {
        bytes += 2 + Math.max(0, v.length - 1);
        for (let i = 0; i < v.length && nodes + stack.length < limit; i++) stack.push(v[i]);
      } else {
        bytes += 2;
        let first = true;
        for (const k in v) {
          bytes += Buffer.byteLength(k, 'utf8') + (first ? 3 : 4); // "k": and a comma
          first = false;
          if (nodes + stack.length < limit) stack.push((v as Record<string, unknown>)[k]);
        }
      }
    } else if (v === undefined || typeof v === 'function' || typeof v === 'symbol') bytes += 4;
    else bytes += String(v).length;
  }
  return bytes;
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

  /**
   * @throws ConfigError naming the glob (`toolCosts.<glob>`) of a cost the budgets cannot
   *   reserve: not a number, negative, or above `MAX_USAGE_AMOUNT` (every call of the tool would
   *   fail at its reservation).
   */
  constructor(table: Readonly<Record<string, number>> = {}) {
    this.#rules = Object.entries(table).map(([glob, cost]) => ({
      re: globToRegExp(glob),
      cost: usageAmount(`toolCosts.${glob}`, cost, 'cost'),
    }));
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

/**
 * `value`, when the budgets can reserve it (a number from 0 to `MAX_USAGE_AMOUNT`).
 * @throws ConfigError naming `field`.
 */
export function usageAmount(field: string, value: unknown, what: 'cost' | 'tokens'): number {
  if (typeof value !== 'number' || !(value >= 0) || value > MAX_USAGE_AMOUNT) {
    const shown = typeof value === 'number' ? String(value) : JSON.stringify(value);
    throw new ConfigError(
      field,
      `must be a ${what === 'cost' ? 'cost' : 'number of tokens'} from 0 to ${MAX_USAGE_AMOUNT}, got ${shown}`,
    );
  }
  return value;
}
