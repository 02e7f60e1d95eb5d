import { SignerError } from "../errors/index.js";

/**
 * Lets HSM object operations (calls that find, read, create or destroy objects) through one at a
 * time, in the order they came. SoftHSM is not safe with C_FindObjects on one session while
 * C_GenerateKeyPair runs on another in a libuv thread: about 1 generation in 10 failed with
 * CKR_GENERAL_ERROR, and finds with CKR_OBJECT_HANDLE_INVALID. Synchronous calls cannot overlap
 * on the event loop anyway; a key generation holds the others back for its duration. Signatures
 * never pass through here.
 */
export class ObjectGate {
  /** Whether an operation runs; the next ones wait in order. */
  private running = false;
  private readonly waiting: (() => void)[] = [];

  /**
   * Runs `fn` once the operations before it are done; DEADLINE_EXCEEDED when `deadline` (ms since
   * epoch) passes first. When the gate is free, `fn` starts in this very turn of the event loop
   * (the session pool admits the rescan of a recovery only while that rescan starts). Do not call
   * run() inside `fn`: it would wait for itself.
   */
  async run<T>(fn: () => T | Promise<T>, deadline?: number): Promise<T> {
    if (this.running) await this.turn(deadline);
    else this.running = true;
    try {
      return await fn();
    } finally {
      const next = this.waiting.shift();
      if (next) next();
      else this.running = false;
    }
  }

  /** Resolves when the running operation hands over to this one; DEADLINE_EXCEEDED at `deadline`. */
  private turn(deadline: number | undefined): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const go = (): void => {
        clearTimeout(timer);
        resolve();
      };
      this.waiting.push(go);
      // Called only after this statement (go runs in a later turn of the loop).
      const timer =
        deadline === undefined
          ? undefined
          : setTimeout(
              () => {
                const i = this.waiting.indexOf(go);
                if (i >= 0) this.waiting.splice(i, 1);
                reject(new SignerError("DEADLINE_EXCEEDED", "the deadline passed while another HSM object operation (a key generation?) was running"));
              },
              Math.max(0, deadline - Date.now()),
            );
    });
  }
}
