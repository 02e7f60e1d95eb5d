/**
 * The HSM reader thread: the PKCS#11 reads of the service's housekeeping (the periodic look at the
 * token and the idle sessions, the key store's poll for changes and its rescans) run here, on
 * sessions the main thread took from the pool for them. Each read is a round trip to a network
 * HSM; on the event loop, a few dozen of them every two seconds held every call (hsm-reader.ts).
 */
import { parentPort, workerData } from "node:worker_threads";
import { Session, type Slot } from "graphene-pk11";
import { handleLoggedIn, loadModule } from "./hsm-token.js";
import { readTokenState } from "./key-state.js";
import { ckrOf } from "./pkcs11-errors.js";
import type { ReaderAnswer, ReaderRequest, SessionLook } from "./hsm-reader.js";
import { scanToken, tokenFingerprint } from "./token-scan.js";

// The main thread initialized the module; this only takes a reference (notes, trap 6).
const lib = loadModule((workerData as { modulePath: string }).modulePath).lib;

/** A handle that came through postMessage (a Uint8Array) as the Buffer pkcs11js wants. */
const handle = (h: Uint8Array): Buffer => Buffer.from(h.buffer, h.byteOffset, h.byteLength);
/** A session the main thread owns, for graphene's object reads (no slot is needed for those). */
const session = (h: Uint8Array): Session => new Session(handle(h), undefined as unknown as Slot, lib);
const failure = (e: unknown): { message: string; code: number | undefined } => ({ message: e instanceof Error ? e.message : String(e), code: ckrOf(e) });

function answer(r: ReaderRequest): unknown {
  switch (r.op) {
    case "probe":
      lib.C_GetTokenInfo(handle(r.slot));
      return undefined;
    case "sessions":
      return r.sessions.map((s): SessionLook => {
        try {
          return { loggedIn: handleLoggedIn(lib, handle(s)) };
        } catch (e) {
          return { error: failure(e) };
        }
      });
    case "fingerprint": {
      const s = session(r.session);
      return tokenFingerprint(s, readTokenState(s));
    }
    case "scan":
      return scanToken(session(r.session));
  }
}

parentPort?.on("message", (r: ReaderRequest) => {
  let a: ReaderAnswer;
  try {
    a = { id: r.id, value: answer(r) };
  } catch (e) {
    a = { id: r.id, error: failure(e) };
  }
  parentPort?.postMessage(a);
});
parentPort?.postMessage({ ready: true });
