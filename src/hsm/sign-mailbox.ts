import type pkcs11js from "pkcs11js";

/**
 * The shared memory one signing thread and the main thread exchange a job and its answer in.
 * The state word moves JOB (main) → DONE or FAILED (thread) → IDLE (main, answer taken) → JOB ...
 * The thread sleeps on its state word (Atomics.wait); the event loop sleeps on one doorbell word
 * for all threads (Atomics.waitAsync, see Doorbell). One job at a time per thread, as one thread
 * serves one pooled session at a time.
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

// Int32 words of the doorbell
const RUNNING = 0;
const RINGS = 1;
const HOLD_WHILE = 2;
const HOLD_US = 3;

/**
 * The word the event loop sleeps on for the answers of all signing threads, so that under load it
 * wakes once for several answers instead of once per answer. Each wake-up of the event loop costs
 * it about as much CPU as a whole call's work when it is woken for that call alone (docs in the
 * README's benchmark section): at RSA rates every answer used to wake it on its own.
 *
 * A thread that finishes a job while at least `holdWhileRunning` other jobs are still running
 * holds its answer (it does not ring): one of those ends soon and rings for both, or the hold ends
 * after `holdMs` and the thread rings itself. The last jobs running always ring at once, so a call
 * alone, or a few, never wait; and while an answer is held, `holdWhileRunning` other threads keep
 * the cores busy, so holding costs no signing throughput.
 */
export class Doorbell {
  private readonly i32: Int32Array;

  constructor(readonly buffer: SharedArrayBuffer) {
    this.i32 = new Int32Array(buffer);
  }

  static create(holdWhileRunning: number, holdMs: number): SharedArrayBuffer {
    const sab = new SharedArrayBuffer(16);
    const i32 = new Int32Array(sab);
    i32[HOLD_WHILE] = holdMs > 0 ? Math.max(1, holdWhileRunning) : 0x7fffffff;
    i32[HOLD_US] = Math.round(holdMs * 1000);
    return sab;
  }

  /** Main thread: a job was posted. */
  posted(): void {
    Atomics.add(this.i32, RUNNING, 1);
  }

  /** Main thread: a job ended without its thread saying so (the thread died). */
  forget(): void {
    Atomics.sub(this.i32, RUNNING, 1);
  }

  /** Signing thread: a job ended; true when the thread rang, false when it holds its answer (see holdMs). */
  ended(): boolean {
    const still = Atomics.sub(this.i32, RUNNING, 1) - 1;
    if (still >= this.i32[HOLD_WHILE]!) return false;
    this.ring();
    return true;
  }

  get holdMs(): number {
    return this.i32[HOLD_US]! / 1000;
  }

  ring(): void {
    Atomics.add(this.i32, RINGS, 1);
    Atomics.notify(this.i32, RINGS);
  }

  /** Main thread: the count of rings, to wait on with rung(). */
  rings(): number {
    return Atomics.load(this.i32, RINGS);
  }

  /** Main thread: resolves once a thread has rung since `seen` was read. */
  async rung(seen: number): Promise<void> {
    const r = waitAsync(this.i32, RINGS, seen);
    if (r.async) await r.value;
  }
}

export class Mailbox {
  private readonly i32: Int32Array;
  private readonly u32: Uint32Array;
  private readonly bytes: Buffer;
  /** Main thread: the mechanism whose bytes are in the mailbox (post). */
  private lastPosted: pkcs11js.Mechanism | undefined;
  /** Signing thread: the last mechanism read, and its bytes (readMechanism). */
  private lastMechanism: { bytes: Buffer; mechanism: pkcs11js.Mechanism } | undefined;

  /** Signing thread: the answer it holds without having rung (Doorbell). */
  private holding = false;

  constructor(
    readonly buffer: SharedArrayBuffer,
    private readonly bell: Doorbell,
  ) {
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
    this.bell.posted();
    Atomics.store(this.i32, STATE, MailboxState.JOB);
    Atomics.notify(this.i32, STATE);
  }

  /** Main thread: whether the thread has answered the posted job (DONE or FAILED). */
  hasAnswered(): boolean {
    const s = Atomics.load(this.i32, STATE);
    return s === MailboxState.DONE || s === MailboxState.FAILED;
  }

  /** Main thread: the answer to the last job (once hasAnswered()); the mailbox is IDLE again. */
  answer(): MailboxAnswer {
    const state = Atomics.load(this.i32, STATE);
    // Collected: a thread holding this answer (Doorbell) sees IDLE and does not ring for it.
    if (state === MailboxState.DONE || state === MailboxState.FAILED) Atomics.compareExchange(this.i32, STATE, state, MailboxState.IDLE);
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

  /**
   * Signing thread: sleeps until there is a job (JOB) or an order to stop (STOP). While it holds an
   * answer it sleeps at most the doorbell's holdMs, then rings unless the answer was taken.
   */
  waitForJob(): number {
    for (;;) {
      const s = Atomics.load(this.i32, STATE);
      if (s === MailboxState.JOB || s === MailboxState.STOP) return s;
      if (this.holding && s !== MailboxState.IDLE) {
        const r = Atomics.wait(this.i32, STATE, s, this.bell.holdMs);
        if (r === "timed-out") {
          this.holding = false;
          if (Atomics.load(this.i32, STATE) === s) this.bell.ring();
        }
        continue;
      }
      this.holding = false;
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
    this.holding = !this.bell.ended();
  }
}
