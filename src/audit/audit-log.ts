import { createHash } from "node:crypto";
import { mkdir, open, readdir, stat, type FileHandle } from "node:fs/promises";
import { readdirSync, writeSync, type Stats } from "node:fs";
import { join } from "node:path";
import { SignerError } from "../errors/index.js";
import type { AuditEvent, AuditReceipt } from "../signing/ports.js";

/** Files rotate before they would grow beyond this. */
export const DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024;
/** The `prev` of the first line ever written. */
export const GENESIS_HASH = "0".repeat(64);
/** audit-<16-digit first sequence>.jsonl: zero padding makes name order the sequence order. */
export const AUDIT_FILE_PATTERN = /^audit-(\d{16})\.jsonl$/;

const DIR_MODE = 0o700;
const FILE_MODE = 0o600;
/** The tail is read backwards in chunks of this size; an audit line is far smaller. */
const TAIL_CHUNK_BYTES = 64 * 1024;
const NEWLINE = 0x0a;
/** Fields the log sets itself; a record that tried to set them would forge the chain. */
const RESERVED_FIELDS: ReadonlySet<string> = new Set(["seq", "prev", "time"]);

/** One request as the audit sees it: the audit event of the signing core's ports. */
export type AuditRecordInput = AuditEvent;
export type { AuditReceipt };

export interface AuditLogOptions {
  dir: string;
  maxFileBytes?: number;
  /** fdatasync before an append resolves (default true). Off only for benchmarks and tests. */
  fsync?: boolean;
  /** Called after each fdatasync with its duration and the number of lines it made durable. */
  onFsync?: (seconds: number, lines: number) => void;
  /**
   * Recover by itself after a failure (space freed, the I/O error gone): recover() after minMs,
   * then, while the disk stays unusable, after twice as long each time up to maxMs. An attempt
   * counts only once a line saying so (method "AuditLog.Recovered") is durable, so a disk that is
   * still full does not look healthy in between. Without it, the log stays failed until
   * recover() is called.
   */
  retry?: { minMs: number; maxMs: number; onRecovered?: () => void; onFailed?: (e: SignerError, nextAttemptMs: number) => void };
}

export interface AuditLogStats {
  /** Sequence number of the last line known to be on disk. */
  sequence: number;
  /** Appends waiting for the write in flight. */
  queueDepth: number;
  healthy: boolean;
}

/** A torn last line (a crash in the middle of a write) that open() or recover() cut away. */
export interface TornLine {
  file: string;
  bytes: number;
}

interface ChainTail {
  sequence: number;
  hash: string;
}

interface Pending {
  bytes: Buffer;
  receipt: AuditReceipt;
  resolve: (r: AuditReceipt) => void;
  reject: (e: unknown) => void;
}

/** Where the durable part of the log ends. */
interface Position {
  path: string;
  size: number;
}

export function auditFileName(firstSequence: number): string {
  return `audit-${String(firstSequence).padStart(16, "0")}.jsonl`;
}

/** The audit files of a directory, full paths, in sequence order. */
export async function listAuditFiles(dir: string): Promise<string[]> {
  const names = (await readdir(dir)).filter((n) => AUDIT_FILE_PATTERN.test(n));
  return names.sort().map((n) => join(dir, n));
}

/** listAuditFiles for command-line tools, which have nothing else to do meanwhile. */
export function auditFilesIn(dir: string): string[] {
  return readdirSync(dir)
    .filter((n) => AUDIT_FILE_PATTERN.test(n))
    .sort()
    .map((n) => join(dir, n));
}

export function hashLine(line: string | Buffer): string {
  return createHash("sha256").update(line).digest("hex");
}

/**
 * The append-only, hash-chained audit trail: one JSON line per request, each carrying its sequence
 * number and the SHA-256 of the line before it, so that editing, removing, inserting or
 * reordering lines breaks the chain (see verify.ts).
 *
 * An append resolves only once its line is on disk (fdatasync). Appends made while a write is in
 * flight are written together with one write and one fdatasync (group commit), so the cost of
 * durability is shared by all concurrent requests. When a write fails, the log fails closed:
 * every append rejects with AUDIT_UNAVAILABLE until recover() succeeds.
 */
export class AuditLog {
  private readonly dir: string;
  private readonly maxFileBytes: number;
  private readonly fsync: boolean;
  private readonly onFsync: ((seconds: number, lines: number) => void) | undefined;

  private handle: FileHandle | undefined;
  private path = "";
  private size = 0;
  private committed: Position = { path: "", size: 0 };
  private durableSequence = 0;
  /** The chain as far as appends have been accepted (ahead of the disk while writes are queued). */
  private assigned: ChainTail = { sequence: 0, hash: GENESIS_HASH };
  private queue: Pending[] = [];
  private flushing: Promise<void> | undefined;
  private failure: SignerError | undefined;
  private closed = false;
  private recovering: Promise<void> | undefined;
  private torn: TornLine | undefined;
  private readonly retry: AuditLogOptions["retry"];
  private retryTimer: NodeJS.Timeout | undefined;
  /** Failed automatic attempts since the last success (the backoff exponent). */
  private retryAttempts = 0;
  /** An automatic attempt runs: a failure of its own line must not schedule another. */
  private retrying = false;

  private constructor(o: AuditLogOptions) {
    this.dir = o.dir;
    this.maxFileBytes = o.maxFileBytes ?? DEFAULT_MAX_FILE_BYTES;
    this.fsync = o.fsync ?? true;
    this.onFsync = o.onFsync;
    this.retry = o.retry;
    if (!Number.isSafeInteger(this.maxFileBytes) || this.maxFileBytes < 1) {
      throw new SignerError("CONFIG_INVALID", "the audit maxFileBytes must be a positive integer");
    }
  }

  /** Opens (creating the directory if needed) and continues the chain of the newest file. */
  static async open(o: AuditLogOptions): Promise<AuditLog> {
    const log = new AuditLog(o);
    try {
      await mkdir(log.dir, { recursive: true, mode: DIR_MODE });
      await log.resync();
    } catch (e) {
      await log.handle?.close().catch(() => undefined);
      throw asUnavailable(e, "opened");
    }
    return log;
  }

  /** True when open() or the last recover() cut a torn last line (a crash mid-write) away. */
  get recovered(): boolean {
    return this.torn !== undefined;
  }

  /** Which file lost how many bytes, when `recovered`: worth a line in the service log. */
  get tornLine(): TornLine | undefined {
    return this.torn;
  }

  get healthy(): boolean {
    return this.failure === undefined && !this.closed;
  }

  get stats(): AuditLogStats {
    return { sequence: this.durableSequence, queueDepth: this.queue.length, healthy: this.healthy };
  }

  /**
   * Appends one line and resolves with its receipt once the line is durable. Sequence numbers
   * follow the order of the calls, and so does the file. The record is serialized during the
   * call, so the caller may reuse or change it afterwards.
   */
  append(record: AuditRecordInput): Promise<AuditReceipt> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.closed) return Promise.reject(new SignerError("AUDIT_UNAVAILABLE", "the audit log cannot be written: closed"));
    let line: string;
    const sequence = this.assigned.sequence + 1;
    try {
      line = serialize(sequence, this.assigned.hash, record);
    } catch (e) {
      return Promise.reject(new SignerError("INTERNAL", "the audit record cannot be serialized", { cause: e }));
    }
    const receipt: AuditReceipt = { sequence, lineHash: hashLine(line) };
    this.assigned = { sequence, hash: receipt.lineHash };
    return new Promise<AuditReceipt>((resolve, reject) => {
      this.queue.push({ bytes: Buffer.from(`${line}\n`, "utf8"), receipt, resolve, reject });
      this.flushing ??= this.flush();
    });
  }

  /**
   * After a failure: drops what rejected appends may have left on disk, re-opens the current file
   * and resyncs the chain from the disk. Rejects (and the log stays failed) if the disk still
   * cannot be used.
   */
  recover(): Promise<void> {
    // Two concurrent recoveries would each open the current file; the second one waits instead.
    this.recovering ??= this.recoverOnce().finally(() => {
      this.recovering = undefined;
    });
    return this.recovering;
  }

  private async recoverOnce(): Promise<void> {
    const closed = (): SignerError => new SignerError("AUDIT_UNAVAILABLE", "the audit log cannot be written: closed");
    if (this.closed) throw closed();
    await this.flushing;
    if (!this.failure) return;
    await this.handle?.close().catch(() => undefined);
    this.handle = undefined;
    try {
      await this.dropUncommitted();
      await this.resync();
    } catch (e) {
      throw asUnavailable(e, "recovered");
    }
    if (this.closed) {
      // close() ran meanwhile: the file resync() opened is not used.
      await (this.handle as FileHandle | undefined)?.close().catch(() => undefined);
      this.handle = undefined;
      throw closed();
    }
    this.failure = undefined;
  }

  /** Writes what is queued (those appends resolve), then closes the file. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    while (this.flushing) await this.flushing;
    const handle = this.handle;
    this.handle = undefined;
    try {
      await handle?.close();
    } catch (e) {
      throw asUnavailable(e, "closed");
    }
  }

  private async flush(): Promise<void> {
    // Appends made in the same turn of the event loop join the first batch.
    await Promise.resolve();
    try {
      while (this.queue.length > 0 && this.failure === undefined) {
        await this.writeBatch(this.queue.splice(0, this.queue.length));
      }
    } finally {
      this.flushing = undefined;
    }
  }

  /** Writes a batch in as few segments as rotation allows; each segment: one write, one fdatasync. */
  private async writeBatch(batch: Pending[]): Promise<void> {
    let i = 0;
    while (i < batch.length) {
      const first = batch[i]!;
      let j = i + 1;
      let bytes = first.bytes.length;
      try {
        if (this.size > 0 && this.size + bytes > this.maxFileBytes) await this.rotate(first.receipt.sequence);
        while (j < batch.length && this.size + bytes + batch[j]!.bytes.length <= this.maxFileBytes) bytes += batch[j++]!.bytes.length;
        await this.writeSegment(batch.slice(i, j), bytes);
      } catch (e) {
        this.fail(e, batch.slice(i));
        return;
      }
      for (let k = i; k < j; k++) batch[k]!.resolve(batch[k]!.receipt);
      i = j;
    }
  }

  private async writeSegment(segment: Pending[], bytes: number): Promise<void> {
    const handle = this.currentHandle();
    const data = segment.length === 1 ? segment[0]!.bytes : Buffer.concat(segment.map((p) => p.bytes), bytes);
    // A synchronous write: it only copies a few KiB into the page cache, and saves a thread-pool
    // round trip per batch (about 40 µs of CPU per line at 1,500 lines/s, in test/bench's
    // terms); the fdatasync, which waits for the disk, stays off the event loop.
    writeAllSync(handle.fd, data);
    this.size += data.length;
    if (this.fsync) {
      const started = process.hrtime.bigint();
      await handle.datasync();
      this.reportFsync(Number(process.hrtime.bigint() - started) / 1e9, segment.length);
    }
    this.committed = { path: this.path, size: this.size };
    this.durableSequence = segment[segment.length - 1]!.receipt.sequence;
  }

  /** Closes the full file and starts the one whose first line is `firstSequence`. */
  private async rotate(firstSequence: number): Promise<void> {
    const old = this.currentHandle();
    this.handle = undefined;
    await old.close();
    await this.openCurrent(join(this.dir, auditFileName(firstSequence)));
  }

  private async openCurrent(path: string): Promise<void> {
    const existed = await exists(path);
    this.handle = await open(path, "a", FILE_MODE);
    this.path = path;
    this.size = (await this.handle.stat()).size;
    // fdatasync of the file does not make its directory entry durable; a new file needs both.
    if (!existed && this.fsync) await syncDirectory(this.dir);
  }

  private currentHandle(): FileHandle {
    if (!this.handle) throw new Error("the audit file is not open");
    return this.handle;
  }

  private fail(e: unknown, pending: Pending[]): void {
    this.failure = new SignerError("AUDIT_UNAVAILABLE", `the audit log cannot be written: ${errorCode(e)}`, { cause: e });
    for (const p of pending) p.reject(this.failure);
    for (const p of this.queue.splice(0, this.queue.length)) p.reject(this.failure);
    if (!this.retrying) this.scheduleRecovery();
  }

  private scheduleRecovery(): void {
    const r = this.retry;
    if (!r || this.closed || this.retryTimer) return;
    const ms = retryDelayMs(r, this.retryAttempts);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      void this.retryOnce(r, ms);
    }, ms);
    this.retryTimer.unref();
  }

  /** One automatic attempt: recover(), then a durable line that records the outage. */
  private async retryOnce(r: NonNullable<AuditLogOptions["retry"]>, waitedMs: number): Promise<void> {
    const failure = this.failure;
    if (!failure || this.closed) return; // recovered meanwhile by a call to recover(), or closed
    this.retrying = true;
    try {
      await this.recover();
      // Requests may append from here on; this line proves the disk takes writes again.
      await this.append({ requestId: "-", peer: "-", identity: "hsm-signer", method: "AuditLog.Recovered", decision: "none", result: "OK", latencyMs: 0, error: failure.message, retriedAfterMs: waitedMs });
      this.retryAttempts = 0;
      if (!this.closed) r.onRecovered?.();
    } catch (e) {
      if (this.closed) return;
      this.retryAttempts++;
      r.onFailed?.(asUnavailable(e, "recovered"), retryDelayMs(r, this.retryAttempts));
      this.scheduleRecovery();
    } finally {
      this.retrying = false;
    }
  }

  private reportFsync(seconds: number, lines: number): void {
    try {
      this.onFsync?.(seconds, lines);
    } catch {
      // A metrics hook must never decide whether the audit works.
    }
  }

  /**
   * Rejected appends may have reached the disk in part or in full. Their callers were told the
   * request failed, so their lines go: the file is cut back to the last durable position, and a
   * file started by a rotation whose first write failed is emptied.
   */
  private async dropUncommitted(): Promise<void> {
    if (this.path !== "" && this.path !== this.committed.path) await truncateIfLonger(this.path, 0);
    if (this.committed.path !== "") await truncateIfLonger(this.committed.path, this.committed.size);
  }

  /** Finds the end of the chain on disk (cutting a torn last line away) and opens the newest file. */
  private async resync(): Promise<void> {
    const files = await listAuditFiles(this.dir);
    let tail: ChainTail = { sequence: 0, hash: GENESIS_HASH };
    this.torn = undefined;
    for (let i = files.length - 1; i >= 0; i--) {
      const file = files[i]!;
      const { line, torn } = await readLastLine(file);
      if (torn > 0) this.torn = { file, bytes: torn };
      if (line) {
        tail = parseTail(line, file);
        break;
      }
    }
    const newest = files.at(-1);
    if (newest !== undefined && (await stat(newest)).size === 0) {
      // An empty newest file: a rotation that crashed before its first write. It must be the next one.
      const first = Number(AUDIT_FILE_PATTERN.exec(newest.slice(newest.lastIndexOf("/") + 1))?.[1]);
      if (first !== tail.sequence + 1) throw new Error(`${newest} is empty but the chain ends at sequence ${tail.sequence}`);
    }
    await this.openCurrent(newest ?? join(this.dir, auditFileName(tail.sequence + 1)));
    this.committed = { path: this.path, size: this.size };
    this.assigned = tail;
    this.durableSequence = tail.sequence;
  }
}

/** {"seq","prev","time", then the record's fields in their own order}. */
function serialize(seq: number, prev: string, record: AuditRecordInput): string {
  const line: Record<string, unknown> = { seq, prev, time: new Date().toISOString() };
  for (const [k, v] of Object.entries(record)) {
    if (RESERVED_FIELDS.has(k)) throw new Error(`the audit record field "${k}" is reserved`);
    line[k] = v;
  }
  // JSON.stringify escapes control characters and lone surrogates, so the line has no raw newline
  // and its UTF-8 bytes decode back to the same text (the hash of the text is the hash of the bytes).
  return JSON.stringify(line);
}

function parseTail(line: Buffer, file: string): ChainTail {
  let seq: unknown;
  try {
    seq = (JSON.parse(line.toString("utf8")) as { seq?: unknown }).seq;
  } catch {
    seq = undefined;
  }
  if (typeof seq !== "number" || !Number.isSafeInteger(seq) || seq < 1) throw new Error(`the last line of ${file} is not an audit record`);
  return { sequence: seq, hash: hashLine(line) };
}

/**
 * The last complete line of a file, read backwards from the end. Bytes after the last newline are
 * a torn write from a crash (the writer always ends a line with its newline): they are cut away
 * durably, and their count is returned as `torn`.
 */
async function readLastLine(file: string): Promise<{ line: Buffer | undefined; torn: number }> {
  const fh = await open(file, "r");
  let found: { end: number; line: Buffer | undefined };
  let size: number;
  try {
    size = (await fh.stat()).size;
    found = await findLastLine(fh, size);
  } finally {
    await fh.close();
  }
  if (found.end < size) await truncateIfLonger(file, found.end);
  return { line: found.line, torn: size - found.end };
}

/** `end`: the length up to and including the last newline (0 if none); `line`: the line before it. */
async function findLastLine(fh: FileHandle, size: number): Promise<{ end: number; line: Buffer | undefined }> {
  let pos = size;
  let end = -1;
  const kept: Buffer[] = [];
  while (pos > 0) {
    const n = Math.min(TAIL_CHUNK_BYTES, pos);
    pos -= n;
    const chunk = await readAt(fh, pos, n);
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

async function readAt(fh: FileHandle, position: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  let off = 0;
  while (off < length) {
    const { bytesRead } = await fh.read(buf, off, length - off, position + off);
    if (bytesRead === 0) throw new Error("the audit file shrank while it was read");
    off += bytesRead;
  }
  return buf;
}

function writeAllSync(fd: number, data: Buffer): void {
  let off = 0;
  while (off < data.length) {
    // The file is opened O_APPEND: each write goes to the end.
    const bytesWritten = writeSync(fd, data, off, data.length - off);
    if (bytesWritten === 0) throw Object.assign(new Error("short write"), { code: "EIO" });
    off += bytesWritten;
  }
}

/** Cuts a regular file back to `length` and makes that durable; anything else is left alone. */
async function truncateIfLonger(file: string, length: number): Promise<void> {
  let st: Stats;
  try {
    st = await stat(file);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return;
    throw e;
  }
  if (!st.isFile() || st.size <= length) return;
  const fh = await open(file, "r+");
  try {
    await fh.truncate(length);
    await fh.datasync();
  } finally {
    await fh.close();
  }
}

async function syncDirectory(dir: string): Promise<void> {
  const fh = await open(dir, "r");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "ENOENT") return false;
    throw e;
  }
}

function errorCode(e: unknown): string {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  return typeof code === "string" ? code : e instanceof Error ? e.message : "unknown error";
}

/** The wait before the next automatic attempt, after `attempts` failed ones. */
function retryDelayMs(r: { minMs: number; maxMs: number }, attempts: number): number {
  return Math.min(r.maxMs, r.minMs * 2 ** attempts);
}

function asUnavailable(e: unknown, what: "opened" | "recovered" | "closed"): SignerError {
  if (e instanceof SignerError) return e;
  return new SignerError("AUDIT_UNAVAILABLE", `the audit log cannot be ${what}: ${errorCode(e)}`, { cause: e });
}
