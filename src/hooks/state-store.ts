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
 * hooks/<2 hex>/<hookId>.live    the same blob again, for a hook not finished (an index entry)
 * hooks/<2 hex>/.index           format.json's blob: this shard's `.live` entries are complete
 * ```
 *
 * The `.live` entries let `load()` read only the records of hooks that are not finished
 * (PENDING, ACTIVE, ABANDONED: the work that must run) and leave the finished ones for
 * {@link HookStateStore.readRecords}, so opening costs the live work, not the history. They
 * live in the shard trees every commit rewrites anyway, so a commit writes no extra object.
 * A version from before them reads only `*.json` entries and drops the rest from the shards it
 * rewrites — `.index` with them — so a shard without `.index` is read whole, as before, and
 * indexed at the next commit.
 *
 * With {@link StateSigning} (a key that outlives the process), every commit ends in a
 * `Fabric-State-MAC:` trailer over its tree and parents, and `load()` verifies the head: the
 * repository is writable by agents with worktrees, so a head moved while no sidecar ran is
 * otherwise indistinguishable from the store's own. The MAC does not tell an old commit from the
 * newest, so the state file also records the current commit after each one: a head moved back
 * to an earlier genuine commit is undone at load like a forgery. Without signing, a head that
 * carries a MAC is refused, and so is an unsigned head on top of a commit that does (see
 * {@link SIGNED_ANCESTOR_LOOKBACK}): this store's unsigned commits would be quarantined later.
 *
 * @module
 */
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { rm, stat } from 'node:fs/promises';
import type { SimpleGit } from 'simple-git';
import { HookStateRollbackError, HookStoreError, HookStoreSignedError } from '../errors.js';
import { LooseObjectWriter, type ObjectFormat, type TreeEntry } from './git-objects.js';
import { RefUpdater, runGit } from './git-process.js';
import type { StateQuarantinedEvent } from './hook-events.js';
import { HookRecordSchema, type Hook } from './hook.js';
import { hookShard, isHookId } from './hook-id.js';
import { isFinishedStatus } from './hook-status.js';

/** The ref holding hook state. Not a branch: `git log refs/fabric/hooks` shows the history. */
export const HOOKS_REF = 'refs/fabric/hooks';
/** Where a state head that failed verification at load is kept (`<prefix><UTC time>-<id>`). */
export const QUARANTINE_REF_PREFIX = 'refs/fabric/quarantine/hooks-';
/** Version of the tree layout written by this code. */
export const HOOK_STORE_FORMAT_VERSION = 1;
const FORMAT_NAME = 'agent-fabric/hooks';

/** A shard's entry saying its `<hookId>.live` entries are complete (see the module's layout). */
const INDEX_ENTRY = '.index';
/** The suffix of a hook's index entry: it is not finished (see the module's layout). */
const LIVE_SUFFIX = '.live';

/**
 * What {@link HookStateStore.load} read: every hook that is not finished (and every hook of a
 * shard without an index), and the finished ones left on the ref, unread (id → record blob).
 */
export interface LoadedState {
  readonly records: Hook[];
  readonly deferred: ReadonlyMap<string, string>;
}

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
  /** Signs every commit and verifies the head at load; without it, neither (see {@link StateSigning}). */
  readonly signing?: StateSigning | undefined;
  /** Called when the head at load failed verification and was quarantined. */
  readonly onQuarantined?: ((event: StateQuarantinedEvent) => void) | undefined;
}

/**
 * The key that signs the state ref's commits, the "signed since" marker and the record of the
 * current state commit, kept outside git (in the durable state): a store that has written a
 * signed commit refuses an unsigned head from then on, while one that has not takes its legacy
 * head once and signs from there; a head that is not the recorded commit or a signed descendant
 * of it (a crash between the ref update and the record) is a rollback, undone at load.
 */
export interface StateSigning {
  /** The MAC key (a secret: never logged, never written to the repository). */
  readonly key: string;
  /** True once this store has written (or verified) a signed commit: the marker is set. */
  readonly signed: () => boolean;
  /** Sets the marker (called once, after the first signed commit is on the ref). */
  readonly markSigned: () => void;
  /** The state commit recorded as current, or undefined (none recorded yet: an older file). */
  readonly recordedHead: () => string | undefined;
  /** Records `oid` as the current state commit (called after each commit is on the ref). */
  readonly recordHead: (oid: string) => void;
}

/** Why a state head was quarantined at load (see {@link StateQuarantinedEvent}). */
type QuarantineReason = StateQuarantinedEvent['reason'];

/** The commit-message trailer holding a state commit's MAC (the message's last line). */
export const STATE_MAC_TRAILER = 'Fabric-State-MAC';
const MAC_LINE = new RegExp(`\\n${STATE_MAC_TRAILER}: ([0-9a-f]{64})\\n?$`);

/**
 * Age past which a lock of the state ref is taken for one left behind (by a git killed between
 * taking it and committing: the OOM killer, an agent's `git update-ref` killed half-way). A git
 * holds a ref lock for milliseconds; before, only a restart removed such a lock, and every
 * transition failed until then.
 */
export const STALE_REF_LOCK_MS = 60_000;

/** Commits read at a time while looking back for the newest one that verifies. */
const VERIFY_WALK_CHUNK = 512;

/**
 * How far back (first parents) a store without the key looks for a signed commit below an
 * unsigned head before it opens. The store refuses a signed head, and since it did, nothing it
 * writes comes after one; only an earlier version (or someone by hand) left unsigned commits on
 * signed history, and the next start with the key quarantines them all. Bounded so a long
 * history never signed costs a start at most this many commits read, in one `git rev-list`: beyond
 * it the store opens as before.
 */
export const SIGNED_ANCESTOR_LOOKBACK = 4096;

/** Reads and writes the state ref. Not safe for concurrent `commit` calls: the caller queues. */
export class HookStateStore {
  readonly #o: StateStoreOptions;
  readonly #writer: LooseObjectWriter;
  readonly #refs: RefUpdater;
  #head: string | undefined;
  /** The "signed since" marker is known to be set (read once, not at every commit). */
  #marked = false;
  #formatOid: string | undefined;
  /** shard -> (file name -> blob id): records, their `.live` entries and `.index` */
  #shards = new Map<string, ReadonlyMap<string, string>>();
  /** Shards loaded without an index (whose trees the next commit rewrites with one). */
  #unindexed = new Set<string>();
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
   * Reads the hooks from the ref's current commit: the records of those not finished, and of
   * every hook in a shard without an index (see the module's layout); the finished ones of
   * indexed shards are returned unread, as `deferred`. Every object read — the commit, its trees,
   * the records — is checked against its id: git reads an object file without doing so, and
   * with worktrees agents can write the object store (an object file rewritten under its name
   * would otherwise be read as the record it replaced). With signing, the head is verified
   * first (see {@link StateSigning}): one that fails, or that is older than the commit the state
   * file records, is quarantined and the state it replaced loaded; a legacy head of a store
   * never signed is signed at once.
   * @throws HookStoreSignedError without signing, when the head carries a MAC or is on top of a
   *   commit that does.
   * @throws HookStateRollbackError when the head is older than the recorded commit and that
   *   commit cannot be put back.
   */
  async load(now: number = Date.now()): Promise<LoadedState> {
    const tip = await this.#readRef();
    this.#shards = new Map();
    this.#shardTrees = new Map();
    this.#unindexed = new Set();
    this.#formatOid = undefined;
    this.#head = undefined;
    const signing = this.#o.signing;
    let loaded: LoadedHead | undefined;
    if (signing !== undefined) {
      loaded = await this.#verifiedHead(tip, signing, now);
    } else if (tip !== undefined) {
      loaded = { head: tip, commit: await this.#readCommit(tip), adopt: false };
      // Without the key this store's commits would be unsigned, and the next start with the key
      // would quarantine them (with their hook changes): refused before anything is written.
      if (loaded.commit.mac !== undefined) throw new HookStoreSignedError(this.#o.repoDir, tip);
      // So is an unsigned head on top of signed history (left by an earlier version's memory
      // sidecar, or by hand): that start quarantines it and everything built on it.
      const signed = await this.#signedAncestor(loaded.commit);
      if (signed !== undefined) {
        throw new HookStoreSignedError(this.#o.repoDir, tip, signed);
      }
    }
    if (loaded === undefined) return { records: [], deferred: new Map() };
    const { head, commit, adopt } = loaded;
    this.#head = head;
    const rootOid = commit.tree;
    const root = this.#parseTree(
      rootOid,
      (await this.#readObjects([rootOid], 'tree')).get(rootOid)!,
    );
    this.#formatOid = root.find((e) => e.name === 'format.json' && e.type === 'blob')?.oid;
    if (this.#formatOid === undefined) throw this.#corrupt('format.json is missing');
    const hooksOid = root.find((e) => e.name === 'hooks' && e.type === 'tree')?.oid;
    const blobs: { path: string; oid: string; hookId: string }[] = [];
    const deferred = new Map<string, string>();
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
        const live = new Map<string, string>();
        let indexed = false;
        const records: { path: string; oid: string; hookId: string }[] = [];
        for (const e of this.#parseTree(oid, shardTrees.get(oid)!)) {
          const path = `hooks/${shard}/${e.name}`;
          if (e.type !== 'blob') continue; // not ours to keep
          if (e.name === INDEX_ENTRY) {
            indexed = e.oid === this.#formatOid;
            continue;
          }
          if (e.name.endsWith(LIVE_SUFFIX)) {
            live.set(e.name.slice(0, -LIVE_SUFFIX.length), e.oid);
            continue;
          }
          const file = /^([^/]+)\.json$/.exec(e.name);
          if (!file) continue; // not ours to keep
          const hookId = file[1]!;
          if (!isHookId(hookId) || hookShard(hookId) !== shard) {
            throw this.#corrupt(`unexpected entry ${path}`);
          }
          records.push({ path, oid: e.oid, hookId });
          entries.set(e.name, e.oid);
        }
        if (entries.size === 0) continue;
        // An index is taken only as this store writes it: every `.live` entry names a record
        // of the shard, by its blob. Anything else (an older version's rewrite, a hand edit)
        // has the shard read whole.
        indexed &&= [...live].every(([id, blob]) => entries.get(`${id}.json`) === blob);
        if (indexed) {
          for (const [id, blob] of live) entries.set(`${id}${LIVE_SUFFIX}`, blob);
          entries.set(INDEX_ENTRY, this.#formatOid);
        } else {
          this.#unindexed.add(shard);
        }
        for (const r of records) {
          if (!indexed || live.has(r.hookId)) blobs.push(r);
          else deferred.set(r.hookId, r.oid);
        }
        this.#shards.set(shard, entries);
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
    const records = blobs.map(({ path, oid, hookId }) =>
      this.#parseRecord(contents.get(oid), path, hookId),
    );
    // Indexed shards keep their `.live` entries; a shard read whole gets them now (from what it
    // holds), in memory, and its tree with the next commit.
    for (const r of records) {
      const shard = hookShard(r.hookId);
      if (!this.#unindexed.has(shard)) continue;
      const entries = this.#shards.get(shard) as Map<string, string>;
      if (!isFinishedStatus(r.status))
        entries.set(`${r.hookId}${LIVE_SUFFIX}`, entries.get(`${r.hookId}.json`)!);
    }
    for (const shard of this.#unindexed) {
      (this.#shards.get(shard) as Map<string, string>).set(INDEX_ENTRY, this.#formatOid);
    }
    if (adopt) await this.#adopt(head, rootOid, this.#o.signing!, now);
    return { records, deferred };
  }

  /**
   * The records of hooks `load()` left unread (id → blob id, as it returned them), in one
   * `cat-file --batch`, each checked against its id and parsed as at load.
   * @throws HookStoreError for a record that is missing, altered or not a valid hook record.
   */
  async readRecords(hooks: ReadonlyMap<string, string>): Promise<Hook[]> {
    const contents = await this.#readObjects([...new Set(hooks.values())], 'blob');
    return [...hooks].map(([hookId, oid]) =>
      this.#parseRecord(contents.get(oid), `hooks/${hookShard(hookId)}/${hookId}.json`, hookId),
    );
  }

  #parseRecord(content: Buffer | undefined, path: string, hookId: string): Hook {
    const parsed = HookRecordSchema.safeParse(this.#parseJson(content, path));
    if (!parsed.success || parsed.data.hookId !== hookId) {
      throw this.#corrupt(`${path} is not a valid hook record`, parsed.error);
    }
    return parsed.data;
  }

  /**
   * The head to load (undefined: an empty store, nothing recorded). `tip` when its MAC verifies
   * and it is the commit the state file records as current — or a signed descendant of it: the
   * store's own last commits, when it stopped between the ref update and the record — or when
   * the store has never signed (a legacy head, taken once: `adopt` then has it signed at once).
   * A head that does not verify gives way to its newest first-parent ancestor that does; a head
   * (or that ancestor) older than the recorded commit, or the ref deleted, gives way to the
   * recorded commit. A head that gave way is kept under a quarantine ref, the state ref is moved
   * back, and `onQuarantined` told. The head loaded is recorded (the first time, for a state
   * file from before the record: its head is taken as it verifies, as before).
   * @throws HookStoreError when no commit before `tip` verifies and nothing is recorded (the key
   *   or the history changed).
   * @throws HookStateRollbackError when the recorded commit should be put back but is gone or
   *   does not verify.
   */
  async #verifiedHead(
    tip: string | undefined,
    signing: StateSigning,
    now: number,
  ): Promise<LoadedHead | undefined> {
    const recorded = signing.recordedHead();
    let head = tip;
    let commit: ParsedCommit | undefined;
    let reason: QuarantineReason | undefined;
    if (tip !== undefined) {
      commit = await this.#readCommit(tip);
      if (this.#verifies(commit, signing.key)) {
        // A signed commit whose marker was not set (a crash between the two): set now.
        this.#markSigned();
      } else if (!signing.signed() && recorded === undefined) {
        return { head: tip, commit, adopt: true };
      } else {
        reason = commit.mac === undefined ? 'unsigned' : 'bad-mac';
        const found = await this.#walkFirstParents(commit.parents[0], (_, c) =>
          this.#verifies(c, signing.key),
        );
        if (found === undefined && recorded === undefined) {
          throw this.#corrupt(
            `its head ${tip} is ${reason === 'unsigned' ? 'not signed' : 'signed with another key'} and no commit before it verifies (the state file holding the key was replaced, or the history was rewritten)`,
          );
        }
        head = found?.oid;
        commit = found?.commit;
      }
    }
    if (
      recorded !== undefined &&
      head !== recorded &&
      (head === undefined || !(await this.#descends(head, recorded, signing.key)))
    ) {
      // Moved back: to a genuine commit from before (it verifies, and nothing else notices),
      // below a forged one, or the ref deleted.
      reason ??= 'rollback';
      head = recorded;
      commit = await this.#recordedCommit(tip, recorded, signing.key);
    }
    if (head === undefined || commit === undefined) return undefined;
    if (reason !== undefined) await this.#quarantine(tip, head, reason, now);
    if (head !== recorded) this.#record(head);
    return { head, commit, adopt: false };
  }

  /**
   * True when `head` is `recorded` or comes after it along first parents, every commit on the
   * way verifying. Git's own answer (`merge-base --is-ancestor`, fast: no commit read here) is
   * taken only when it says no; a yes is checked by reading the commits from `head` back to
   * `recorded` (each against its id: git does not check the object files it reads), which
   * after a crash between the ref update and the record is one batch of commits.
   */
  async #descends(head: string, recorded: string, key: string): Promise<boolean> {
    try {
      await runGit(this.#o.repoDir, ['merge-base', '--is-ancestor', recorded, head]);
    } catch {
      return false; // not an ancestor (exit 1), or `recorded` is gone (128)
    }
    const reached = await this.#walkFirstParents(
      head,
      (oid, c) => oid === recorded || !this.#verifies(c, key),
    );
    return reached?.oid === recorded;
  }

  /**
   * The recorded commit, to put back on the ref.
   * @throws HookStateRollbackError when it is gone from the repository or does not verify.
   */
  async #recordedCommit(
    tip: string | undefined,
    recorded: string,
    key: string,
  ): Promise<ParsedCommit> {
    const moved = `${HOOKS_REF} is ${tip === undefined ? 'deleted' : `at ${tip}`}, not at ${recorded} (the commit the state file records as current) nor after it: the state was moved back while no sidecar ran`;
    const fix = `Restore the repository from a backup that has ${recorded}; or, to take the state the ref is at knowingly, delete the record from the state file (with no sidecar running: sqlite3 <state file> "DELETE FROM meta WHERE key = 'hooks.stateHead'")`;
    let commit: ParsedCommit;
    try {
      commit = await this.#readCommit(recorded);
    } catch (err) {
      throw new HookStateRollbackError(
        this.#o.repoDir,
        tip ?? null,
        recorded,
        `${moved}, and ${recorded} is gone from the repository, so the state cannot be put back (${(err as Error).message}). ${fix}`,
        { cause: err },
      );
    }
    if (!this.#verifies(commit, key)) {
      throw new HookStateRollbackError(
        this.#o.repoDir,
        tip ?? null,
        recorded,
        `${recorded}, the commit the state file records as current, does not verify with the state file's key (the state file was replaced, or its key changed), so it is not put back (${HOOKS_REF} is ${tip === undefined ? 'deleted' : `at ${tip}`}). ${fix}`,
      );
    }
    return commit;
  }

  /** Keeps `tip` under a quarantine ref, moves the state ref back to `restored`, and reports. */
  async #quarantine(
    tip: string | undefined,
    restored: string,
    reason: QuarantineReason,
    now: number,
  ): Promise<void> {
    let quarantineRef: string | null = null;
    if (tip !== undefined) {
      const stamp = new Date(now).toISOString().replace(/[-:]|\.\d+/g, '');
      quarantineRef = `${QUARANTINE_REF_PREFIX}${stamp}-${tip.slice(0, 12)}`;
      await runGit(this.#o.repoDir, ['update-ref', quarantineRef, tip, this.#writer.zeroOid]);
    }
    await this.#refs.update(HOOKS_REF, restored, tip ?? this.#writer.zeroOid);
    this.#o.onQuarantined?.({ found: tip ?? null, restored, quarantineRef, reason });
  }

  /** Signs a legacy head: a commit of the same tree on top of it, then sets the marker. */
  async #adopt(head: string, tree: string, signing: StateSigning, now: number): Promise<void> {
    const w = this.#writer;
    const parents = [head];
    const next = w.commit({
      tree,
      parents,
      name: this.#o.author.name,
      email: this.#o.author.email,
      time: now,
      message: `hooks: state signed from here on\n\n${STATE_MAC_TRAILER}: ${stateMac(signing.key, tree, parents)}`,
    });
    try {
      await w.flush();
      await this.#refs.update(HOOKS_REF, next, head);
    } catch (err) {
      w.discard();
      throw new HookStoreError(
        this.#o.repoDir,
        `could not sign hook state: ${(err as Error).message}`,
        { ref: HOOKS_REF, operation: 'load' },
        { cause: err },
      );
    }
    this.#head = next;
    this.#markSigned();
    this.#record(next);
  }

  /**
   * Sets the "signed since" marker unless it is set (with signing on). A failure to write it
   * (the state file's disk full) fails nothing — the commit is on the ref — and is retried at
   * the next commit; until it is set, the next open would take an unsigned head once.
   */
  #markSigned(): void {
    const signing = this.#o.signing;
    if (signing === undefined) return;
    try {
      if (!signing.signed()) signing.markSigned();
      this.#marked = true;
    } catch {
      // Retried at the next commit (see above).
    }
  }

  /**
   * Records `oid` as the current state commit (with signing on). A failure to write it (the
   * state file's disk full) fails nothing — the commit is on the ref — and the next commit
   * writes it again; until then the next open takes the ref's head as the signed descendant of
   * the older record it is, and a rollback to a commit after that record goes unnoticed.
   */
  #record(oid: string): void {
    try {
      this.#o.signing?.recordHead(oid);
    } catch {
      // Written again at the next commit (see above).
    }
  }

  /**
   * The newest signed commit (one carrying a MAC, whatever its key) among the
   * {@link SIGNED_ANCESTOR_LOOKBACK} first-parent ancestors of an unsigned head, with how many
   * commits before the head it is; undefined when none is. One `rev-list` reads their messages
   * (the verifying walk, which checks each object against its id, is not needed to refuse).
   */
  async #signedAncestor(head: ParsedCommit): Promise<{ oid: string; depth: number } | undefined> {
    const parent = head.parents[0];
    if (parent === undefined) return undefined;
    // Each commit as `commit <id>\n<message>\0\n` (a message holds no NUL).
    const out = await runGit(this.#o.repoDir, [
      'rev-list',
      '--first-parent',
      `--max-count=${SIGNED_ANCESTOR_LOOKBACK}`,
      '--format=%B%x00',
      parent,
    ]);
    const records = out.toString('utf8').split('\0\n');
    for (let i = 0; i < records.length; i++) {
      const m = /^commit ([0-9a-f]+)\n/.exec(records[i]!);
      if (m !== null && MAC_LINE.test(records[i]!.slice(m[0].length - 1))) {
        return { oid: m[1]!, depth: i + 1 };
      }
    }
    return undefined;
  }

  /**
   * The first commit from `start` back along first parents for which `stop` is true, or
   * undefined. Commits are read {@link VERIFY_WALK_CHUNK} at a time (one `rev-list` and one
   * `cat-file` each), not a git process per commit (a forged chain of 1,100 commits: ~0.3 s at
   * open against ~4.2 s); each is still checked against its id, and the walk follows each
   * commit's own first parent, not `rev-list`'s order.
   */
  async #walkFirstParents(
    start: string | undefined,
    stop: (oid: string, commit: ParsedCommit) => boolean,
  ): Promise<{ oid: string; commit: ParsedCommit } | undefined> {
    let next = start;
    while (next !== undefined) {
      const listed = await runGit(this.#o.repoDir, [
        'rev-list',
        '--first-parent',
        `--max-count=${VERIFY_WALK_CHUNK}`,
        next,
      ]);
      const oids = listed.toString('utf8').split('\n').filter(Boolean);
      const objects = await this.#readObjects(oids, 'commit');
      if (!objects.has(next)) throw this.#corrupt(`commit ${next} is missing`);
      // Follow the parents themselves (not rev-list's order) while they are in this chunk.
      while (next !== undefined && objects.has(next)) {
        const commit = this.#parseCommit(next, objects.get(next)!);
        if (stop(next, commit)) return { oid: next, commit };
        next = commit.parents[0];
      }
    }
    return undefined;
  }

  /** A commit read (checked against its id) and parsed: its tree, parents and MAC trailer. */
  async #readCommit(oid: string): Promise<ParsedCommit> {
    return this.#parseCommit(oid, (await this.#readObjects([oid], 'commit')).get(oid)!);
  }

  /** A commit object's tree, parents and MAC trailer. */
  #parseCommit(oid: string, content: Buffer): ParsedCommit {
    const text = content.toString('utf8');
    const end = text.indexOf('\n\n');
    const header = end < 0 ? text : text.slice(0, end);
    const tree = /^tree ([0-9a-f]+)$/m.exec(header)?.[1];
    if (tree === undefined) throw this.#corrupt(`commit ${oid} names no tree`);
    const parents = [...header.matchAll(/^parent ([0-9a-f]+)$/gm)].map((m) => m[1]!);
    const mac = end < 0 ? undefined : MAC_LINE.exec(text.slice(end + 1))?.[1];
    return mac === undefined ? { tree, parents } : { tree, parents, mac };
  }

  #verifies(c: ParsedCommit, key: string): boolean {
    if (c.mac === undefined) return false;
    const expected = Buffer.from(stateMac(key, c.tree, c.parents), 'hex');
    return timingSafeEqual(expected, Buffer.from(c.mac, 'hex'));
  }

  /**
   * Commits `changes` in order, one commit each, then — when `trim` names hooks — one more
   * commit whose tree no longer holds them, and moves the ref once, from the head it was loaded
   * at (or last moved to) to the last new commit. Returns the commit ids of `changes` (not the
   * trim's). A hook named by `trim` that the tree does not hold is passed over.
   * @throws HookStoreError when git fails or the ref moved under us; nothing is changed then.
   */
  async commit(
    changes: readonly StateChange[],
    now: number,
    trim?: { readonly hookIds: readonly string[]; readonly message: string },
  ): Promise<string[]> {
    if (changes.length === 0) return [];
    const shards = new Map(this.#shards);
    const shardTrees = new Map(this.#shardTrees);
    const w = this.#writer;
    const treeOf = (entries: ReadonlyMap<string, string>): string =>
      w.tree([...entries].map(([name, oid]) => file(name, oid)));
    const commits: string[] = [];
    let parent = this.#head;
    try {
      const formatOid = this.#formatOid ?? w.blob(formatJson());
      // Shards loaded without an index get theirs (see load()).
      for (const shard of this.#unindexed) shardTrees.set(shard, treeOf(shards.get(shard)!));
      const commitTree = (message: string): string => {
        const root = w.tree(
          shardTrees.size === 0
            ? [file('format.json', formatOid)]
            : [
                file('format.json', formatOid),
                dir('hooks', w.tree([...shardTrees].map(([name, oid]) => dir(name, oid)))),
              ],
        );
        const parents = parent === undefined ? [] : [parent];
        const key = this.#o.signing?.key;
        return w.commit({
          tree: root,
          parents,
          name: this.#o.author.name,
          email: this.#o.author.email,
          time: now,
          // The message ends in trailers (`Hook-Id:` …): the MAC is one more, the last line.
          message:
            key === undefined
              ? message
              : `${message.replace(/\n*$/, '')}\n${STATE_MAC_TRAILER}: ${stateMac(key, root, parents)}`,
        });
      };
      for (const { record, message } of changes) {
        const shard = hookShard(record.hookId);
        // Compact: indentation of a deeply nested result multiplied its size by up to ~60.
        const blob = w.blob(`${JSON.stringify(record)}\n`);
        const entries = new Map(shards.get(shard) ?? []);
        entries.set(`${record.hookId}.json`, blob);
        if (isFinishedStatus(record.status)) entries.delete(`${record.hookId}${LIVE_SUFFIX}`);
        else entries.set(`${record.hookId}${LIVE_SUFFIX}`, blob);
        entries.set(INDEX_ENTRY, formatOid);
        shards.set(shard, entries);
        shardTrees.set(shard, treeOf(entries));
        parent = commitTree(message);
        commits.push(parent);
      }
      if (trim !== undefined && trim.hookIds.length > 0) {
        const touched = new Set<string>();
        for (const hookId of trim.hookIds) {
          const shard = hookShard(hookId);
          const entries = shards.get(shard);
          if (entries === undefined || !entries.has(`${hookId}.json`)) continue;
          const left = new Map(entries);
          left.delete(`${hookId}.json`);
          left.delete(`${hookId}${LIVE_SUFFIX}`);
          shards.set(shard, left);
          touched.add(shard);
        }
        for (const shard of touched) {
          const entries = shards.get(shard)!;
          if (![...entries.keys()].some((name) => name.endsWith('.json'))) {
            shards.delete(shard);
            shardTrees.delete(shard);
          } else {
            shardTrees.set(shard, treeOf(entries));
          }
        }
        if (touched.size > 0) parent = commitTree(trim.message);
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
    this.#unindexed.clear();
    if (!this.#marked) this.#markSigned();
    // After the ref update: a crash in between leaves a signed descendant of the record, which
    // the next load takes (a record written first would make a failed update look like a rollback).
    this.#record(parent!);
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

/**
 * HMAC-SHA256 (hex) of a state commit's root tree and parents under `key`. The tree id covers
 * every record and the parent ids the history before it, so a commit that verifies was made by
 * the key's holder on top of a state it made or adopted; the message and dates are not covered
 * (changing them changes no state).
 */
export function stateMac(key: string, tree: string, parents: readonly string[]): string {
  const h = createHmac('sha256', key).update(`agent-fabric/hooks-state v1\ntree ${tree}\n`);
  for (const p of parents) h.update(`parent ${p}\n`);
  return h.digest('hex');
}

/** The head `load()` reads, and whether it is a legacy head to sign at once. */
interface LoadedHead {
  readonly head: string;
  readonly commit: ParsedCommit;
  readonly adopt: boolean;
}

/** What the store reads of a commit: its root tree, parents and `Fabric-State-MAC:` trailer. */
interface ParsedCommit {
  readonly tree: string;
  readonly parents: readonly string[];
  readonly mac?: string;
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
