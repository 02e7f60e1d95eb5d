import { availableParallelism } from "node:os";
import { performance } from "node:perf_hooks";
import { Worker } from "node:worker_threads";
import type pkcs11js from "pkcs11js";
import { SignerError } from "../errors/index.js";
import { inAddonTurn } from "./addon-turn.js";
import { ThreadPkcs11Error } from "./pkcs11-errors.js";
import { Doorbell, Mailbox, type MailboxJob } from "./sign-mailbox.js";

const WORKER_URL = new URL("./sign-worker.js", import.meta.url);
/** Pause before replacing a thread that died while starting (e.g. the module failed to load). */
const RESTART_PAUSE_MS = 1000;

interface Pending {
  resolve: (sig: Buffer) => void;
  reject: (e: unknown) => void;
}

/** A signing thread and the shared memory it takes its jobs from (sign-mailbox.ts). */
interface Thread {
  worker: Worker;
  box: Mailbox;
  /** The job it is working on, and since when (performance.now()). */
  job: Job | undefined;
}

interface Job {
  since: number;
  pending: Pending;
}

/** A job waiting for a thread (threads starting, or a dead one being replaced). */
interface Queued {
  job: MailboxJob;
  pending: Pending;
  /** performance.now() when it was queued: it counts in longestRunningMs(). */
  since: number;
  /** Fails it with DEADLINE_EXCEEDED at the caller's deadline, if it has one. */
  timer: NodeJS.Timeout | undefined;
}

export interface SignThreadsOptions {
  /**
   * Maps the error of a failed job to the one its caller gets (the session pool's diagnose():
   * HSM_UNAVAILABLE when the failure meant the HSM is gone). It runs in the caller's async
   * context, so its log lines carry the caller's request id.
   */
  onError?: (e: unknown) => unknown;
  /**
   * How long a thread may hold an answer while other jobs run, so that the event loop takes
   * several answers per wake-up (ms; 0: every answer wakes it at once). See Doorbell.
   */
  answerHoldMs?: number;
  /** How many other jobs must be running for a thread to hold its answer (default: the cores, at least 2; see Doorbell). */
  holdWhileRunning?: number;
}

/** SignThreadsOptions.answerHoldMs: the default and the most it may be. */
export const DEFAULT_ANSWER_HOLD_MS = 2;
export const MAX_ANSWER_HOLD_MS = 100;
/**
 * As many other jobs as there are cores, at least two: with an HSM that signs on this machine's
 * CPU (SoftHSM), every core stays busy signing while an answer waits (Doorbell). With a network
 * HSM the threads only wait, and this bounds how many answers one wake-up takes.
 */
const HOLD_WHILE_RUNNING = Math.max(2, availableParallelism());

/**
 * Signing threads, one per pooled session, so a job normally finds a free thread at once; while
 * a thread that died is being replaced, jobs wait in order (the session pool bounds them).
 */
export class SignThreads {
  private readonly idle: Thread[] = [];
  private readonly all = new Set<Thread>();
  /** Jobs waiting for a thread (there may be fewer threads than sessions). */
  private readonly queue: Queued[] = [];
  /** Why the last thread that tried to start died before it was ready; cleared when one is ready. */
  private startFailure: unknown;
  private closing = false;
  /** Threads with a job out, and whether watch() is running for them. */
  private busy = 0;
  private watching = false;
  private readonly bell: Doorbell;

  /** Threads start one after another (see spawnNext). */
  private spawning: Promise<void> = Promise.resolve();

  constructor(
    private readonly modulePath: string,
    count: number,
    private readonly options: SignThreadsOptions = {},
  ) {
    const hold = options.answerHoldMs ?? DEFAULT_ANSWER_HOLD_MS;
    if (!Number.isFinite(hold) || hold < 0 || hold > MAX_ANSWER_HOLD_MS) throw new SignerError("CONFIG_INVALID", `answerHoldMs must be between 0 and ${MAX_ANSWER_HOLD_MS}`);
    this.bell = new Doorbell(Doorbell.create(options.holdWhileRunning ?? HOLD_WHILE_RUNNING, hold));
    for (let i = 0; i < count; i++) this.spawnNext(0);
  }

  /**
   * Starts one more thread once the previous one is ready, in its addon turn (addon-turn.ts); jobs
   * wait in the queue meanwhile. A thread that died before it was ready is replaced after a
   * pause, never in a tight loop.
   */
  private spawnNext(delayMs: number): void {
    this.spawning = this.spawning
      .then(() => (delayMs > 0 ? new Promise<void>((r) => setTimeout(r, delayMs).unref()) : undefined))
      .then(() => (this.closing ? undefined : inAddonTurn(() => this.spawn())));
  }

  private spawn(): Promise<void> {
    return new Promise<void>((started) => {
      const mailbox = Mailbox.create();
      const w = new Worker(WORKER_URL, { workerData: { modulePath: this.modulePath, mailbox, doorbell: this.bell.buffer } });
      // Unreferenced while idle; referenced while it has a job, since a pending Atomics.waitAsync
      // alone would not keep the process alive.
      w.unref();
      const t: Thread = { worker: w, box: new Mailbox(mailbox, this.bell), job: undefined };
      let ready = false;
      w.on("message", (r: { ready?: true }) => {
        if (r.ready && !ready) {
          ready = true;
          this.startFailure = undefined;
          this.release(t);
          started();
        }
      });
      // A thread that dies fails its own job and is replaced, so capacity stays equal to the pool's.
      const lost = (e: unknown): void => {
        started();
        if (!this.all.delete(t)) return;
        const i = this.idle.indexOf(t);
        if (i >= 0) this.idle.splice(i, 1);
        if (t.job) {
          this.busy--;
          if (!t.box.hasAnswered()) this.bell.forget();
          t.job.pending.reject(new SignerError("INTERNAL", "an HSM signing thread stopped", { cause: e }));
          t.job = undefined;
        }
        if (!ready) {
          // No thread left and none could start (the module does not load in a thread, no memory
          // for one): the jobs waiting for one fail now, as will new ones until a thread is ready.
          this.startFailure = e;
          if (this.all.size === 0) for (const q of this.queue.splice(0)) this.refuse(q, this.noThread());
        }
        if (!this.closing) this.spawnNext(ready ? 0 : RESTART_PAUSE_MS);
      };
      w.on("error", lost);
      w.on("exit", (code) => lost(new Error(`exit code ${code}`)));
      this.all.add(t);
    });
  }

  /** Resolves once every thread has started (jobs wait in the queue until a thread is ready). */
  started(): Promise<void> {
    return this.spawning;
  }

  /** Posts a job to a free thread; its answer comes back through the mailbox. */
  private start(t: Thread, job: MailboxJob, pending: Pending): void {
    try {
      t.box.post(job);
    } catch (e) {
      this.release(t);
      pending.reject(new SignerError("INTERNAL", `cannot hand the signature to a signing thread: ${(e as Error).message}`, { cause: e }));
      return;
    }
    t.job = { since: performance.now(), pending };
    t.worker.ref();
    this.busy++;
    if (!this.watching) void this.watch();
  }

  /**
   * Takes the answers of all threads each time one rings, while jobs are out. The state of each
   * mailbox decides, not the wake-up: Atomics.waitAsync sometimes wakes with nothing changed (seen
   * about once in 2,000 waits under load), and taking that for an answer would hand a busy thread
   * a second job.
   */
  private async watch(): Promise<void> {
    this.watching = true;
    try {
      while (this.busy > 0) {
        const seen = this.bell.rings();
        for (const t of this.all) if (t.job && t.box.hasAnswered()) this.onAnswer(t);
        if (this.busy === 0) break;
        await this.bell.rung(seen);
      }
    } finally {
      this.watching = false;
    }
  }

  private onAnswer(t: Thread): void {
    const job = t.job;
    if (!job) return;
    t.job = undefined;
    this.busy--;
    t.worker.unref();
    const r = t.box.answer();
    this.release(t);
    if ("error" in r) job.pending.reject(new ThreadPkcs11Error(r.error.message, r.error.code));
    else job.pending.resolve(r.signature);
  }

  /** Gives a free thread the next queued job, or marks it idle. */
  private release(t: Thread): void {
    const next = this.queue.shift();
    if (!next) {
      this.idle.push(t);
      return;
    }
    if (next.timer) clearTimeout(next.timer);
    this.start(t, next.job, next.pending);
  }

  /**
   * Queues a job no thread is free for. It waits at most until its deadline (ms since epoch): a
   * signature its caller no longer waits for is not made, and its session goes back to the pool.
   */
  private enqueue(job: MailboxJob, pending: Pending, deadline: number | undefined): void {
    if (this.all.size === 0 && this.startFailure !== undefined) return pending.reject(this.noThread());
    const q: Queued = { job, pending, since: performance.now(), timer: undefined };
    if (deadline !== undefined) {
      q.timer = setTimeout(
        () => {
          const i = this.queue.indexOf(q);
          if (i >= 0) this.refuse(this.queue.splice(i, 1)[0]!, new SignerError("DEADLINE_EXCEEDED", "the deadline passed while waiting for an HSM signing thread"));
        },
        Math.max(0, deadline - Date.now()),
      );
    }
    this.queue.push(q);
  }

  private refuse(q: Queued, e: unknown): void {
    if (q.timer) clearTimeout(q.timer);
    q.pending.reject(e);
  }

  private noThread(): SignerError {
    return new SignerError("HSM_UNAVAILABLE", "no HSM signing thread could be started", { cause: this.startFailure, retryAfterMs: RESTART_PAUSE_MS });
  }

  /**
   * C_SignInit + C_Sign of `data` on `session` with `key`, in a signing thread. A job that has to
   * wait for a thread fails with DEADLINE_EXCEEDED at `deadline` (ms since epoch), and with
   * HSM_UNAVAILABLE when no thread can start; once in a thread it runs to its end.
   */
  sign(session: Buffer, key: Buffer, mechanism: pkcs11js.Mechanism, data: Buffer, outLength: number, deadline?: number): Promise<Buffer> {
    const job: MailboxJob = { session, key, mechanism, data, outLength };
    const p = new Promise<Buffer>((resolve, reject) => {
      const t = this.idle.pop();
      if (!t) return this.enqueue(job, { resolve, reject }, deadline);
      this.start(t, job, { resolve, reject });
    });
    const onError = this.options.onError;
    // Attached here, not in the "message" listener, so that it runs in the caller's async context.
    return onError
      ? p.catch((e: unknown) => {
          throw onError(e);
        })
      : p;
  }

  /**
   * How long the oldest job still inside the HSM, or waiting for a thread, has been running (0:
   * none). A signature takes milliseconds; one that has run for seconds means the HSM (or the
   * network to it) hangs, and a native call cannot be interrupted, so the service reports it
   * instead (serve: readiness). A job waits for a thread only while one starts.
   */
  longestRunningMs(): number {
    let oldest = this.queue[0]?.since ?? Infinity;
    for (const t of this.all) if (t.job) oldest = Math.min(oldest, t.job.since);
    return oldest === Infinity ? 0 : performance.now() - oldest;
  }

  /** Stops the threads; call before C_Finalize (notes, trap 6). */
  async close(): Promise<void> {
    this.closing = true;
    for (const q of this.queue.splice(0)) this.refuse(q, new SignerError("HSM_UNAVAILABLE", "the HSM signing threads are stopping"));
    for (const t of this.all) t.box.stop();
    await Promise.all([...this.all].map((t) => t.worker.terminate()));
  }
}
