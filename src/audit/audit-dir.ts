/**
 * The audit directory: checked before use (a path under /proc made Node's recursive mkdir spin
 * for ever), created one level at a time by a bounded loop of our own, and locked by its writer
 * so that two services never interleave two chains in one file.
 */
import { accessSync, closeSync, constants, fsyncSync, mkdirSync, openSync, readFileSync, realpathSync, statSync, unlinkSync, writeSync, type Stats } from "node:fs";
import { hostname } from "node:os";
import { basename, dirname, isAbsolute, join, resolve, sep } from "node:path";

/** Kernel file systems: nothing there is storage, and mkdir there fails in odd ways. */
const REFUSED_ROOTS = ["/proc", "/sys", "/dev"];
/** More path components than this is not a real audit directory (and bounds every loop below). */
const MAX_DEPTH = 64;
export const LOCK_FILE_NAME = "hsm-signer.lock";
/** A lock file that stays empty or unreadable this long was left by a writer that died while creating it. */
const UNREADABLE_LOCK_STALE_MS = 10_000;

function under(p: string, root: string): boolean {
  return p === root || p.startsWith(root + sep);
}

function statOrUndefined(p: string): Stats | undefined {
  try {
    return statSync(p);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "ENOENT" || code === "ENOTDIR") return undefined;
    throw e;
  }
}

/**
 * Why `dir` cannot be the audit directory, or undefined if it can (it exists, or its nearest
 * existing parent is a directory this process may create it in). Synchronous and bounded: it
 * only stats the path and its parents. `writable: false` leaves out whether this process may
 * write there (a configuration checked on another machine or as another user than the service).
 */
export function auditDirProblem(dir: string, o: { writable?: boolean } = {}): string | undefined {
  if (!isAbsolute(dir)) return `${dir} is not an absolute path`;
  const target = resolve(dir);
  if (target.split(sep).length > MAX_DEPTH) return `${dir} is nested deeper than ${MAX_DEPTH} levels`;
  for (const root of REFUSED_ROOTS) {
    if (under(target, root)) return `${dir} is under ${root}, a kernel file system, not storage: choose a directory on a disk`;
  }
  let existing = target;
  const missing: string[] = [];
  try {
    for (let i = 0; i < MAX_DEPTH && statOrUndefined(existing) === undefined; i++) {
      missing.unshift(basename(existing));
      existing = dirname(existing);
    }
    // Symbolic links resolved: /var/run/x may really be under /proc.
    const real = join(realpathSync(existing), ...missing);
    for (const root of REFUSED_ROOTS) {
      if (under(real, root)) return `${dir} is under ${root}, a kernel file system, not storage: choose a directory on a disk`;
    }
    const st = statSync(existing);
    if (!st.isDirectory()) return `${existing} is not a directory`;
    if (o.writable === false) return undefined;
    try {
      accessSync(existing, constants.W_OK | constants.X_OK);
    } catch {
      return missing.length === 0 ? `${dir} is not writable by this process` : `${dir} does not exist and cannot be created: ${existing} is not writable by this process`;
    }
  } catch (e) {
    return `${dir} cannot be checked: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`;
  }
  return undefined;
}

/** Checks the directory and creates what is missing of it, one level at a time (mode 0700). */
export function prepareAuditDir(dir: string): void {
  const problem = auditDirProblem(dir);
  if (problem) throw new Error(problem);
  const target = resolve(dir);
  const chain: string[] = [];
  for (let p = target; chain.length < MAX_DEPTH && statOrUndefined(p) === undefined; p = dirname(p)) chain.unshift(p);
  for (const p of chain) {
    try {
      mkdirSync(p, { mode: 0o700 });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
    }
  }
  if (!statSync(target).isDirectory()) throw new Error(`${dir} is not a directory`);
}

interface LockHolder {
  pid: number;
  /** The process's start time in clock ticks since boot (/proc/<pid>/stat), which tells a reused pid apart. */
  startTicks?: string;
  host: string;
  since: string;
}

export interface DirLock {
  file: string;
  holder: LockHolder;
}

function processStartTicks(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    // Field 22; the command name (field 2) may contain spaces, so count from its closing parenthesis.
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
  } catch {
    return undefined;
  }
}

function isAlive(h: LockHolder): boolean {
  try {
    process.kill(h.pid, 0);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ESRCH") return false;
  }
  // The pid exists (or exists but is not ours to signal): is it still the same process?
  const ticks = processStartTicks(h.pid);
  return h.startTicks === undefined || ticks === undefined || ticks === h.startTicks;
}

function parseHolder(text: string): LockHolder | undefined {
  try {
    const h = JSON.parse(text) as Partial<LockHolder>;
    if (typeof h.pid === "number" && Number.isSafeInteger(h.pid) && h.pid > 0 && typeof h.host === "string") {
      return { pid: h.pid, host: h.host, since: String(h.since ?? "?"), startTicks: typeof h.startTicks === "string" ? h.startTicks : undefined };
    }
  } catch {
    // unreadable or half-written: judged by its age below
  }
  return undefined;
}

function readHolder(file: string): LockHolder | undefined {
  try {
    return parseHolder(readFileSync(file, "utf8"));
  } catch {
    return undefined;
  }
}

/** A lock file as read: its text, and what tells this file from any later one at the same path (inode, time, size, text). */
function readLock(file: string): { text: string; key: string; mtimeMs: number } | undefined {
  try {
    const st = statSync(file);
    const text = readFileSync(file, "utf8");
    return { text, key: `${st.dev}:${st.ino}:${st.mtimeMs}:${st.size}:${text}`, mtimeMs: st.mtimeMs };
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw e;
  }
}

function unlinkIfThere(file: string): void {
  try {
    unlinkSync(file);
  } catch (u) {
    if ((u as NodeJS.ErrnoException).code !== "ENOENT") throw u;
  }
}

const sleepCell = new Int32Array(new SharedArrayBuffer(4));
/** Waits synchronously (the lock is taken on the audit writer's thread, or before a start goes on). */
function sleepMs(ms: number): void {
  Atomics.wait(sleepCell, 0, 0, ms);
}

/** How often a start tries for the lock while another starter takes a stale one over (10 ms apart: 2 s). */
const LOCK_ATTEMPTS = 200;

/**
 * Removes a stale lock file, and only the one that was judged stale: under a second lock (the
 * takeover file, O_EXCL) and only if the file is still the one read. Without it, two starters
 * that both judged one dead process's lock stale could each remove it, the second removing the
 * lock the first had just created in its place, and both would write to the directory. False when
 * another starter holds the takeover (for a moment; one left by a starter that died in it is
 * removed once old).
 */
function removeStaleLock(file: string, judged: string): boolean {
  const takeover = `${file}.takeover`;
  let fd: number;
  try {
    fd = openSync(takeover, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
    const age = Date.now() - (statOrUndefined(takeover)?.mtimeMs ?? Date.now());
    if (age >= UNREADABLE_LOCK_STALE_MS) unlinkIfThere(takeover);
    return false;
  }
  closeSync(fd);
  try {
    if (readLock(file)?.key === judged) unlinkIfThere(file);
  } finally {
    unlinkIfThere(takeover);
  }
  return true;
}

/**
 * Takes the directory's lock: a file created with O_EXCL that names this process. A lock left by
 * a process that is gone (same host, pid not running or running another program) is stale and
 * taken over (removeStaleLock); a lock of a live process, or of another host (whose processes
 * cannot be checked from here), refuses the start with a message naming its holder. O_EXCL is
 * atomic on local file systems and on NFSv3+; a lock held by a crashed writer on another host must
 * be removed by hand.
 */
export function acquireDirLock(dir: string): DirLock {
  const file = join(dir, LOCK_FILE_NAME);
  const holder: LockHolder = { pid: process.pid, startTicks: processStartTicks(process.pid), host: hostname(), since: new Date().toISOString() };
  for (let attempt = 0; attempt < LOCK_ATTEMPTS; attempt++) {
    let fd: number;
    try {
      fd = openSync(file, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL, 0o600);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
      const seen = readLock(file);
      if (seen === undefined) continue; // removed meanwhile: try again
      const other = parseHolder(seen.text);
      if (other === undefined) {
        if (Date.now() - seen.mtimeMs < UNREADABLE_LOCK_STALE_MS) throw new Error(`the audit directory ${dir} is being locked by another process (${file} is not complete yet)`);
      } else if (other.host !== holder.host || isAlive(other)) {
        const self = other.host === holder.host && other.pid === process.pid ? ", this process" : "";
        throw new Error(
          `the audit directory ${dir} is in use by another writer: pid ${other.pid}${self} on host ${other.host}, since ${other.since} (lock file ${file}); ` +
            "two writers would interleave two chains in one file. Give each service its own audit.dir; if that process is gone, remove the lock file",
        );
      }
      // Stale: its writer is gone. Another starter may be taking it over too; the takeover file and O_EXCL decide.
      if (!removeStaleLock(file, seen.key)) sleepMs(10);
      continue;
    }
    try {
      writeSync(fd, `${JSON.stringify(holder)}\n`);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    return { file, holder };
  }
  throw new Error(`the audit directory ${dir} could not be locked: ${file} keeps reappearing`);
}

/** Removes the lock file if it is still ours. */
export function releaseDirLock(lock: DirLock): void {
  const now = readHolder(lock.file);
  if (now && now.pid === lock.holder.pid && now.since === lock.holder.since && now.host === lock.holder.host) {
    try {
      unlinkSync(lock.file);
    } catch {
      // gone already
    }
  }
}
