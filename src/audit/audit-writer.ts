/**
 * The audit log's own thread: it owns the audit file and does every call that may wait for the
 * disk (open, write, fdatasync, ftruncate, the tail read at start), synchronously, one request
 * at a time. A disk that stalls (a frozen file system, a hung NFS server, a dying device) then
 * blocks this thread only: the event loop keeps answering health checks and failing calls, and
 * libuv's shared thread pool (async fs, crypto, dns) is not used up by calls that never return.
 *
 * Requests come as messages (audit-log.ts, WriterRequest) and each gets exactly one answer, in
 * order. The main thread gives up waiting after its bound, but this thread still finishes the call
 * and answers; the main thread then knows exactly what reached the disk. (A shared-memory mailbox
 * like the signing threads' was measured as well: no CPU saved per batch, since the cost of a
 * hand-off is the two threads' wake-ups, not the message; issue 14.)
 */
import { createHash } from "node:crypto";
import { closeSync, constants, fdatasyncSync, fstatSync, fsyncSync, ftruncateSync, openSync, readdirSync, readSync, statSync, writeSync } from "node:fs";
import { join } from "node:path";
import { parentPort, workerData } from "node:worker_threads";
import { acquireDirLock, prepareAuditDir, releaseDirLock, type DirLock } from "./audit-dir.js";
import { AUDIT_FILE_PATTERN, auditFileName, GENESIS_HASH, NEWLINE, type WriterAnswer, type WriterRequest, type WriterResult } from "./audit-protocol.js";

const FILE_MODE = 0o600;
/** The tail is read backwards in chunks of this size; an audit line is far smaller. */
const TAIL_CHUNK_BYTES = 64 * 1024;
/** How much of a cut tail is kept for the log line and the AuditLog.Repaired record. */
const CUT_PREVIEW_BYTES = 300;

let fd: number | undefined;
let path = "";
/** Bytes of the current file that are the chain's (written and answered for). */
let size = 0;
let dirLock: DirLock | undefined;
/** The id of the request the main thread stopped waiting for (audit-log.ts, call()). */
const abandoned = new Int32Array((workerData as { abandoned: SharedArrayBuffer }).abandoned);

function handle(req: WriterRequest): WriterResult {
  switch (req.op) {
    case "open":
      prepareAuditDir(req.dir);
      if (req.lock) dirLock = acquireDirLock(req.dir);
      return { op: "open" };
    case "resync":
      return resync(req.dir, req.fsync);
    case "write":
      return write(req.id, req.data, req.fsync, req.rotateTo, req.dir);
    case "drop":
      // `path`: the file this thread has open, which a rotation whose write failed may have changed.
      closeCurrent();
      if (path !== "" && path !== req.committedPath) truncateIfLonger(path, 0);
      if (req.committedPath !== "") truncateIfLonger(req.committedPath, req.committedSize);
      return { op: "drop" };
    case "close":
      closeCurrent();
      if (dirLock) releaseDirLock(dirLock);
      dirLock = undefined;
      return { op: "close" };
  }
}

/**
 * One segment: optionally starts the next file, then one write and one fdatasync. A failed write
 * may have put part of the segment in the file: it is cut back to where the segment started (and
 * that made durable) before the failure is answered, so that no line of a call about to be
 * answered UNAVAILABLE stays in the file, even if the process is killed before any recovery.
 */
function write(id: number, data: Uint8Array, fsync: boolean, rotateTo: string | undefined, dir: string): WriterResult {
  if (rotateTo !== undefined) {
    closeCurrent();
    openCurrent(rotateTo, dir, fsync);
  }
  if (fd === undefined) throw new Error("the audit file is not open");
  const start = size;
  try {
    let off = 0;
    while (off < data.length) {
      // The file is opened O_APPEND: each write goes to the end.
      const n = writeSync(fd, data, off, data.length - off);
      if (n === 0) throw Object.assign(new Error("short write"), { code: "EIO" });
      off += n;
    }
    let fsyncSeconds: number | undefined;
    if (fsync) {
      const started = process.hrtime.bigint();
      fdatasyncSync(fd);
      fsyncSeconds = Number(process.hrtime.bigint() - started) / 1e9;
    }
    size = start + data.length;
    // The main thread gave up on this write (it stalled) and answered its callers UNAVAILABLE:
    // its lines go at once, not only at the next recovery, so a kill meanwhile cannot keep them.
    if (Atomics.load(abandoned, 0) === id) return { op: "write", path, size: cutBack(start) ? start : size, fsyncSeconds };
    return { op: "write", path, size, fsyncSeconds };
  } catch (e) {
    throw withCutBack(e, cutBack(start));
  }
}

/** Cuts the current file back to `length`; whether that worked (a device like /dev/full cannot be cut). */
function cutBack(length: number): boolean {
  if (fd === undefined) return false;
  try {
    const st = fstatSync(fd);
    if (!st.isFile()) return st.size === 0;
    if (st.size > length) {
      ftruncateSync(fd, length);
      fdatasyncSync(fd);
    }
    size = length;
    return true;
  } catch {
    return false;
  }
}

function withCutBack(e: unknown, cut: boolean): unknown {
  if (e !== null && typeof e === "object") Object.assign(e, { cutBack: cut });
  return e;
}

function openCurrent(file: string, dir: string, fsync: boolean): void {
  let existed = true;
  try {
    statSync(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
    existed = false;
  }
  fd = openSync(file, constants.O_WRONLY | constants.O_APPEND | constants.O_CREAT, FILE_MODE);
  path = file;
  size = fstatSync(fd).size;
  // fdatasync of the file does not make its directory entry durable; a new file needs both.
  if (!existed && fsync) syncDirectory(dir);
}

function closeCurrent(): void {
  const f = fd;
  fd = undefined;
  if (f !== undefined) closeSync(f);
}

/** Finds the end of the chain on disk (cutting a torn last line away) and opens the newest file. */
function resync(dir: string, fsync: boolean): WriterResult {
  closeCurrent();
  const files = readdirSync(dir)
    .filter((n) => AUDIT_FILE_PATTERN.test(n))
    .sort()
    .map((n) => join(dir, n));
  let tail = { sequence: 0, hash: GENESIS_HASH };
  let torn: { file: string; bytes: number; sha256: string; preview: string } | undefined;
  for (let i = files.length - 1; i >= 0; i--) {
    const file = files[i]!;
    const r = readLastLine(file);
    if (r.torn) torn = { file, ...r.torn };
    if (r.line) {
      tail = parseTail(r.line, file);
      break;
    }
  }
  const newest = files.at(-1);
  if (newest !== undefined && statSync(newest).size === 0) {
    // An empty newest file: a rotation that crashed before its first write. It must be the next one.
    const first = Number(AUDIT_FILE_PATTERN.exec(newest.slice(newest.lastIndexOf("/") + 1))?.[1]);
    if (first !== tail.sequence + 1) throw new Error(`${newest} is empty but the chain ends at sequence ${tail.sequence}`);
  }
  openCurrent(newest ?? join(dir, auditFileName(tail.sequence + 1)), dir, fsync);
  return { op: "resync", path, size, tail, torn };
}

function parseTail(line: Buffer, file: string): { sequence: number; hash: string } {
  let seq: unknown;
  try {
    seq = (JSON.parse(line.toString("utf8")) as { seq?: unknown }).seq;
  } catch {
    seq = undefined;
  }
  if (typeof seq !== "number" || !Number.isSafeInteger(seq) || seq < 1) throw new Error(`the last line of ${file} is not an audit record`);
  return { sequence: seq, hash: createHash("sha256").update(line).digest("hex") };
}

/**
 * The last complete line of a file, read backwards from the end. Bytes after the last newline are
 * a torn write from a crash (the writer always ends a line with its newline): they are cut away
 * durably, and described in `torn` (how many bytes, their hash, the start of their text).
 */
function readLastLine(file: string): { line: Buffer | undefined; torn?: { bytes: number; sha256: string; preview: string } } {
  const f = openSync(file, constants.O_RDONLY);
  let found: { end: number; line: Buffer | undefined };
  let fileSize: number;
  let cut: Buffer | undefined;
  try {
    fileSize = fstatSync(f).size;
    found = findLastLine(f, fileSize);
    if (found.end < fileSize) cut = readAt(f, found.end, fileSize - found.end);
  } finally {
    closeSync(f);
  }
  if (!cut) return { line: found.line };
  truncateIfLonger(file, found.end);
  const preview = cut.subarray(0, CUT_PREVIEW_BYTES).toString("utf8");
  return { line: found.line, torn: { bytes: cut.length, sha256: createHash("sha256").update(cut).digest("hex"), preview } };
}

/** `end`: the length up to and including the last newline (0 if none); `line`: the line before it. */
function findLastLine(f: number, fileSize: number): { end: number; line: Buffer | undefined } {
  let pos = fileSize;
  let end = -1;
  const kept: Buffer[] = [];
  while (pos > 0) {
    const n = Math.min(TAIL_CHUNK_BYTES, pos);
    pos -= n;
    const chunk = readAt(f, pos, n);
    let upto = chunk.length;
    if (end < 0) {
      const nl = chunk.lastIndexOf(NEWLINE);
      if (nl < 0) continue;
      end = pos + nl + 1;
      upto = nl;
    }
    const start = upto > 0 ? chunk.lastIndexOf(NEWLINE, upto - 1) : -1;
    if (start >= 0) {
      kept.push(chunk.subarray(start + 1, upto));
      return { end, line: Buffer.concat(kept.reverse()) };
    }
    kept.push(chunk.subarray(0, upto));
  }
  return end < 0 ? { end: 0, line: undefined } : { end, line: Buffer.concat(kept.reverse()) };
}

function readAt(f: number, position: number, length: number): Buffer {
  const buf = Buffer.alloc(length);
  let off = 0;
  while (off < length) {
    const n = readSync(f, buf, off, length - off, position + off);
    if (n === 0) throw new Error("the audit file shrank while it was read");
    off += n;
  }
  return buf;
}

/** Cuts a regular file back to `length` and makes that durable; anything else is left alone. */
function truncateIfLonger(file: string, length: number): void {
  let f: number;
  try {
    f = openSync(file, constants.O_RDWR | constants.O_NONBLOCK);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return;
    throw e;
  }
  try {
    const st = fstatSync(f);
    if (!st.isFile() || st.size <= length) return;
    ftruncateSync(f, length);
    fdatasyncSync(f);
  } finally {
    closeSync(f);
  }
}

function syncDirectory(dir: string): void {
  const f = openSync(dir, constants.O_RDONLY);
  try {
    fsyncSync(f);
  } finally {
    closeSync(f);
  }
}

parentPort?.on("message", (req: WriterRequest) => {
  let answer: WriterAnswer;
  try {
    answer = { id: req.id, ok: handle(req) };
  } catch (e) {
    const err = e as NodeJS.ErrnoException & { cutBack?: boolean };
    answer = { id: req.id, error: { message: err instanceof Error ? err.message : String(e), code: typeof err?.code === "string" ? err.code : undefined, cutBack: err?.cutBack } };
  }
  parentPort?.postMessage(answer);
});
