import { artifactDigestOf, type AuditLine } from "../audit/audit-store.js";
import { SignerError } from "../errors/index.js";
import { isKeySpec, type KeySpec } from "../signing/key-spec.js";

/** A command line mistake: the command prints its usage and exits 2. */
export class UsageError extends Error {}

export function need(v: string | undefined, flag: string): string {
  if (!v) throw new UsageError(`${flag} is required`);
  return v;
}

export function spec(v: string | undefined, flag: string): KeySpec | undefined {
  if (v === undefined) return undefined;
  if (!isKeySpec(v)) throw new UsageError(`${flag} must be one of RSA-2048, RSA-3072, RSA-4096, EC-256, EC-384, EC-521`);
  return v;
}

/** A time flag (--from, --to): an ISO 8601 date, or undefined when not given. */
export function dateFlag(v: string | undefined, flag: string): Date | undefined {
  if (v === undefined) return undefined;
  const d = new Date(v);
  if (Number.isNaN(d.getTime())) throw new UsageError(`${flag} must be a date such as 2026-11-24T10:00:00Z`);
  return d;
}

/** --key is a private-key file (mTLS) in the custodian commands; audit searches name a key with --key-id. */
export function refuseKeyFlag(key: string | undefined): void {
  if (key !== undefined) throw new UsageError("audit search takes the key id as --key-id (--key is the TLS private-key file in other commands)");
}

/**
 * Text a caller chose (a key id, an identity, an error) made safe to print on a terminal: control
 * characters (C0, DEL and C1, which includes the CSI that starts escape sequences) are shown as
 * \xNN, so an audit record cannot move the cursor, rewrite lines or retitle a custodian's window.
 */
export function terminalText(s: string): string {
  return s.replace(/[\x00-\x1f\x7f-\x9f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`);
}

/**
 * A record's field as `audit search` shows it: "-" when missing, a string, number or boolean as
 * it is, anything else (an object or array in a tampered record) as its JSON text. Not String():
 * it calls the value's own toString, and one record such as {"payloadDigest":{"toString":1}}
 * made it throw and ended the whole search. Search is not verify: it goes on.
 */
export function fieldText(f: unknown): string {
  if (f === undefined || f === null) return "-";
  return typeof f === "object" ? JSON.stringify(f) : String(f);
}

/** One `audit search` row (over files or the database): its fields two spaces apart, terminal-safe. */
export function auditSearchLine(fields: unknown[]): string {
  return fields.map((f) => terminalText(fieldText(f))).join("  ");
}

/**
 * One `audit search` result as printed: its JSON line, or a table line whose `seq` names the
 * record (`#12` in files; `replica#12` over the database, where each replica has its own chain).
 */
export function auditSearchText(r: AuditLine, seq: string, json: boolean | undefined): string {
  return json ? JSON.stringify(r) : auditSearchLine([r.time, seq, r.identity, r.method, r.keyId, r.result, artifactDigestOf(r) ?? r.payloadDigest]);
}

/** `audit verify|search --dir DIR` where DIR holds no audit file: an emptied or wrong directory is not an intact log. */
export function noAuditFiles(dir: string, what: "verify" | "search"): SignerError {
  return new SignerError("INVALID_ARGUMENT", `${dir} holds no audit files (audit-<first seq>.jsonl): nothing to ${what}`);
}

/**
 * `audit verify` that found no record and nothing wrong (empty audit files, an empty
 * checkpoints.jsonl, a database without replicas): nothing was verified, so it is not an OK.
 */
export function noAuditRecords(where: string): SignerError {
  return new SignerError("INVALID_ARGUMENT", `nothing to verify: no audit records in ${where}`);
}

/**
 * A command's output, line by line, for output that may be long (`audit search`): a write waits
 * while the reader is behind (a pager, a slow pipe), so the output is never gathered in memory,
 * and once the reader is gone (EPIPE: `| head` has its lines) `line` answers false and the
 * command stops, quietly, rather than dying on the stream's error.
 */
export class LineOutput {
  private gone = false;

  constructor(private readonly out: NodeJS.WritableStream = process.stdout) {
    out.on("error", (e: NodeJS.ErrnoException) => {
      this.gone = true;
      // The reader left: nothing to say. Anything else is worth a word, once.
      if (e.code !== "EPIPE") console.error(`hsm-signer: cannot write the output: ${e.message}`);
    });
  }

  /** Writes one line; false when the reader is gone and nothing more should be written. */
  async line(text: string): Promise<boolean> {
    if (this.gone) return false;
    if (!this.out.write(`${text}\n`)) {
      await new Promise<void>((resolve) => {
        const done = (): void => {
          this.out.off("drain", done);
          this.out.off("error", done);
          this.out.off("close", done);
          resolve();
        };
        this.out.on("drain", done);
        this.out.on("error", done);
        this.out.on("close", done);
      });
    }
    return !this.gone;
  }
}
