import type { Slot } from "graphene-pk11";
import { SignerError } from "../errors/index.js";
import { silentLogger, withoutLogContext, type Logger } from "../log/index.js";
import { ckrName, isSuspectFailure } from "./pkcs11-errors.js";

/** How often the supervisor checks the token and its idle sessions, so that readiness follows an HSM nobody is using. */
export const DEFAULT_HEALTH_CHECK_MS = 5_000;
/** Reconnection attempts after a fault start this far apart and double up to DEFAULT_RECONNECT_MAX_MS. */
export const DEFAULT_RECONNECT_MIN_MS = 250;
export const DEFAULT_RECONNECT_MAX_MS = 5_000;
/** While sessions of the lost generation are still in use, the next attempt looks again this soon. */
const DRAIN_POLL_MS = 50;
/** The smallest retry-after-ms a caller is told while the HSM is down. */
const MIN_RETRY_AFTER_MS = 100;

/**
 * up: sessions are handed out. down: the HSM, the login or the sessions were lost; callers get
 * HSM_UNAVAILABLE at once while reconnection attempts run with backoff. recovering: sessions
 * and login are back and onRecovered() runs. fatal: the PIN was refused; nothing is retried,
 * since retrying a wrong PIN would lock the token. closed: close() was called.
 */
export type HsmState = "up" | "down" | "recovering" | "fatal" | "closed";

/** What a look at the token and the sessions found wrong. */
export interface HsmFault {
  reason: string;
  cause?: unknown;
  /** The token itself may be gone: the next attempt re-initializes the module (reconnect()). */
  reconnect: boolean;
}

/** What the supervisor needs of the sessions it watches (the session pool gives it this). */
export interface SupervisedSessions {
  /** Sessions handed out and not yet returned. */
  inUse(): number;
  /** Looks at the token and the login now (dropping sessions found lost); a fault, or undefined when all is well. */
  inspect(): HsmFault | undefined;
  /** The same look for the periodic check, off the event loop where the sessions can (the HSM reader thread). */
  inspectInBackground(): Promise<HsmFault | undefined>;
  /** Turns every waiter away with `error()` and closes the idle sessions. */
  shed(error: () => unknown): void;
  /** From now on on `slot`, when given: checks the token and opens sessions until the pool is full; throws when it cannot. */
  reopen(slot: Slot | undefined): void;
}

export interface HsmSupervisorOptions {
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

/** Faults and recoveries since the supervisor was made, for metrics. */
export interface HsmSupervisorCounters {
  /** Times the pool found the HSM unavailable and stopped handing out sessions. */
  faults: number;
  /** Times it came back by itself. */
  recoveries: number;
}

/**
 * Decides whether the HSM is usable, and brings it back when it is not. A failure that could mean
 * the HSM is at fault makes it look at the token (C_GetTokenInfo) and the sessions
 * (C_GetSessionInfo): a lost login or token takes the sessions down, and it reconnects by itself
 * (reopen, C_Login, optionally re-initialize the module) with exponential backoff. A wrong PIN is
 * never retried.
 */
export class HsmSupervisor {
  private current: HsmState = "up";
  /** Why the HSM is down (HSM_UNAVAILABLE) or fatal (HSM_PIN_INCORRECT). */
  private fault: SignerError | undefined;
  private reconnectNeeded = false;
  private delayMs: number;
  private nextAttemptAt = 0;
  private downSince = 0;
  private attempts = 0;
  private recoveryTimer: NodeJS.Timeout | undefined;
  private healthTimer: NodeJS.Timeout | undefined;
  /** The background look running now (one at a time: behind a slow HSM they would pile up). */
  private looking: Promise<void> | undefined;
  /** True only while onRecovered() starts, so that its acquire() calls get a session before the HSM is up. */
  private admitting = false;
  private readonly logger: Logger;
  private readonly counts: HsmSupervisorCounters = { faults: 0, recoveries: 0 };

  constructor(
    private readonly sessions: SupervisedSessions,
    private readonly options: HsmSupervisorOptions = {},
  ) {
    this.logger = options.logger ?? silentLogger;
    this.delayMs = this.minDelay;
  }

  private get minDelay(): number {
    return this.options.reconnectMinMs ?? DEFAULT_RECONNECT_MIN_MS;
  }

  get state(): HsmState {
    return this.current;
  }

  get counters(): HsmSupervisorCounters {
    return { ...this.counts };
  }

  /** Whether sessions may be handed out now: while up, and to onRecovered() while it starts. */
  get admits(): boolean {
    return this.current === "up" || (this.current === "recovering" && this.admitting);
  }

  /** Starts the background check. */
  start(): void {
    const every = this.options.healthCheckIntervalMs ?? DEFAULT_HEALTH_CHECK_MS;
    if (every > 0 && !this.healthTimer) {
      this.healthTimer = withoutLogContext(() => setInterval(() => void this.checkInBackground(), every));
      this.healthTimer.unref();
    }
  }

  /** The error a caller gets while no session can be handed out. */
  unavailable(cause?: unknown): SignerError {
    if (this.current === "fatal" && this.fault) return this.fault;
    if (this.current === "closed") return new SignerError("HSM_UNAVAILABLE", "the HSM session pool is closed", { cause });
    const wait = Math.max(0, this.nextAttemptAt - Date.now());
    const what = this.fault?.message ?? "the HSM is unavailable";
    return new SignerError("HSM_UNAVAILABLE", `${what}; reconnecting, next attempt in ${wait} ms`, { cause: cause ?? this.fault?.cause, retryAfterMs: Math.max(MIN_RETRY_AFTER_MS, wait) });
  }

  /**
   * For a failed operation on one of the sessions: when the failure could mean the HSM is at
   * fault, checks it now, and returns what the caller should see (HSM_UNAVAILABLE once the HSM is
   * down, the original error otherwise, e.g. a key that really was deleted).
   */
  diagnose(e: unknown): unknown {
    const suspect = isSuspectFailure(e) || (e instanceof SignerError && e.code === "HSM_UNAVAILABLE");
    if (this.current === "up" && !suspect) return e;
    if (this.check()) return e;
    return this.unavailable(e);
  }

  /**
   * Looks at the token and the sessions now and takes the HSM down when the token or the login
   * is gone. Returns whether it is up. Cheap: about 0.1 ms plus a few microseconds per idle
   * session on SoftHSM.
   */
  check(): boolean {
    if (this.current !== "up") return false;
    const fault = this.sessions.inspect();
    if (!fault) return true;
    this.markDown(fault);
    return false;
  }

  /**
   * The periodic check: check(), with the PKCS#11 calls off the event loop, one at a time (behind
   * a slow HSM they would pile up). An HSM that does not answer it at all is reported by the
   * reader's longestRunningMs() (serve: readiness), as a hung signature is: nothing here may
   * wait for it, and C_Finalize must not run under a thread still inside the module.
   */
  checkInBackground(): Promise<void> {
    if (this.current !== "up") return Promise.resolve();
    this.looking ??= this.look().finally(() => {
      this.looking = undefined;
    });
    return this.looking;
  }

  private async look(): Promise<void> {
    try {
      const fault = await this.sessions.inspectInBackground();
      if (fault && this.current === "up") this.markDown(fault);
    } catch (e) {
      // The reader thread failed, not the HSM (or it is stopping): the next period looks again.
      if (this.current === "up") this.logger.warn("HSM health check failed", { error: e instanceof Error ? e.message : String(e) });
    }
  }

  /** C_Login refused the PIN (CKR_PIN_INCORRECT, CKR_PIN_LOCKED): stop for good. */
  loginRefused(e: SignerError): void {
    if (this.current === "closed") return;
    const wasRunning = this.current !== "fatal";
    this.current = "fatal";
    this.fault = e;
    if (this.recoveryTimer) clearTimeout(this.recoveryTimer);
    this.recoveryTimer = undefined;
    this.sessions.shed(() => e);
    if (wasRunning) this.logger.error("HSM login refused; not retrying, to avoid locking the token. Fix the PIN and restart.", { error: e.message });
  }

  /** No more checks or attempts; the sessions are closed by their owner. */
  close(): void {
    this.current = "closed";
    if (this.healthTimer) clearInterval(this.healthTimer);
    if (this.recoveryTimer) clearTimeout(this.recoveryTimer);
    this.healthTimer = undefined;
    this.recoveryTimer = undefined;
  }

  private markDown({ reason, cause, reconnect }: HsmFault): void {
    if (reconnect) this.reconnectNeeded = true;
    if (this.current !== "up" && this.current !== "recovering") return;
    const wasUp = this.current === "up";
    this.current = "down";
    this.fault = new SignerError("HSM_UNAVAILABLE", `the HSM is unavailable (${reason})`, { cause });
    if (wasUp) {
      this.counts.faults++;
      this.downSince = Date.now();
      this.attempts = 0;
      this.delayMs = this.minDelay;
      this.logger.warn("HSM unavailable; reconnecting", { reason, sessionsInUse: this.sessions.inUse() });
    }
    this.sessions.shed(() => this.unavailable());
    // A lost login is repaired at once; a lost token is given a moment.
    this.schedule(wasUp && !this.reconnectNeeded ? 0 : this.delayMs);
  }

  private schedule(ms: number): void {
    if (this.recoveryTimer) clearTimeout(this.recoveryTimer);
    this.nextAttemptAt = Date.now() + ms;
    // Reconnecting is the supervisor's business, not that of the request that noticed the fault: its lines carry no request id.
    this.recoveryTimer = withoutLogContext(() => setTimeout(() => void this.recover(), ms));
    this.recoveryTimer.unref();
  }

  private async recover(): Promise<void> {
    this.recoveryTimer = undefined;
    if (this.current !== "down") return;
    // Calls on sessions of the lost generation finish first (they fail fast): C_Finalize must not
    // run under a signing thread (notes, trap 6), and a reused handle must not reach an old caller.
    // (While down, no session is idle: each one is closed as it comes back.)
    if (this.sessions.inUse() > 0) return this.schedule(DRAIN_POLL_MS);
    this.attempts++;
    try {
      this.sessions.reopen(this.reconnectNeeded && this.options.reconnect ? this.options.reconnect() : undefined);
    } catch (e) {
      if (this.current !== "down") return; // fatal (wrong PIN) or closed: no further attempt
      return this.attemptFailed(e);
    }
    this.reconnectNeeded = false;
    this.current = "recovering";
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
      if (this.current === "recovering") this.current = "down";
      if (this.current !== "down") return;
      return this.attemptFailed(e);
    }
    if (this.current !== "recovering") return;
    this.current = "up";
    this.fault = undefined;
    this.counts.recoveries++;
    this.logger.info("HSM available again", { downMs: Date.now() - this.downSince, attempts: this.attempts });
    this.delayMs = this.minDelay;
  }

  private attemptFailed(e: unknown): void {
    // Nobody waits here (acquire() refuses while down, and markDown() turned the waiters away): this closes the sessions the attempt opened.
    this.sessions.shed(() => this.unavailable());
    // Whatever failed, the next attempt starts from a re-initialized module when it can.
    this.reconnectNeeded = true;
    const reason = e instanceof SignerError ? e.message : ckrName(e);
    this.fault = new SignerError("HSM_UNAVAILABLE", this.fault?.message ?? "the HSM is unavailable", { cause: e });
    const delay = this.delayMs;
    this.delayMs = Math.min(this.options.reconnectMaxMs ?? DEFAULT_RECONNECT_MAX_MS, this.delayMs * 2);
    this.logger.warn("HSM reconnection attempt failed", { attempt: this.attempts, reason, nextAttemptMs: delay });
    this.schedule(delay);
  }
}
