import { describe, expect, it } from 'vitest';
import { ConfigFileError } from '../../src/errors.js';
import { parseSidecarConfig } from '../../src/server/config-file.js';
import { pinnedCredentialProblem } from '../../src/server/pinned-credential.js';

const GOOD = 'a1B2c3D4e5F6g7H8i9J0kLmNoPqRsTuV_x';
const OTHER = 'Zy9Xw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0Fe_d';

/** Parses `agents:` with each credential passed as `${env:…}`, the way a deployment pins it. */
function parseAgents(...credentials: string[]) {
  const env: Record<string, string> = {};
  const agents = credentials.map((c, i) => {
    env[`PIN_${i}`] = c;
    return `  - { name: a${i}, credential: "\${env:PIN_${i}}" }`;
  });
  return parseSidecarConfig(`agents:\n${agents.join('\n')}\n`, 'fabric.yaml', { env });
}

/** The ConfigFileError a bad config throws (fails the test if it does not throw). */
function problem(fn: () => unknown): ConfigFileError {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(ConfigFileError);
    return error as ConfigFileError;
  }
  throw new Error('expected a ConfigFileError');
}

describe('pinned agent credentials', () => {
  it('accepts a long random token from the environment', () => {
    expect(parseAgents(GOOD, OTHER).agents.map((a) => a.credential)).toEqual([GOOD, OTHER]);
    expect(pinnedCredentialProblem(GOOD)).toBeUndefined();
  });

  it.each([
    ['short', 'Ab1_'.repeat(7), /at least 32 characters \(got 28\)/],
    ['repetitive', 'ab'.repeat(20), /too predictable \(about 40 bits/],
    ['a word list', 'passwordpasswordpasswordpassword', /too predictable/],
    ['spaces', `${GOOD} ${OTHER}`, /printable ASCII without spaces/],
    ['huge', GOOD.repeat(20), /at most 512 characters/],
  ])('refuses a %s token, naming the field and never echoing the value', (_, token, why) => {
    const err = problem(() => parseAgents(token));
    expect(err.message).toMatch(why);
    expect(err.message).toContain('agents.0.credential');
    expect(err.message).not.toContain(token.slice(0, 8));
  });

  it('refuses the same token pinned for two agents', () => {
    const err = problem(() => parseAgents(GOOD, GOOD));
    expect(err.message).toContain('agents.1.credential');
    expect(err.message).toContain('agents.0');
    expect(err.message).not.toContain(GOOD.slice(0, 8));
  });

  it('refuses two start-up agents with one name (they would share one agent and token)', () => {
    const err = problem(() =>
      parseSidecarConfig('agents: [{ name: w }, { name: w }]', 'fabric.yaml', { env: {} }),
    );
    expect(err.message).toContain('agents.1.name');
  });
});
