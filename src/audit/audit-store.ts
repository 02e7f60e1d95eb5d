import type { AuditLogStats, AuditReceipt, AuditRecordInput } from "./audit-log.js";

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
