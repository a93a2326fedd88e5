/**
 * Writes git objects (blobs, trees, commits) straight into the repository's object store, the
 * way git does it: deflate to a temporary `tmp_obj_*` file in the object's fan-out folder,
 * optionally fsync, then `link()` it to its final name (an existing object is left alone). A
 * crash leaves at most a temporary file, which `git gc` removes; objects are only made
 * reachable afterwards, by `update-ref`, so the repository is never broken.
 *
 * Doing this in-process instead of running `hash-object`, `mktree` and `commit-tree` (one
 * process each) is what makes a transition cost one git process (`update-ref`) instead of five.
 *
 * @module
 */
import { createHash, randomBytes } from 'node:crypto';
import { link, mkdir, open, rename, unlink, utimes, type FileHandle } from 'node:fs/promises';
import { exists } from './fs-exists.js';
import { dirname, join } from 'node:path';
import { deflateSync } from 'node:zlib';

/** The repository's hash algorithm (`extensions.objectFormat`). */
export type ObjectFormat = 'sha1' | 'sha256';

/** One entry of a tree object. */
export interface TreeEntry {
  /** `100644` for a file, `40000` for a sub-tree. */
  readonly mode: '100644' | '40000';
  readonly name: string;
  readonly oid: string;
}

/** What a commit object says besides its tree. */
export interface CommitFields {
  readonly tree: string;
  readonly parents: readonly string[];
  readonly name: string;
  readonly email: string;
  /** Epoch ms; stored as seconds, UTC. */
  readonly time: number;
  readonly message: string;
}

/**
 * Builds objects in memory (their ids are known at once, so trees and commits can refer to
 * them) and writes them with {@link flush}, all at the same time: their fsyncs then share the
 * file system's journal commits instead of paying for one each.
 */
export class LooseObjectWriter {
  readonly #objectsDir: string;
  readonly #format: ObjectFormat;
  readonly #fsync: boolean;
  readonly #pending = new Map<string, Buffer>();

  constructor(objectsDir: string, format: ObjectFormat, fsync: boolean) {
    this.#objectsDir = objectsDir;
    this.#format = format;
    this.#fsync = fsync;
  }

  /** The all-zero object id of this format (means "must not exist" to `update-ref`). */
  get zeroOid(): string {
    return '0'.repeat(this.#format === 'sha1' ? 40 : 64);
  }

  /** Adds a blob and returns its id. */
  blob(content: Buffer | string): string {
    return this.#add('blob', typeof content === 'string' ? Buffer.from(content, 'utf8') : content);
  }

  /** Adds a tree (entries in any order; they are sorted the way git requires). */
  tree(entries: readonly TreeEntry[]): string {
    const sorted = [...entries].sort(compareTreeEntries);
    const parts: Buffer[] = [];
    for (const e of sorted) {
      parts.push(Buffer.from(`${e.mode} ${e.name}\0`, 'utf8'), Buffer.from(e.oid, 'hex'));
    }
    return this.#add('tree', Buffer.concat(parts));
  }

  /** Adds a commit and returns its id. */
  commit(c: CommitFields): string {
    const ident = `${c.name} <${c.email}> ${Math.floor(c.time / 1000)} +0000`;
    const lines = [`tree ${c.tree}`, ...c.parents.map((p) => `parent ${p}`)];
    lines.push(`author ${ident}`, `committer ${ident}`, '', c.message.replace(/\n*$/, '\n'));
    return this.#add('commit', Buffer.from(lines.join('\n'), 'utf8'));
  }

  /** Forgets objects added since the last flush (they were never written). */
  discard(): void {
    this.#pending.clear();
  }

  /**
   * Writes every object added since the last flush. Objects that already exist are skipped.
   * The contents are written (and fsynced) all at once, to temporary files; they then get their
   * names one by one in the order they were added — every object after those it refers to, the
   * order git writes in — because a `git gc` running alongside reads recent loose objects and
   * follows what they refer to: a tree named before its blob made it fail. Folders are not
   * fsynced, as git does not: the names become durable with the journal commit of the ref update
   * that follows, which is fsynced.
   */
  async flush(): Promise<void> {
    const pending = [...this.#pending];
    this.#pending.clear();
    const written = await Promise.allSettled(pending.map(([oid, data]) => this.#write(oid, data)));
    const temps = written.flatMap((w) => (w.status === 'fulfilled' && w.value ? [w.value] : []));
    const failed = written.find((w): w is PromiseRejectedResult => w.status === 'rejected');
    let named = 0;
    try {
      if (failed !== undefined) throw failed.reason;
      for (const t of temps) {
        await name(t.tmp, t.file);
        named++;
      }
    } finally {
      // Temporary files not named are not left behind.
      await Promise.all(temps.slice(named).map((t) => unlink(t.tmp).catch(() => undefined)));
    }
  }

  #add(type: 'blob' | 'tree' | 'commit', body: Buffer): string {
    const data = Buffer.concat([Buffer.from(`${type} ${body.length}\0`, 'ascii'), body]);
    const oid = createHash(this.#format).update(data).digest('hex');
    this.#pending.set(oid, data);
    return oid;
  }

  /** Writes the object to a temporary file beside its final name; `undefined` if it exists. */
  async #write(oid: string, data: Buffer): Promise<Temp | undefined> {
    const dir = join(this.#objectsDir, oid.slice(0, 2));
    const file = join(dir, oid.slice(2));
    if (await exists(file)) {
      // Freshened, as git does: an old unreachable copy (a crash between objects and ref) would
      // otherwise be old enough for `git gc` to prune before the ref update makes it reachable.
      const now = new Date();
      await utimes(file, now, now).catch(() => undefined);
      return undefined;
    }
    const tmp = join(dir, `tmp_obj_${randomBytes(6).toString('hex')}`);
    const fh = await openInFreshDir(dir, tmp);
    try {
      await fh.writeFile(deflateSync(data, { level: 1 }));
      if (this.#fsync) await fh.sync();
    } catch (err) {
      await fh.close().catch(() => undefined);
      await unlink(tmp).catch(() => undefined);
      throw err;
    }
    await fh.close();
    return { tmp, file };
  }
}

/** An object's content in a temporary file, and the name it gets. */
interface Temp {
  readonly tmp: string;
  readonly file: string;
}

/** Gives the temporary file `tmp` its object name `file` (kept if it exists: same content). */
async function name(tmp: string, file: string): Promise<void> {
  try {
    await link(tmp, file);
    await unlink(tmp);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
      await unlink(tmp);
    } else {
      // File systems without hard links: git falls back to rename, and so do we (the
      // content is the same either way, so replacing an existing object is harmless).
      await rename(tmp, file).catch(async (e: unknown) => {
        await unlink(tmp).catch(() => undefined);
        throw e;
      });
    }
  }
}

/**
 * Creates `file` (exclusively, read-only to its owner) in the fan-out folder `dir`, making the
 * folder (0700) first if the object store is there.
 * `git gc` (`prune-packed`) removes fan-out folders it emptied — between our `mkdir` and `open`
 * when it runs alongside — so, as git does, a vanished folder is made again and the open retried.
 */
async function openInFreshDir(dir: string, file: string): Promise<FileHandle> {
  for (let attempt = 1; ; attempt++) {
    try {
      // Not recursive: with the object store itself gone (the git directory removed), a
      // recursive mkdir made a stray `.git/objects/<xx>` that the failing commit left behind.
      await mkdir(dir, { mode: 0o700 }).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== 'EEXIST') throw err;
      });
      return await open(file, 'wx', 0o400);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || attempt >= 8) throw err;
      // The object store itself is gone: nothing to retry, and nothing is made in its place.
      if (!(await exists(dirname(dir)))) throw err;
    }
  }
}

/** git's tree order: byte order of names, a sub-tree's name compared as if it ended in `/`. */
function compareTreeEntries(a: TreeEntry, b: TreeEntry): number {
  const an = Buffer.from(a.mode === '40000' ? `${a.name}/` : a.name, 'utf8');
  const bn = Buffer.from(b.mode === '40000' ? `${b.name}/` : b.name, 'utf8');
  return Buffer.compare(an, bn);
}
