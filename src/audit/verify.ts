import { createReadStream } from "node:fs";
import { basename } from "node:path";
import { createInterface } from "node:readline";
import { AUDIT_FILE_PATTERN, GENESIS_HASH, hashLine } from "./audit-log.js";

export interface AuditVerifyResult {
  ok: boolean;
  /** Lines that verified (all of them when ok). */
  lines: number;
  /** The first line that breaks the chain; `line` is 1-based within `file`. */
  firstBad?: { file: string; line: number; reason: string };
  /**
   * The repairs the writer recorded in the chain (lines with method "AuditLog.Repaired": a torn
   * tail it cut away at start-up); present only when there are some. The chain is intact across
   * them, but the cut bytes are gone: worth a look.
   */
  repairs?: AuditRepair[];
}

export interface AuditRepair {
  /** The line that records the repair; `line` is 1-based within `file`. */
  file: string;
  line: number;
  seq: number;
  /** How many bytes were cut, and from which file (its name). */
  cutBytes: number;
  repairedFile: string;
}

export interface AuditQuery {
  /** The signed artifact's digest (Notary payloads), e.g. "sha256:d7fe…". */
  artifactDigest?: string;
  /** Globs, as in the policy: `*` any run of characters (including "/"), `?` one character, the rest literal. */
  keyId?: string;
  identity?: string;
  /** Inclusive. */
  from?: Date;
  /** Exclusive. */
  to?: Date;
}

const HEX_SHA256 = /^[0-9a-f]{64}$/;

interface ChainLink {
  seq: number;
  hash: string;
  file: string;
  line: number;
}

/**
 * Checks the hash chain over files taken in the given order (the caller sorts audit-*.jsonl by
 * name): every line is a JSON record, seq grows by exactly 1 across files, and prev is the SHA-256
 * of the line before. Stops at the first bad line:
 * - a removed, inserted or reordered line breaks seq (or prev) at the first affected line;
 * - an edited line k still looks fine itself (its own seq and prev are unchanged) but no longer
 *   hashes to the prev of line k+1, so it is reported at k+1, with a reason naming line k. An edit
 *   of the very last line cannot be seen from the file alone; its receipt (the line hash handed to
 *   the caller) proves it;
 * - a file whose name says audit-N must start with seq N, which catches removing a first line.
 * The first line of the first file anchors the chain: seq 1 must have prev = 64 zeros; a later
 * seq is accepted as is, so that an archived prefix need not be present. A file that cannot be
 * read rejects (ENOENT...): that is not a verdict on the chain.
 */
export async function verifyAuditFiles(files: string[]): Promise<AuditVerifyResult> {
  let previous: ChainLink | undefined;
  let verified = 0;
  const repairs: AuditRepair[] = [];
  for (const file of files) {
    const named = firstSequenceInName(file);
    let n = 0;
    for await (const { bytes, terminated } of readRawLines(file)) {
      n++;
      const checked = checkLine(bytes, terminated, previous, n === 1 ? named : undefined);
      if (typeof checked === "string") return { ok: false, lines: verified, firstBad: { file, line: n, reason: checked } };
      previous = { seq: checked.seq, hash: hashLine(bytes), file, line: n };
      verified++;
      if (checked.repair) repairs.push({ file, line: n, seq: checked.seq, cutBytes: checked.repair.cutBytes, repairedFile: checked.repair.file });
    }
  }
  return repairs.length > 0 ? { ok: true, lines: verified, repairs } : { ok: true, lines: verified };
}

/** The line's seq and prev, or why it breaks the chain. */
function checkLine(bytes: Buffer, terminated: boolean, previous: ChainLink | undefined, named: number | undefined): { seq: number; repair?: { cutBytes: number; file: string } } | string {
  // The writer ends every line with a newline; a line without one was cut short.
  if (!terminated) return "the last line has no newline: a torn write or a truncated file";
  let record: unknown;
  try {
    record = JSON.parse(bytes.toString("utf8"));
  } catch {
    return "not a JSON line";
  }
  if (typeof record !== "object" || record === null || Array.isArray(record)) return "not a JSON object";
  const { seq, prev, method, repair } = record as { seq?: unknown; prev?: unknown; method?: unknown; repair?: { cutBytes?: unknown; file?: unknown } };
  if (typeof seq !== "number" || !Number.isSafeInteger(seq) || seq < 1) return "no valid seq";
  if (typeof prev !== "string" || !HEX_SHA256.test(prev)) return "no valid prev hash";
  if (previous === undefined) {
    if (seq === 1 && prev !== GENESIS_HASH) return "seq 1 must have prev = 64 zeros";
  } else {
    if (seq !== previous.seq + 1) return `seq ${seq} where ${previous.seq + 1} was expected (a line was removed, inserted or reordered)`;
    if (prev !== previous.hash) {
      return `prev does not match the hash of line ${previous.line} of ${previous.file} (that line was edited, or a line was removed, inserted or reordered)`;
    }
  }
  if (named !== undefined && seq !== named) return `the file name says its first seq is ${named} but its first line has seq ${seq}`;
  if (method === "AuditLog.Repaired") {
    return { seq, repair: { cutBytes: typeof repair?.cutBytes === "number" ? repair.cutBytes : NaN, file: typeof repair?.file === "string" ? repair.file : "?" } };
  }
  return { seq };
}

/**
 * Streams the records that match every condition given, in file order. Lines that are not JSON
 * objects are skipped: searching is not verifying.
 */
export async function* searchAudit(files: string[], q: AuditQuery): AsyncGenerator<Record<string, unknown>> {
  const from = q.from?.getTime();
  const to = q.to?.getTime();
  const digest = q.artifactDigest?.toLowerCase();
  const keyId = q.keyId === undefined ? undefined : globRegExp(q.keyId);
  const identity = q.identity === undefined ? undefined : globRegExp(q.identity);
  for (const file of files) {
    const input = createReadStream(file, { encoding: "utf8" });
    const lines = createInterface({ input, crlfDelay: Infinity });
    try {
      for await (const line of lines) {
        const r = parseObject(line);
        if (!r) continue;
        if (digest !== undefined && artifactDigestOf(r)?.toLowerCase() !== digest) continue;
        if (keyId && !(typeof r.keyId === "string" && keyId.test(r.keyId))) continue;
        if (identity && !(typeof r.identity === "string" && identity.test(r.identity))) continue;
        if (from !== undefined || to !== undefined) {
          const t = typeof r.time === "string" ? Date.parse(r.time) : NaN;
          if (Number.isNaN(t) || (from !== undefined && t < from) || (to !== undefined && t >= to)) continue;
        }
        yield r;
      }
    } finally {
      lines.close();
      input.destroy();
    }
  }
}

/** The policy's globs (policy.ts): `*` any run of characters, `?` one, the rest literal, anchored. */
export function globRegExp(pattern: string): RegExp {
  let src = "";
  for (const ch of pattern) {
    if (ch === "*") src += "[\\s\\S]*";
    else if (ch === "?") src += "[\\s\\S]";
    else src += ch.replace(/[\\^$.|+()[\]{}]/g, "\\$&");
  }
  return new RegExp(`^${src}$`, "u");
}

function parseObject(line: string): Record<string, unknown> | undefined {
  try {
    const v: unknown = JSON.parse(line);
    return typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
  } catch {
    return undefined;
  }
}

function artifactDigestOf(r: Record<string, unknown>): string | undefined {
  const a = r.artifact;
  if (typeof a !== "object" || a === null) return undefined;
  const d = (a as { digest?: unknown }).digest;
  return typeof d === "string" ? d : undefined;
}

function firstSequenceInName(file: string): number | undefined {
  const m = AUDIT_FILE_PATTERN.exec(basename(file));
  return m ? Number(m[1]) : undefined;
}

/**
 * Lines as raw bytes, streamed. Not readline: the chain hashes the exact bytes, and decoding
 * first would let an invalid UTF-8 sequence pass for the U+FFFD it decodes to.
 */
export async function* readRawLines(file: string): AsyncGenerator<{ bytes: Buffer; terminated: boolean }> {
  // The start of a line that continues past its chunk, joined once its newline (or the end) comes:
  // joining it to each next chunk instead was quadratic in a long run without a newline.
  let rest: Buffer[] = [];
  for await (const chunk of createReadStream(file) as AsyncIterable<Buffer>) {
    let start = 0;
    for (let nl = chunk.indexOf(0x0a, start); nl >= 0; nl = chunk.indexOf(0x0a, start)) {
      const tail = chunk.subarray(start, nl);
      yield { bytes: rest.length > 0 ? Buffer.concat([...rest, tail]) : tail, terminated: true };
      rest = [];
      start = nl + 1;
    }
    if (start < chunk.length) rest.push(chunk.subarray(start));
  }
  if (rest.length > 0) yield { bytes: Buffer.concat(rest), terminated: false };
}
