import { SignerError } from "../errors/index.js";
import type { AuditLogStats, AuditReceipt, AuditRecordInput } from "./audit-log.js";

/** The longest a group commit waits for the records of calls that have started (CommitGate). */
export const DEFAULT_COMMIT_DELAY_MS = 1;
export const MAX_COMMIT_DELAY_MS = 100;

/**
 * What the service needs of an audit store, whichever keeps the records: the local files
 * (AuditLog) or PostgreSQL (PostgresAuditStore). Both write the same JSON line per request, with
 * the same hash chaining, and both fail closed: an append resolves only once its record is
 * durable, and rejects with AUDIT_UNAVAILABLE when it cannot be made so.
 */
export interface AuditStore {
  append(record: AuditRecordInput): Promise<AuditReceipt>;
  /** A call has started and will append a line (AuditSink.expect). */
  expect?(): void;
  readonly healthy: boolean;
  readonly stats: AuditLogStats;
  close(): Promise<void>;
}

/**
 * Group commit's wait, like PostgreSQL's commit_delay with commit_siblings: calls announce
 * themselves when they start (AuditSink.expect), and a store about to make its queued records
 * durable first waits, at most delayMs, while announced calls have not appended theirs; the
 * last of them ends the wait at once. A call alone never waits (nothing else is announced), and
 * an announced record that never comes (none should) costs at most the delay.
 */
export class CommitGate {
  /** Calls announced and not yet appended. */
  private expected = 0;
  private waiting: { timer: NodeJS.Timeout; done: () => void } | undefined;
  /** The store closes: nothing waits any more. */
  private closed = false;

  constructor(readonly delayMs: number = DEFAULT_COMMIT_DELAY_MS) {
    if (!Number.isFinite(delayMs) || delayMs < 0 || delayMs > MAX_COMMIT_DELAY_MS) {
      throw new SignerError("CONFIG_INVALID", `the audit commitDelayMs must be between 0 and ${MAX_COMMIT_DELAY_MS}`);
    }
  }

  /** A call has started and will append its record. */
  expect(): void {
    this.expected++;
  }

  /** A record was appended: one announced call fewer (never below none); the last ends the wait. */
  arrived(): void {
    if (this.expected > 0 && --this.expected === 0) this.release();
  }

  /** Resolves when the announced calls have appended, after delayMs at most, or at close(). */
  gather(): Promise<void> {
    if (this.delayMs === 0 || this.expected === 0 || this.closed) return Promise.resolve();
    return new Promise<void>((done) => {
      this.waiting = { timer: setTimeout(() => this.release(), this.delayMs), done };
    });
  }

  /** The store closes: the wait in progress ends now, and no later write waits. */
  close(): void {
    this.closed = true;
    this.release();
  }

  private release(): void {
    const w = this.waiting;
    if (!w) return;
    this.waiting = undefined;
    clearTimeout(w.timer);
    w.done();
  }
}

/** Fields the store sets itself; a record that tried to set them would forge the chain. */
const RESERVED_FIELDS: ReadonlySet<string> = new Set(["seq", "prev", "time"]);

/**
 * The audit line of a record: {"seq","prev","time", then the record's fields in their own order}.
 * The same text audit-log.ts writes to its files (test/integration/audit-postgres.test.ts checks
 * that a line made here verifies as a file line), so that a chain exported from the database
 * verifies with the file tools and the other way round.
 */
export function serializeRecord(seq: number, prev: string, time: Date, record: AuditRecordInput): string {
  for (const k of RESERVED_FIELDS) if (Object.hasOwn(record, k)) throw new Error(`the audit record field "${k}" is reserved`);
  // The text JSON.stringify({seq, prev, time, ...record}) gives, without copying the record into a
  // new object first (once per request, on the event loop). JSON.stringify escapes control
  // characters and lone surrogates: no raw newline, and the UTF-8 bytes decode back to the same
  // text (the hash of the text is the hash of the bytes).
  const head = `{"seq":${JSON.stringify(seq)},"prev":${JSON.stringify(prev)},"time":${JSON.stringify(time.toISOString())}`;
  const body = JSON.stringify(record);
  return body.length > 2 ? `${head},${body.slice(1)}` : `${head}}`;
}

/** A record as searches show it: the parsed line. */
export type AuditLine = Record<string, unknown>;

/** The artifact digest of a parsed line (Notary payloads), if any. */
export function artifactDigestOf(r: AuditLine): string | undefined {
  const a = r.artifact;
  if (typeof a !== "object" || a === null) return undefined;
  const d = (a as { digest?: unknown }).digest;
  return typeof d === "string" ? d : undefined;
}

/** The wait before a store's next automatic recovery attempt, after `attempts` failed ones. */
export function retryDelayMs(r: { minMs: number; maxMs: number }, attempts: number): number {
  return Math.min(r.maxMs, r.minMs * 2 ** attempts);
}

/** The record a store writes once it takes writes again: it proves the recovery and names the outage. */
export function recoveredRecord(failure: Error, waitedMs: number): AuditRecordInput {
  return {
    requestId: "-",
    peer: "-",
    identity: "hsm-signer",
    method: "AuditLog.Recovered",
    decision: "none",
    result: "OK",
    latencyMs: 0,
    error: failure.message,
    retriedAfterMs: waitedMs,
  };
}
