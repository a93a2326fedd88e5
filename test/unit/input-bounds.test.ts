import { describe, expect, it } from 'vitest';
import { ConfigError, InvalidArgumentError } from '../../src/errors.js';
import {
  checkInputBounds,
  DEFAULT_INPUT_BOUNDS,
  DEFAULT_MAX_ARGUMENT_DEPTH,
  DEFAULT_MAX_ARGUMENT_NODES,
  exceededBound,
  MAX_ARGUMENT_DEPTH_LIMIT,
  parseInputBounds,
} from '../../src/gateway/input-bounds.js';

/** `{"a":{"a":…1…}}` with `levels` objects, parsed from text as a request body would be. */
function nested(levels: number, open = '{"a":', close = '}'): unknown {
  return JSON.parse(open.repeat(levels) + '1' + close.repeat(levels)) as unknown;
}

describe('exceededBound (the ingress walk)', () => {
  const bounds = { maxDepth: 4, maxNodes: 20 };

  it('counts levels: a scalar is 0, {} and [] are 1, each container inside one more', () => {
    expect(exceededBound('x'.repeat(1000), { maxDepth: 1, maxNodes: 1 })).toBeUndefined();
    expect(exceededBound(null, { maxDepth: 1, maxNodes: 1 })).toBeUndefined();
    expect(exceededBound({}, { maxDepth: 1, maxNodes: 1 })).toBeUndefined();
    expect(exceededBound([], { maxDepth: 1, maxNodes: 1 })).toBeUndefined();
    expect(exceededBound(nested(4), bounds)).toBeUndefined();
    expect(exceededBound(nested(5), bounds)).toBe('depth');
    expect(exceededBound(nested(4, '[', ']'), bounds)).toBeUndefined();
    expect(exceededBound(nested(5, '[', ']'), bounds)).toBe('depth');
    // Mixed and not on the first branch.
    expect(exceededBound({ x: 1, y: [0, { z: [] }], w: {} }, bounds)).toBeUndefined();
    expect(exceededBound({ x: 1, y: [0, { z: [[]] }], w: {} }, bounds)).toBe('depth');
  });

  it('counts values: the root, every element and every member, at every level', () => {
    // root + 2 members + 3 elements = 6
    const value = { a: 1, b: [1, 2, 3] };
    expect(exceededBound(value, { maxDepth: 10, maxNodes: 6 })).toBeUndefined();
    expect(exceededBound(value, { maxDepth: 10, maxNodes: 5 })).toBe('nodes');
    expect(exceededBound([{}, {}, { a: {} }], { maxDepth: 10, maxNodes: 5 })).toBeUndefined();
    expect(exceededBound([{}, {}, { a: {} }], { maxDepth: 10, maxNodes: 4 })).toBe('nodes');
  });

  it('survives 10 000 and 1 000 000 levels without recursion', () => {
    expect(exceededBound(nested(10_000), DEFAULT_INPUT_BOUNDS)).toBe('depth');
    expect(exceededBound(nested(10_000, '[', ']'), DEFAULT_INPUT_BOUNDS)).toBe('depth');
    // Deeper than any stack: built in memory, not parsed.
    let deep: unknown = 0;
    for (let i = 0; i < 1_000_000; i++) deep = [deep];
    expect(exceededBound(deep, DEFAULT_INPUT_BOUNDS)).toBe('depth');
    expect(exceededBound(deep, { maxDepth: MAX_ARGUMENT_DEPTH_LIMIT, maxNodes: 1e9 })).toBe(
      'depth',
    );
  });

  it('refuses a huge array or object without needing to visit all of it', () => {
    const wide = JSON.parse(`[${'0,'.repeat(1_000_000)}0]`) as unknown;
    expect(exceededBound(wide, DEFAULT_INPUT_BOUNDS)).toBe('nodes');
    const members = Object.fromEntries(
      Array.from({ length: DEFAULT_MAX_ARGUMENT_NODES }, (_, i) => [`k${i}`, i]),
    );
    expect(exceededBound(members, DEFAULT_INPUT_BOUNDS)).toBe('nodes');
    // Many small containers, each within depth: the count still ends it.
    const boxes = Array.from({ length: DEFAULT_MAX_ARGUMENT_NODES }, () => ({}));
    expect(exceededBound(boxes, DEFAULT_INPUT_BOUNDS)).toBe('nodes');
  });

  it('ends on a cycle (a library caller can pass one; JSON cannot)', () => {
    const loop: Record<string, unknown> = {};
    loop.self = loop;
    expect(exceededBound(loop, DEFAULT_INPUT_BOUNDS)).toBe('depth');
    const ring: unknown[] = [];
    ring.push(ring, ring);
    expect(exceededBound(ring, { maxDepth: 1000, maxNodes: 500 })).toBe('nodes');
  });

  it('admits what ordinary tools take', () => {
    expect(
      exceededBound(
        {
          path: '/tmp/x',
          content: 'x'.repeat(4 << 20),
          edits: [{ oldText: 'a', newText: 'b' }],
          options: { dryRun: false, tags: ['a', 'b'] },
        },
        DEFAULT_INPUT_BOUNDS,
      ),
    ).toBeUndefined();
    expect(exceededBound(nested(DEFAULT_MAX_ARGUMENT_DEPTH), DEFAULT_INPUT_BOUNDS)).toBeUndefined();
    expect(exceededBound(nested(DEFAULT_MAX_ARGUMENT_DEPTH + 1), DEFAULT_INPUT_BOUNDS)).toBe(
      'depth',
    );
  });
});

describe('checkInputBounds', () => {
  it('is an InvalidArgumentError naming the field, the limit and the setting', () => {
    const depth = checkInputBounds(nested(70), DEFAULT_INPUT_BOUNDS, 'arguments');
    expect(depth).toBeInstanceOf(InvalidArgumentError);
    expect(depth).toMatchObject({
      code: 'FABRIC_ERR_INVALID_ARGUMENT',
      kind: 'invalid_argument',
      details: { field: 'arguments' },
    });
    expect(depth!.message).toMatch(
      /arguments nest deeper than 64 levels .*gateway\.maxArgumentDepth/,
    );
    const nodes = checkInputBounds([1, 2, 3], { maxDepth: 5, maxNodes: 3 }, 'params');
    expect(nodes!.message).toMatch(/params hold more than 3 values .*gateway\.maxArgumentNodes/);
    expect(checkInputBounds({ a: 1 }, DEFAULT_INPUT_BOUNDS, 'arguments')).toBeUndefined();
  });
});

describe('parseInputBounds', () => {
  it('fills in the defaults and freezes', () => {
    const b = parseInputBounds();
    expect(b).toEqual({ maxDepth: 64, maxNodes: 100_000 });
    expect(Object.isFrozen(b)).toBe(true);
    expect(parseInputBounds({ maxArgumentDepth: 8, maxArgumentNodes: 10 })).toEqual({
      maxDepth: 8,
      maxNodes: 10,
    });
  });

  it('rejects bounds that are not positive integers (or too deep to serialize) naming the key', () => {
    for (const maxArgumentDepth of [0, -1, 1.5, Number.NaN, MAX_ARGUMENT_DEPTH_LIMIT + 1]) {
      expect(() => parseInputBounds({ maxArgumentDepth })).toThrow(ConfigError);
    }
    expect(() => parseInputBounds({ maxArgumentDepth: 0 })).toThrow(/maxArgumentDepth/);
    for (const maxArgumentNodes of [0, 2.5, Infinity]) {
      expect(() => parseInputBounds({ maxArgumentNodes })).toThrow(/maxArgumentNodes/);
    }
  });
});
