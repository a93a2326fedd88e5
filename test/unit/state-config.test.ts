import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseSidecarConfig } from '../../src/server/config-file.js';

const parse = (text: string, env: NodeJS.ProcessEnv = {}) =>
  parseSidecarConfig(text, 'fabric.yaml', { env, cwd: '/srv/app' });

describe('sidecar config: state', () => {
  it('defaults to .fabric/state.db under the working directory', () => {
    expect(parse('{}').state).toEqual({
      path: join('/srv/app', '.fabric', 'state.db'),
      synchronous: 'NORMAL',
      budgetLeasePercent: 1,
    });
  });

  it('takes a path (relative to the working directory) and synchronous', () => {
    expect(parse('state: { path: data/s.db, synchronous: FULL }').state).toEqual({
      path: '/srv/app/data/s.db',
      synchronous: 'FULL',
      budgetLeasePercent: 1,
    });
  });

  it('takes budgetLeasePercent from 0 to 10', () => {
    expect(parse('state: { path: s.db, budgetLeasePercent: 0 }').state).toMatchObject({
      budgetLeasePercent: 0,
    });
    expect(parse('state: { path: s.db, budgetLeasePercent: 2.5 }').state).toMatchObject({
      budgetLeasePercent: 2.5,
    });
    for (const bad of ['-1', '11', 'lots', '.nan']) {
      expect(() => parse(`state: { path: s.db, budgetLeasePercent: ${bad} }`)).toThrow(/state/);
    }
  });

  it('opts out with memory, in the file or with FABRIC_STATE', () => {
    expect(parse('state: memory').state).toBe('memory');
    expect(parse('{}', { FABRIC_STATE: 'memory' }).state).toBe('memory');
    expect(parse('{}', { FABRIC_STATE: '/var/lib/f.db' }).state).toMatchObject({
      path: '/var/lib/f.db',
    });
  });

  it('rejects unknown keys and values, naming them', () => {
    expect(() => parse('state: { path: a.db, sync: FULL }')).toThrow(/state\.sync/);
    expect(() => parse('state: { path: a.db, synchronous: OFF }')).toThrow(/state/);
    expect(() => parse('state: disk')).toThrow(/state/);
  });
});
