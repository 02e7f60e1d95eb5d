import { Worker } from "node:worker_threads";
import type pkcs11js from "pkcs11js";
import { SignerError } from "../errors/index.js";
import type { SignJob, SignReply } from "./sign-worker.js";

const WORKER_URL = new URL("./sign-worker.js", import.meta.url);
/** Pause before replacing a thread that died while starting (e.g. the module failed to load). */
const RESTART_PAUSE_MS = 1000;

interface Pending {
  resolve: (sig: Buffer) => void;
  reject: (e: unknown) => void;
}

/** A PKCS#11 error as it came out of a worker: same message and CKR_ code, so translation is unchanged. */
class WorkerPkcs11Error extends Error {
  constructor(
    message: string,
    readonly code: number | undefined,
  ) {
    super(message);
    this.name = "Pkcs11Error";
  }
}

export interface SignThreadsOptions {
  /**
   * Maps the error of a failed job to the one its caller gets (the session pool's diagnose():
   * HSM_UNAVAILABLE when the failure meant the HSM is gone). It runs in the caller's async
   * context, so its log lines carry the caller's request id.
   */
  onError?: (e: unknown) => unknown;
}

/**
 * Signing threads, one per pooled session, so a job normally finds a free thread at once; while
 * a thread that died is being replaced, jobs wait in order (the session pool bounds them).
 */
export class SignThreads {
  private readonly idle: Worker[] = [];
  private readonly all = new Set<Worker>();
  /** The job each busy thread is working on. */
  private readonly busy = new Map<Worker, { id: number } & Pending>();
  /** Jobs waiting for a thread (there may be fewer threads than sessions). */
  private readonly queue: { job: SignJob; pending: Pending }[] = [];
  private nextId = 1;
  private closing = false;

  /** Threads start one after another (see spawnNext). */
  private spawning: Promise<void> = Promise.resolve();

  constructor(
    private readonly modulePath: string,
    count: number,
    private readonly options: SignThreadsOptions = {},
  ) {
    for (let i = 0; i < count; i++) this.spawnNext(0);
  }

  /**
   * Starts one more thread once the previous one is ready. pkcs11js's addon initialization is not
   * safe in several threads at once (a rare SIGSEGV in napi_create_reference while four threads
   * loaded it together); jobs wait in the queue meanwhile. A thread that died before it was ready
   * is replaced after a pause, never in a tight loop.
   */
  private spawnNext(delayMs: number): void {
    this.spawning = this.spawning
      .then(() => (delayMs > 0 ? new Promise<void>((r) => setTimeout(r, delayMs).unref()) : undefined))
      .then(() => (this.closing ? undefined : this.spawn()));
  }

  private spawn(): Promise<void> {
    return new Promise<void>((started) => {
      const w = new Worker(WORKER_URL, { workerData: { modulePath: this.modulePath } });
      w.unref();
      let ready = false;
      w.on("message", (r: SignReply | { ready: true }) => {
        if ("ready" in r) {
          ready = true;
          this.release(w);
          started();
          return;
        }
        this.onReply(w, r);
      });
      // A thread that dies fails its own job and is replaced, so capacity stays equal to the pool's.
      const lost = (e: unknown): void => {
        started();
        if (!this.all.delete(w)) return;
        const i = this.idle.indexOf(w);
        if (i >= 0) this.idle.splice(i, 1);
        this.busy.get(w)?.reject(new SignerError("INTERNAL", "an HSM signing thread stopped", { cause: e }));
        this.busy.delete(w);
        if (!this.closing) this.spawnNext(ready ? 0 : RESTART_PAUSE_MS);
      };
      w.on("error", lost);
      w.on("exit", (code) => lost(new Error(`exit code ${code}`)));
      this.all.add(w);
    });
  }

  private onReply(w: Worker, r: SignReply): void {
    const job = this.busy.get(w);
    this.busy.delete(w);
    this.release(w);
    if (!job || job.id !== r.id) return;
    if ("error" in r) job.reject(new WorkerPkcs11Error(r.error.message, r.error.code));
    else job.resolve(Buffer.from(r.signature.buffer, r.signature.byteOffset, r.signature.byteLength));
  }

  /** Gives a free thread the next queued job, or marks it idle. */
  private release(w: Worker): void {
    const next = this.queue.shift();
    if (!next) {
      this.idle.push(w);
      return;
    }
    this.busy.set(w, { id: next.job.id, ...next.pending });
    w.postMessage(next.job);
  }

  /** C_SignInit + C_Sign of `data` on `session` with `key`, in a signing thread. */
  sign(session: Buffer, key: Buffer, mechanism: pkcs11js.Mechanism, data: Buffer, outLength: number): Promise<Buffer> {
    const id = this.nextId++;
    // Copies: a Buffer is often a slice of Node's 8 KiB pool, which postMessage would clone whole.
    const job: SignJob = { id, session: new Uint8Array(session), key: new Uint8Array(key), mechanism, data: new Uint8Array(data), outLength };
    const p = new Promise<Buffer>((resolve, reject) => {
      const w = this.idle.pop();
      if (!w) {
        this.queue.push({ job, pending: { resolve, reject } });
        return;
      }
      this.busy.set(w, { id, resolve, reject });
      w.postMessage(job);
    });
    const onError = this.options.onError;
    // Attached here, not in the "message" listener, so that it runs in the caller's async context.
    return onError
      ? p.catch((e: unknown) => {
          throw onError(e);
        })
      : p;
  }

  /** Stops the threads; call before C_Finalize (notes, trap 6). */
  async close(): Promise<void> {
    this.closing = true;
    for (const q of this.queue.splice(0)) q.pending.reject(new SignerError("HSM_UNAVAILABLE", "the HSM signing threads are stopping"));
    await Promise.all([...this.all].map((w) => w.terminate()));
  }
}
