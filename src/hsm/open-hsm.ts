import type { Slot } from "graphene-pk11";
import { findSlot, loadModule, type TokenSelector } from "./hsm-token.js";
import { Pkcs11KeyStore } from "./pkcs11-key-store.js";
import { SessionPool } from "./session-pool.js";
import { SignThreads } from "./sign-threads.js";

export interface HsmOptions extends TokenSelector {
  modulePath: string;
  pin: string;
  poolSize?: number;
  maxWaiters?: number;
  keyRefreshMs?: number;
  onSign?: (keySpec: string, seconds: number) => void;
}

export interface Hsm {
  /** The slot of the token this service is logged in to. */
  slot: Slot;
  pool: SessionPool;
  keys: Pkcs11KeyStore;
  /** Stops the signing threads and closes the sessions; C_Finalize only after it resolves. */
  close(): Promise<void>;
}

/** Loads the module, finds the token, logs in with a pool of sessions and scans the keys. */
export async function openHsm(o: HsmOptions): Promise<Hsm> {
  const mod = loadModule(o.modulePath);
  const slot = findSlot(mod, o);
  const pool = new SessionPool(slot, o.pin, { size: o.poolSize, maxWaiters: o.maxWaiters });
  pool.start();
  const threads = new SignThreads(o.modulePath, pool.size);
  const keys = new Pkcs11KeyStore(pool, threads, { refreshIntervalMs: o.keyRefreshMs, onSign: o.onSign });
  const close = async (): Promise<void> => {
    keys.stop();
    await threads.close();
    pool.close();
  };
  try {
    await keys.start();
  } catch (e) {
    await close();
    throw e;
  }
  return { slot, pool, keys, close };
}
