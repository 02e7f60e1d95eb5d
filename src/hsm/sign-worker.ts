/**
 * A signing thread. C_SignInit and C_Sign run here, synchronously, on a session the main thread
 * took from the pool (PKCS#11 handles belong to the process, and the pool guarantees one thread
 * per session). On SoftHSM, C_SignInit alone costs about 0.1 ms (it unwraps the private key), so
 * keeping both calls off the event loop is what lets the gRPC edge keep up with EC keys.
 *
 * Jobs and answers go through a shared memory mailbox (sign-mailbox.ts), not messages: the thread
 * sleeps in Atomics.wait between jobs and never runs an event loop, which took about as much CPU
 * per job as the EC-256 signature itself.
 */
import { workerData, parentPort } from "node:worker_threads";
import pkcs11js from "pkcs11js";
import { Doorbell, Mailbox, MailboxState } from "./sign-mailbox.js";

const CKR_CRYPTOKI_ALREADY_INITIALIZED = 0x191;
const CKF_OS_LOCKING_OK = 2;

const data = workerData as { modulePath: string; mailbox: SharedArrayBuffer; doorbell: SharedArrayBuffer };
const lib = new pkcs11js.PKCS11();
lib.load(data.modulePath);
try {
  // The main thread initialized the module; this only takes a reference (notes, trap 6).
  lib.C_Initialize({ flags: CKF_OS_LOCKING_OK });
} catch (e) {
  if ((e as { code?: number }).code !== CKR_CRYPTOKI_ALREADY_INITIALIZED) throw e;
}

const box = new Mailbox(data.mailbox, new Doorbell(data.doorbell));

// Ready: the next thread may now load the addon (sign-threads.ts starts them one at a time).
parentPort?.postMessage({ ready: true });

for (;;) {
  const state = box.waitForJob();
  if (state === MailboxState.STOP) break;
  if (state !== MailboxState.JOB) continue;
  try {
    const job = box.readJob();
    lib.C_SignInit(job.session, job.mechanism, job.key);
    const signature = lib.C_Sign(job.session, job.data, Buffer.alloc(job.outLength));
    box.reply(signature);
  } catch (e) {
    box.fail((e as Error).message, (e as { code?: number }).code);
  }
}
