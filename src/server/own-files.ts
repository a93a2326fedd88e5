/**
 * The sidecar's own files against the folders its upstreams serve to agents. The state file
 * (with its `-wal` and `-shm` beside it) holds the key every start-up agent's credential is
 * derived from, and the agents' ids: an agent that can read it through a filesystem upstream —
 * one rooted at the project folder the sidecar runs in, which holds `.fabric/` — computes
 * every other start-up agent's token and acts as it. So a start whose state file lies inside a
 * folder a local (stdio) upstream declares in `paths.roots` is refused, before the file is
 * created. The audit log (agents' ids, tool names, argument digests) and the hook store (every
 * agent's work items, results and notes) in such a folder are logged as warnings.
 *
 * Only the declared `paths.roots` of stdio upstreams are known to be on this machine's disk; a
 * server's own arguments are not read (the gateway cannot tell which of them are folders), and a
 * remote upstream's roots are on its host.
 *
 * @module
 */
import { existsSync, realpathSync } from 'node:fs';
import { basename, dirname, isAbsolute, join, relative, resolve } from 'node:path';
import { ConfigError } from '../errors.js';
import type { UpstreamSpec } from '../gateway/upstream-config.js';
import type { SidecarConfig } from './config-file.js';

/** A file of the sidecar's, and what an agent that reads it gets. */
export interface OwnFile {
  /** The config field that names it (`state.path`). */
  readonly field: string;
  readonly path: string;
  /** What reading it gives an agent, for the message. */
  readonly holds: string;
}

/** `path` with every symlink of its longest existing prefix resolved (the rest appended). */
function real(path: string): string {
  let head = resolve(path);
  const tail: string[] = [];
  for (;;) {
    if (existsSync(head)) {
      try {
        return join(realpathSync(head), ...tail);
      } catch {
        return join(head, ...tail);
      }
    }
    const parent = dirname(head);
    if (parent === head) return join(head, ...tail);
    tail.unshift(basename(head));
    head = parent;
  }
}

function inside(root: string, path: string): boolean {
  const rel = relative(root, path);
  return rel === '' || (!rel.startsWith('..') && !isAbsolute(rel));
}

/** The first (upstream, root) of `upstreams` whose declared root holds `path`, if any. */
function servedBy(
  upstreams: Readonly<Record<string, UpstreamSpec>>,
  path: string,
): { upstream: string; root: string } | undefined {
  const target = real(path);
  for (const [name, spec] of Object.entries(upstreams)) {
    if (spec.transport !== 'stdio') continue;
    for (const root of spec.paths?.roots ?? []) {
      if (inside(real(root), target)) return { upstream: name, root };
    }
  }
  return undefined;
}

/** The sidecar's own files of `config`: the state file unless `withState` is false. */
export interface OwnFiles {
  /** Refused inside a root. */
  readonly state: OwnFile | undefined;
  /** Warned about inside a root. */
  readonly warnOnly: readonly OwnFile[];
}

/** The files of `config` {@link checkOwnFiles} looks for (the state file when it is opened). */
export function ownFiles(config: SidecarConfig, withState = true): OwnFiles {
  const state =
    withState && config.state !== undefined && config.state !== 'memory'
      ? {
          field: 'state.path',
          path: config.state.path,
          holds: "the key every start-up agent's token is derived from",
        }
      : undefined;
  const warnOnly: OwnFile[] = [];
  if (config.audit !== false && config.audit !== undefined) {
    warnOnly.push({
      field: 'audit.path',
      path: config.audit.path,
      holds: "every agent's calls (agent ids, tools, argument digests)",
    });
  }
  if (config.hooks !== undefined) {
    warnOnly.push({
      field: 'hooks.storagePath',
      path: config.hooks.storagePath,
      holds: "every agent's hooks (work items, results, notes)",
    });
  }
  return { state, warnOnly };
}

/**
 * Refuses (`ConfigError` on `state.path`) a state file inside a stdio upstream's declared root,
 * and returns a warning for each other file inside one.
 */
export function checkOwnFiles(
  upstreams: Readonly<Record<string, UpstreamSpec>>,
  { state, warnOnly }: OwnFiles,
): string[] {
  if (state !== undefined) {
    const hit = servedBy(upstreams, state.path);
    if (hit !== undefined) {
      throw new ConfigError(
        state.field,
        `${JSON.stringify(state.path)} is inside ${JSON.stringify(hit.root)}, a root of upstream ${hit.upstream} (paths.roots): ` +
          `an agent could read it there and get ${state.holds}; put the state file outside every upstream's roots`,
      );
    }
  }
  const warnings: string[] = [];
  for (const file of warnOnly) {
    const hit = servedBy(upstreams, file.path);
    if (hit !== undefined) {
      warnings.push(
        `${file.field} ${JSON.stringify(file.path)} is inside ${JSON.stringify(hit.root)}, a root of upstream ${hit.upstream} (paths.roots): agents can read ${file.holds} there`,
      );
    }
  }
  return warnings;
}
