import { existsSync } from "node:fs";
import { mkdir, open, rm } from "node:fs/promises";
import { basename, join } from "node:path";
import type { X509Certificate } from "node:crypto";
import type pg from "pg";
import { SignerError } from "../errors/index.js";
import { auditFileName, auditFilesIn, AUDIT_FILE_PATTERN, GENESIS_HASH, hashLine } from "./audit-log.js";
import type { AuditLine } from "./audit-store.js";
import { CHECKPOINTS_FILE, checkpointProblem, type StoredCheckpoint } from "./checkpoints.js";
import { readRawLines } from "./verify.js";

/**
 * What `audit verify` can find, by name:
 * - edited: a record whose text changed (the next record's prev, or a checkpoint, says so);
 * - inserted: a record that is not part of the chain as written (a seq seen twice);
 * - deleted: records missing from the middle or the head of a chain;
 * - reordered: records out of sequence order;
 * - tail-cut: records a checkpoint covers are gone from the end of the chain;
 * - chain-removed: a chain (a replica's records, or an audit directory's files) is gone entirely
 *   while a checkpoint or the replicas registry names it;
 * - rehashed: the chain is consistent but differs from what a checkpoint signed (edited, then
 *   every later prev recomputed);
 * - forged-checkpoint: a checkpoint whose signature does not verify with the audit certificate,
 *   or whose stored fields differ from what was signed.
 */
export type FindingKind = "edited" | "inserted" | "deleted" | "reordered" | "tail-cut" | "chain-removed" | "rehashed" | "forged-checkpoint";

export interface Finding {
  kind: FindingKind;
  replica: string;
  seq?: number;
  /** file:line, or replica#seq in the database. */
  where?: string;
  message: string;
}

export interface ChainSummary {
  replica: string;
  records: number;
  firstSeq?: number;
  lastSeq?: number;
  /** Valid checkpoints that match the chain. */
  checkpoints: number;
  lastCheckpointSeq?: number;
  /** Records after the last valid checkpoint: not protected against truncation yet. */
  unprotected: number;
  /** Time of the first unprotected record. */
  unprotectedSince?: string;
}

export interface StoreVerifyReport {
  ok: boolean;
  chains: ChainSummary[];
  findings: Finding[];
}

interface ChainEntry {
  where: string;
  /** The seq the store files it under (the database's seq column), when it has one. */
  storedSeq?: number;
  bytes: Buffer;
  terminated: boolean;
  /** The file it came from, for files. */
  file?: string;
}

/** At most this many findings per chain: past the first few, the rest is noise. */
const MAX_FINDINGS_PER_CHAIN = 20;
const HEX_SHA256 = /^[0-9a-f]{64}$/;

/**
 * Walks one chain in order and checks every link and every checkpoint against it. `checkpoints`
 * are the replica's stored checkpoints (their signatures are checked here; a bad one is a
 * forged-checkpoint finding and protects nothing).
 */
async function verifyChain(replica: string, entries: AsyncIterable<ChainEntry>, stored: StoredCheckpoint[], cert: X509Certificate | undefined, findings: Finding[]): Promise<ChainSummary> {
  const mine: Finding[] = [];
  const add = (f: Omit<Finding, "replica">): void => {
    if (mine.length < MAX_FINDINGS_PER_CHAIN) mine.push({ replica, ...f });
  };
  const valid = new Map<number, StoredCheckpoint>();
  for (const cp of stored) {
    const problem = cert ? checkpointProblem(cp, cert) : undefined;
    if (problem || cp.replica !== replica) {
      add({
        kind: "forged-checkpoint",
        seq: cp.seq,
        message: `the checkpoint of replica "${cp.replica}" at seq ${cp.seq} is forged: ${problem ?? `it names replica "${cp.replica}", this chain is "${replica}"`}`,
      });
      continue;
    }
    if (cert) valid.set(cp.seq, cp);
  }
  const matched = new Set<number>();
  /** Checkpoints whose seq is in the chain but whose record differs: reported once, at the first. */
  const mismatched = new Set<number>();
  let lastGoodCheckpoint = 0;
  let brokenSinceCheckpoint = false;
  let prev: { seq: number; hash: string; where: string; file?: string } | undefined;
  let records = 0;
  let firstSeq: number | undefined;
  /** The first record after the newest matching checkpoint: since when records are unprotected. */
  let firstUnprotected: { seq: number; time: string } | undefined;
  const it = entries[Symbol.asyncIterator]();
  let next = await it.next();
  while (!next.done) {
    const e = next.value;
    next = await it.next();
    records++;
    const parsed = parseRecord(e.bytes, e.terminated);
    if (typeof parsed === "string") {
      add({ kind: "edited", where: e.where, seq: e.storedSeq, message: `${e.where} is not an audit record (${parsed}): it was edited` });
      brokenSinceCheckpoint = true;
      prev = undefined;
      continue;
    }
    const { seq } = parsed;
    const hash = hashLine(e.bytes);
    firstSeq ??= seq;
    if (e.storedSeq !== undefined && e.storedSeq !== seq) {
      add({ kind: "reordered", where: e.where, seq: e.storedSeq, message: `the record stored as seq ${e.storedSeq} is the record with seq ${seq}: records were moved (reordered)` });
      brokenSinceCheckpoint = true;
    }
    if (prev === undefined) {
      if (records === 1 && seq !== 1) {
        add({ kind: "deleted", where: e.where, seq, message: `the chain starts at seq ${seq}: records 1 to ${seq - 1} are missing (deleted, or an audit file was removed)` });
        brokenSinceCheckpoint = true;
      } else if (seq === 1 && parsed.prev !== GENESIS_HASH) {
        add({ kind: "edited", where: e.where, seq, message: `${e.where}: seq 1 must have prev = 64 zeros: it was edited` });
        brokenSinceCheckpoint = true;
      }
    } else {
      const expected = prev.seq + 1;
      const nextSeq = next.done ? undefined : seqOf(next.value.bytes);
      if (seq === expected) {
        if (parsed.prev !== prev.hash) {
          add({ kind: "edited", where: prev.where, seq: prev.seq, message: `the record with seq ${prev.seq} (${prev.where}) was edited: it no longer hashes to the prev of seq ${seq}` });
          brokenSinceCheckpoint = true;
        }
      } else if (seq === prev.seq) {
        add({ kind: "inserted", where: e.where, seq, message: `seq ${seq} appears twice (${prev.where} and ${e.where}): a record was inserted` });
        brokenSinceCheckpoint = true;
      } else if (seq < prev.seq || nextSeq === expected) {
        add({ kind: "reordered", where: e.where, seq, message: `seq ${seq} (${e.where}) comes where seq ${expected} was expected: records were reordered` });
        brokenSinceCheckpoint = true;
      } else if (seq > expected) {
        const acrossFiles = e.file !== undefined && prev.file !== e.file ? " (an audit file was removed?)" : "";
        add({ kind: "deleted", where: e.where, seq: expected, message: `records ${expected} to ${seq - 1} are missing before ${e.where}: deleted${acrossFiles}` });
        brokenSinceCheckpoint = true;
      }
    }
    const cp = valid.get(seq);
    if (cp) {
      if (cp.hash === hash) {
        matched.add(seq);
        lastGoodCheckpoint = Math.max(lastGoodCheckpoint, seq);
        brokenSinceCheckpoint = false;
      } else if (mismatched.add(seq).size > 1) {
        // Every later checkpoint differs too once the chain was rewritten: the first one says it.
      } else if (!brokenSinceCheckpoint) {
        // The links all hold, yet the record is not the one that was signed: rewritten, prevs and all.
        add({
          kind: "rehashed",
          where: e.where,
          seq,
          message: `the chain was edited and re-hashed after seq ${lastGoodCheckpoint}: the record with seq ${seq} (${e.where}) is not the one the checkpoint at seq ${seq} signed`,
        });
      } else {
        add({ kind: "edited", where: e.where, seq, message: `the record with seq ${seq} (${e.where}) is not the one the checkpoint at seq ${seq} signed` });
      }
    }
    if (seq <= lastGoodCheckpoint) firstUnprotected = undefined;
    else firstUnprotected ??= { seq, time: typeof parsed.time === "string" ? parsed.time : "?" };
    prev = { seq, hash, where: e.where, file: e.file };
  }
  const lastSeq = prev?.seq;
  // One cut tail is one finding, named by the last checkpoint past the end, however many were.
  let cutTo: { seq: number; time: string } | undefined;
  for (const [seq, cp] of valid) {
    if (matched.has(seq) || mismatched.has(seq)) continue;
    if (records === 0) continue;
    if (lastSeq === undefined || seq > lastSeq) {
      if (!cutTo || seq > cutTo.seq) cutTo = { seq, time: cp.time };
    } else if (!mine.some((f) => f.kind === "deleted" || f.kind === "reordered" || f.kind === "edited")) {
      add({ kind: "deleted", seq, message: `the record with seq ${seq}, which a checkpoint signed, is missing` });
    }
  }
  if (cutTo) {
    add({
      kind: "tail-cut",
      seq: cutTo.seq,
      message: `the chain ends at seq ${lastSeq ?? 0} but a checkpoint signed at ${cutTo.time} covers it up to seq ${cutTo.seq}: records ${(lastSeq ?? 0) + 1} to ${cutTo.seq} were cut off`,
    });
  }
  if (records === 0 && valid.size > 0) {
    const top = Math.max(...valid.keys());
    add({ kind: "chain-removed", message: `the chain of replica "${replica}" is gone: a checkpoint signed its records up to seq ${top}` });
  }
  findings.push(...mine);
  return {
    replica,
    records,
    firstSeq,
    lastSeq,
    checkpoints: matched.size,
    lastCheckpointSeq: lastGoodCheckpoint || undefined,
    unprotected: lastSeq === undefined ? 0 : Math.max(0, lastSeq - lastGoodCheckpoint),
    unprotectedSince: firstUnprotected?.time,
  };
}

function parseRecord(bytes: Buffer, terminated: boolean): { seq: number; prev: string; time: unknown } | string {
  if (!terminated) return "no newline at its end: a torn write or a cut file";
  let r: unknown;
  try {
    r = JSON.parse(bytes.toString("utf8"));
  } catch {
    return "not JSON";
  }
  if (typeof r !== "object" || r === null || Array.isArray(r)) return "not a JSON object";
  const { seq, prev, time } = r as { seq?: unknown; prev?: unknown; time?: unknown };
  if (typeof seq !== "number" || !Number.isSafeInteger(seq) || seq < 1) return "no valid seq";
  if (typeof prev !== "string" || !HEX_SHA256.test(prev)) return "no valid prev hash";
  return { seq, prev, time };
}

function seqOf(bytes: Buffer): number | undefined {
  try {
    const s = (JSON.parse(bytes.toString("utf8")) as { seq?: unknown }).seq;
    return typeof s === "number" ? s : undefined;
  } catch {
    return undefined;
  }
}

// ---- files ----------------------------------------------------------------------------------

/** The checkpoints of an audit directory (checkpoints.jsonl); a line that is no checkpoint is forged. */
export async function readFileCheckpoints(dir: string): Promise<StoredCheckpoint[]> {
  const path = join(dir, CHECKPOINTS_FILE);
  if (!existsSync(path)) return [];
  // Streamed, line by line: the file grows by a checkpoint a minute or more, and read as one
  // string it passed V8's longest string (512 MiB) within two years.
  const out: StoredCheckpoint[] = [];
  for await (const { bytes } of readRawLines(path)) {
    const l = bytes.toString("utf8");
    if (l.trim() === "") continue;
    try {
      const o = JSON.parse(l) as Partial<StoredCheckpoint>;
      out.push({ replica: String(o.replica), seq: Number(o.seq), hash: String(o.hash), time: String(o.time), keyId: String(o.keyId), statement: String(o.statement), signature: String(o.signature) });
    } catch {
      out.push({ replica: "?", seq: 0, hash: "", time: "", keyId: "", statement: "", signature: "" });
    }
  }
  return out;
}

async function* fileEntries(files: string[]): AsyncGenerator<ChainEntry> {
  for (const file of files) {
    let n = 0;
    for await (const { bytes, terminated } of readRawLines(file)) {
      n++;
      yield { where: `${file}:${n}`, bytes, terminated, file };
    }
  }
}

/**
 * Verifies the chain of an audit directory (the service's, or one `audit export` wrote) with its
 * checkpoints. `replica`: the chain's replica id (default: the one its checkpoints name).
 */
export async function verifyAuditDir(dir: string, cert: X509Certificate | undefined, replica?: string): Promise<StoreVerifyReport> {
  const files = auditFilesIn(dir);
  const checkpoints = await readFileCheckpoints(dir);
  const name = replica ?? checkpoints.find((c) => c.replica !== "?")?.replica ?? basename(dir);
  const findings: Finding[] = [];
  const summary = await verifyChain(name, fileEntries(files), checkpoints, cert, findings);
  // A file whose name says audit-N must start with seq N: catches the removal of a file's head lines.
  for (const file of files) {
    const m = AUDIT_FILE_PATTERN.exec(basename(file));
    const first = await firstLineSeq(file);
    if (m && first !== undefined && first !== Number(m[1]) && !findings.some((f) => f.where?.startsWith(`${file}:`))) {
      findings.push({ kind: "deleted", replica: name, where: `${file}:1`, message: `${file} should start with seq ${Number(m[1])} but starts with seq ${first}: its first records were deleted` });
    }
  }
  return { ok: findings.length === 0, chains: [summary], findings };
}

async function firstLineSeq(file: string): Promise<number | undefined> {
  for await (const { bytes } of readRawLines(file)) return seqOf(bytes);
  return undefined;
}

// ---- database -------------------------------------------------------------------------------

const PAGE = 5000;

async function* dbEntries(client: pg.ClientBase, replica: string): AsyncGenerator<ChainEntry> {
  let after = "0";
  for (;;) {
    const r = await client.query<{ seq: string; line: string }>("SELECT seq::text AS seq, line FROM audit_records WHERE replica_id = $1 AND seq > $2 ORDER BY audit_records.seq LIMIT $3", [
      replica,
      after,
      PAGE,
    ]);
    for (const row of r.rows) yield { where: `${replica}#${row.seq}`, storedSeq: Number(row.seq), bytes: Buffer.from(row.line, "utf8"), terminated: true };
    if (r.rows.length < PAGE) return;
    after = r.rows[r.rows.length - 1]!.seq;
  }
}

export async function dbCheckpoints(client: pg.ClientBase, replica: string): Promise<StoredCheckpoint[]> {
  const r = await client.query<{ replica_id: string; seq: string; hash: string; time: Date; key_id: string; statement: string; signature: string }>(
    "SELECT replica_id, seq::text AS seq, hash, time, key_id, statement, signature FROM audit_checkpoints WHERE replica_id = $1 ORDER BY audit_checkpoints.seq",
    [replica],
  );
  return r.rows.map((x) => ({ replica: x.replica_id, seq: Number(x.seq), hash: x.hash, time: x.time.toISOString(), keyId: x.key_id, statement: x.statement, signature: x.signature }));
}

/** Every replica id the database knows of: registered, with records, or named by a checkpoint. */
export async function dbReplicas(client: pg.ClientBase): Promise<{ replica: string; registered: boolean }[]> {
  // A loose index scan: one probe per replica instead of reading every record.
  const r = await client.query<{ replica_id: string; registered: boolean }>(`
    WITH RECURSIVE rec(id) AS (
      (SELECT replica_id FROM audit_records ORDER BY replica_id LIMIT 1)
      UNION ALL
      SELECT (SELECT replica_id FROM audit_records WHERE replica_id > rec.id ORDER BY replica_id LIMIT 1) FROM rec WHERE rec.id IS NOT NULL
    ),
    ids AS (
      SELECT id AS replica_id FROM rec WHERE id IS NOT NULL
      UNION SELECT replica_id FROM audit_replicas
      UNION SELECT DISTINCT replica_id FROM audit_checkpoints
    )
    SELECT ids.replica_id, EXISTS (SELECT 1 FROM audit_replicas r WHERE r.replica_id = ids.replica_id) AS registered FROM ids ORDER BY 1`);
  return r.rows.map((x) => ({ replica: x.replica_id, registered: x.registered }));
}

/** A replica id no record, checkpoint or registry row names: a typo, not a removed chain. */
function unknownReplica(replica: string): SignerError {
  return new SignerError("INVALID_ARGUMENT", `the audit database knows no replica "${replica}" (no record, checkpoint or registry row names it)`);
}

/** Verifies every chain in the database (or only `replica`) with its checkpoints. */
export async function verifyDatabase(client: pg.ClientBase, cert: X509Certificate | undefined, replica?: string): Promise<StoreVerifyReport> {
  const known = await dbReplicas(client);
  const replicas = replica === undefined ? known : known.filter((r) => r.replica === replica);
  // One nothing names was never there (a typo): saying its chain was removed would be a false alarm.
  if (replica !== undefined && replicas.length === 0) throw unknownReplica(replica);
  const findings: Finding[] = [];
  const chains: ChainSummary[] = [];
  for (const r of replicas) {
    const summary = await verifyChain(r.replica, dbEntries(client, r.replica), await dbCheckpoints(client, r.replica), cert, findings);
    if (summary.records === 0 && r.registered && !findings.some((f) => f.replica === r.replica && f.kind === "chain-removed")) {
      findings.push({ kind: "chain-removed", replica: r.replica, message: `the chain of replica "${r.replica}" is gone: the replicas registry lists it, but it has no records` });
    }
    chains.push(summary);
  }
  return { ok: findings.length === 0, chains, findings };
}

/** What `audit search` over the database looks for; as AuditQuery, plus globs (`*`, `?`) in identity and key. */
export interface DbAuditQuery {
  artifactDigest?: string;
  keyId?: string;
  identity?: string;
  from?: Date;
  to?: Date;
  replica?: string;
  limit?: number;
}

/** `*` and `?` as in the policy; everything else literal. */
function likePattern(glob: string): string {
  return glob
    .replace(/[\\%_]/g, (c) => `\\${c}`)
    .replace(/\*/g, "%")
    .replace(/\?/g, "_");
}

/** The records matching every condition given, across replicas, oldest first (indexed: digest, key, identity, time). */
export async function* searchDatabase(client: pg.ClientBase, q: DbAuditQuery): AsyncGenerator<{ replica: string; record: AuditLine }> {
  const where: string[] = [];
  const args: unknown[] = [];
  const arg = (v: unknown): string => {
    args.push(v);
    return `$${args.length}`;
  };
  if (q.artifactDigest !== undefined) where.push(`artifact_digest = ${arg(q.artifactDigest.toLowerCase())}`);
  for (const [col, v] of [
    ["key_id", q.keyId],
    ["identity", q.identity],
  ] as const) {
    if (v === undefined) continue;
    where.push(/[*?]/.test(v) ? `${col} LIKE ${arg(likePattern(v))}` : `${col} = ${arg(v)}`);
  }
  if (q.from) where.push(`time >= ${arg(q.from.toISOString())}`);
  if (q.to) where.push(`time < ${arg(q.to.toISOString())}`);
  if (q.replica) where.push(`replica_id = ${arg(q.replica)}`);
  let after: { time: string; replica: string; seq: string } | undefined;
  let left = q.limit ?? Number.POSITIVE_INFINITY;
  for (;;) {
    const page = [...where];
    const pageArgs = args.length;
    if (after) page.push(`(time, replica_id, seq) > (${arg(after.time)}::timestamptz, ${arg(after.replica)}, ${arg(after.seq)}::bigint)`);
    const sql = `SELECT replica_id, seq::text AS seq, to_char(time AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US') AS t, line FROM audit_records ${page.length ? `WHERE ${page.join(" AND ")}` : ""} ORDER BY audit_records.time, audit_records.replica_id, audit_records.seq LIMIT ${Math.min(PAGE, left)}`;
    const r = await client.query<{ replica_id: string; seq: string; t: string; line: string }>(sql, args);
    args.length = pageArgs;
    for (const row of r.rows) {
      let record: unknown;
      try {
        record = JSON.parse(row.line);
      } catch {
        continue; // searching is not verifying
      }
      // A line that is no JSON object (null, a number, an array) is no record either, as in files.
      if (typeof record !== "object" || record === null || Array.isArray(record)) continue;
      yield { replica: row.replica_id, record: record as AuditLine };
    }
    left -= r.rows.length;
    if (r.rows.length < PAGE || left <= 0) return;
    const last = r.rows[r.rows.length - 1]!;
    after = { time: `${last.t}Z`, replica: last.replica_id, seq: last.seq };
  }
}

/**
 * Writes a replica's chain as audit files (the file log's names and rotation) and its checkpoints
 * as checkpoints.jsonl into `dir`: `audit verify --dir DIR --cert CERT` checks them offline.
 * Records are written as stored, so that an export of a tampered chain shows the tampering.
 */
export async function exportReplica(client: pg.ClientBase, replica: string, dir: string, maxFileBytes = 64 * 1024 * 1024): Promise<{ records: number; files: number; checkpoints: number }> {
  // As verify: an empty export of a name the database never knew would pass for a replica's (empty) chain.
  if (!(await dbReplicas(client)).some((r) => r.replica === replica)) throw unknownReplica(replica);
  // The first directory this made, if any: removed again, with the files, when the export fails.
  const made = await mkdir(dir, { recursive: true, mode: 0o700 });
  if (auditFilesIn(dir).length > 0 || existsSync(join(dir, CHECKPOINTS_FILE))) throw new Error(`${dir} already holds audit files`);
  const written: string[] = [];
  const create = (path: string): ReturnType<typeof open> => open(path, "wx", 0o600).then((f) => (written.push(path), f));
  let fh: Awaited<ReturnType<typeof open>> | undefined;
  let size = 0;
  let records = 0;
  try {
    try {
      for await (const e of dbEntries(client, replica)) {
        const bytes = Buffer.concat([e.bytes, Buffer.from("\n")]);
        if (!fh || (size > 0 && size + bytes.length > maxFileBytes)) {
          await fh?.close();
          fh = await create(join(dir, auditFileName(e.storedSeq ?? records + 1)));
          size = 0;
        }
        await fh.write(bytes);
        size += bytes.length;
        records++;
      }
    } finally {
      await fh?.close();
    }
    const cps = await dbCheckpoints(client, replica);
    const cpFile = await create(join(dir, CHECKPOINTS_FILE));
    try {
      for (const cp of cps) await cpFile.write(`${JSON.stringify(cp)}\n`);
    } finally {
      await cpFile.close();
    }
    return { records, files: written.length - 1, checkpoints: cps.length };
  } catch (e) {
    // Part of a chain (records without their checkpoints, or cut short) would verify as a
    // shorter, intact one: nothing of a failed export stays.
    for (const f of written) await rm(f, { force: true });
    if (made !== undefined) await rm(made, { recursive: true, force: true });
    throw e;
  }
}
