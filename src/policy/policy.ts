/**
 * Policies and rules: their types, their schema, and validation on the way in.
 *
 * @module
 */
import { z } from 'zod';
import { PolicyValidationError } from '../errors.js';
import { hasControlCharacter } from '../validate.js';

/** What a rule does with a matching tool call. */
export type PolicyAction = 'allow' | 'deny' | 'require_approval';

/**
 * `enforce` policies decide; `audit` policies are evaluated and reported in
 * `decision.audit` but never change the outcome (use them to try a policy out).
 */
export type PolicyMode = 'enforce' | 'audit';

/** A value a shorthand condition compares a parameter with. */
export type ConditionScalar = string | number | boolean | null;

/**
 * Shorthand conditions: every key names a parameter (dots walk into nested objects) and every
 * one must match. A string with glob syntax is a glob, any other scalar must be equal (`===`,
 * after path normalization for path-like parameters), and an array means "any of".
 * Objects are not allowed here: JSON-logic goes in {@link PolicyRule.when}.
 */
export type PolicyConditions = Readonly<
  Record<string, ConditionScalar | readonly ConditionScalar[]>
>;

/** One rule of a policy. */
export interface PolicyRule {
  /** Tool name or glob (`execute_code`, `file_*`, `fs__*`). */
  tool: string;
  action: PolicyAction;
  /** Shorthand parameter conditions (all must match). */
  conditions?: PolicyConditions;
  /**
   * A JSON-logic expression over `{ agent: { id, labels }, tool, params, pool, now, attributes }`;
   * the rule matches only when it is truthy. Compiled when the policy is added.
   */
  when?: unknown;
  /** Shown in decisions, approvals and denials. */
  reason?: string;
}

/** A named, prioritized set of rules. */
export interface Policy {
  /** Unique name. */
  name: string;
  rules: readonly PolicyRule[];
  /**
   * Higher numbers are evaluated first; the first priority level with a matching rule decides.
   * @default 0
   */
  priority?: number;
  /**
   * Disabled policies are kept (and listed) but not evaluated.
   * @default true
   */
  enabled?: boolean;
  /** @default 'enforce' */
  mode?: PolicyMode;
  description?: string;
}

/** A policy as stored: defaults filled in, frozen. */
export interface NormalizedPolicy extends Policy {
  readonly name: string;
  readonly rules: readonly Readonly<PolicyRule>[];
  readonly priority: number;
  readonly enabled: boolean;
  readonly mode: PolicyMode;
}

const scalar = z.union([z.string(), z.number(), z.boolean(), z.null()]);

const CONTROL_MESSAGE = 'must not contain control characters (U+0000–U+001F, U+007F–U+009F)';

/** Schema of a {@link PolicyRule} (structure only; globs and JSON-logic are checked when compiled). */
export const PolicyRuleSchema = z
  .object({
    tool: z
      .string()
      .min(1, 'must be a non-empty tool name or glob')
      .refine((t) => !hasControlCharacter(t), CONTROL_MESSAGE),
    action: z.enum(['allow', 'deny', 'require_approval']),
    conditions: z
      .record(
        z.string().min(1),
        z.union([scalar, z.array(scalar).min(1, 'must list at least one value')], {
          error:
            'must be a string, number, boolean, null or a non-empty array of those (put JSON-logic in `when`)',
        }),
      )
      .optional(),
    when: z.unknown().optional(),
    reason: z.string().optional(),
  })
  .strict();

/** Schema of a {@link Policy}. */
export const PolicySchema = z
  .object({
    name: z
      .string()
      .min(1, 'must be a non-empty string')
      .refine((n) => !hasControlCharacter(n), CONTROL_MESSAGE),
    rules: z.array(PolicyRuleSchema).min(1, 'must contain at least one rule'),
    priority: z.number().int().min(Number.MIN_SAFE_INTEGER).max(Number.MAX_SAFE_INTEGER).optional(),
    enabled: z.boolean().optional(),
    mode: z.enum(['enforce', 'audit']).optional(),
    description: z.string().optional(),
  })
  .strict();

/**
 * Checks the structure of `input` and returns a frozen policy with defaults filled in.
 * @throws PolicyValidationError naming the policy, the rule index and the field.
 */
export function parsePolicy(input: unknown): NormalizedPolicy {
  const parsed = PolicySchema.safeParse(input);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const name =
      typeof (input as { name?: unknown } | null)?.name === 'string' &&
      (input as { name: string }).name !== ''
        ? (input as { name: string }).name
        : '<unnamed>';
    const path = issue.path;
    const rule = path[0] === 'rules' && typeof path[1] === 'number' ? path[1] : undefined;
    const field =
      path.length === 0
        ? 'policy'
        : path.reduce<string>(
            (acc, p) =>
              typeof p === 'number' ? `${acc}[${p}]` : acc ? `${acc}.${String(p)}` : String(p),
            '',
          );
    throw new PolicyValidationError(name, field, issue.message, rule);
  }
  const p = parsed.data;
  // zod leaves a `__proto__` key out of a record; a condition on a parameter of that name
  // would be dropped, which widens an allow rule to every call. Refused instead.
  (input as { rules: unknown[] }).rules.forEach((rule, i) => {
    const conditions = (rule as { conditions?: unknown }).conditions;
    if (
      typeof conditions === 'object' &&
      conditions !== null &&
      Object.hasOwn(conditions, '__proto__')
    ) {
      throw new PolicyValidationError(
        p.name,
        `rules[${i}].conditions.__proto__`,
        'cannot be a condition (a key JavaScript objects drop); test it in `when`: {"var":"params.__proto__"}',
        i,
      );
    }
  });
  return Object.freeze({
    name: p.name,
    rules: Object.freeze(
      p.rules.map((r, i) =>
        Object.freeze({
          ...r,
          ...(r.conditions === undefined ? {} : { conditions: Object.freeze({ ...r.conditions }) }),
          ...(r.when === undefined ? {} : { when: cloneJson(p.name, i, r.when) }),
        }),
      ),
    ),
    priority: p.priority ?? 0,
    enabled: p.enabled ?? true,
    mode: p.mode ?? 'enforce',
    ...(p.description === undefined ? {} : { description: p.description }),
  });
}

/** A deep, frozen copy of a `when` expression, so later edits by the caller cannot change it. */
function cloneJson(policy: string, rule: number, value: unknown): unknown {
  let copy: unknown;
  try {
    copy = structuredClone(value);
  } catch (err) {
    throw new PolicyValidationError(
      policy,
      `rules[${rule}].when`,
      `must be JSON data (${(err as Error).message})`,
      rule,
    );
  }
  return deepFreeze(copy);
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}
