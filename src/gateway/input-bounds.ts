/**
 * The bound every agent-supplied value passes at the gateway's ingress: `tools/call` arguments
 * and the params of the guarded requests (`resources/read`, `prompts/get`,
 * `completion/complete`) nest at most `maxDepth` levels and hold at most `maxNodes` values.
 *
 * Why here, once: everything behind the ingress — the audit digest and the sinks'
 * `JSON.stringify`, policy conditions and JSON-logic (`==` on an array joins it recursively),
 * plugins such as secret-guard, approval copies, upstream requests — recurses into arguments or
 * scales with their size. A 60 KB body can nest 10 000 levels, past what `JSON.stringify` can
 * do (it throws `RangeError`); a 4 MiB body can hold two million values. One cheap check at the
 * door makes every walk behind it finite and shallow, so none of them needs its own guard to
 * stay up. The walk itself is iterative (it cannot overflow the stack whatever the input) and
 * stops at the first value past a limit, so its cost is bounded by `maxNodes` even for a body
 * that holds far more.
 *
 * @module
 */
import { ConfigError, InvalidArgumentError } from '../errors.js';

/** Default of {@link InputBounds.maxDepth} (`gateway.maxArgumentDepth`). */
export const DEFAULT_MAX_ARGUMENT_DEPTH = 64;
/** Default of {@link InputBounds.maxNodes} (`gateway.maxArgumentNodes`). */
export const DEFAULT_MAX_ARGUMENT_NODES = 100_000;
/** Largest accepted {@link InputBounds.maxDepth}: deeper than this, `JSON.stringify` may throw. */
export const MAX_ARGUMENT_DEPTH_LIMIT = 1000;

/** Limits of one agent-supplied value. */
export interface InputBounds {
  /**
   * Most levels of nesting: `{}` and `[]` are one level, `{"a":[1]}` two; a scalar is zero.
   * @default 64
   */
  readonly maxDepth: number;
  /**
   * Most values in all: the value itself, every array element and every object member (keys are
   * not counted apart from their values).
   * @default 100000
   */
  readonly maxNodes: number;
}

/** The default bounds ({@link DEFAULT_MAX_ARGUMENT_DEPTH}, {@link DEFAULT_MAX_ARGUMENT_NODES}). */
export const DEFAULT_INPUT_BOUNDS: InputBounds = Object.freeze({
  maxDepth: DEFAULT_MAX_ARGUMENT_DEPTH,
  maxNodes: DEFAULT_MAX_ARGUMENT_NODES,
});

/** Which limit a value broke. */
export type ExceededBound = 'depth' | 'nodes';

/**
 * Checks `value` against `bounds` without recursion.
 *
 * Allocation-free for a value with no nested containers (the common `{ path, content }`
 * arguments): the explicit stack is created only when a container holds another one.
 *
 * @returns the limit broken first, or `undefined` when `value` is within both.
 * @example
 * exceededBound({ a: { b: [1] } }, { maxDepth: 2, maxNodes: 100 }); // 'depth'
 */
export function exceededBound(value: unknown, bounds: InputBounds): ExceededBound | undefined {
  if (typeof value !== 'object' || value === null) return undefined;
  const maxDepth = bounds.maxDepth;
  const maxNodes = bounds.maxNodes;
  if (maxDepth < 1) return 'depth';
  let nodes = 1;
  let stack: object[] | undefined;
  let depths: number[] | undefined;
  let v: object = value;
  let depth = 1;
  // One plain loop, stack created on first use: measured ~12 ns for `{ path, content }`, where
  // optional chaining on the stack and a separate root step cost four times that.
  for (;;) {
    if (Array.isArray(v)) {
      const n = v.length;
      // Counted before the loop: a huge array is refused without visiting its elements.
      if ((nodes += n) > maxNodes) return 'nodes';
      for (let i = 0; i < n; i++) {
        const child: unknown = v[i];
        if (typeof child === 'object' && child !== null) {
          if (depth >= maxDepth) return 'depth';
          if (stack === undefined) {
            stack = [];
            depths = [];
          }
          stack.push(child);
          depths!.push(depth + 1);
        }
      }
    } else {
      for (const k in v) {
        if (++nodes > maxNodes) return 'nodes';
        const child = (v as Record<string, unknown>)[k];
        if (typeof child === 'object' && child !== null) {
          if (depth >= maxDepth) return 'depth';
          if (stack === undefined) {
            stack = [];
            depths = [];
          }
          stack.push(child);
          depths!.push(depth + 1);
        }
      }
    }
    if (stack === undefined || stack.length === 0) return undefined;
    v = stack.pop()!;
    depth = depths!.pop()!;
  }
}

/**
 * {@link exceededBound} as an error naming the limit and the setting that raises it, or
 * `undefined` when `value` is within bounds.
 *
 * @param field What the value is, e.g. `arguments` or `params` (the error's `details.field`).
 */
export function checkInputBounds(
  value: unknown,
  bounds: InputBounds,
  field: string,
): InvalidArgumentError | undefined {
  const exceeded = exceededBound(value, bounds);
  if (exceeded === undefined) return undefined;
  return exceeded === 'depth'
    ? new InvalidArgumentError(
        field,
        `nest deeper than ${bounds.maxDepth} levels (limit gateway.maxArgumentDepth); send flatter data`,
      )
    : new InvalidArgumentError(
        field,
        `hold more than ${bounds.maxNodes} values (limit gateway.maxArgumentNodes); send fewer`,
      );
}

/**
 * Validates and freezes bounds given as options (missing ones get the defaults).
 * @throws ConfigError naming the field when a bound is not a positive integer (the depth at most
 *   {@link MAX_ARGUMENT_DEPTH_LIMIT}).
 */
export function parseInputBounds(
  options: { maxArgumentDepth?: number | undefined; maxArgumentNodes?: number | undefined } = {},
): InputBounds {
  const maxDepth = options.maxArgumentDepth ?? DEFAULT_MAX_ARGUMENT_DEPTH;
  const maxNodes = options.maxArgumentNodes ?? DEFAULT_MAX_ARGUMENT_NODES;
  if (!Number.isInteger(maxDepth) || maxDepth < 1 || maxDepth > MAX_ARGUMENT_DEPTH_LIMIT) {
    throw new ConfigError(
      'maxArgumentDepth',
      `must be an integer from 1 to ${MAX_ARGUMENT_DEPTH_LIMIT}`,
    );
  }
  if (!Number.isInteger(maxNodes) || maxNodes < 1) {
    throw new ConfigError('maxArgumentNodes', 'must be a positive integer');
  }
  return Object.freeze({ maxDepth, maxNodes });
}
