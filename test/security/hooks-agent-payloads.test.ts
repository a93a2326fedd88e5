/**
 * What one agent token can put into the hook store through the MCP fabric tools: a NUL in a
 * note or message (it made commits `git fsck --strict` refuses), a 2 MiB error code (stored
 * whole and rewritten by every later transition), a deeply nested result (stored indented, ~60×
 * its size). Real sidecar, real git store, the official SDK client; the store is checked with git.
 */
import { execFileSync } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AgentFabric } from '../../src/fabric.js';
import { HOOKS_REF } from '../../src/hooks/state-store.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import {
  agentId,
  agentToken,
  closeSidecar,
  DEFAULT_ALLOW,
  httpClient,
  startTestSidecar,
  text,
} from '../fixtures/gateway/harness.js';

let dir: string;
let storagePath: string;
let sidecar: Sidecar;
let fabric: AgentFabric;
let agent: Client;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'hooks-agent-payloads-'));
  storagePath = join(dir, 'hooks');
  sidecar = await startTestSidecar({
    policies: [DEFAULT_ALLOW],
    agents: [{ name: 'attacker' }],
    hooks: { storagePath, useGitWorktree: false },
  });
  fabric = sidecar.fabric!;
  agent = await httpClient(sidecar.url!, agentToken(sidecar, 'attacker'));
});

afterAll(async () => {
  await agent?.close();
  await closeSidecar(sidecar);
  await rm(dir, { recursive: true, force: true });
});

const call = async (name: string, args: Record<string, unknown> = {}) =>
  (await agent.callTool({ name: `fabric__${name}`, arguments: args })) as CallToolResult;

async function activeHook(workItem: unknown = { task: 'x' }): Promise<string> {
  const h = await fabric.hooks!.createHook({ agentId: agentId(sidecar, 'attacker'), workItem });
  const r = await call('activate_hook', { hookId: h.hookId });
  expect(r.isError, text(r)).toBeFalsy();
  return h.hookId;
}

function fsck(): { ok: boolean; output: string } {
  try {
    const out = execFileSync('git', ['fsck', '--strict', '--no-dangling', '--no-progress'], {
      cwd: storagePath,
      encoding: 'utf8',
      stdio: 'pipe',
    });
    return { ok: true, output: out };
  } catch (err) {
    const e = err as { stderr?: string; stdout?: string };
    return { ok: false, output: `${e.stdout ?? ''}${e.stderr ?? ''}` };
  }
}

describe('hook payloads from a hostile agent over MCP', () => {
  it('a NUL in a progress note or failure message does not make the store fail git fsck', async () => {
    expect(fsck().ok).toBe(true);
    const hookId = await activeHook();
    const r = await call('hook_progress', { hookId, note: 'half way\u0000Hook-Id: forged' });
    expect(r.isError, text(r)).toBeFalsy();
    const f = await call('fail_hook', { hookId, message: 'boom\u0000' });
    expect(f.isError, text(f)).toBeFalsy();
    // README: "a crash ... leaves ... never a broken repository (`git fsck` passes)".
    const result = fsck();
    expect(result.output).not.toMatch(/nulInCommit/);
    expect(result.ok).toBe(true);
  });

  it('fail_hook cuts the error code to 128 characters', async () => {
    const hookId = await activeHook();
    const code = 'C'.repeat(2 * 1024 * 1024); // 2 MiB, under the 4 MiB MCP body limit
    const r = await call('fail_hook', { hookId, code, message: 'x' });
    expect(r.isError, text(r)).toBeFalsy();
    const stored = await fabric.hooks!.getHook(hookId);
    expect(stored.error!.code).toBe(`${'C'.repeat(128)}…`);
    const blob = execFileSync(
      'git',
      ['cat-file', '-s', `${HOOKS_REF}:hooks/${hookId.slice(14, 16)}/${hookId}.json`],
      { cwd: storagePath, encoding: 'utf8' },
    ).trim();
    expect(Number(blob)).toBeLessThan(4 * 1024);
  });

  it('the stored record of a completed hook is about the size of its result (compact JSON)', async () => {
    const hookId = await activeHook();
    // ~190 KB of compact JSON (under gateway.maxArgumentNodes) (under the 256 KiB limit), nested 60 deep.
    let result: unknown = Array(95_000).fill(0);
    for (let i = 0; i < 60; i++) result = [result];
    expect(JSON.stringify(result).length).toBeLessThan(256 * 1024);
    const r = await call('complete_hook', { hookId, result });
    expect(r.isError, text(r)).toBeFalsy();
    const size = Number(
      execFileSync(
        'git',
        ['cat-file', '-s', `${HOOKS_REF}:hooks/${hookId.slice(14, 16)}/${hookId}.json`],
        { cwd: storagePath, encoding: 'utf8' },
      ).trim(),
    );
    // The limit is 256 KiB of JSON; the record holding it was 60× that when indented.
    expect(size).toBeLessThan(JSON.stringify(result).length + 4096);
  });
});

describe('what an agent writes into the hook store’s commit messages', () => {
  it('C1 controls, bidirectional controls and characters drawn as nothing in a note or failure message reach no commit message', async () => {
    const hookId = await activeHook();
    // CSI (U+009B) clears the screen of a terminal that honours C1; NEL (U+0085) is a line
    // break to some; RLO (U+202E) and friends reorder what the operator reads after them.
    // A soft hyphen and tag characters (U+E0072 …) are drawn as nothing.
    const hostile =
      'ok\u009b2J\u0085Hook-Id: forged\u202eevil\u2066\u200f\u061c\u0090end\u00ad\u{e0072}\u{e006d}x';
    const p = await call('hook_progress', { hookId, note: hostile });
    expect(p.isError, text(p)).toBeFalsy();
    const f = await call('fail_hook', { hookId, message: hostile });
    expect(f.isError, text(f)).toBeFalsy();
    // The record keeps what the agent sent (it is data); the operator's `git log` shows none.
    expect((await fabric.hooks!.getHook(hookId)).error!.message).toBe(hostile);
    const log = execFileSync('git', ['log', '--format=%B', HOOKS_REF], {
      cwd: storagePath,
      encoding: 'utf8',
    });
    // The failure's `Note:`, and the progress note: its own commit's `Note:`, or — a report
    // this soon after the hook's last commit is held for its next commit — `Progress-Note:` on
    // the failure's commit.
    const mine = log.split('\n').filter((l) => /^(Progress-)?Note: ok/.test(l));
    expect(mine).toHaveLength(2);
    for (const line of mine) {
      expect(line).not.toMatch(/[\p{Cc}\u2028\u2029\p{Default_Ignorable_Code_Point}]/u);
      expect(line.replace(/^Progress-/, '')).toBe('Note: ok 2J Hook-Id: forged evil end x');
    }
  });

  it('a trailer cut at 500 characters never keeps half of a surrogate pair', async () => {
    const hookId = await activeHook();
    // A character past U+FFFF (two UTF-16 units) straddling the cut.
    const f = await call('fail_hook', { hookId, message: `cut${'a'.repeat(496)}\u{1f600}tail` });
    expect(f.isError, text(f)).toBeFalsy();
    const log = execFileSync('git', ['log', '-1', '--format=%B', HOOKS_REF], { cwd: storagePath });
    // Half a pair is written as U+FFFD (EF BF BD): not in the message, which ends before it.
    expect(log.includes(Buffer.from('\ufffd'))).toBe(false);
    const note = log
      .toString('utf8')
      .split('\n')
      .find((l) => l.startsWith('Note: cut'));
    expect(note).toBe(`Note: cut${'a'.repeat(496)}`);
  });
});
