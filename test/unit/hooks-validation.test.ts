import { describe, expect, it } from 'vitest';
import {
  ConfigError,
  FabricError,
  HookNotFoundError,
  HookRetryLimitError,
  HookStateError,
  HookStoreError,
  HookStoreLockedError,
  HookWorkItemTooLargeError,
  HookWorktreeError,
  InvalidArgumentError,
} from '../../src/errors.js';
import {
  DEFAULT_MAX_WORK_ITEM_BYTES,
  HOOK_ID_PATTERN,
  HOOK_TRANSITIONS,
  HookStatus,
  branchNameProblem,
  canTransition,
  checkBranchName,
  isHookId,
  parseHookManagerOptions,
} from '../../src/hooks/index.js';
import { checkHookId, generateHookId, hookShard } from '../../src/hooks/hook-id.js';
import { toJsonValue } from '../../src/hooks/json-value.js';
import { git, gitStatus } from '../fixtures/hooks/temp-store.js';

describe('branch names', () => {
  const valid = [
    'main',
    'agent/refactor-123',
    'feature/a.b',
    'a-b_c',
    'ünïcödé',
    'x/y/z',
    'v1.2.3',
    'a@b',
  ];
  const invalid = [
    '',
    '-leading-dash',
    'has space',
    'a..b',
    'a~b',
    'a^b',
    'a:b',
    'a?b',
    'a*b',
    'a[b',
    'a\\b',
    'ends.lock',
    'dir/x.lock',
    'ends/',
    '/starts',
    'a//b',
    'ends.',
    '.hidden',
    'x/.hidden',
    'a@{b',
    '@',
    'HEAD',
    'tab\there',
    'nl\nhere',
    'del\x7f',
    'x'.repeat(201),
  ];

  it.each(valid)('accepts %j', (name) => {
    expect(branchNameProblem(name)).toBeUndefined();
    expect(checkBranchName(name)).toBe(name);
  });

  it.each(invalid)('rejects %j with InvalidArgumentError naming the field', (name) => {
    expect(branchNameProblem(name)).toBeTypeOf('string');
    expect(() => checkBranchName(name)).toThrow(InvalidArgumentError);
    try {
      checkBranchName(name);
    } catch (err) {
      expect((err as InvalidArgumentError).details.field).toBe('branch');
    }
  });

  it('agrees with git check-ref-format --branch', () => {
    // Ours is stricter for the length limit, `HEAD` and `@` (git resolves `@` to HEAD).
    const cases = [...valid, ...invalid].filter(
      (n) => n.length <= 200 && n !== 'HEAD' && n !== '@',
    );
    for (const name of cases) {
      const gitSays = gitStatus(process.cwd(), 'check-ref-format', '--branch', name) === 0;
      expect({ name, ok: branchNameProblem(name) === undefined }).toEqual({ name, ok: gitSays });
    }
  });

  it('rejects non-strings', () => {
    expect(() => checkBranchName(42)).toThrow(InvalidArgumentError);
  });
});

describe('hook ids', () => {
  it('generates ids that match the strict pattern and sort by time', () => {
    const a = generateHookId(1_000);
    const b = generateHookId(2_000_000_000_000);
    expect(a).toMatch(HOOK_ID_PATTERN);
    expect(b).toMatch(HOOK_ID_PATTERN);
    expect(a < b).toBe(true);
    expect(hookShard(a)).toMatch(/^[0-9a-f]{2}$/);
    expect(new Set(Array.from({ length: 200 }, () => generateHookId(5))).size).toBe(200);
  });

  it.each([
    '../etc/passwd',
    'hk-0123456789-0123456789abcdef/..',
    'HK-0123456789-0123456789abcdef',
    'hk-0123456789-0123456789abcdeg',
    'hk-0123456789-0123456789abcdef ',
    '',
    'hk-012345678-0123456789abcdef',
  ])('rejects %j before it can become a path', (id) => {
    expect(isHookId(id)).toBe(false);
    expect(() => checkHookId(id)).toThrow(InvalidArgumentError);
  });

  it('rejects non-strings', () => {
    expect(isHookId(undefined)).toBe(false);
    expect(() => checkHookId({})).toThrow(/hookId must be a hook id/);
  });
});

describe('work items', () => {
  it('returns a deep-frozen copy of plain JSON', () => {
    const input = { task: 'refactor', files: ['a.py', { b: 1 }], n: null, skip: undefined };
    const value = toJsonValue(input, 'workItem', 1024);
    expect(value).toEqual({ task: 'refactor', files: ['a.py', { b: 1 }], n: null });
    expect(value).not.toBe(input);
    expect(Object.isFrozen(value)).toBe(true);
    expect(Object.isFrozen((value as { files: object[] }).files[1])).toBe(true);
  });

  it.each([
    ['a function', { f: () => 1 }, 'workItem.f'],
    ['a Date', { at: new Date() }, 'workItem.at'],
    ['a Map', new Map(), 'workItem'],
    ['NaN', { n: Number.NaN }, 'workItem.n'],
    ['Infinity', [1, Number.POSITIVE_INFINITY], 'workItem[1]'],
    ['a bigint', { n: 1n }, 'workItem.n'],
    ['undefined', undefined, 'workItem'],
    ['a symbol', Symbol('x'), 'workItem'],
  ])('rejects %s, naming where it is', (_what, value, field) => {
    try {
      toJsonValue(value, 'workItem', 1024);
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(InvalidArgumentError);
      expect((err as InvalidArgumentError).details.field).toBe(field);
    }
  });

  it('rejects cycles', () => {
    const a: Record<string, unknown> = {};
    a.self = a;
    expect(() => toJsonValue(a, 'workItem', 1024)).toThrow(/circular/);
  });

  it('rejects oversized work items with a typed error', () => {
    const big = { blob: 'x'.repeat(DEFAULT_MAX_WORK_ITEM_BYTES) };
    try {
      toJsonValue(big, 'workItem', DEFAULT_MAX_WORK_ITEM_BYTES);
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(HookWorkItemTooLargeError);
      expect((err as HookWorkItemTooLargeError).details).toMatchObject({
        field: 'workItem',
        limit: DEFAULT_MAX_WORK_ITEM_BYTES,
      });
    }
    // Multi-byte characters count as bytes, not characters.
    expect(() => toJsonValue('é'.repeat(10), 'workItem', 20)).toThrow(HookWorkItemTooLargeError);
  });
});

describe('transitions', () => {
  it('allows exactly the documented transitions', () => {
    const allowed = Object.entries(HOOK_TRANSITIONS).flatMap(([from, tos]) =>
      tos.map((to) => `${from}->${to}`),
    );
    expect(allowed.sort()).toEqual(
      [
        'PENDING->ACTIVE',
        'PENDING->ABANDONED',
        'ACTIVE->COMPLETED',
        'ACTIVE->FAILED',
        'ACTIVE->ABANDONED',
        'ABANDONED->PENDING',
        'ABANDONED->FAILED',
        'FAILED->PENDING',
      ].sort(),
    );
    expect(canTransition(HookStatus.COMPLETED, HookStatus.PENDING)).toBe(false);
    expect(Object.values(HookStatus).sort()).toEqual(
      ['ABANDONED', 'ACTIVE', 'COMPLETED', 'FAILED', 'PENDING'].sort(),
    );
  });
});

describe('parseHookManagerOptions', () => {
  it('applies defaults and freezes', () => {
    const o = parseHookManagerOptions({ storagePath: 'rel/path', useGitWorktree: true });
    expect(o).toMatchObject({
      useGitWorktree: true,
      baseBranch: undefined,
      patrolIntervalSeconds: 30,
      staleAfterSeconds: 600,
      progressCommitIntervalMs: 1000,
      maxReassignments: 3,
      maxWorkItemBytes: 262144,
      fsync: true,
      author: { name: 'agent-fabric', email: 'hooks@agent-fabric.local' },
    });
    expect(o.storagePath.startsWith('/')).toBe(true);
    expect(o.worktreeRoot).toBe(`${o.storagePath}/.worktrees`);
    expect(Object.isFrozen(o)).toBe(true);
  });

  it.each([
    [{ storagePath: '', useGitWorktree: true }, 'options.storagePath'],
    [{ storagePath: 1, useGitWorktree: true }, 'options.storagePath'],
    [{ storagePath: '/x' }, 'options.useGitWorktree'],
    [
      { storagePath: '/x', useGitWorktree: true, patrolIntervalSeconds: 0 },
      'options.patrolIntervalSeconds',
    ],
    [
      { storagePath: '/x', useGitWorktree: true, staleAfterSeconds: -1 },
      'options.staleAfterSeconds',
    ],
    [
      { storagePath: '/x', useGitWorktree: true, progressCommitIntervalMs: 0 },
      'options.progressCommitIntervalMs',
    ],
    [
      { storagePath: '/x', useGitWorktree: true, progressCommitIntervalMs: Number.NaN },
      'options.progressCommitIntervalMs',
    ],
    [
      { storagePath: '/x', useGitWorktree: true, progressCommitIntervalMs: '1000' },
      'options.progressCommitIntervalMs',
    ],
    [
      { storagePath: '/x', useGitWorktree: true, progressCommitIntervalMs: 2 ** 31 },
      'options.progressCommitIntervalMs',
    ],
    [
      { storagePath: '/x', useGitWorktree: true, maxReassignments: 1.5 },
      'options.maxReassignments',
    ],
    [{ storagePath: '/x', useGitWorktree: true, maxWorkItemBytes: 0 }, 'options.maxWorkItemBytes'],
    [{ storagePath: '/x', useGitWorktree: true, baseBranch: 'a..b' }, 'options.baseBranch'],
    [{ storagePath: '/x', useGitWorktree: true, worktreeRoot: 'relative' }, 'options.worktreeRoot'],
    [{ storagePath: '/x', useGitWorktree: true, worktreeRoot: '/x' }, 'options.worktreeRoot'],
    [{ storagePath: '/x', useGitWorktree: true, liveness: {} }, 'options.liveness'],
    [
      { storagePath: '/x', useGitWorktree: true, author: { name: 'a<b', email: 'e' } },
      'options.author.name',
    ],
    [{ storagePath: '/x', useGitWorktree: true, clock: 5 }, 'options.clock'],
    [
      {
        storagePath: '/x',
        useGitWorktree: true,
        stateSigning: { key: '', signed: () => true, markSigned: () => undefined },
      },
      'options.stateSigning',
    ],
    [
      { storagePath: '/x', useGitWorktree: true, stateSigning: { key: 'k' } },
      'options.stateSigning',
    ],
    [
      {
        storagePath: '/x',
        useGitWorktree: true,
        // Without the record of the current commit a rollback could not be noticed.
        stateSigning: { key: 'k', signed: () => true, markSigned: () => undefined },
      },
      'options.stateSigning',
    ],
    [{ storagePath: '/x', useGitWorktree: true, stroagePath: '/y' }, 'options.stroagePath'],
  ])('rejects %j naming %s', (options, field) => {
    try {
      parseHookManagerOptions(options as never);
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(ConfigError);
      expect((err as ConfigError).details.field).toBe(field);
      expect((err as Error).message.startsWith(field)).toBe(true);
    }
  });
});

describe('hook errors in the catalog', () => {
  it.each([
    [new HookNotFoundError('hk-x'), 'FABRIC_ERR_HOOK_NOT_FOUND', 'not_found'],
    [
      new HookStateError('hk-x', 'no', { from: 'A', to: 'B' }),
      'FABRIC_ERR_HOOK_STATE',
      'failed_precondition',
    ],
    [new HookRetryLimitError('hk-x', 3, 3), 'FABRIC_ERR_HOOK_RETRY_LIMIT', 'resource_exhausted'],
    [
      new HookWorkItemTooLargeError('workItem', 9, 8),
      'FABRIC_ERR_HOOK_WORK_ITEM_TOO_LARGE',
      'resource_exhausted',
    ],
    [
      new HookStoreLockedError('/l', { pid: 1 }, 'locked'),
      'FABRIC_ERR_HOOK_STORE_LOCKED',
      'unavailable',
    ],
    [new HookStoreError('/s', 'broken'), 'FABRIC_ERR_HOOK_STORE', 'internal'],
    [new HookWorktreeError('bad'), 'FABRIC_ERR_HOOK_WORKTREE', 'failed_precondition'],
  ])('%s has a stable code and kind', (err, code, kind) => {
    expect(err).toBeInstanceOf(FabricError);
    expect(err.code).toBe(code);
    expect((err.constructor as unknown as { code: string }).code).toBe(code);
    expect(err.kind).toBe(kind);
    expect(err.toJSON().code).toBe(code);
  });

  it('is not confused by the cwd being a git repository', () => {
    // Sanity check for the cross-check above: git is available.
    expect(git(process.cwd(), '--version')).toMatch(/^git version/);
  });
});
