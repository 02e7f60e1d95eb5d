import { findSlot, loadModule, type TokenSelector } from "./hsm-token.js";
import { Pkcs11KeyStore } from "./pkcs11-key-store.js";
import { SessionPool } from "./session-pool.js";

export interface HsmOptions extends TokenSelector {
  modulePath: string;
  pin: string;
  poolSize?: number;
  maxWaiters?: number;
  keyRefreshMs?: number;
}

export interface Hsm {
  pool: SessionPool;
  keys: Pkcs11KeyStore;
  close(): void;
}

/** Loads the module, finds the token, logs in with a pool of sessions and scans the keys. */
export async function openHsm(o: HsmOptions): Promise<Hsm> {
  const mod = loadModule(o.modulePath);
  const slot = findSlot(mod, o);
  const pool = new SessionPool(slot, o.pin, { size: o.poolSize, maxWaiters: o.maxWaiters });
  pool.start();
  const keys = new Pkcs11KeyStore(pool, { refreshIntervalMs: o.keyRefreshMs });
  try {
    await keys.start();
  } catch (e) {
    pool.close();
    throw e;
  }
  return {
    pool,
    keys,
    close() {
      keys.stop();
      pool.close();
    },
  };
}
