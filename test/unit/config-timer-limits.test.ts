/**
 * Regression (review finding): timed settings with no upper bound. Node fires a timer whose delay
 * is past 2^31 - 1 ms (~24.8 days) after 1 ms, so `callTimeoutSeconds: 3000000` failed every call
 * at once as timed out (FABRIC_ERR_UPSTREAM_TIMEOUT "within 3000000000 ms"), and
 * `http.keepAliveSeconds: 3000000` wrote a keep-alive comment on every open stream each
 * millisecond. Such values are refused at load, naming the key and the limit.
 */
import { describe, expect, it } from 'vitest';
import { ConfigError, ConfigFileError } from '../../src/errors.js';
import { parseToolTasksOptions } from '../../src/gateway/tool-tasks.js';
import { upstreamSpecSchema } from '../../src/gateway/upstream-config.js';
import { parseHookManagerOptions } from '../../src/hooks/hook-manager-options.js';
import { MAX_TIMER_MS, MAX_TIMER_SECONDS } from '../../src/scheduler/task-waiters.js';
import { parseSidecarConfig, shutdownTimeoutMs } from '../../src/server/config-file.js';

const SECONDS_LIMIT = 'must be at most 2147483 seconds (24.8 days)';
const MS_LIMIT = 'must be at most 2147483647 ms (24.8 days)';

/** The config problems of `config` (JSON), as `path: message`. */
function problems(config: unknown): string[] {
  try {
    parseSidecarConfig(JSON.stringify(config), 'c.json', { env: {} });
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigFileError);
    const all = (error as ConfigFileError).details.problems as { path: string; message: string }[];
    return all.map((p) => `${p.path}: ${p.message}`);
  }
  return [];
}

/** A config with every timed setting at `seconds` (or its ms equivalent). */
function everyTimedSetting(seconds: number, ms: number): unknown {
  return {
    http: { keepAliveSeconds: seconds, bodyTimeoutSeconds: seconds },
    upstreams: {
      fs: {
        command: 'node',
        callTimeoutSeconds: seconds,
        startTimeoutSeconds: seconds,
        restart: { initialDelayMs: ms, maxDelayMs: ms },
      },
    },
    approvals: { timeoutSeconds: seconds },
    gateway: {
      shutdownGraceSeconds: seconds,
      tasks: { defaultTtlSeconds: seconds, maxTtlSeconds: seconds },
    },
    hooks: {
      storagePath: '/tmp/hooks',
      patrolIntervalSeconds: seconds,
      progressCommitIntervalMs: ms,
    },
    nats: { url: 'nats://127.0.0.1:4222', connectTimeoutMs: ms },
  };
}

describe('timed settings past setTimeout’s limit', () => {
  it('the limit is setTimeout’s, in seconds and in ms', () => {
    expect(MAX_TIMER_MS).toBe(2_147_483_647);
    expect(MAX_TIMER_SECONDS).toBe(2_147_483);
  });

  it('refuses each one at load, naming the key and the limit', () => {
    expect(problems(everyTimedSetting(3_000_000, 3_000_000_000)).sort()).toEqual(
      [
        `http.keepAliveSeconds: ${SECONDS_LIMIT}`,
        `http.bodyTimeoutSeconds: ${SECONDS_LIMIT}`,
        `upstreams.fs.callTimeoutSeconds: ${SECONDS_LIMIT}`,
        `upstreams.fs.startTimeoutSeconds: ${SECONDS_LIMIT}`,
        `upstreams.fs.restart.initialDelayMs: ${MS_LIMIT}`,
        `upstreams.fs.restart.maxDelayMs: ${MS_LIMIT}`,
        `approvals.timeoutSeconds: ${SECONDS_LIMIT}`,
        `gateway.shutdownGraceSeconds: ${SECONDS_LIMIT}`,
        `gateway.tasks.defaultTtlSeconds: ${SECONDS_LIMIT}`,
        `gateway.tasks.maxTtlSeconds: ${SECONDS_LIMIT}`,
        `hooks.patrolIntervalSeconds: ${SECONDS_LIMIT}`,
        `hooks.progressCommitIntervalMs: ${MS_LIMIT}`,
        `nats.connectTimeoutMs: ${MS_LIMIT}`,
      ].sort(),
    );
  });

  it('accepts each one at the limit', () => {
    expect(problems(everyTimedSetting(MAX_TIMER_SECONDS, MAX_TIMER_MS))).toEqual([]);
  });

  it('the error names the file, the line and the key', () => {
    const yaml = 'upstreams:\n  fs:\n    command: node\n    callTimeoutSeconds: 3000000\n';
    expect(() => parseSidecarConfig(yaml, 'f.yaml', { env: {} })).toThrow(
      `f.yaml:4: upstreams.fs.callTimeoutSeconds: ${SECONDS_LIMIT}`,
    );
  });

  it('a programmatic upstream spec is refused alike', () => {
    const parsed = upstreamSpecSchema.safeParse({ command: 'x', callTimeoutSeconds: 3_000_000 });
    expect(parsed.success).toBe(false);
    expect(parsed.error?.issues[0]).toMatchObject({
      path: ['callTimeoutSeconds'],
      message: SECONDS_LIMIT,
    });
  });

  it('programmatic task ttls and the hook patrol and progress periods are refused with a ConfigError', () => {
    expect(() => parseToolTasksOptions({ maxTtlMs: MAX_TIMER_MS + 1 })).toThrow(ConfigError);
    expect(() => parseToolTasksOptions({ maxTtlMs: MAX_TIMER_MS + 1 })).toThrow(
      `tasks.maxTtlMs ${MS_LIMIT}`,
    );
    expect(parseToolTasksOptions({ maxTtlMs: MAX_TIMER_MS }).maxTtlMs).toBe(MAX_TIMER_MS);
    expect(() =>
      parseHookManagerOptions({
        storagePath: '/tmp/hooks',
        useGitWorktree: false,
        patrolIntervalSeconds: 3_000_000,
      }),
    ).toThrow(/options\.patrolIntervalSeconds.*must be at most 2147483 seconds \(24\.8 days\)/);
    const hooks = { storagePath: '/tmp/hooks', useGitWorktree: false };
    expect(() =>
      parseHookManagerOptions({ ...hooks, progressCommitIntervalMs: MAX_TIMER_MS + 1 }),
    ).toThrow(`options.progressCommitIntervalMs ${MS_LIMIT}, got ${MAX_TIMER_MS + 1}`);
    expect(
      parseHookManagerOptions({ ...hooks, progressCommitIntervalMs: MAX_TIMER_MS })
        .progressCommitIntervalMs,
    ).toBe(MAX_TIMER_MS);
  });
});

describe('shutdownTimeoutSeconds', () => {
  it('defaults to the grace + 30 s, and a value set must exceed the grace', () => {
    const parse = (c: unknown) => parseSidecarConfig(JSON.stringify(c), 'c.json', { env: {} });
    expect(shutdownTimeoutMs(parse({}))).toBe(35_000);
    expect(shutdownTimeoutMs(parse({ gateway: { shutdownGraceSeconds: 60 } }))).toBe(90_000);
    expect(shutdownTimeoutMs(parse({ shutdownTimeoutSeconds: 6 }))).toBe(6_000);
    expect(problems({ shutdownTimeoutSeconds: 5 })).toEqual([
      'shutdownTimeoutSeconds: must be greater than gateway.shutdownGraceSeconds (5): the shutdown includes that grace',
    ]);
    expect(problems({ shutdownTimeoutSeconds: 3_000_000 })).toEqual([
      `shutdownTimeoutSeconds: ${SECONDS_LIMIT}`,
    ]);
  });
});
