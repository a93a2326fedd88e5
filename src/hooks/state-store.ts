/**
 * The hook state ref. Every hook is one JSON blob at `hooks/<shard>/<hookId>.json` in the tree
 * of the commit `refs/fabric/hooks` points at; every change is one commit on that ref, whose
 * history is the audit trail. Writes touch only the object store and that ref — never a
 * branch, the index or a working tree — and move the ref with `update-ref <new> <old>`, so a
 * crash leaves the old state or the new one, and a writer that lost track of the ref fails
 * instead of overwriting.
 *
 * Layout of the tree:
 *
 * ```text
 * format.json                    {"format":"agent-fabric/hooks","version":1}
 * hooks/<2 hex>/<hookId>.json    one record per hook (shard = 2 hex digits of the id)
 * ```
 *
 * @module
 */
import { createHash } from 'node:crypto';
import { rm, stat } from 'node:fs/promises';
import type { SimpleGit } from 'simple-git';
import { HookStoreError } from '../errors.js';
import { LooseObjectWriter, type ObjectFormat, type TreeEntry } from './git-objects.js';
import { RefUpdater, runGit } from './git-process.js';
import { HookRecordSchema, type Hook } from './hook.js';
import { hookShard, isHookId } from './hook-id.js';

/** The ref holding hook state. Not a branch: `git log refs/fabric/hooks` shows the history. */
export const HOOKS_REF = 'refs/fabric/hooks';
/** Version of the tree layout written by this code. */
export const HOOK_STORE_FORMAT_VERSION = 1;
const FORMAT_NAME = 'agent-fabric/hooks';

/** One committed change: the hook's new record and the commit message describing it. */
export interface StateChange {
  readonly record: Hook;
  readonly message: string;
}

/** Where the state store lives and how it writes. */
export interface StateStoreOptions {
  /** Folder git runs in (the store's work tree, or the bare repository). */
  readonly repoDir: string;
  /** Absolute `objects/` folder of the repository. */
  readonly objectsDir: string;
  readonly objectFormat: ObjectFormat;
  readonly fsync: boolean;
  readonly author: { readonly name: string; readonly email: string };
  readonly git: SimpleGit;
  /**
   * Called when a commit found the ref moved by someone else (to `found`, null: deleted) and
   * put this store's state back on it (at `restored`).
   */
  readonly onRefMoved?: ((found: string | null, restored: string) => void) | undefined;
  /** The state ref's lock file (`<git dir>/refs/fabric/hooks.lock`). */
  readonly refLockPath?: string | undefined;
  /** Called when a ref lock left by a git that died was removed (see {@link STALE_REF_LOCK_MS}). */
  readonly onRefLockRemoved?: ((path: string, ageMs: number) => void) | undefined;
}

/**
 * Age past which a lock of the state ref is taken for one left behind (by a git killed between
 * taking it and committing: the OOM killer, an agent's `git update-ref` killed half-way). A git
 * holds a ref lock for milliseconds; before, only a restart removed such a lock, and every
 * transition failed until then.
 */
export const STALE_REF_LOCK_MS = 60_000;

/** Reads and writes the state ref. Not safe for concurrent `commit` calls: the caller queues. */
export class HookStateStore {
  readonly #o: StateStoreOptions;
  readonly #writer: LooseObjectWriter;
  readonly #refs: RefUpdater;
  #head: string | undefined;
  #formatOid: string | undefined;
  /** shard -> (file name -> blob id) */
  #shards = new Map<string, ReadonlyMap<string, string>>();
  /** shard -> tree id */
  #shardTrees = new Map<string, string>();

  constructor(options: StateStoreOptions) {
    this.#o = options;
    this.#writer = new LooseObjectWriter(options.objectsDir, options.objectFormat, options.fsync);
    this.#refs = new RefUpdater(
      options.repoDir,
      options.fsync ? ['-c', 'core.fsync=reference', '-c', 'core.fsyncMethod=fsync'] : [],
    );
  }

  /** Stops the background `update-ref` process. */
  close(): void {
    this.#refs.close();
  }

  /** The commit the ref points at (`undefined` before the first hook). */
  get head(): string | undefined {
    return this.#head;
  }

  /**
   * Reads every hook from the ref's current commit. Every object read — the commit, its trees,
   * the records — is checked against its id: git reads an object file without doing so, and
   * with worktrees agents can write the object store (an object file rewritten under its name
   * would otherwise be read as the record it replaced).
   */
  async load(): Promise<Hook[]> {
    const head = await this.#readRef();
    this.#head = head;
    this.#shards = new Map();
    this.#shardTrees = new Map();
    this.#formatOid = undefined;
    if (head === undefined) return [];

    const commit = (await this.#readObjects([head], 'commit')).get(head)!;
    const rootOid = /^tree ([0-9a-f]+)\n/.exec(commit.toString('utf8'))?.[1];
    if (rootOid === undefined) throw this.#corrupt(`commit ${head} names no tree`);
    const root = this.#parseTree(
      rootOid,
      (await this.#readObjects([rootOid], 'tree')).get(rootOid)!,
    );
    this.#formatOid = root.find((e) => e.name === 'format.json' && e.type === 'blob')?.oid;
    if (this.#formatOid === undefined) throw this.#corrupt('format.json is missing');
    const hooksOid = root.find((e) => e.name === 'hooks' && e.type === 'tree')?.oid;
    const blobs: { path: string; oid: string; hookId: string }[] = [];
    if (hooksOid !== undefined) {
      const hooksTree = this.#parseTree(
        hooksOid,
        (await this.#readObjects([hooksOid], 'tree')).get(hooksOid)!,
      );
      for (const e of hooksTree) {
        if (e.type === 'tree' && /^[0-9a-f]{2}$/.test(e.name)) this.#shardTrees.set(e.name, e.oid);
      }
      const shardTrees = await this.#readObjects([...this.#shardTrees.values()], 'tree');
      for (const [shard, oid] of this.#shardTrees) {
        const entries = new Map<string, string>();
        for (const e of this.#parseTree(oid, shardTrees.get(oid)!)) {
          const path = `hooks/${shard}/${e.name}`;
          const file = /^([^/]+)\.json$/.exec(e.name);
          if (!file || e.type !== 'blob') continue; // not ours to keep
          const hookId = file[1]!;
          if (!isHookId(hookId) || hookShard(hookId) !== shard) {
            throw this.#corrupt(`unexpected entry ${path}`);
          }
          blobs.push({ path, oid: e.oid, hookId });
          entries.set(e.name, e.oid);
        }
        if (entries.size > 0) this.#shards.set(shard, entries);
      }
      // Anything else (foreign entries) is not ours to keep.
    }

    const contents = await this.#readObjects([this.#formatOid, ...blobs.map((b) => b.oid)], 'blob');
    const format = this.#parseJson(contents.get(this.#formatOid), 'format.json');
    const f = format as { format?: unknown; version?: unknown } | null;
    if (f?.format !== FORMAT_NAME || f.version !== HOOK_STORE_FORMAT_VERSION) {
      throw this.#corrupt(
        `format.json says ${JSON.stringify(format)}; this version reads ${FORMAT_NAME} v${HOOK_STORE_FORMAT_VERSION}`,
      );
    }
    return blobs.map(({ path, oid, hookId }) => {
      const parsed = HookRecordSchema.safeParse(this.#parseJson(contents.get(oid), path));
      if (!parsed.success || parsed.data.hookId !== hookId) {
        throw this.#corrupt(`${path} is not a valid hook record`, parsed.error);
      }
      return parsed.data;
    });
  }

  /**
   * Commits `changes` in order, one commit each, and moves the ref once, from the head it was
   * loaded at (or last moved to) to the last new commit. Returns the commit ids.
   * @throws HookStoreError when git fails or the ref moved under us; nothing is changed then.
   */
  async commit(changes: readonly StateChange[], now: number): Promise<string[]> {
    if (changes.length === 0) return [];
    const shards = new Map(this.#shards);
    const shardTrees = new Map(this.#shardTrees);
    const w = this.#writer;
    const commits: string[] = [];
    let parent = this.#head;
    try {
      const formatOid = this.#formatOid ?? w.blob(formatJson());
      for (const { record, message } of changes) {
        const shard = hookShard(record.hookId);
        // Compact: indentation of a deeply nested result multiplied its size by up to ~60.
        const blob = w.blob(`${JSON.stringify(record)}\n`);
        const entries = new Map(shards.get(shard) ?? []);
        entries.set(`${record.hookId}.json`, blob);
        shards.set(shard, entries);
        shardTrees.set(shard, w.tree([...entries].map(([name, oid]) => file(name, oid))));
        const hooksTree = w.tree([...shardTrees].map(([name, oid]) => dir(name, oid)));
        const root = w.tree([file('format.json', formatOid), dir('hooks', hooksTree)]);
        parent = w.commit({
          tree: root,
          parents: parent === undefined ? [] : [parent],
          name: this.#o.author.name,
          email: this.#o.author.email,
          time: now,
          message,
        });
        commits.push(parent);
      }
      // Objects first, then the ref: a crash in between leaves only unreachable objects.
      await w.flush();
      const expected = this.#head ?? w.zeroOid;
      try {
        await this.#refs.update(HOOKS_REF, parent!, expected);
      } catch (err) {
        // The store lock makes this store the ref's only writer: a ref that moved was moved by
        // someone else — an agent in a worktree (which shares the git directory) or a person.
        // Our chain is the state; it goes back on the ref, and the move is reported.
        const found = await this.#readRef();
        if (found === (this.#head ?? undefined)) {
          // Not moved: a lock on the ref stopped it. One left behind is removed, once.
          if (!(await this.#removeStaleRefLock())) throw err;
          await this.#refs.update(HOOKS_REF, parent!, expected);
        } else {
          await this.#refs.update(HOOKS_REF, parent!, found ?? w.zeroOid);
          this.#o.onRefMoved?.(found ?? null, parent!);
        }
      }
      this.#formatOid = formatOid;
    } catch (err) {
      w.discard();
      throw new HookStoreError(
        this.#o.repoDir,
        `could not commit hook state: ${(err as Error).message}`,
        { ref: HOOKS_REF, operation: 'commit' },
        { cause: err },
      );
    }
    this.#head = parent;
    this.#shards = shards;
    this.#shardTrees = shardTrees;
    return commits;
  }

  /**
   * Removes the state ref's lock file when it is older than {@link STALE_REF_LOCK_MS} (its
   * modification time); true when it did.
   */
  async #removeStaleRefLock(): Promise<boolean> {
    const path = this.#o.refLockPath;
    if (path === undefined) return false;
    const info = await stat(path).catch(() => undefined);
    if (info === undefined) return false;
    const ageMs = Date.now() - info.mtimeMs;
    if (!(ageMs > STALE_REF_LOCK_MS)) return false;
    await rm(path, { force: true });
    this.#o.onRefLockRemoved?.(path, ageMs);
    return true;
  }

  async #readRef(): Promise<string | undefined> {
    const out = await this.#o.git.raw([
      'for-each-ref',
      '--format=%(refname) %(objectname)',
      HOOKS_REF,
    ]);
    for (const line of out.split('\n')) {
      const [name, oid] = line.split(' ');
      if (name === HOOKS_REF && oid) return oid;
    }
    return undefined;
  }

  /**
   * Reads objects of `type` with one `cat-file --batch`, each checked against its id.
   * @throws HookStoreError for an object that is missing, of another type, or whose content
   *   does not hash to its id.
   */
  async #readObjects(
    oids: readonly string[],
    type: 'blob' | 'tree' | 'commit',
  ): Promise<Map<string, Buffer>> {
    const result = new Map<string, Buffer>();
    if (oids.length === 0) return result;
    const out = await runGit(this.#o.repoDir, ['cat-file', '--batch'], `${oids.join('\n')}\n`);
    let pos = 0;
    for (const oid of oids) {
      const nl = out.indexOf(0x0a, pos);
      const header = out.subarray(pos, nl < 0 ? out.length : nl).toString('utf8');
      const m = /^([0-9a-f]+) (\w+) (\d+)$/.exec(header);
      if (nl < 0 || !m || m[1] !== oid) throw this.#corrupt(`object missing: ${header}`);
      const size = Number(m[3]);
      const content = out.subarray(nl + 1, nl + 1 + size);
      pos = nl + 1 + size + 1;
      const actual = createHash(this.#o.objectFormat)
        .update(`${m[2]} ${size}\0`)
        .update(content)
        .digest('hex');
      if (m[2] !== type || content.length !== size || actual !== oid) {
        throw this.#corrupt(
          `object ${oid} is not the ${type} it names (the object store was altered: it reads as a ${m[2]} hashing to ${actual})`,
        );
      }
      result.set(oid, content);
    }
    return result;
  }

  /** The entries of a tree object (git's format: `<mode> <name>\0<binary id>` each). */
  #parseTree(
    oid: string,
    content: Buffer,
  ): { name: string; oid: string; type: 'blob' | 'tree' | 'commit' }[] {
    const hashLength = this.#o.objectFormat === 'sha1' ? 20 : 32;
    const entries: { name: string; oid: string; type: 'blob' | 'tree' | 'commit' }[] = [];
    let pos = 0;
    while (pos < content.length) {
      const space = content.indexOf(0x20, pos);
      const nul = content.indexOf(0, space + 1);
      if (space < 0 || nul < 0 || nul + 1 + hashLength > content.length) {
        throw this.#corrupt(`tree ${oid} is malformed`);
      }
      const mode = content.toString('latin1', pos, space);
      entries.push({
        name: content.toString('utf8', space + 1, nul),
        oid: content.toString('hex', nul + 1, nul + 1 + hashLength),
        type: mode === '40000' ? 'tree' : mode === '160000' ? 'commit' : 'blob',
      });
      pos = nul + 1 + hashLength;
    }
    return entries;
  }

  #corrupt(message: string, cause?: unknown): HookStoreError {
    return new HookStoreError(
      this.#o.repoDir,
      `${HOOKS_REF} is unreadable: ${message}`,
      { ref: HOOKS_REF, operation: 'load' },
      cause === undefined ? undefined : { cause },
    );
  }

  #parseJson(content: Buffer | undefined, path: string): unknown {
    if (content === undefined) throw this.#corrupt(`${path} is missing from the object store`);
    try {
      return JSON.parse(content.toString('utf8')) as unknown;
    } catch (err) {
      throw this.#corrupt(`${path} is not JSON: ${(err as Error).message}`);
    }
  }
}

function file(name: string, oid: string): TreeEntry {
  return { mode: '100644', name, oid };
}

function dir(name: string, oid: string): TreeEntry {
  return { mode: '40000', name, oid };
}

function formatJson(): string {
  return `${JSON.stringify({ format: FORMAT_NAME, version: HOOK_STORE_FORMAT_VERSION })}\n`;
}
