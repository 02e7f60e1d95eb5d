import type { Session, Slot } from "graphene-pk11";
import { SignerError } from "../errors/index.js";
import { login, openSession } from "./hsm-token.js";
import { isSessionLost, translatePkcs11Error } from "./pkcs11-errors.js";

export const DEFAULT_POOL_SIZE = 4;
export const DEFAULT_MAX_WAITERS = 256;

export interface SessionPoolOptions {
  size?: number;
  /** Waiters beyond this many get POOL_EXHAUSTED instead of queueing. */
  maxWaiters?: number;
}

export interface SessionPoolStats {
  size: number;
  inUse: number;
  idle: number;
  waiting: number;
}

interface Waiter {
  resolve: (s: Session) => void;
  reject: (e: unknown) => void;
  timer: NodeJS.Timeout | undefined;
}

/**
 * A bounded pool of logged-in R/W sessions on one token. Sessions that the HSM reports lost
 * (CKR_SESSION_HANDLE_INVALID, CKR_DEVICE_ERROR, ...) are dropped and reopened, with a new
 * C_Login, the next time one is needed; a wrong PIN is never retried.
 */
export class SessionPool {
  readonly size: number;
  private readonly maxWaiters: number;
  private readonly idle: Session[] = [];
  private readonly waiters: Waiter[] = [];
  private open = 0;
  private closed = false;
  private fatal: SignerError | undefined;

  constructor(
    private readonly slot: Slot,
    private readonly pin: string,
    options: SessionPoolOptions = {},
  ) {
    this.size = options.size ?? DEFAULT_POOL_SIZE;
    this.maxWaiters = options.maxWaiters ?? DEFAULT_MAX_WAITERS;
    if (!Number.isInteger(this.size) || this.size < 1) throw new SignerError("CONFIG_INVALID", "session pool size must be a positive integer");
  }

  /** Opens every session now, so a bad PIN or a missing token fails at start-up. */
  start(): void {
    while (this.open < this.size) this.idle.push(this.openOne());
  }

  get stats(): SessionPoolStats {
    return { size: this.size, inUse: this.open - this.idle.length, idle: this.idle.length, waiting: this.waiters.length };
  }

  /** True when at least one session could be used or opened at the last attempt. */
  get healthy(): boolean {
    return !this.closed && this.fatal === undefined && this.open > 0;
  }

  private openOne(): Session {
    if (this.fatal) throw this.fatal;
    let session: Session;
    try {
      session = openSession(this.slot);
    } catch (e) {
      throw translatePkcs11Error(e, "C_OpenSession");
    }
    try {
      login(session, this.pin);
    } catch (e) {
      try {
        session.close();
      } catch {
        // the session is useless either way
      }
      if (e instanceof SignerError && e.code === "HSM_PIN_INCORRECT") this.fatal = e;
      throw e;
    }
    this.open++;
    return session;
  }

  /** Waits for a session until `deadline` (ms since epoch); fails fast when the pool is saturated. */
  acquire(deadline?: number): Promise<Session> {
    if (this.closed) return Promise.reject(new SignerError("HSM_UNAVAILABLE", "the HSM session pool is closed"));
    const s = this.idle.pop();
    if (s) return Promise.resolve(s);
    if (this.open < this.size) {
      try {
        return Promise.resolve(this.openOne());
      } catch (e) {
        return Promise.reject(e);
      }
    }
    if (this.waiters.length >= this.maxWaiters) {
      return Promise.reject(new SignerError("POOL_EXHAUSTED", `all ${this.size} HSM sessions are busy and ${this.waiters.length} requests are waiting`, { retryAfterMs: 100 }));
    }
    return new Promise<Session>((resolve, reject) => {
      const waiter: Waiter = { resolve, reject, timer: undefined };
      if (deadline !== undefined) {
        const ms = deadline - Date.now();
        if (ms <= 0) {
          reject(new SignerError("DEADLINE_EXCEEDED", "the deadline passed while waiting for an HSM session"));
          return;
        }
        waiter.timer = setTimeout(() => {
          const i = this.waiters.indexOf(waiter);
          if (i >= 0) this.waiters.splice(i, 1);
          reject(new SignerError("DEADLINE_EXCEEDED", "the deadline passed while waiting for an HSM session"));
        }, ms);
      }
      this.waiters.push(waiter);
    });
  }

  release(session: Session, lost = false): void {
    if (lost || this.closed) {
      this.open--;
      try {
        session.close();
      } catch {
        // a lost session may already be gone
      }
      if (this.closed) return;
      const w = this.waiters.shift();
      if (w) {
        if (w.timer) clearTimeout(w.timer);
        try {
          w.resolve(this.openOne());
        } catch (e) {
          w.reject(e);
        }
      }
      return;
    }
    const w = this.waiters.shift();
    if (w) {
      if (w.timer) clearTimeout(w.timer);
      w.resolve(session);
    } else {
      this.idle.push(session);
    }
  }

  /** Runs `fn` with a session; a session the HSM reports lost is replaced, not returned to the pool. */
  async use<T>(fn: (s: Session) => T | Promise<T>, deadline?: number): Promise<T> {
    const session = await this.acquire(deadline);
    let lost = false;
    try {
      return await fn(session);
    } catch (e) {
      lost = isSessionLost(e);
      throw e;
    } finally {
      this.release(session, lost);
    }
  }

  close(): void {
    this.closed = true;
    for (const w of this.waiters.splice(0)) {
      if (w.timer) clearTimeout(w.timer);
      w.reject(new SignerError("HSM_UNAVAILABLE", "the HSM session pool is closing"));
    }
    for (const s of this.idle.splice(0)) {
      this.open--;
      try {
        s.close();
      } catch {
        // closing anyway
      }
    }
  }
}
