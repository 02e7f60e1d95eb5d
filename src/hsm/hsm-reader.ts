import { performance } from "node:perf_hooks";
import { Worker } from "node:worker_threads";
import { SignerError } from "../errors/index.js";
import type { TokenScan } from "../signing/key-versions.js";
import { inAddonTurn } from "./addon-turn.js";
import { ThreadPkcs11Error } from "./pkcs11-errors.js";

const WORKER_URL = new URL("./hsm-reader-worker.js", import.meta.url);

interface Failure {
  message: string;
  code: number | undefined;
}

/** What the reader thread found of one session: whether the user is logged in, or why C_GetSessionInfo failed. */
export type SessionLook = { loggedIn: boolean } | { error: Failure };

type Read = { op: "probe"; slot: Buffer } | { op: "sessions"; sessions: Buffer[] } | { op: "fingerprint"; session: Buffer } | { op: "scan"; session: Buffer };
export type ReaderRequest = { id: number } & Read;
export type ReaderAnswer = { id: number; value: unknown } | { id: number; error: Failure };

interface Call {
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
  since: number;
}

/**
 * Buffers that came back through postMessage are plain Uint8Arrays: they are Buffers again here,
 * at any depth (handles and CKA_IDs are compared and printed as Buffers).
 */
function revive(v: unknown): unknown {
  if (v instanceof Uint8Array) return Buffer.isBuffer(v) ? v : Buffer.from(v.buffer, v.byteOffset, v.byteLength);
  if (Array.isArray(v)) return v.map(revive);
  if (v instanceof Map) return new Map([...v].map(([k, x]) => [k, revive(x)]));
  if (v instanceof Set) return new Set([...v].map(revive));
  if (v && typeof v === "object" && !(v instanceof Date)) {
    const o = v as Record<string, unknown>;
    for (const k of Object.keys(o)) o[k] = revive(o[k]);
  }
  return v;
}

/**
 * The PKCS#11 reads of the service's housekeeping, on a thread of their own (hsm-reader-worker.ts):
 * the periodic look at the token and the idle sessions (HsmSupervisor) and the key store's poll
 * and rescans. On the event loop they were synchronous: with a network HSM's round trip of 5 ms,
 * an idle service held its event loop 1.6 s of every 12 s, up to 227 ms at a time, and every
 * call that arrived meanwhile waited. The caller lends the sessions and keeps them from anyone
 * else until the answer; the thread starts at the first read and reads one thing at a time.
 */
export class HsmReader {
  private worker: Promise<Worker> | undefined;
  private readonly calls = new Map<number, Call>();
  private nextId = 0;
  private closed = false;

  constructor(private readonly modulePath: string) {}

  /** C_GetTokenInfo of the slot: rejects with the PKCS#11 error. */
  async probe(slot: Buffer): Promise<void> {
    await this.call({ op: "probe", slot });
  }

  /** C_GetSessionInfo of each session, in the order given. */
  sessions(sessions: Buffer[]): Promise<SessionLook[]> {
    return this.call({ op: "sessions", sessions }) as Promise<SessionLook[]>;
  }

  /** tokenFingerprint() of the token, read through `session`. */
  fingerprint(session: Buffer): Promise<string> {
    return this.call({ op: "fingerprint", session }) as Promise<string>;
  }

  /** scanToken() through `session`. */
  scan(session: Buffer): Promise<{ scan: TokenScan; fingerprint: string }> {
    return this.call({ op: "scan", session }) as Promise<{ scan: TokenScan; fingerprint: string }>;
  }

  /** How long the oldest read still running has been (ms; 0: none). */
  longestRunningMs(): number {
    let oldest = Infinity;
    for (const c of this.calls.values()) oldest = Math.min(oldest, c.since);
    return oldest === Infinity ? 0 : performance.now() - oldest;
  }

  /** Stops the thread (before C_Finalize); reads still running fail with HSM_UNAVAILABLE. */
  async close(): Promise<void> {
    this.closed = true;
    const w = this.worker;
    this.worker = undefined;
    this.failAll(new SignerError("HSM_UNAVAILABLE", "the HSM reader thread is stopping"));
    if (w) await w.then((x) => x.terminate()).catch(() => undefined);
  }

  private async call(r: Read): Promise<unknown> {
    if (this.closed) throw new SignerError("HSM_UNAVAILABLE", "the HSM reader thread is stopping");
    const w = await (this.worker ??= this.start());
    const id = ++this.nextId;
    const value = new Promise<unknown>((resolve, reject) => this.calls.set(id, { resolve, reject, since: performance.now() }));
    w.ref();
    w.postMessage({ ...r, id });
    return revive(await value);
  }

  private start(): Promise<Worker> {
    const started = inAddonTurn(
      () =>
        new Promise<Worker>((resolve, reject) => {
          const w = new Worker(WORKER_URL, { workerData: { modulePath: this.modulePath } });
          w.unref();
          let ready = false;
          w.on("message", (m: { ready: true } | ReaderAnswer) => {
            if ("ready" in m) {
              ready = true;
              return resolve(w);
            }
            const c = this.calls.get(m.id);
            if (!c) return;
            this.calls.delete(m.id);
            if (this.calls.size === 0) w.unref();
            if ("error" in m) c.reject(new ThreadPkcs11Error(m.error.message, m.error.code));
            else c.resolve(m.value);
          });
          // A thread that dies fails what it was reading; the next read starts a new one.
          const lost = (e: unknown): void => {
            if (this.worker === started) this.worker = undefined;
            const err = new SignerError("HSM_UNAVAILABLE", `the HSM reader thread stopped: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
            if (!ready) reject(err);
            else this.failAll(err);
          };
          w.on("error", lost);
          w.on("exit", (code) => lost(new Error(`exit code ${code}`)));
        }),
    );
    return started;
  }

  private failAll(e: unknown): void {
    for (const c of this.calls.values()) c.reject(e);
    this.calls.clear();
  }
}
