/**
 * A signing thread. C_SignInit and C_Sign run here, synchronously, on a session the main thread
 * took from the pool (PKCS#11 handles belong to the process, and the pool guarantees one thread
 * per session). On SoftHSM, C_SignInit alone costs about 0.1 ms (it unwraps the private key), so
 * keeping both calls off the event loop is what lets the gRPC edge keep up with EC keys.
 */
import { parentPort, workerData } from "node:worker_threads";
import pkcs11js from "pkcs11js";

export interface SignJob {
  id: number;
  session: Uint8Array;
  key: Uint8Array;
  mechanism: pkcs11js.Mechanism;
  data: Uint8Array;
  outLength: number;
}

export type SignReply = { id: number; signature: Uint8Array } | { id: number; error: { message: string; code: number | undefined } };

const CKR_CRYPTOKI_ALREADY_INITIALIZED = 0x191;
const CKF_OS_LOCKING_OK = 2;

const lib = new pkcs11js.PKCS11();
lib.load((workerData as { modulePath: string }).modulePath);
try {
  // The main thread initialized the module; this only takes a reference (notes, trap 6).
  lib.C_Initialize({ flags: CKF_OS_LOCKING_OK });
} catch (e) {
  if ((e as { code?: number }).code !== CKR_CRYPTOKI_ALREADY_INITIALIZED) throw e;
}

// Ready: the next thread may now load the addon (sign-threads.ts starts them one at a time).
parentPort?.postMessage({ ready: true });

const buf = (u: Uint8Array): Buffer => Buffer.from(u.buffer, u.byteOffset, u.byteLength);

parentPort?.on("message", (job: SignJob) => {
  let reply: SignReply;
  try {
    const session = buf(job.session);
    lib.C_SignInit(session, job.mechanism, buf(job.key));
    const signature = lib.C_Sign(session, buf(job.data), Buffer.alloc(job.outLength));
    reply = { id: job.id, signature };
  } catch (e) {
    reply = { id: job.id, error: { message: (e as Error).message, code: (e as { code?: number }).code } };
  }
  parentPort?.postMessage(reply);
});
