import { fork, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { digest as hashBytes, keySpecInfo, type KeySpec } from "../../src/signing/key-spec.js";
import { keyIdOf } from "../helpers/fixture.js";
import { PROJECT_ROOT } from "../helpers/softhsm.js";
import type { LoadResult } from "./load.js";
import type { LoadRequest } from "./load-client.js";

export type { LoadRequest };

/** What a load of Sign calls sends and checks: a digest made with the spec's hash, the fixture's key of that spec, its signature length. */
export function signLoad(spec: KeySpec): Pick<LoadRequest, "req" | "signatureLength"> {
  const info = keySpecInfo(spec);
  return {
    req: { keyId: keyIdOf(spec), digest: hashBytes(info.hash, randomBytes(64)).toString("base64"), hashAlgorithm: info.hash, keySpec: spec },
    signatureLength: info.signatureLength,
  };
}

/**
 * The load client process (load-client.ts), started once and given one load at a time, so that
 * every row after the first is measured with a client V8 has already optimized. One load runs at
 * a time; a load that does not answer within its bound kills the process and fails.
 */
export class WarmLoadClient {
  private child: ChildProcess | undefined;
  private waiting: { resolve: (r: LoadResult) => void; reject: (e: Error) => void } | undefined;
  private queue: Promise<unknown> = Promise.resolve();

  /** The process's id while it runs. */
  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** Runs one load (after the previous one has ended); `timeoutMs` bounds it from its start. */
  run(req: LoadRequest, timeoutMs = req.warmupMs + req.durationMs + 120_000): Promise<LoadResult> {
    const next = this.queue.then(() => this.runNow(req, timeoutMs));
    this.queue = next.catch(() => undefined);
    return next;
  }

  private runNow(req: LoadRequest, timeoutMs: number): Promise<LoadResult> {
    const child = this.start();
    return new Promise<LoadResult>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiting = undefined;
        // Forgotten at once: the next load starts a new process, whenever this one's exit comes.
        if (this.child === child) this.child = undefined;
        child.kill("SIGKILL");
        reject(new Error(`the load client did not answer within ${timeoutMs} ms`));
      }, timeoutMs);
      const done =
        <T>(f: (v: T) => void) =>
        (v: T): void => {
          clearTimeout(timer);
          this.waiting = undefined;
          f(v);
        };
      this.waiting = { resolve: done(resolve), reject: done(reject) };
      child.send(req);
    });
  }

  private start(): ChildProcess {
    if (this.child) return this.child;
    const child = fork(join(PROJECT_ROOT, "dist/test/bench/load-client.js"), [], { stdio: ["ignore", "ignore", "inherit", "ipc"] });
    child.on("message", (m: { result?: LoadResult; error?: string }) => {
      if (this.child !== child) return;
      if (m.result) this.waiting?.resolve(m.result);
      else this.waiting?.reject(new Error(`load client: ${m.error ?? "no result"}`));
    });
    child.on("exit", (code, signal) => {
      if (this.child !== child) return;
      this.child = undefined;
      this.waiting?.reject(new Error(`the load client exited (${code ?? signal}) during a load`));
    });
    child.on("error", (e) => {
      if (this.child === child) this.waiting?.reject(new Error(`the load client: ${e.message}`));
    });
    this.child = child;
    return child;
  }

  /** Ends the process: it closes its connections and exits; killed if it has not after 5 s. */
  async close(): Promise<void> {
    const child = this.child;
    this.child = undefined;
    if (!child || child.exitCode !== null) return;
    const exited = new Promise<void>((r) => child.once("exit", () => r()));
    child.disconnect();
    const timer = setTimeout(() => child.kill("SIGKILL"), 5000);
    await exited;
    clearTimeout(timer);
  }
}
