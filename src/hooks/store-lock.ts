/**
 * The hook store's exclusive lock: one HookManager per repository, across processes and hosts
 * sharing a file system.
 *
 * The lock is a file (`<gitdir>/fabric-hooks.lock`) holding JSON `{ pid, hostname, startedAt,
 * instance }`. It is created atomically and complete — written to a temporary file, then
 * `link()`ed into place, which fails if a lock exists — so a crash can never leave a half-written
 * lock. A lock whose holder is a dead pid on this host (or this very pid, when this process
 * does not hold it: a restarted container often gets the same pid) is stale and taken over;
 * the take-over itself is guarded by a second, short-lived lock file, so two processes can not
 * both take over the same stale lock. A lock held from another host is never broken
 * automatically: the error names the holder, and an operator removes the file once that
 * holder is known to be gone. On Linux the lock also names the boot it was taken in and its
 * holder's start time (clock ticks since boot): a live pid whose start time differs, or a lock
 * of an earlier boot, is another process that reuses the pid (after a reboot, or a crash long
 * ago), so the lock is stale too — before, a sidecar killed before a reboot could not start
 * again until an operator removed the lock by hand.
 *
 * @module
 */
import { randomBytes } from 'node:crypto';
import {
  closeSync,
  fsyncSync,
  linkSync,
  openSync,
  readFileSync,
  readlinkSync,
  unlinkSync,
  writeSync,
} from 'node:fs';
import { link, open, readFile, unlink } from 'node:fs/promises';
import { hostname } from 'node:os';
import { HookStoreLockedError } from '../errors.js';

/** Who holds a lock. */
export interface LockHolder {
  readonly pid: number;
  readonly hostname: string;
  /** ISO time the lock was taken. */
  readonly startedAt: string;
  /** Random id of the lock instance (tells two holders with the same pid apart). */
  readonly instance: string;
  /** The kernel's id of the boot the lock was taken in (Linux). */
  readonly bootId?: string;
  /** The holder's start, in clock ticks since boot (Linux): tells a reused pid apart. */
  readonly startTicks?: number;
  /**
   * The holder's pid namespace (Linux, `pid:[inode]`): its pid and start time mean that process
   * only in that namespace.
   */
  readonly pidNs?: string;
}

/** The boot's id, or undefined where the kernel does not tell it. */
function currentBootId(): string | undefined {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim() || undefined;
  } catch {
    return undefined;
  }
}

/** When `pid` started, in clock ticks since boot (field 22 of /proc/<pid>/stat), if known. */
function startTicks(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command (field 2) is in parentheses and may hold spaces: count after its end.
    const ticks = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]);
    return Number.isSafeInteger(ticks) ? ticks : undefined;
  } catch {
    return undefined;
  }
}

/** This process's pid namespace, or undefined where the kernel does not tell it. */
function currentPidNs(): string | undefined {
  try {
    return readlinkSync('/proc/self/ns/pid') || undefined;
  } catch {
    return undefined;
  }
}

/**
 * This process's {@link LockHolder.bootId}, {@link LockHolder.startTicks} and
 * {@link LockHolder.pidNs}, where known.
 */
function identity(): { bootId?: string; startTicks?: number; pidNs?: string } {
  const bootId = currentBootId();
  const ticks = startTicks(process.pid);
  const pidNs = currentPidNs();
  return {
    ...(bootId === undefined ? {} : { bootId }),
    ...(ticks === undefined ? {} : { startTicks: ticks }),
    ...(pidNs === undefined ? {} : { pidNs }),
  };
}

/** Locks held by this process (path -> instance), for stale checks and the exit handler. */
const held = new Map<string, string>();
/** Instances this process created or is creating (a same-pid lock is stale only if not here). */
const ownInstances = new Set<string>();
let exitHandlerInstalled = false;

/** An acquired lock; {@link release} it when done. */
export class StoreLock {
  readonly path: string;
  readonly holder: LockHolder;
  #released = false;

  private constructor(path: string, holder: LockHolder) {
    this.path = path;
    this.holder = holder;
  }

  /**
   * Takes the lock at `path`.
   * @throws HookStoreLockedError naming the holder when someone else has it.
   */
  static async acquire(path: string): Promise<StoreLock> {
    const holder: LockHolder = {
      pid: process.pid,
      hostname: hostname(),
      startedAt: new Date().toISOString(),
      instance: randomBytes(8).toString('hex'),
      ...identity(),
    };
    for (let attempt = 0; attempt < 5; attempt++) {
      if (held.has(path)) throw lockedError(path, await readHolder(path), 'this process');
      if (await createExclusive(path, holder)) {
        held.set(path, holder.instance);
        installExitHandler();
        return new StoreLock(path, holder);
      }
      ownInstances.delete(holder.instance);
      const current = await readHolder(path);
      if (current === 'missing') continue; // released between our attempt and our read
      if (current === 'unreadable' || !isStale(current)) {
        throw lockedError(path, current);
      }
      await takeOver(path, current);
    }
    throw lockedError(path, await readHolder(path));
  }

  /**
   * Makes the lock file again when it was removed while held (its folder removed, say), with
   * this lock's holder — this process's identity, as {@link acquire} wrote it — atomically and
   * only if the path is free, as {@link acquire} makes it. Synchronous, for checks that run on a
   * timer. Returns `'held'` when the file at the path is this lock's, `'made'` when it was
   * missing and is made now; else the reason it is not this lock's (another holder's,
   * unreadable, released, or the error that stopped making it).
   */
  restoreSync(): 'held' | 'made' | string {
    if (this.#released) return 'the lock was released';
    for (let attempt = 0; attempt < 2; attempt++) {
      const current = readHolderSync(this.path);
      if (typeof current === 'object') {
        if (current.instance === this.holder.instance) return 'held';
        return `${this.path} is held by pid ${current.pid} on ${current.hostname} since ${current.startedAt}`;
      }
      if (current === 'unreadable') return `${this.path} exists but is unreadable`;
      try {
        if (createExclusiveSync(this.path, this.holder)) return 'made';
      } catch (err) {
        return `${this.path} could not be made: ${(err as Error).message}`;
      }
    }
    return `${this.path} could not be made`;
  }

  /** Removes the lock file if it is still ours. Idempotent. */
  async release(): Promise<void> {
    if (this.#released) return;
    this.#released = true;
    if (held.get(this.path) === this.holder.instance) held.delete(this.path);
    const current = await readHolder(this.path);
    if (typeof current === 'object' && current.instance === this.holder.instance) {
      await unlink(this.path).catch(() => undefined);
    }
    ownInstances.delete(this.holder.instance);
  }
}

/** Creates `path` with `holder` in it, atomically and only if it does not exist. */
async function createExclusive(path: string, holder: LockHolder): Promise<boolean> {
  ownInstances.add(holder.instance);
  const tmp = `${path}.${holder.instance}.tmp`;
  const fh = await open(tmp, 'wx', 0o600);
  try {
    await fh.writeFile(`${JSON.stringify(holder)}\n`);
    await fh.sync();
    await fh.close();
  } catch (err) {
    // A full disk (or a file size limit): no half-made lock is left behind.
    await fh.close().catch(() => undefined);
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
  try {
    await link(tmp, path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  } finally {
    await unlink(tmp).catch(() => undefined);
  }
}

/** {@link createExclusive}, synchronously. */
function createExclusiveSync(path: string, holder: LockHolder): boolean {
  const tmp = `${path}.${holder.instance}.tmp`;
  const fd = openSync(tmp, 'wx', 0o600);
  try {
    try {
      writeSync(fd, `${JSON.stringify(holder)}\n`);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    linkSync(tmp, path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw err;
  } finally {
    try {
      unlinkSync(tmp);
    } catch {
      // already gone
    }
  }
}

/** {@link readHolder}, synchronously. */
function readHolderSync(path: string): LockHolder | 'missing' | 'unreadable' {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'missing' : 'unreadable';
  }
  return parseHolder(text) ?? 'unreadable';
}

async function readHolder(path: string): Promise<LockHolder | 'missing' | 'unreadable'> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'missing' : 'unreadable';
  }
  return parseHolder(text) ?? 'unreadable';
}

function parseHolder(text: string): LockHolder | undefined {
  try {
    const v = JSON.parse(text) as Partial<LockHolder>;
    if (
      typeof v.pid === 'number' &&
      typeof v.hostname === 'string' &&
      typeof v.startedAt === 'string' &&
      typeof v.instance === 'string'
    ) {
      return {
        pid: v.pid,
        hostname: v.hostname,
        startedAt: v.startedAt,
        instance: v.instance,
        ...(typeof v.bootId === 'string' ? { bootId: v.bootId } : {}),
        ...(typeof v.startTicks === 'number' ? { startTicks: v.startTicks } : {}),
        ...(typeof v.pidNs === 'string' ? { pidNs: v.pidNs } : {}),
      };
    }
  } catch {
    // fall through
  }
  return undefined;
}

/** A holder on this host whose process is gone (or is us, without us holding it). */
function isStale(h: LockHolder): boolean {
  if (h.hostname !== hostname()) return false;
  if (h.pid === process.pid) return !ownInstances.has(h.instance);
  if (!pidAlive(h.pid)) return true;
  // Alive, but maybe not the holder: a lock of an earlier boot, or a pid that started at
  // another time than the holder did, belongs to a process that reused the pid. A lock without
  // these fields (an older version's, another OS) keeps the pid's word.
  const boot = currentBootId();
  if (h.bootId !== undefined && boot !== undefined && h.bootId !== boot) return true;
  // The start time of what has the pid here says nothing of a holder in another pid namespace
  // (a container sharing the host's name): its pid here is another process, or none. Unknown
  // namespaces (a lock without the field, no /proc) keep the pid's word: two stores on one
  // file are worse than a lock an operator removes by hand.
  if (h.startTicks === undefined || h.pidNs === undefined || h.pidNs !== currentPidNs()) {
    return false;
  }
  const ticks = startTicks(h.pid);
  return ticks !== undefined && ticks !== h.startTicks;
}

function pidAlive(pid: number): boolean {
  if (!Number.isSafeInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    // EPERM: the process exists but belongs to someone else.
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Removes the stale lock `stale` at `path`, unless someone replaced it meanwhile. */
async function takeOver(path: string, stale: LockHolder): Promise<void> {
  const guardPath = `${path}.takeover`;
  const me: LockHolder = {
    pid: process.pid,
    hostname: hostname(),
    startedAt: new Date().toISOString(),
    instance: randomBytes(8).toString('hex'),
    ...identity(),
  };
  if (!(await createExclusive(guardPath, me))) {
    ownInstances.delete(me.instance);
    const guard = await readHolder(guardPath);
    // A take-over that crashed half-way: clear its guard; the caller retries.
    if (typeof guard === 'object' && isStale(guard)) {
      await unlink(guardPath).catch(() => undefined);
      return;
    }
    if (guard === 'missing') return;
    throw lockedError(path, stale, 'another process is taking over the stale lock of');
  }
  try {
    const current = await readHolder(path);
    if (typeof current === 'object' && current.instance === stale.instance) {
      await unlink(path).catch(() => undefined);
    }
  } finally {
    await unlink(guardPath).catch(() => undefined);
    ownInstances.delete(me.instance);
  }
}

function lockedError(
  path: string,
  holder: LockHolder | 'missing' | 'unreadable',
  prefix?: string,
): HookStoreLockedError {
  if (typeof holder !== 'object') {
    return new HookStoreLockedError(
      path,
      {},
      `hook store is locked (${path} exists but is ${holder}); if no HookManager uses this store, remove the file`,
    );
  }
  const who = `pid ${holder.pid} on ${holder.hostname} since ${holder.startedAt}`;
  const message =
    prefix === 'this process'
      ? `hook store is locked by another HookManager in this process (${who}); close it first`
      : prefix !== undefined
        ? `hook store is locked: ${prefix} ${who}`
        : `hook store is locked by ${who} (${path}); a second HookManager may not share a storagePath. If that process is gone, remove the lock file`;
  return new HookStoreLockedError(
    path,
    { pid: holder.pid, hostname: holder.hostname, startedAt: holder.startedAt },
    message,
  );
}

/** On a normal exit without `close()`, leave no lock behind. */
function installExitHandler(): void {
  if (exitHandlerInstalled) return;
  exitHandlerInstalled = true;
  process.once('exit', () => {
    for (const [path, instance] of held) {
      try {
        const h = parseHolder(readFileSync(path, 'utf8'));
        if (h?.instance === instance) unlinkSync(path);
      } catch {
        // best effort
      }
    }
  });
}
