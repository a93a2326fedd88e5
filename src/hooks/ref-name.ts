/**
 * Branch-name validation following `git check-ref-format --branch`, done in-process so that no
 * untrusted string reaches a git command line before it has been checked.
 *
 * @module
 */
import { InvalidArgumentError } from '../errors.js';

/** Longest branch name accepted (git has no limit; file systems do). */
export const MAX_BRANCH_NAME_LENGTH = 200;

/**
 * Why `name` is not a valid branch name, or `undefined` when it is. The rules are those of
 * git-check-ref-format(1) for `refs/heads/<name>`, plus: no leading `-` (it would read as an
 * option), not `HEAD`, and at most {@link MAX_BRANCH_NAME_LENGTH} characters.
 */
export function branchNameProblem(name: string): string | undefined {
  if (name.length === 0) return 'must not be empty';
  if (name.length > MAX_BRANCH_NAME_LENGTH)
    return `must be at most ${MAX_BRANCH_NAME_LENGTH} characters`;
  if (name.startsWith('-')) return 'must not start with "-"';
  if (name === 'HEAD' || name === '@') return `must not be ${JSON.stringify(name)}`;
  // eslint-disable-next-line no-control-regex
  if (/[\x00-\x20\x7f~^:?*[\\]/.test(name))
    return 'must not contain spaces, control characters or any of ~ ^ : ? * [ \\';
  if (name.includes('..')) return 'must not contain ".."';
  if (name.includes('@{')) return 'must not contain "@{"';
  if (name.startsWith('/') || name.endsWith('/')) return 'must not start or end with "/"';
  if (name.includes('//')) return 'must not contain "//"';
  if (name.endsWith('.')) return 'must not end with "."';
  for (const part of name.split('/')) {
    if (part.startsWith('.')) return 'must not have a path component starting with "."';
    if (part.endsWith('.lock')) return 'must not have a path component ending with ".lock"';
  }
  return undefined;
}

/**
 * Returns `name` when it is a valid branch name.
 * @throws InvalidArgumentError naming `field` and the rule broken.
 */
export function checkBranchName(name: unknown, field = 'branch'): string {
  if (typeof name !== 'string') throw new InvalidArgumentError(field, 'must be a string');
  const problem = branchNameProblem(name);
  if (problem !== undefined) {
    throw new InvalidArgumentError(field, `${problem} (got ${JSON.stringify(name)})`);
  }
  return name;
}
