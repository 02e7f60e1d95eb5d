/** What audit-log.ts and its writer thread (audit-writer.ts) say to each other, and names both use. */

/** Ends every line of an audit file. */
export const NEWLINE = 0x0a;

/** The `prev` of the first line ever written. */
export const GENESIS_HASH = "0".repeat(64);
/** audit-<16-digit first sequence>.jsonl: zero padding makes name order the sequence order. */
export const AUDIT_FILE_PATTERN = /^audit-(\d{16})\.jsonl$/;

export function auditFileName(firstSequence: number): string {
  return `audit-${String(firstSequence).padStart(16, "0")}.jsonl`;
}

export type WriterRequest = { id: number } & (
  | { op: "open"; dir: string; lock: boolean }
  | { op: "resync"; dir: string; fsync: boolean }
  | { op: "write"; data: Uint8Array; fsync: boolean; rotateTo: string | undefined; dir: string }
  | { op: "drop"; committedPath: string; committedSize: number }
  | { op: "close" }
);

export type WriterResult =
  | { op: "open" }
  | {
      op: "resync";
      path: string;
      size: number;
      tail: { sequence: number; hash: string };
      /** A torn last line that was cut away: which file, how many bytes, their SHA-256 and the start of their text. */
      torn: { file: string; bytes: number; sha256: string; preview: string } | undefined;
    }
  | { op: "write"; path: string; size: number; fsyncSeconds: number | undefined }
  | { op: "drop" }
  | { op: "close" };

export type WriterAnswer =
  | { id: number; ok: WriterResult }
  /** cutBack: after a failed write, whether the file was cut back to where the write started. */
  | { id: number; error: { message: string; code: string | undefined; cutBack: boolean | undefined } };
