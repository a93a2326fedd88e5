/**
 * Hook ids: generated here, and checked against a strict pattern before they are ever used in
 * a path (worktree directories, tree entries of the state ref).
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import { InvalidArgumentError } from '../errors.js';

/**
 * `hk-` + creation time in ms (base 36, 10 chars, so ids sort by creation) + `-` + 16 random
 * hex digits. Nothing else is accepted: no dots, no slashes, no upper case.
 */
export const HOOK_ID_PATTERN = /^hk-[0-9a-z]{10}-[0-9a-f]{16}$/;

/** A new, unique hook id for a hook created at `now` (epoch ms). */
export function generateHookId(now: number): string {
  const time = Math.max(0, Math.floor(now)).toString(36).padStart(10, '0').slice(-10);
  return `hk-${time}-${randomBytes(8).toString('hex')}`;
}

/** True when `value` is a well-formed hook id. */
export function isHookId(value: unknown): value is string {
  return typeof value === 'string' && HOOK_ID_PATTERN.test(value);
}

/**
 * Returns `value` when it is a well-formed hook id.
 * @throws InvalidArgumentError naming `field` otherwise.
 */
export function checkHookId(value: unknown, field = 'hookId'): string {
  if (!isHookId(value)) {
    throw new InvalidArgumentError(
      field,
      `must be a hook id like hk-0123456789-0123456789abcdef, got ${describeValue(value)}`,
    );
  }
  return value;
}

/** The state-tree shard of a hook: two hex digits of its random part. */
export function hookShard(hookId: string): string {
  return hookId.slice(14, 16);
}

function describeValue(value: unknown): string {
  if (typeof value === 'string')
    return JSON.stringify(value.length > 80 ? `${value.slice(0, 80)}…` : value);
  return value === null ? 'null' : typeof value;
}
