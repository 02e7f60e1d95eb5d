import type { Session, Slot } from "graphene-pk11";
import { SignerError } from "../errors/index.js";
import { silentLogger, withoutLogContext, type Logger } from "../log/index.js";
import { login, openSession, probeToken, sessionLoggedIn } from "./hsm-token.js";
import { ckrName, isSuspectFailure, translatePkcs11Error } from "./pkcs11-errors.js";

export const DEFAULT_POOL_SIZE = 4;
export const DEFAULT_MAX_WAITERS = 256;
/** How often the pool checks the token and its idle sessions, so that readiness follows an HSM nobody is using. */
export const DEFAULT_HEALTH_CHECK_MS = 5_000;
/** Reconnection attempts after a fault start this far apart and double up to DEFAULT_RECONNECT_MAX_MS. */
export const DEFAULT_RECONNECT_MIN_MS = 250;
export const DEFAULT_RECONNECT_MAX_MS = 5_000;
/** While sessions of the lost generation are still in use, the next attempt looks again this soon. */
const DRAIN_POLL_MS = 50;
/** How long close() waits for calls still inside the module (an RSA-4096 generation takes seconds). */
const DEFAULT_CLOSE_DRAIN_MS = 15_000;
/** The smallest retry-after-ms a caller is told while the HSM is down. */
const MIN_RETRY_AFTER_MS = 100;

export interface SessionPoolOptions {
  size?: number;
  /** Waiters beyond this many get POOL_EXHAUSTED instead of queueing. */
  maxWaiters?: number;
  /**
   * Re-initializes the module and finds the token again (C_Finalize + C_Initialize), for faults
   * that outlive the sessions: the token went away (CKR_TOKEN_NOT_PRESENT, CKR_DEVICE_ERROR, or
   * SoftHSM's CKR_GENERAL_ERROR for a moved token directory). Without it the pool only reopens
   * sessions and logs in again on the same slot.
   */
  reconnect?: () => Slot;
  /**
   * Runs once sessions and login are back, before anyone else gets a session (the key store
   * rescans: object handles do not survive a logout or a re-initialization). Its acquire() calls
   * must start synchronously; a rejection counts as a failed attempt.
   */
  onRecovered?: () => Promise<void>;
  /** Period of the background check of the token and idle sessions; 0 turns it off. */
  healthCheckIntervalMs?: number;
  reconnectMinMs?: number;
  reconnectMaxMs?: number;
  logger?: Logger;
}

/** Counters since the pool was made, for metrics. */
export interface SessionPoolCounters {
  /** Times the pool found the HSM unavailable and stopped handing out sessions. */
  faults: number;
  /** Times it came back by itself. */
  recoveries: number;
  /** Sessions dropped because the HSM reported them lost or an operation on them failed. */
  sessionsReplaced: number;
  /** C_Login calls that left the session logged in (CKR_USER_ALREADY_LOGGED_IN included). */
  logins: number;
  /** C_Login calls refused with CKR_PIN_INCORRECT or CKR_PIN_LOCKED: at most one, then the pool stops. */
  loginsPinIncorrect: number;
  /** C_Login calls that failed otherwise (the token went away during a login). */
  loginsFailed: number;
}

export interface SessionPoolStats {
  size: number;
  inUse: number;
  idle: number;
  waiting: number;
  up: boolean;
  counters: SessionPoolCounters;
}

interface Waiter {
  resolve: (s: Session) => void;
  reject: (e: unknown) => void;
  timer: NodeJS.Timeout | undefined;
}

/**
 * up: sessions are handed out. down: the HSM, the login or the sessions were lost; callers get
 * HSM_UNAVAILABLE at once while reconnection attempts run with backoff. recovering: sessions
 * and login are back and onRecovered() runs. fatal: the PIN was refused; nothing is retried,
 * since retrying a wrong PIN would lock the token. closed: close() was called.
 */
type PoolState = "up" | "down" | "recovering" | "fatal" | "closed";

function closeQuietly(s: Session): void {
  try {
    s.close();
  } catch {
    // a lost session may already be gone
  }
}

/**
 * A bounded pool of logged-in R/W sessions on one token. A failure that could mean the HSM is at
 * fault makes the pool check the token (C_GetTokenInfo) and its sessions (C_GetSessionInfo): a
 * lost session is replaced; a lost login or token takes the pool down, and it reconnects by
 * itself (reopen, C_Login, optionally re-initialize the module) with exponential backoff. A wrong
 * PIN is never retried.
 */
export class SessionPool {
  readonly size: number;
  private readonly maxWaiters: number;
  private readonly idle: Session[] = [];
  /** Sessions of the current generation, idle or in use: a session not in here is never pooled again. */
  private readonly owned = new Set<Session>();
  private readonly waiters: Waiter[] = [];
  /** Whether an object operation (use()) runs; the next ones wait in order. */
  private objectCallRunning = false;
  private readonly objectCallWaiters: (() => void)[] = [];
  private state: PoolState = "up";
  /** Why the pool is down (HSM_UNAVAILABLE) or fatal (HSM_PIN_INCORRECT). */
  private fault: SignerError | undefined;
  private reconnectNeeded = false;
  private delayMs: number;
  private nextAttemptAt = 0;
  private downSince = 0;
  private attempts = 0;
  private recoveryTimer: NodeJS.Timeout | undefined;
  private healthTimer: NodeJS.Timeout | undefined;
  /** True only while onRecovered() starts, so that its acquire() calls get a session before the pool is up. */
  private admitting = false;
  private readonly logger: Logger;
  private readonly counters: SessionPoolCounters = { faults: 0, recoveries: 0, sessionsReplaced: 0, logins: 0, loginsPinIncorrect: 0, loginsFailed: 0 };

  constructor(
    private currentSlot: Slot,
    private readonly pin: string,
    private readonly options: SessionPoolOptions = {},
  ) {
    this.size = options.size ?? DEFAULT_POOL_SIZE;
    this.maxWaiters = options.maxWaiters ?? DEFAULT_MAX_WAITERS;
    this.logger = options.logger ?? silentLogger;
    this.delayMs = this.minDelay;
    if (!Number.isInteger(this.size) || this.size < 1) throw new SignerError("CONFIG_INVALID", "session pool size must be a positive integer");
  }

  private get minDelay(): number {
    return this.options.reconnectMinMs ?? DEFAULT_RECONNECT_MIN_MS;
  }

  /** Opens every session now, so a bad PIN or a missing token fails at start-up; then starts the background check. */
  start(): void {
    while (this.owned.size < this.size) this.idle.push(this.openOne());
    const every = this.options.healthCheckIntervalMs ?? DEFAULT_HEALTH_CHECK_MS;
    if (every > 0 && !this.healthTimer) {
      this.healthTimer = setInterval(() => this.check(), every);
      this.healthTimer.unref();
    }
  }

  /** The token's slot (it may change when the pool reconnects after the token went away). */
  get slot(): Slot {
    return this.currentSlot;
  }

  get stats(): SessionPoolStats {
    return { size: this.size, inUse: this.owned.size - this.idle.length, idle: this.idle.length, waiting: this.waiters.length, up: this.state === "up", counters: { ...this.counters } };
  }

  /** True while sessions are handed out: false while the HSM is down or reconnecting, after a wrong PIN, and once closed. */
  get healthy(): boolean {
    return this.state === "up";
  }

  private openOne(): Session {
    if (this.state === "fatal" && this.fault) throw this.fault;
    let session: Session;
    try {
      session = openSession(this.currentSlot);
    } catch (e) {
      throw translatePkcs11Error(e, "C_OpenSession");
    }
    try {
      login(session, this.pin);
      this.counters.logins++;
    } catch (e) {
      closeQuietly(session);
      if (e instanceof SignerError && e.code === "HSM_PIN_INCORRECT") {
        this.counters.loginsPinIncorrect++;
        this.goFatal(e);
      } else {
        this.counters.loginsFailed++;
      }
      throw e;
    }
    this.owned.add(session);
    return session;
  }

  /** The error a caller gets while no session can be handed out. */
  private unavailable(cause?: unknown): SignerError {
    if (this.state === "fatal" && this.fault) return this.fault;
    if (this.state === "closed") return new SignerError("HSM_UNAVAILABLE", "the HSM session pool is closed", { cause });
    const wait = Math.max(0, this.nextAttemptAt - Date.now());
    const what = this.fault?.message ?? "the HSM is unavailable";
    return new SignerError("HSM_UNAVAILABLE", `${what}; reconnecting, next attempt in ${wait} ms`, { cause: cause ?? this.fault?.cause, retryAfterMs: Math.max(MIN_RETRY_AFTER_MS, wait) });
  }

  /** Waits for a session until `deadline` (ms since epoch); fails fast when the pool is saturated or the HSM is down. */
  acquire(deadline?: number): Promise<Session> {
    if (this.state !== "up" && !(this.state === "recovering" && this.admitting)) return Promise.reject(this.unavailable());
    const s = this.idle.pop();
    if (s) return Promise.resolve(s);
    if (this.owned.size < this.size) {
      try {
        return Promise.resolve(this.openOne());
      } catch (e) {
        return Promise.reject(this.diagnose(e));
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

  /**
   * Returns a session; `lost` (any failed operation on it) closes it instead. A lost session is
   * replaced at once, and the replacement is opened before the old one is closed: SoftHSM
   * forgets every object handle of a token when its last session closes, so letting the pool
   * run down to no session (four failed operations in a row) broke the key handles the key store
   * holds until its next rescan.
   */
  release(session: Session, lost = false): void {
    // A session from before a reconnection: its handle may since name another session, so it is not even closed.
    if (!this.owned.has(session)) return;
    if (lost && this.state === "up") {
      let replacement: Session | undefined;
      let openError: unknown;
      try {
        replacement = this.openOne();
      } catch (e) {
        openError = e;
      }
      this.owned.delete(session);
      closeQuietly(session);
      this.counters.sessionsReplaced++;
      const w = this.waiters.shift();
      if (w?.timer) clearTimeout(w.timer);
      if (replacement) {
        if (w) w.resolve(replacement);
        else this.idle.push(replacement);
      } else if (w) {
        w.reject(this.diagnose(openError));
      }
      return;
    }
    // The pool is not up here (recovering, down, closed): nothing is handed out or reopened.
    if (lost || (this.state !== "up" && this.state !== "recovering")) {
      this.owned.delete(session);
      closeQuietly(session);
      if (lost) this.counters.sessionsReplaced++;
      return;
    }
    const w = this.state === "up" ? this.waiters.shift() : undefined;
    if (w) {
      if (w.timer) clearTimeout(w.timer);
      w.resolve(session);
    } else {
      this.idle.push(session);
    }
  }

  /**
   * Runs `fn` with a session; a failed session is replaced, not returned to the pool.
   *
   * For calls that find, read, create or destroy objects (signatures take sessions with
   * acquire() and never wait here): they run one at a time. SoftHSM is not safe with
   * C_FindObjects on one session while C_GenerateKeyPair runs on another in a libuv thread: about
   * 1 generation in 10 failed with CKR_GENERAL_ERROR, and finds with CKR_OBJECT_HANDLE_INVALID.
   * Synchronous calls cannot overlap on the event loop anyway; a key generation holds the others
   * back for its duration. Do not call use() inside `fn`.
   */
  async use<T>(fn: (s: Session) => T | Promise<T>, deadline?: number): Promise<T> {
    // Free: taken at once, so acquire() runs in this very turn (the pool admits the recovery's
    // rescan only while onRecovered() runs).
    if (this.objectCallRunning) await this.waitForObjectCall(deadline);
    else this.objectCallRunning = true;
    try {
      const session = await this.acquire(deadline);
      let failed = false;
      try {
        return await fn(session);
      } catch (e) {
        failed = true;
        throw this.diagnose(e);
      } finally {
        this.release(session, failed);
      }
    } finally {
      const next = this.objectCallWaiters.shift();
      if (next) next();
      else this.objectCallRunning = false;
    }
  }

  /** Resolves when the running object operation hands over to this one; DEADLINE_EXCEEDED at `deadline`. */
  private waitForObjectCall(deadline: number | undefined): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const turn = (): void => {
        clearTimeout(timer);
        resolve();
      };
      this.objectCallWaiters.push(turn);
      // Called only after this statement (turn runs in a later turn of the loop).
      const timer =
        deadline === undefined
          ? undefined
          : setTimeout(
              () => {
                const i = this.objectCallWaiters.indexOf(turn);
                if (i >= 0) this.objectCallWaiters.splice(i, 1);
                reject(new SignerError("DEADLINE_EXCEEDED", "the deadline passed while another HSM object operation (a key generation?) was running"));
              },
              Math.max(0, deadline - Date.now()),
            );
    });
  }

  /**
   * For a failed operation on one of the pool's sessions: when the failure could mean the HSM is
   * at fault, checks it now, and returns what the caller should see (HSM_UNAVAILABLE once the
   * pool is down, the original error otherwise, e.g. a key that really was deleted).
   */
  diagnose(e: unknown): unknown {
    const suspect = isSuspectFailure(e) || (e instanceof SignerError && e.code === "HSM_UNAVAILABLE");
    if (this.state === "up" && !suspect) return e;
    if (this.check()) return e;
    return this.unavailable(e);
  }

  /**
   * Checks the token (C_GetTokenInfo) and the idle sessions (C_GetSessionInfo) now, drops lost
   * sessions, and takes the pool down when the token or the login is gone. Returns whether the
   * pool is up. Cheap: about 0.1 ms plus a few microseconds per idle session on SoftHSM.
   */
  check(): boolean {
    if (this.state !== "up") return false;
    try {
      probeToken(this.currentSlot);
    } catch (e) {
      this.markDown(`C_GetTokenInfo failed with ${ckrName(e)}`, e, true);
      return false;
    }
    let loggedIn = false;
    for (const s of [...this.idle]) {
      let ok: boolean;
      try {
        ok = sessionLoggedIn(s);
      } catch (e) {
        // CKR_SESSION_HANDLE_INVALID / CKR_SESSION_CLOSED: this session is gone, the others may be fine.
        this.idle.splice(this.idle.indexOf(s), 1);
        this.owned.delete(s);
        closeQuietly(s);
        this.counters.sessionsReplaced++;
        this.logger.warn("HSM session lost; it will be replaced", { error: ckrName(e) });
        continue;
      }
      if (!ok) {
        this.markDown("the HSM user is no longer logged in", undefined, false);
        return false;
      }
      loggedIn = true;
    }
    if (loggedIn) return true;
    // No idle session vouched for the login. A fresh session tells: login state is per process and token.
    let s: Session;
    try {
      s = openSession(this.currentSlot);
    } catch (e) {
      this.markDown(`C_OpenSession failed with ${ckrName(e)}`, e, true);
      return false;
    }
    let ok = false;
    try {
      ok = sessionLoggedIn(s);
    } catch {
      ok = false;
    }
    if (!ok) {
      closeQuietly(s);
      this.markDown("the HSM user is no longer logged in", undefined, false);
      return false;
    }
    if (this.owned.size < this.size) {
      this.owned.add(s);
      this.idle.push(s);
      this.handToWaiter();
    } else {
      closeQuietly(s);
    }
    return true;
  }

  private handToWaiter(): void {
    const w = this.waiters.length > 0 ? this.waiters.shift() : undefined;
    if (!w) return;
    if (w.timer) clearTimeout(w.timer);
    const s = this.idle.pop();
    if (s) w.resolve(s);
    else this.waiters.unshift(w);
  }

  private markDown(reason: string, cause: unknown, reconnect: boolean): void {
    if (reconnect) this.reconnectNeeded = true;
    if (this.state !== "up" && this.state !== "recovering") return;
    const wasUp = this.state === "up";
    this.state = "down";
    this.fault = new SignerError("HSM_UNAVAILABLE", `the HSM is unavailable (${reason})`, { cause });
    if (wasUp) {
      this.counters.faults++;
      this.downSince = Date.now();
      this.attempts = 0;
      this.delayMs = this.minDelay;
      this.logger.warn("HSM unavailable; reconnecting", { reason, sessionsInUse: this.owned.size - this.idle.length });
    }
    for (const w of this.waiters.splice(0)) {
      if (w.timer) clearTimeout(w.timer);
      w.reject(this.unavailable());
    }
    for (const s of this.idle.splice(0)) {
      this.owned.delete(s);
      closeQuietly(s);
    }
    // A lost login is repaired at once; a lost token is given a moment.
    this.schedule(wasUp && !this.reconnectNeeded ? 0 : this.delayMs);
  }

  private goFatal(e: SignerError): void {
    if (this.state === "closed") return;
    const wasRunning = this.state !== "fatal";
    this.state = "fatal";
    this.fault = e;
    if (this.recoveryTimer) clearTimeout(this.recoveryTimer);
    this.recoveryTimer = undefined;
    for (const w of this.waiters.splice(0)) {
      if (w.timer) clearTimeout(w.timer);
      w.reject(e);
    }
    for (const s of this.idle.splice(0)) {
      this.owned.delete(s);
      closeQuietly(s);
    }
    if (wasRunning) this.logger.error("HSM login refused; not retrying, to avoid locking the token. Fix the PIN and restart.", { error: e.message });
  }

  private schedule(ms: number): void {
    if (this.recoveryTimer) clearTimeout(this.recoveryTimer);
    this.nextAttemptAt = Date.now() + ms;
    // Reconnecting is the pool's business, not that of the request that noticed the fault: its lines carry no request id.
    this.recoveryTimer = withoutLogContext(() => setTimeout(() => void this.recover(), ms));
    this.recoveryTimer.unref();
  }

  private async recover(): Promise<void> {
    this.recoveryTimer = undefined;
    if (this.state !== "down") return;
    // Calls on sessions of the lost generation finish first (they fail fast): C_Finalize must not
    // run under a signing thread (notes, trap 6), and a reused handle must not reach an old caller.
    if (this.owned.size > 0) return this.schedule(DRAIN_POLL_MS);
    this.attempts++;
    try {
      if (this.reconnectNeeded && this.options.reconnect) this.currentSlot = this.options.reconnect();
      try {
        probeToken(this.currentSlot);
      } catch (e) {
        throw translatePkcs11Error(e, "C_GetTokenInfo");
      }
      while (this.owned.size < this.size) this.idle.push(this.openOne());
    } catch (e) {
      if (this.state !== "down") return; // fatal (wrong PIN) or closed: no further attempt
      return this.attemptFailed(e);
    }
    this.reconnectNeeded = false;
    this.state = "recovering";
    let refreshed: Promise<void> = Promise.resolve();
    if (this.options.onRecovered) {
      this.admitting = true;
      try {
        refreshed = this.options.onRecovered();
      } catch (e) {
        refreshed = Promise.reject(e);
      } finally {
        this.admitting = false;
      }
    }
    try {
      await refreshed;
    } catch (e) {
      if (this.state === "recovering") this.state = "down";
      if (this.state !== "down") return;
      return this.attemptFailed(e);
    }
    if (this.state !== "recovering") return;
    this.state = "up";
    this.fault = undefined;
    this.counters.recoveries++;
    this.logger.info("HSM available again", { downMs: Date.now() - this.downSince, attempts: this.attempts });
    this.delayMs = this.minDelay;
  }

  private attemptFailed(e: unknown): void {
    for (const s of this.idle.splice(0)) {
      this.owned.delete(s);
      closeQuietly(s);
    }
    // Whatever failed, the next attempt starts from a re-initialized module when it can.
    this.reconnectNeeded = true;
    const reason = e instanceof SignerError ? e.message : ckrName(e);
    this.fault = new SignerError("HSM_UNAVAILABLE", this.fault?.message ?? "the HSM is unavailable", { cause: e });
    const delay = this.delayMs;
    this.delayMs = Math.min(this.options.reconnectMaxMs ?? DEFAULT_RECONNECT_MAX_MS, this.delayMs * 2);
    this.logger.warn("HSM reconnection attempt failed", { attempt: this.attempts, reason, nextAttemptMs: delay });
    this.schedule(delay);
  }

  /**
   * Closes the idle sessions now and the others as their calls return. Resolves once none is
   * checked out (a key generation on a libuv thread may take seconds), or after `drainMs`, so
   * that C_Finalize does not run under a call still inside the module.
   */
  async close(drainMs = DEFAULT_CLOSE_DRAIN_MS): Promise<void> {
    this.state = "closed";
    if (this.healthTimer) clearInterval(this.healthTimer);
    if (this.recoveryTimer) clearTimeout(this.recoveryTimer);
    this.healthTimer = undefined;
    this.recoveryTimer = undefined;
    for (const w of this.waiters.splice(0)) {
      if (w.timer) clearTimeout(w.timer);
      w.reject(new SignerError("HSM_UNAVAILABLE", "the HSM session pool is closing"));
    }
    for (const s of this.idle.splice(0)) {
      this.owned.delete(s);
      closeQuietly(s);
    }
    const until = Date.now() + drainMs;
    while (this.owned.size > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, DRAIN_POLL_MS));
    if (this.owned.size > 0) this.logger.warn("closing with HSM calls still running", { sessionsInUse: this.owned.size });
  }
}
