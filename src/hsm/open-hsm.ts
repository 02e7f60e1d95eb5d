import type { Logger } from "../log/index.js";
import { HsmReader } from "./hsm-reader.js";
import { findSlot, loadModule, reinitializeModule, type TokenSelector } from "./hsm-token.js";
import { Pkcs11KeyStore } from "./pkcs11-key-store.js";
import { SessionPool } from "./session-pool.js";
import { SignThreads } from "./sign-threads.js";

export interface HsmOptions extends TokenSelector {
  modulePath: string;
  pin: string;
  poolSize?: number;
  maxWaiters?: number;
  keyRefreshMs?: number;
  /** How long a signing thread may hold an answer while others sign (SignThreadsOptions.answerHoldMs). */
  answerHoldMs?: number;
  onSign?: (keySpec: string, seconds: number) => void;
  /** Where HSM faults and recoveries are logged (default: nowhere). */
  logger?: Logger;
  /** Background check of the token and sessions (ms, 0 = off); see SessionPoolOptions. */
  healthCheckIntervalMs?: number;
  reconnectMinMs?: number;
  reconnectMaxMs?: number;
}

export interface Hsm {
  pool: SessionPool;
  keys: Pkcs11KeyStore;
  /** How long the oldest signature still inside the HSM has been running, in ms (0: none). */
  longestSignMs(): number;
  /** How long the oldest housekeeping read (health check, key poll or scan) still inside the HSM has been running, in ms (0: none). */
  longestReadMs(): number;
  /** Stops the signing threads and closes the sessions; C_Finalize only after it resolves. */
  close(): Promise<void>;
}

/** Loads the module, finds the token, logs in with a pool of sessions and scans the keys. */
export async function openHsm(o: HsmOptions): Promise<Hsm> {
  const mod = loadModule(o.modulePath);
  const slot = findSlot(mod, o);
  // The pool and the key store need each other: the store takes sessions, the pool rescans it after a recovery.
  const late: { keys?: Pkcs11KeyStore } = {};
  // The housekeeping's reads (health check, key polls and scans) run on their own thread, off the event loop.
  const reader = new HsmReader(o.modulePath);
  const pool = new SessionPool(slot, o.pin, {
    reader,
    size: o.poolSize,
    maxWaiters: o.maxWaiters,
    logger: o.logger,
    healthCheckIntervalMs: o.healthCheckIntervalMs,
    reconnectMinMs: o.reconnectMinMs,
    reconnectMaxMs: o.reconnectMaxMs,
    // A token that went away comes back only through C_Finalize + C_Initialize; its slot id may change.
    reconnect: () => findSlot(reinitializeModule(o.modulePath), o),
    // Key handles do not survive a logout or a re-initialization: rescan before signing again.
    onRecovered: () => late.keys?.refresh({ afterRecovery: true }) ?? Promise.resolve(),
  });
  pool.start();
  const threads = new SignThreads(o.modulePath, pool.size, { onError: (e) => pool.diagnose(e), answerHoldMs: o.answerHoldMs });
  const store = new Pkcs11KeyStore(pool, threads, { refreshIntervalMs: o.keyRefreshMs, onSign: o.onSign, reader });
  late.keys = store;
  const close = async (): Promise<void> => {
    store.stop();
    await threads.close();
    await pool.close();
    await reader.close();
  };
  try {
    await store.start();
  } catch (e) {
    await close();
    throw e;
  }
  return { pool, keys: store, longestSignMs: () => threads.longestRunningMs(), longestReadMs: () => reader.longestRunningMs(), close };
}
