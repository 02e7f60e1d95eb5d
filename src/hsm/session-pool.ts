import type { Session, Slot } from "graphene-pk11";
import { SignerError } from "../errors/index.js";
import { silentLogger, type Logger } from "../log/index.js";
import { login, openSession, probeToken, sessionLoggedIn } from "./hsm-token.js";
import { HsmSupervisor, type HsmFault, type HsmSupervisorCounters, type HsmSupervisorOptions } from "./hsm-supervisor.js";
import type { HsmReader, SessionLook } from "./hsm-reader.js";
import { ObjectGate } from "./object-gate.js";
import { ckrName, ThreadPkcs11Error, translatePkcs11Error } from "./pkcs11-errors.js";

export const DEFAULT_POOL_SIZE = 4;
export const DEFAULT_MAX_WAITERS = 256;
/** How long close() waits for calls still inside the module (an RSA-4096 generation takes seconds). */
const DEFAULT_CLOSE_DRAIN_MS = 15_000;
/** While close() drains, it looks again this often. */
const CLOSE_POLL_MS = 50;

/** The supervisor's options (reconnect, onRecovered, health check, backoff, logger) and the pool's own. */
export interface SessionPoolOptions extends HsmSupervisorOptions {
  size?: number;
  /** Waiters beyond this many get POOL_EXHAUSTED instead of queueing. */
  maxWaiters?: number;
  /** The thread the periodic check reads the token and the idle sessions on; without one it reads them on the event loop. */
  reader?: HsmReader;
}

/** Counters since the pool was made, for metrics: the supervisor's faults and recoveries, and the pool's own. */
export interface SessionPoolCounters extends HsmSupervisorCounters {
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

/** C_GetTokenInfo failed: the token itself may be gone. */
function tokenFault(e: unknown): HsmFault {
  return { reason: `C_GetTokenInfo failed with ${ckrName(e)}`, cause: e, reconnect: true };
}

function closeQuietly(s: Session): void {
  try {
    s.close();
  } catch {
    // a lost session may already be gone
  }
}

/**
 * A bounded pool of logged-in R/W sessions on one token. Whether sessions may be handed out at
 * all is the business of its HsmSupervisor (hsm-supervisor.ts): a failure that could mean the
 * HSM is at fault makes it look at the token and the sessions, a lost session is replaced here,
 * a lost login or token takes the pool down until the supervisor has brought it back. Object
 * operations (use()) pass one at a time through an ObjectGate (object-gate.ts).
 */
export class SessionPool {
  readonly size: number;
  private readonly maxWaiters: number;
  private readonly idle: Session[] = [];
  /** Sessions of the current generation, idle or in use: a session not in here is never pooled again. */
  private readonly owned = new Set<Session>();
  private readonly waiters: Waiter[] = [];
  private readonly gate = new ObjectGate();
  private readonly supervisor: HsmSupervisor;
  private readonly logger: Logger;
  private readonly counters = { sessionsReplaced: 0, logins: 0, loginsPinIncorrect: 0, loginsFailed: 0 };

  constructor(
    private currentSlot: Slot,
    private readonly pin: string,
    options: SessionPoolOptions = {},
  ) {
    this.size = options.size ?? DEFAULT_POOL_SIZE;
    this.maxWaiters = options.maxWaiters ?? DEFAULT_MAX_WAITERS;
    this.logger = options.logger ?? silentLogger;
    if (!Number.isInteger(this.size) || this.size < 1) throw new SignerError("CONFIG_INVALID", "session pool size must be a positive integer");
    // What the supervisor may do with the sessions; the rest of the pool is not its business.
    this.supervisor = new HsmSupervisor(
      {
        inUse: () => this.owned.size - this.idle.length,
        inspect: () => this.inspect(),
        inspectInBackground: () => this.inspectInBackground(options.reader),
        shed: (error) => this.shed(error),
        reopen: (slot) => this.reopen(slot),
      },
      options,
    );
  }

  /** Opens every session now, so a bad PIN or a missing token fails at start-up; then starts the background check. */
  start(): void {
    this.fill();
    this.supervisor.start();
  }

  /** The token's slot (it may change when the pool reconnects after the token went away). */
  get slot(): Slot {
    return this.currentSlot;
  }

  get stats(): SessionPoolStats {
    return {
      size: this.size,
      inUse: this.owned.size - this.idle.length,
      idle: this.idle.length,
      waiting: this.waiters.length,
      up: this.supervisor.state === "up",
      counters: { ...this.supervisor.counters, ...this.counters },
    };
  }

  /** True while sessions are handed out: false while the HSM is down or reconnecting, after a wrong PIN, and once closed. */
  get healthy(): boolean {
    return this.supervisor.state === "up";
  }

  private fill(): void {
    while (this.owned.size < this.size) this.idle.push(this.openOne());
  }

  private openOne(): Session {
    if (this.supervisor.state === "fatal") throw this.supervisor.unavailable();
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
        this.supervisor.loginRefused(e);
      } else {
        this.counters.loginsFailed++;
      }
      throw e;
    }
    this.owned.add(session);
    return session;
  }

  /** Waits for a session until `deadline` (ms since epoch); fails fast when the pool is saturated or the HSM is down. */
  acquire(deadline?: number): Promise<Session> {
    if (!this.supervisor.admits) return Promise.reject(this.supervisor.unavailable());
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
    const state = this.supervisor.state;
    if (lost && state === "up") {
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
    if (lost || (state !== "up" && state !== "recovering")) {
      this.owned.delete(session);
      closeQuietly(session);
      if (lost) this.counters.sessionsReplaced++;
      return;
    }
    const w = state === "up" ? this.waiters.shift() : undefined;
    if (w) {
      if (w.timer) clearTimeout(w.timer);
      w.resolve(session);
    } else {
      this.idle.push(session);
    }
  }

  /**
   * Runs `fn` with a session; a failed session is replaced, not returned to the pool. For calls
   * that find, read, create or destroy objects: they pass the ObjectGate one at a time
   * (signatures take sessions with acquire() and never wait there). Do not call use() inside `fn`.
   */
  use<T>(fn: (s: Session) => T | Promise<T>, deadline?: number): Promise<T> {
    // A free gate runs this at once, so acquire() runs in this very turn (the supervisor admits
    // the recovery's rescan only while onRecovered() runs).
    return this.gate.run(async () => {
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
    }, deadline);
  }

  /** See HsmSupervisor.diagnose: what a caller should see of a failed operation on one of the pool's sessions. */
  diagnose(e: unknown): unknown {
    return this.supervisor.diagnose(e);
  }

  /** See HsmSupervisor.check: looks at the token and the sessions now; whether the pool is up. */
  check(): boolean {
    return this.supervisor.check();
  }

  /**
   * The token (C_GetTokenInfo) and the idle sessions (C_GetSessionInfo): drops lost sessions, and
   * returns a fault when the token or the login is gone.
   */
  private inspect(): HsmFault | undefined {
    try {
      probeToken(this.currentSlot);
    } catch (e) {
      return tokenFault(e);
    }
    let loggedIn = false;
    for (const s of [...this.idle]) {
      let ok: boolean;
      try {
        ok = sessionLoggedIn(s);
      } catch (e) {
        this.idle.splice(this.idle.indexOf(s), 1);
        this.dropLost(s, e);
        continue;
      }
      if (!ok) return { reason: "the HSM user is no longer logged in", reconnect: false };
      loggedIn = true;
    }
    if (loggedIn) return undefined;
    // No idle session vouched for the login. A fresh session tells: login state is per process and token.
    let s: Session;
    try {
      s = openSession(this.currentSlot);
    } catch (e) {
      return { reason: `C_OpenSession failed with ${ckrName(e)}`, cause: e, reconnect: true };
    }
    let ok = false;
    try {
      ok = sessionLoggedIn(s);
    } catch {
      ok = false;
    }
    if (!ok) {
      closeQuietly(s);
      return { reason: "the HSM user is no longer logged in", reconnect: false };
    }
    if (this.owned.size < this.size) {
      this.owned.add(s);
      this.idle.push(s);
      this.handToWaiter();
    } else {
      closeQuietly(s);
    }
    return undefined;
  }

  /**
   * inspect(), with the PKCS#11 calls on the reader thread: the token first, then the idle
   * sessions, which are kept from callers while it looks at them and then go back (or are dropped
   * when lost). When every session is in use, only the token is looked at: the calls on them find
   * out about the login.
   */
  private async inspectInBackground(reader: HsmReader | undefined): Promise<HsmFault | undefined> {
    if (!reader) return this.inspect();
    try {
      await reader.probe(this.currentSlot.handle);
    } catch (e) {
      if (e instanceof SignerError) throw e; // the reader thread, not the HSM
      return tokenFault(e);
    }
    if (!this.supervisor.admits) return undefined;
    const lent = this.idle.splice(0);
    let looks: SessionLook[] | undefined;
    try {
      looks = await reader.sessions(lent.map((s) => s.handle));
    } finally {
      // Back to the pool (or to a waiter); release() ignores a session of an earlier generation.
      if (!looks) for (const s of lent) this.release(s);
    }
    let fault: HsmFault | undefined;
    lent.forEach((s, i) => {
      const look = looks[i];
      if (look && "error" in look && this.owned.has(s)) return this.dropLost(s, new ThreadPkcs11Error(look.error.message, look.error.code));
      if (look && "loggedIn" in look && !look.loggedIn) fault ??= { reason: "the HSM user is no longer logged in", reconnect: false };
      this.release(s);
    });
    return fault;
  }

  /** C_GetSessionInfo failed on a session no caller holds (CKR_SESSION_HANDLE_INVALID, CKR_SESSION_CLOSED): it is gone, the others may be fine. */
  private dropLost(s: Session, e: unknown): void {
    this.owned.delete(s);
    closeQuietly(s);
    this.counters.sessionsReplaced++;
    this.logger.warn("HSM session lost; it will be replaced", { error: ckrName(e) });
  }

  private handToWaiter(): void {
    const w = this.waiters.length > 0 ? this.waiters.shift() : undefined;
    if (!w) return;
    if (w.timer) clearTimeout(w.timer);
    const s = this.idle.pop();
    if (s) w.resolve(s);
    else this.waiters.unshift(w);
  }

  /** Turns every waiter away and closes the idle sessions (the HSM went down, the PIN was refused, the pool closes). */
  private shed(error: () => unknown): void {
    for (const w of this.waiters.splice(0)) {
      if (w.timer) clearTimeout(w.timer);
      w.reject(error());
    }
    for (const s of this.idle.splice(0)) {
      this.owned.delete(s);
      closeQuietly(s);
    }
  }

  /** A new generation of sessions, on a new slot when the module was re-initialized. */
  private reopen(slot: Slot | undefined): void {
    if (slot) this.currentSlot = slot;
    try {
      probeToken(this.currentSlot);
    } catch (e) {
      throw translatePkcs11Error(e, "C_GetTokenInfo");
    }
    this.fill();
  }

  /**
   * Closes the idle sessions now and the others as their calls return. Resolves once none is
   * checked out (a key generation on a libuv thread may take seconds), or after `drainMs`, so
   * that C_Finalize does not run under a call still inside the module.
   */
  async close(drainMs = DEFAULT_CLOSE_DRAIN_MS): Promise<void> {
    this.supervisor.close();
    this.shed(() => new SignerError("HSM_UNAVAILABLE", "the HSM session pool is closing"));
    const until = Date.now() + drainMs;
    while (this.owned.size > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, CLOSE_POLL_MS));
    if (this.owned.size > 0) this.logger.warn("closing with HSM calls still running", { sessionsInUse: this.owned.size });
  }
}
