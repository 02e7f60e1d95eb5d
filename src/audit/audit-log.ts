import { hash } from "node:crypto";
import { readdir } from "node:fs/promises";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { Worker } from "node:worker_threads";
import { SignerError } from "../errors/index.js";
import { CommitGate, recoveredRecord, retryDelayMs, serializeRecord } from "./audit-store.js";
import { AUDIT_FILE_PATTERN, auditFileName, GENESIS_HASH, NEWLINE, type WriterAnswer, type WriterRequest, type WriterResult } from "./audit-protocol.js";
import type { AuditEvent, AuditReceipt } from "../signing/ports.js";

export { AUDIT_FILE_PATTERN, auditFileName, GENESIS_HASH };

/** Files rotate before they would grow beyond this. */
export const DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024;
/**
 * A write and its fdatasync not done after this long: the disk stalls (a frozen file system, a
 * hung NFS server, a dying device). The calls waiting for it fail (AUDIT_UNAVAILABLE) and the
 * log fails closed until the disk answers again.
 */
export const DEFAULT_WRITE_TIMEOUT_MS = 2_000;
/** Opening, the tail read and the cut-back of a recovery may take longer than one write. */
const MIN_OTHER_TIMEOUT_MS = 10_000;
const WRITER_URL = new URL("./audit-writer.js", import.meta.url);
/** What each writer request does, for messages. */
const WHAT: Record<WriterRequest["op"], string> = {
  open: "checking and locking the directory",
  resync: "reading the end of the chain",
  write: "a write and its fdatasync",
  drop: "cutting back unanswered lines",
  close: "closing the file",
};

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
   * How long a write and its fdatasync may take (default DEFAULT_WRITE_TIMEOUT_MS). A disk that
   * takes longer fails the waiting appends (AUDIT_UNAVAILABLE) and the log, which recovers once
   * the disk has answered.
   */
  writeTimeoutMs?: number;
  /** Lock the directory against a second writer (default true; see audit-dir.ts). */
  lock?: boolean;
  /**
   * Group commit's wait (CommitGate): when lines are queued while calls that have started
   * (expect()) have not appended theirs yet, the write waits for those lines, at most this long,
   * so that one fdatasync covers them all (default DEFAULT_COMMIT_DELAY_MS; 0: write at once).
   */
  commitDelayMs?: number;
  /**
   * Recover by itself after a failure (space freed, the I/O error gone): recover() after minMs,
   * then, while the disk stays unusable, after twice as long each time up to maxMs. An attempt
   * counts only once a line saying so (method "AuditLog.Recovered") is durable, so a disk that is
   * still full does not look healthy in between. Without it, the log stays failed until
   * recover() is called. A stalled write that finally completes brings the next attempt forward.
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

/**
 * A torn last line (a crash in the middle of a write) that open() or recover() cut away: which
 * file, how many bytes, their SHA-256 and the start of their text (audit lines hold no secrets).
 */
export interface TornLine {
  file: string;
  bytes: number;
  sha256: string;
  preview: string;
}

interface ChainTail {
  sequence: number;
  hash: string;
}

interface Pending {
  /** The line (without its newline), and its length in UTF-8 bytes with the newline. */
  line: string;
  bytes: number;
  receipt: AuditReceipt;
  resolve: (r: AuditReceipt) => void;
  reject: (e: unknown) => void;
}

/** Where the durable part of the log ends. */
interface Position {
  path: string;
  size: number;
}

/** A request to the writer thread that has not been answered yet. */
interface Outstanding {
  op: WriterRequest["op"];
  since: number;
  resolve: (r: WriterResult) => void;
  reject: (e: unknown) => void;
  timer: NodeJS.Timeout;
  /** Its caller stopped waiting (the bound passed); the answer, when it comes, ends the stall. */
  abandoned: boolean;
}

type WriterRequestBody = WriterRequest extends infer R ? (R extends { id: number } ? Omit<R, "id"> : never) : never;

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
  // The one-shot form: no Hash object per line (one per request on the event loop).
  return hash("sha256", line, "hex");
}

/**
 * The append-only, hash-chained audit trail: one JSON line per request, each carrying its sequence
 * number and the SHA-256 of the line before it, so that editing, removing, inserting or
 * reordering lines breaks the chain (see verify.ts).
 *
 * An append resolves only once its line is on disk (fdatasync). Appends made while a write is in
 * flight are written together with one write and one fdatasync (group commit), so the cost of
 * durability is shared by all concurrent requests; a write also waits a moment for the lines of
 * calls that have started (expect(), commitDelayMs). When a write fails, the log fails closed:
 * every append rejects with AUDIT_UNAVAILABLE until recover() succeeds.
 *
 * Every call on the disk runs on the log's own thread (audit-writer.ts), never on the event loop
 * or libuv's shared thread pool, and is waited for a bounded time: a disk that stalls costs the
 * calls that need the audit (UNAVAILABLE after writeTimeoutMs), not the process. A failed write
 * is cut back out of the file before its callers are answered, so an answer and its line agree.
 */
export class AuditLog {
  private readonly dir: string;
  private readonly maxFileBytes: number;
  private readonly fsync: boolean;
  private readonly onFsync: ((seconds: number, lines: number) => void) | undefined;
  private readonly writeTimeoutMs: number;
  private readonly otherTimeoutMs: number;
  private readonly lock: boolean;

  private worker: Worker;
  /** Shared with the writer thread: the id of the request this thread stopped waiting for. */
  private readonly abandoned = new Int32Array(new SharedArrayBuffer(4));
  private nextRequestId = 0;
  private readonly outstanding = new Map<number, Outstanding>();
  /** A request whose caller gave up waiting and the thread has not finished: the disk stalls. */
  private stalled: { op: WriterRequest["op"]; since: number } | undefined;

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
  /** Group commit's wait for the lines of calls that have started. */
  private readonly gate: CommitGate;

  private constructor(o: AuditLogOptions) {
    this.dir = o.dir;
    this.maxFileBytes = o.maxFileBytes ?? DEFAULT_MAX_FILE_BYTES;
    this.fsync = o.fsync ?? true;
    this.onFsync = o.onFsync;
    this.retry = o.retry;
    this.lock = o.lock ?? true;
    this.writeTimeoutMs = o.writeTimeoutMs ?? DEFAULT_WRITE_TIMEOUT_MS;
    this.otherTimeoutMs = Math.max(this.writeTimeoutMs, MIN_OTHER_TIMEOUT_MS);
    if (!Number.isSafeInteger(this.maxFileBytes) || this.maxFileBytes < 1) {
      throw new SignerError("CONFIG_INVALID", "the audit maxFileBytes must be a positive integer");
    }
    if (!Number.isSafeInteger(this.writeTimeoutMs) || this.writeTimeoutMs < 1) {
      throw new SignerError("CONFIG_INVALID", "the audit writeTimeoutMs must be a positive integer");
    }
    this.gate = new CommitGate(o.commitDelayMs);
    this.worker = this.startWriter();
  }

  /**
   * Checks the directory (creating it if needed), locks it, cuts a torn last line away (and
   * records that in the chain, method "AuditLog.Repaired") and continues the chain of the newest
   * file.
   */
  static async open(o: AuditLogOptions): Promise<AuditLog> {
    const log = new AuditLog(o);
    try {
      await log.call({ op: "open", dir: log.dir, lock: log.lock }, log.otherTimeoutMs);
      await log.resync();
    } catch (e) {
      // Releases the lock if it was taken (not possible while the disk stalls: the next start finds it stale).
      if (!log.stalled) await log.call({ op: "close" }, log.otherTimeoutMs).catch(() => undefined);
      await log.stopWriter();
      throw asUnavailable(e, "opened");
    }
    try {
      await log.recordRepair();
    } catch (e) {
      await log.close().catch(() => undefined);
      throw asUnavailable(e, "opened");
    }
    return log;
  }

  /** True when open() or the last recover() cut a torn last line (a crash mid-write) away. */
  get recovered(): boolean {
    return this.torn !== undefined;
  }

  /** What open() or the last recover() cut away, when `recovered`: worth a line in the service log. */
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
    this.gate.arrived();
    if (this.failure) return Promise.reject(this.failure);
    if (this.closed) return Promise.reject(new SignerError("AUDIT_UNAVAILABLE", "the audit log cannot be written: closed"));
    let line: string;
    const sequence = this.assigned.sequence + 1;
    try {
      line = serializeRecord(sequence, this.assigned.hash, new Date(), record);
    } catch (e) {
      return Promise.reject(new SignerError("INTERNAL", "the audit record cannot be serialized", { cause: e }));
    }
    const receipt: AuditReceipt = { sequence, lineHash: hashLine(line) };
    this.assigned = { sequence, hash: receipt.lineHash };
    return new Promise<AuditReceipt>((resolve, reject) => {
      // The line is flat once hashed: its length costs no copy (a line + "\n" string would be one).
      this.queue.push({ line, bytes: Buffer.byteLength(line, "utf8") + 1, receipt, resolve, reject });
      this.flushing ??= this.flush();
    });
  }

  /** A call has started and will append its line: a write may wait for it (commitDelayMs). */
  expect(): void {
    this.gate.expect();
  }

  /**
   * After a failure: drops what rejected appends may have left on disk, re-opens the current file
   * and resyncs the chain from the disk. Rejects (and the log stays failed) if the disk still
   * cannot be used, or still has not finished a write it stalled in.
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
    try {
      await this.call({ op: "drop", committedPath: this.committed.path, committedSize: this.committed.size }, this.otherTimeoutMs);
      await this.resync();
    } catch (e) {
      throw asUnavailable(e, "recovered");
    }
    if (this.closed) throw closed();
    this.failure = undefined;
    await this.recordRepair();
  }

  /** Writes what is queued (those appends resolve), then closes the file and releases the directory. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.gate.close();
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    // Bounded: each write is (writeTimeoutMs), and a failure rejects the rest of the queue.
    while (this.flushing) await this.flushing;
    if (this.stalled) {
      // The thread is blocked in the disk; it cannot close anything until the disk answers.
      // What it may still write was answered UNAVAILABLE, and the next start cuts it back.
      void this.stopWriter();
      return;
    }
    try {
      await this.call({ op: "close" }, this.otherTimeoutMs);
    } catch (e) {
      throw asUnavailable(e, "closed");
    } finally {
      await this.stopWriter();
    }
  }

  private startWriter(): Worker {
    const w = new Worker(WRITER_URL, { workerData: { abandoned: this.abandoned.buffer } });
    // Referenced only while a request is outstanding (call()): an idle log keeps no process alive.
    w.unref();
    w.on("message", (a: WriterAnswer) => this.onAnswer(a));
    const lost = (e: unknown): void => {
      if (this.worker !== w) return;
      // Never expected (every request is answered, errors included): fail what waits, and let
      // the next request start a new thread. The file it had open is opened again by resync().
      this.worker = this.closed ? w : this.startWriter();
      this.stalled = undefined;
      for (const [id, o] of this.outstanding) {
        this.outstanding.delete(id);
        clearTimeout(o.timer);
        if (!o.abandoned) o.reject(new Error(`the audit writer thread stopped (${errorCode(e)})`));
      }
    };
    w.on("error", lost);
    w.on("exit", (code) => lost(new Error(`exit code ${code}`)));
    return w;
  }

  private async stopWriter(): Promise<void> {
    const w = this.worker;
    w.removeAllListeners("exit");
    w.removeAllListeners("error");
    w.on("error", () => undefined);
    // A thread blocked in a stalled disk cannot stop until the disk answers; never wait for it.
    if (this.stalled) void w.terminate().catch(() => undefined);
    else await w.terminate().catch(() => undefined);
  }

  /** One request to the writer thread, waited for at most timeoutMs. */
  private call<Op extends WriterRequest["op"]>(req: Extract<WriterRequestBody, { op: Op }>, timeoutMs: number, transfer?: ArrayBuffer[]): Promise<Extract<WriterResult, { op: Op }>> {
    if (this.stalled) {
      const s = Math.round((performance.now() - this.stalled.since) / 1000);
      return Promise.reject(new Error(`the audit disk has not finished ${WHAT[this.stalled.op]} started ${s} s ago`));
    }
    // Positive 31-bit ids: the shared slot is an Int32Array.
    const id = (this.nextRequestId = (this.nextRequestId % 0x7fffffff) + 1);
    return new Promise<WriterResult>((resolve, reject) => {
      const since = performance.now();
      const timer = setTimeout(() => {
        const o = this.outstanding.get(id);
        if (!o) return;
        o.abandoned = true;
        Atomics.store(this.abandoned, 0, id);
        this.stalled = { op: req.op, since };
        // The thread may stay blocked for ever; that must not keep a stopping process alive.
        this.worker.unref();
        reject(new Error(`the audit disk did not finish ${WHAT[req.op]} within ${timeoutMs} ms`));
      }, timeoutMs);
      this.outstanding.set(id, { op: req.op, since, resolve, reject, timer, abandoned: false });
      this.worker.ref();
      this.worker.postMessage({ ...req, id }, transfer);
    }) as Promise<Extract<WriterResult, { op: Op }>>;
  }

  private onAnswer(a: WriterAnswer): void {
    const o = this.outstanding.get(a.id);
    if (!o) return;
    this.outstanding.delete(a.id);
    clearTimeout(o.timer);
    if (this.outstanding.size === 0) this.worker.unref();
    if (o.abandoned) {
      // The stalled request finished after all. Its callers were answered UNAVAILABLE; what it may
      // have written is cut back by the recovery, which need not wait for its backoff any more.
      this.stalled = undefined;
      this.retrySoon();
      return;
    }
    if ("ok" in a) o.resolve(a.ok);
    else o.reject(Object.assign(new Error(a.error.message), { code: a.error.code, cutBack: a.error.cutBack }));
  }

  private async flush(): Promise<void> {
    // Appends made in the same turn of the event loop join the first batch.
    await Promise.resolve();
    try {
      while (this.queue.length > 0 && this.failure === undefined) {
        await this.gate.gather();
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
      let bytes = first.bytes;
      const rotate = this.size > 0 && this.size + bytes > this.maxFileBytes;
      const size = rotate ? 0 : this.size;
      while (j < batch.length && size + bytes + batch[j]!.bytes <= this.maxFileBytes) bytes += batch[j++]!.bytes;
      const segment = batch.slice(i, j);
      // A memory of its own (not a slice of Buffer's shared pool, which a message would copy
      // whole), moved to the writer thread rather than copied.
      const data = new Uint8Array(bytes);
      const view = Buffer.from(data.buffer);
      let off = 0;
      for (const p of segment) {
        off += view.write(p.line, off, "utf8");
        view[off++] = NEWLINE;
      }
      try {
        const r = await this.call({ op: "write", data, fsync: this.fsync, rotateTo: rotate ? join(this.dir, auditFileName(first.receipt.sequence)) : undefined, dir: this.dir }, this.writeTimeoutMs, [
          data.buffer,
        ]);
        this.path = r.path;
        this.size = r.size;
        this.committed = { path: this.path, size: this.size };
        this.durableSequence = segment[segment.length - 1]!.receipt.sequence;
        if (r.fsyncSeconds !== undefined) this.reportFsync(r.fsyncSeconds, segment.length);
      } catch (e) {
        this.fail(e, batch.slice(i));
        return;
      }
      for (const p of segment) p.resolve(p.receipt);
      i = j;
    }
  }

  private fail(e: unknown, pending: Pending[]): void {
    this.failure = new SignerError("AUDIT_UNAVAILABLE", `the audit log cannot be written: ${errorCode(e)}`, { cause: e });
    for (const p of pending) p.reject(this.failure);
    for (const p of this.queue.splice(0, this.queue.length)) p.reject(this.failure);
    if (!this.retrying) this.scheduleRecovery();
  }

  private scheduleRecovery(now = false): void {
    const r = this.retry;
    if (!r || this.closed || this.retryTimer) return;
    const ms = now ? 0 : retryDelayMs(r, this.retryAttempts);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      void this.retryOnce(r, ms);
    }, ms);
    this.retryTimer.unref();
  }

  /** The disk answered again: the next automatic attempt comes now, and backs off from the start. */
  private retrySoon(): void {
    if (!this.retry || !this.failure || this.closed || this.retrying) return;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    this.retryAttempts = 0;
    this.scheduleRecovery(true);
  }

  /** One automatic attempt: recover(), then a durable line that records the outage. */
  private async retryOnce(r: NonNullable<AuditLogOptions["retry"]>, waitedMs: number): Promise<void> {
    const failure = this.failure;
    if (!failure || this.closed) return; // recovered meanwhile by a call to recover(), or closed
    this.retrying = true;
    try {
      await this.recover();
      // Requests may append from here on; this line proves the disk takes writes again.
      await this.append(recoveredRecord(failure, waitedMs));
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

  /** Finds the end of the chain on disk (cutting a torn last line away) and opens the newest file. */
  private async resync(): Promise<void> {
    const r = await this.call({ op: "resync", dir: this.dir, fsync: this.fsync }, this.otherTimeoutMs);
    this.torn = r.torn;
    this.path = r.path;
    this.size = r.size;
    this.committed = { path: this.path, size: this.size };
    this.assigned = r.tail;
    this.durableSequence = r.tail.sequence;
  }

  /**
   * A torn tail was cut away: the chain itself says so (method "AuditLog.Repaired", which
   * `audit verify` lists), before any request is written after it.
   */
  private async recordRepair(): Promise<void> {
    const t = this.torn;
    if (!t) return;
    await this.append({
      requestId: "-",
      peer: "-",
      identity: "hsm-signer",
      method: "AuditLog.Repaired",
      decision: "none",
      result: "OK",
      latencyMs: 0,
      repair: {
        file: t.file.slice(t.file.lastIndexOf("/") + 1),
        cutBytes: t.bytes,
        cutSha256: t.sha256,
        cutPreview: t.preview,
        reason: "a torn last line (a crash or a failed write in the middle of a line) was cut away",
      },
    });
  }
}

/** {"seq","prev","time", then the record's fields in their own order}. */
function errorCode(e: unknown): string {
  const code = (e as NodeJS.ErrnoException | undefined)?.code;
  return typeof code === "string" ? code : e instanceof Error ? e.message : "unknown error";
}

function asUnavailable(e: unknown, what: "opened" | "recovered" | "closed"): SignerError {
  if (e instanceof SignerError) return e;
  return new SignerError("AUDIT_UNAVAILABLE", `the audit log cannot be ${what}: ${errorCode(e)}`, { cause: e });
}
