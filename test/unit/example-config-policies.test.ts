import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import { defaultConfigPath, loadSidecarConfig } from '../../src/server/config-file.js';

/** The policies `npm start` runs with, decided by the real engine for the guide's cases. */
describe('the shipped example config’s policies', () => {
  const cwd = '/srv/app';
  const config = loadSidecarConfig(defaultConfigPath(), { env: {}, cwd });
  const sandbox = join(cwd, '.fabric', 'sandbox');
  const fabric = new AgentFabric();
  for (const p of config.policies) fabric.policies.addPolicy(p);
  afterAll(() => fabric.close());
  const decide = (tool: string, params: Record<string, unknown>) =>
    fabric.policies.evaluateSync({ agentId: 'a', tool, params }).action;

  it('keeps protected/ read-only, however the path is spelled', () => {
    for (const path of [
      `${sandbox}/protected/x.txt`,
      `${sandbox}/protected/../protected/x.txt`,
      `${sandbox}//protected//x.txt`,
      `${sandbox}/./protected/sub/x.txt`,
    ]) {
      expect(decide('fs__write_file', { path, content: 'x' })).toBe('deny');
      expect(decide('fs__edit_file', { path, edits: [] })).toBe('deny');
    }
    expect(decide('fs__create_directory', { path: `${sandbox}/protected/new` })).toBe('deny');
    expect(
      decide('fs__move_file', { source: `${sandbox}/protected/x`, destination: `${sandbox}/y` }),
    ).toBe('deny');
    expect(
      decide('fs__move_file', { source: `${sandbox}/y`, destination: `${sandbox}/protected/x` }),
    ).toBe('deny');
  });

  it('declares how its filesystem server resolves paths, so the gateway resolves them alike', () => {
    // The rules above see resolved paths only behind the gateway (test/security/path-policy).
    const fs = config.upstreams.fs!;
    expect(fs.paths?.roots).toEqual([sandbox]);
    expect(fs.transport === 'stdio' && fs.args.at(-1)).toBe(sandbox);
  });

  it('allows reads everywhere and writes elsewhere, and asks a human before running python', () => {
    expect(decide('fs__read_text_file', { path: `${sandbox}/protected/x.txt` })).toBe('allow');
    expect(decide('fs__write_file', { path: `${sandbox}/notes.txt`, content: 'x' })).toBe('allow');
    expect(decide('execute_code', { language: 'python', code: '1' })).toBe('require_approval');
    expect(decide('execute_code', { language: 'bash', code: 'ls' })).toBe('allow');
  });
});
