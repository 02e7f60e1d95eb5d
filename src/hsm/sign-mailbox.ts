import type pkcs11js from "pkcs11js";

/**
 * The shared memory one signing thread and the main thread exchange a job and its answer in.
 * The state word moves JOB (main) → DONE or FAILED (thread) → JOB (main) ...; each side sleeps
 * until the other changes it (Atomics.wait in the thread, Atomics.waitAsync on the event loop).
 * One job at a time per thread, as one thread serves one pooled session at a time.
 */
export const MailboxState = {
  IDLE: 0,
  JOB: 1,
  DONE: 2,
  FAILED: 3,
  STOP: 4,
} as const;

export interface MailboxJob {
  session: Buffer;
  key: Buffer;
  mechanism: pkcs11js.Mechanism;
  data: Buffer;
  outLength: number;
}

export type MailboxAnswer = { signature: Buffer } | { error: { message: string; code: number | undefined } };

// Int32 words of the header
const STATE = 0;
const SESSION_LEN = 1;
const KEY_LEN = 2;
const DATA_LEN = 3;
const OUT_LEN = 4;
const MECH_LEN = 5;
const RESULT_LEN = 6;
const HAS_CODE = 7;
const CODE = 8; // read as Uint32: CKR_ values use all 32 bits

const SESSION_OFF = 64;
const HANDLE_MAX = 32;
const KEY_OFF = SESSION_OFF + HANDLE_MAX;
const DATA_OFF = KEY_OFF + HANDLE_MAX;
/** The data to sign is a digest (64 bytes at most); room to spare. */
const DATA_MAX = 1024;
const MECH_OFF = DATA_OFF + DATA_MAX;
const MECH_MAX = 512;
const RESULT_OFF = MECH_OFF + MECH_MAX;
/** A signature (RSA-4096: 512 bytes) or an error message. */
const RESULT_MAX = 2048;
const SIZE = RESULT_OFF + RESULT_MAX;

/**
 * A mechanism as JSON, Buffer parameters (an IV, OAEP source data) as {"$hex": ...}. The replacer
 * looks at the value before its toJSON(): Buffer's turns it into {type, data}, which would come
 * back as a plain object.
 */
export function encodeMechanism(mechanism: pkcs11js.Mechanism): Buffer {
  return Buffer.from(
    JSON.stringify(mechanism, function (this: Record<string, unknown>, k: string, v: unknown) {
      const raw = this[k];
      return Buffer.isBuffer(raw) ? { $hex: raw.toString("hex") } : v;
    }),
    "utf8",
  );
}

const sameValue = (a: unknown, b: unknown): boolean => a === b || (Buffer.isBuffer(a) && Buffer.isBuffer(b) && a.equals(b));

/** Whether two mechanisms encode alike: same type, parameters equal one level deep (anything deeper: not the same). */
export function sameMechanism(a: pkcs11js.Mechanism, b: pkcs11js.Mechanism): boolean {
  if (a.mechanism !== b.mechanism) return false;
  const pa: unknown = a.parameter;
  const pb: unknown = b.parameter;
  if (sameValue(pa, pb)) return true;
  if (typeof pa !== "object" || typeof pb !== "object" || pa === null || pb === null || Buffer.isBuffer(pa) || Buffer.isBuffer(pb)) return false;
  const ka = Object.keys(pa);
  return ka.length === Object.keys(pb).length && ka.every((k) => sameValue((pa as Record<string, unknown>)[k], (pb as Record<string, unknown>)[k]));
}

export function decodeMechanism(json: string): pkcs11js.Mechanism {
  return JSON.parse(json, (_k, v: unknown) => (v !== null && typeof v === "object" && "$hex" in v ? Buffer.from(String((v as { $hex: string }).$hex), "hex") : v)) as pkcs11js.Mechanism;
}

type WaitAsync = (a: Int32Array, index: number, value: number) => { async: false; value: string } | { async: true; value: Promise<string> };
const waitAsync = (Atomics as unknown as { waitAsync: WaitAsync }).waitAsync;

export class Mailbox {
  private readonly i32: Int32Array;
  private readonly u32: Uint32Array;
  private readonly bytes: Buffer;
  /** Main thread: the mechanism whose bytes are in the mailbox (post). */
  private lastPosted: pkcs11js.Mechanism | undefined;
  /** Signing thread: the last mechanism read, and its bytes (readMechanism). */
  private lastMechanism: { bytes: Buffer; mechanism: pkcs11js.Mechanism } | undefined;

  constructor(readonly buffer: SharedArrayBuffer) {
    this.i32 = new Int32Array(buffer, 0, 16);
    this.u32 = new Uint32Array(buffer, 0, 16);
    this.bytes = Buffer.from(buffer);
  }

  static create(): SharedArrayBuffer {
    return new SharedArrayBuffer(SIZE);
  }

  /** Main thread: writes the job and wakes the thread. Throws (nothing posted) if it does not fit. */
  post(job: MailboxJob): void {
    // A thread mostly gets the mechanism of its last job again: then its bytes are in place already.
    const same = this.lastPosted !== undefined && sameMechanism(this.lastPosted, job.mechanism);
    const mech = same ? undefined : encodeMechanism(job.mechanism);
    if (job.session.length > HANDLE_MAX || job.key.length > HANDLE_MAX) throw new Error("a PKCS#11 handle longer than 32 bytes");
    if (job.data.length > DATA_MAX) throw new Error(`data to sign longer than ${DATA_MAX} bytes`);
    if (mech && mech.length > MECH_MAX) throw new Error("mechanism parameters too large");
    if (job.outLength > RESULT_MAX) throw new Error(`signature buffer larger than ${RESULT_MAX} bytes`);
    job.session.copy(this.bytes, SESSION_OFF);
    job.key.copy(this.bytes, KEY_OFF);
    job.data.copy(this.bytes, DATA_OFF);
    if (mech) {
      mech.copy(this.bytes, MECH_OFF);
      this.i32[MECH_LEN] = mech.length;
      this.lastPosted = job.mechanism;
    }
    this.i32[SESSION_LEN] = job.session.length;
    this.i32[KEY_LEN] = job.key.length;
    this.i32[DATA_LEN] = job.data.length;
    this.i32[OUT_LEN] = job.outLength;
    Atomics.store(this.i32, STATE, MailboxState.JOB);
    Atomics.notify(this.i32, STATE);
  }

  /**
   * Main thread: resolves once the thread has answered the posted job. The state is checked
   * again after each wake-up: under load a waiter is sometimes woken while the job is still
   * running (seen about once in 20,000 jobs), and acting on it would hand the busy thread a
   * second job.
   */
  async answered(): Promise<void> {
    for (;;) {
      const r = waitAsync(this.i32, STATE, MailboxState.JOB);
      if (!r.async) return;
      await r.value;
      if (Atomics.load(this.i32, STATE) !== MailboxState.JOB) return;
    }
  }

  /** Main thread: the answer to the last job (call after answered()). */
  answer(): MailboxAnswer {
    const state = Atomics.load(this.i32, STATE);
    const len = this.i32[RESULT_LEN]!;
    if (state === MailboxState.DONE) return { signature: Buffer.from(this.bytes.subarray(RESULT_OFF, RESULT_OFF + len)) };
    if (state === MailboxState.FAILED) {
      return { error: { message: this.bytes.toString("utf8", RESULT_OFF, RESULT_OFF + len), code: this.i32[HAS_CODE] ? this.u32[CODE] : undefined } };
    }
    return { error: { message: `the signing thread has not answered (state ${state})`, code: undefined } };
  }

  /** Main thread: asks the thread to leave its loop. */
  stop(): void {
    Atomics.store(this.i32, STATE, MailboxState.STOP);
    Atomics.notify(this.i32, STATE);
  }

  /** Signing thread: sleeps until there is a job (JOB) or an order to stop (STOP). */
  waitForJob(): number {
    for (;;) {
      const s = Atomics.load(this.i32, STATE);
      if (s === MailboxState.JOB || s === MailboxState.STOP) return s;
      Atomics.wait(this.i32, STATE, s);
    }
  }

  /** Signing thread: the posted job, copied out of the shared memory. */
  readJob(): MailboxJob {
    const copy = (off: number, len: number): Buffer => Buffer.from(this.bytes.subarray(off, off + len));
    return {
      session: copy(SESSION_OFF, this.i32[SESSION_LEN]!),
      key: copy(KEY_OFF, this.i32[KEY_LEN]!),
      data: copy(DATA_OFF, this.i32[DATA_LEN]!),
      mechanism: this.readMechanism(),
      outLength: this.i32[OUT_LEN]!,
    };
  }

  /**
   * The job's mechanism. A thread signs with the same few mechanisms over and over: the one of
   * the last job is reused when the bytes are the same, which saves a JSON.parse per job.
   */
  private readMechanism(): pkcs11js.Mechanism {
    const end = MECH_OFF + this.i32[MECH_LEN]!;
    const last = this.lastMechanism;
    if (last && last.bytes.length === end - MECH_OFF && this.bytes.compare(last.bytes, 0, last.bytes.length, MECH_OFF, end) === 0) return last.mechanism;
    const mechanism = decodeMechanism(this.bytes.toString("utf8", MECH_OFF, end));
    this.lastMechanism = { bytes: Buffer.from(this.bytes.subarray(MECH_OFF, end)), mechanism };
    return mechanism;
  }

  /** Signing thread: the signature, then wakes the main thread. */
  reply(signature: Buffer): void {
    if (signature.length > RESULT_MAX) return this.fail(`a ${signature.length}-byte signature does not fit the mailbox`, undefined);
    signature.copy(this.bytes, RESULT_OFF);
    this.i32[RESULT_LEN] = signature.length;
    this.settle(MailboxState.DONE);
  }

  /** Signing thread: a failure (a PKCS#11 error keeps its CKR_ code), then wakes the main thread. */
  fail(message: string, code: number | undefined): void {
    const msg = Buffer.from(message, "utf8").subarray(0, RESULT_MAX);
    msg.copy(this.bytes, RESULT_OFF);
    this.i32[RESULT_LEN] = msg.length;
    this.i32[HAS_CODE] = code === undefined ? 0 : 1;
    this.u32[CODE] = code ?? 0;
    this.settle(MailboxState.FAILED);
  }

  /** JOB → DONE or FAILED, unless the main thread asked to STOP meanwhile (that order stays). */
  private settle(state: number): void {
    Atomics.compareExchange(this.i32, STATE, MailboxState.JOB, state);
    Atomics.notify(this.i32, STATE);
  }
}
