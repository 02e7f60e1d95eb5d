import { createHash, verify as verifySignature, X509Certificate } from "node:crypto";
import { open, type FileHandle } from "node:fs/promises";
import { join } from "node:path";
import { SignerError } from "../errors/index.js";
import type { AuditLogStats, AuditReceipt, AuditRecordInput } from "./audit-log.js";
import type { AuditStore } from "./audit-store.js";

/** Beside the audit files of a directory: one signed checkpoint per line. */
export const CHECKPOINTS_FILE = "checkpoints.jsonl";
/** The `type` of a checkpoint statement; a signature over anything else is no checkpoint. */
export const CHECKPOINT_TYPE = "hsm-signer.audit.checkpoint/v1";

export type CheckpointAlgorithm = "ES256" | "ES384" | "ES512";
const HASH_OF: Record<CheckpointAlgorithm, "sha256" | "sha384" | "sha512"> = { ES256: "sha256", ES384: "sha384", ES512: "sha512" };
const CURVE_OF: Record<CheckpointAlgorithm, string> = { ES256: "prime256v1", ES384: "secp384r1", ES512: "secp521r1" };

/** What a checkpoint signs: the chain of `replica` up to `seq`, whose record hashes to `hash`. */
export interface CheckpointStatement {
  type: typeof CHECKPOINT_TYPE;
  replica: string;
  seq: number;
  hash: string;
  time: string;
  keyId: string;
  alg: CheckpointAlgorithm;
}

/** A checkpoint as stored (a line of checkpoints.jsonl, a row of audit_checkpoints). */
export interface StoredCheckpoint {
  replica: string;
  seq: number;
  hash: string;
  time: string;
  keyId: string;
  /** The exact JSON text that was signed. */
  statement: string;
  /** base64 of the raw ECDSA signature (r||s) over the statement's UTF-8 bytes. */
  signature: string;
}

/** Signs statements with the audit key in the HSM. */
export interface CheckpointSigner {
  keyId: string;
  alg: CheckpointAlgorithm;
  /** The raw ECDSA signature (r||s) of the digest (HASH_OF[alg]) of `data`. */
  signDigest(digest: Buffer): Promise<Buffer>;
}

/** Where checkpoints go: the checkpoints file of an audit directory, or the database. */
export interface CheckpointSink {
  write(cp: StoredCheckpoint): Promise<void>;
}

export function checkpointDigest(alg: CheckpointAlgorithm, statement: string): Buffer {
  return createHash(HASH_OF[alg]).update(statement, "utf8").digest();
}

/** Makes and signs the checkpoint of `replica` at (seq, hash). */
export async function makeCheckpoint(signer: CheckpointSigner, replica: string, seq: number, hash: string, time = new Date()): Promise<StoredCheckpoint> {
  const s: CheckpointStatement = { type: CHECKPOINT_TYPE, replica, seq, hash, time: time.toISOString(), keyId: signer.keyId, alg: signer.alg };
  const statement = JSON.stringify(s);
  const signature = await signer.signDigest(checkpointDigest(signer.alg, statement));
  return { replica, seq, hash, time: s.time, keyId: signer.keyId, statement, signature: signature.toString("base64") };
}

/**
 * Why a stored checkpoint is not a valid checkpoint signed by `cert`, or undefined when it is:
 * the signature verifies over the statement, and the statement says what the stored fields say.
 */
export function checkpointProblem(cp: StoredCheckpoint, cert: X509Certificate): string | undefined {
  let s: Partial<CheckpointStatement>;
  try {
    s = JSON.parse(cp.statement) as Partial<CheckpointStatement>;
  } catch {
    return "its statement is not JSON";
  }
  if (s.type !== CHECKPOINT_TYPE) return "its statement is not a checkpoint";
  const alg = s.alg;
  if (alg !== "ES256" && alg !== "ES384" && alg !== "ES512") return "its statement names no known algorithm";
  const key = cert.publicKey;
  if (key.asymmetricKeyType !== "ec" || key.asymmetricKeyDetails?.namedCurve !== CURVE_OF[alg]) return `the audit certificate's key does not make ${alg} signatures`;
  let ok = false;
  try {
    ok = verifySignature(HASH_OF[alg], Buffer.from(cp.statement, "utf8"), { key, dsaEncoding: "ieee-p1363" }, Buffer.from(cp.signature, "base64"));
  } catch {
    ok = false;
  }
  if (!ok) return "its signature does not verify with the audit certificate";
  if (s.replica !== cp.replica || s.seq !== cp.seq || s.hash !== cp.hash || s.time !== cp.time || s.keyId !== cp.keyId) return "its stored fields differ from what was signed";
  return undefined;
}

/** The certificate in a PEM or DER file's bytes (the first of a PEM bundle: the leaf). */
export function parseAuditCertificate(bytes: Buffer): X509Certificate {
  const text = bytes.toString("latin1");
  const m = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/.exec(text);
  try {
    return new X509Certificate(m ? Buffer.from(m[0], "latin1") : bytes);
  } catch (e) {
    throw new SignerError("INVALID_ARGUMENT", `not a certificate: ${(e as Error).message}`);
  }
}

/** Appends checkpoints to <dir>/checkpoints.jsonl, each made durable before write() resolves. */
export class FileCheckpointSink implements CheckpointSink {
  constructor(private readonly dir: string) {}

  get path(): string {
    return join(this.dir, CHECKPOINTS_FILE);
  }

  /**
   * A torn last line (a crash, or a full disk, in the middle of a checkpoint: no signature can be
   * whole there) is cut away first; otherwise this checkpoint would continue that line, and
   * neither would verify.
   */
  async write(cp: StoredCheckpoint): Promise<void> {
    const fh = await open(this.path, "a+", 0o600);
    try {
      const { size } = await fh.stat();
      const end = await endOfLastLine(fh, size);
      if (end < size) await fh.truncate(end);
      // writeFile writes it all (a single write may take only part of it).
      await fh.writeFile(`${JSON.stringify(cp)}\n`);
      await fh.datasync();
    } finally {
      await fh.close();
    }
  }
}

/** How far a file's complete lines go: the length up to and including its last newline. */
async function endOfLastLine(fh: FileHandle, size: number): Promise<number> {
  const chunk = Buffer.alloc(4096);
  for (let end = size; end > 0;) {
    const start = Math.max(0, end - chunk.length);
    const { bytesRead } = await fh.read(chunk, 0, end - start, start);
    const nl = chunk.subarray(0, bytesRead).lastIndexOf(0x0a);
    if (nl >= 0) return start + nl + 1;
    end = start;
  }
  return 0;
}

export interface CheckpointingOptions {
  replicaId: string;
  signer: CheckpointSigner;
  sink: CheckpointSink;
  /** A checkpoint once this many records were added since the last one (default 1000). */
  everyRecords?: number;
  /** And at least this often while records are added (default 60 s). */
  everyMs?: number;
  /**
   * How long close() waits for the last checkpoint (default DEFAULT_CLOSE_CHECKPOINT_MS): a hung
   * HSM never returns from a signature, and the store must still close (and the shutdown go on).
   */
  closeTimeoutMs?: number;
  onCheckpoint?: (cp: StoredCheckpoint) => void;
  onError?: (e: unknown) => void;
}

/** CheckpointingOptions.closeTimeoutMs: well within a pod's termination grace period. */
export const DEFAULT_CLOSE_CHECKPOINT_MS = 5_000;

/**
 * An audit store that signs checkpoints of the chain it sees committed: it observes each
 * receipt (seq, hash) the inner store hands out, and every N records, every T seconds and at
 * close, has the audit key in the HSM sign the newest one. Appends never wait for a checkpoint;
 * a checkpoint that cannot be made is reported (onError) and tried again at the next occasion:
 * the records it would have covered stay unprotected against truncation until then, which
 * `audit verify` reports.
 */
export class CheckpointingStore implements AuditStore {
  private newest: { seq: number; hash: string } | undefined;
  private lastSeq = 0;
  private running: Promise<void> | undefined;
  /** The running checkpoint's seq, when it started, at which tick of the timer; and whether its stall was reported. */
  private runningSince: { seq: number; at: Date; tick: number; reported: boolean } | undefined;
  private ticks = 0;
  private again = false;
  private readonly timer: NodeJS.Timeout;
  private readonly everyRecords: number;

  constructor(
    private readonly inner: AuditStore,
    private readonly o: CheckpointingOptions,
  ) {
    this.everyRecords = o.everyRecords ?? 1000;
    this.timer = setInterval(() => this.tick(), o.everyMs ?? 60_000);
    this.timer.unref();
  }

  get healthy(): boolean {
    return this.inner.healthy;
  }

  get stats(): AuditLogStats {
    return this.inner.stats;
  }

  /** Sequence number of the last checkpoint this process made (0: none yet). */
  get checkpointedSequence(): number {
    return this.lastSeq;
  }

  expect(): void {
    this.inner.expect?.();
  }

  append(record: AuditRecordInput): Promise<AuditReceipt> {
    return this.inner.append(record).then((receipt) => {
      if (this.newest === undefined || receipt.sequence > this.newest.seq) this.newest = { seq: receipt.sequence, hash: receipt.lineHash };
      if (receipt.sequence - this.lastSeq >= this.everyRecords) this.trigger();
      return receipt;
    });
  }

  /** A checkpoint of the newest record seen, now (after the one running, if any). */
  async checkpoint(): Promise<void> {
    while (this.running) await this.running;
    this.trigger();
    await this.running;
  }

  /**
   * A last checkpoint, waited for at most closeTimeoutMs (one the HSM never signs is reported,
   * onError), then closes the inner store.
   */
  async close(): Promise<void> {
    clearInterval(this.timer);
    const ms = this.o.closeTimeoutMs ?? DEFAULT_CLOSE_CHECKPOINT_MS;
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<boolean>((res) => (timer = setTimeout(() => res(true), ms)));
    try {
      if (await Promise.race([this.checkpoint().then(() => false), timedOut])) {
        this.o.onError?.(new Error(`the last audit checkpoint was not made within ${ms} ms (the HSM does not answer?); the store closes without it`));
      }
    } finally {
      clearTimeout(timer);
      await this.inner.close();
    }
  }

  /**
   * The timer: a checkpoint still running after two of its intervals is reported once (onError),
   * since it holds back every later one (the HSM does not answer its signature, or the
   * checkpoints' file system stalls): else checkpoints would stop without a word.
   */
  private tick(): void {
    this.ticks++;
    const r = this.runningSince;
    if (r && !r.reported && this.ticks - r.tick >= 2) {
      r.reported = true;
      const s = Math.round((Date.now() - r.at.getTime()) / 1000);
      this.o.onError?.(
        new Error(
          `the audit checkpoint of seq ${r.seq}, started at ${r.at.toISOString()}, has not finished after ${s} s (the HSM does not answer its signature, or the checkpoint file does not take it); no later checkpoint is made until it does`,
        ),
      );
    }
    this.trigger();
  }

  private trigger(): void {
    if (this.running) {
      this.again = true;
      return;
    }
    const target = this.newest;
    if (!target || target.seq <= this.lastSeq) return;
    this.runningSince = { seq: target.seq, at: new Date(), tick: this.ticks, reported: false };
    this.running = (async () => {
      try {
        const cp = await makeCheckpoint(this.o.signer, this.o.replicaId, target.seq, target.hash);
        await this.o.sink.write(cp);
        this.lastSeq = Math.max(this.lastSeq, target.seq);
        this.o.onCheckpoint?.(cp);
      } catch (e) {
        this.o.onError?.(e);
      }
    })().finally(() => {
      this.running = undefined;
      this.runningSince = undefined;
      if (this.again) {
        this.again = false;
        if (this.newest && this.newest.seq - this.lastSeq >= this.everyRecords) this.trigger();
      }
    });
  }
}
