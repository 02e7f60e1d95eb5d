import { spawn } from "node:child_process";
import { closeSync, constants, openSync, writeSync } from "node:fs";
import { performance } from "node:perf_hooks";

export interface ProcessResult {
  /** Exit code; null when the process was killed by a signal. */
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  /** Wall-clock time from spawn to "close" (exit and streams drained), ms. */
  ms: number;
  timedOut: boolean;
}

/**
 * Spawns a process without blocking the event loop, writes `input` to its stdin (no trailing
 * newline) and closes it, collects stdout and stderr to the end, and kills it after timeoutMs.
 * With holdStdin, `input` is ignored: stdin (a pipe) stays open with nothing written until the
 * process has exited.
 */
export function spawnCollect(
  file: string,
  args: string[],
  input: string,
  o: {
    env?: NodeJS.ProcessEnv;
    timeoutMs: number;
    holdStdin?: boolean;
    /**
     * A FIFO to give as stdin, holding `input` and then its end: a pipe, as Go's os/exec gives
     * notation's plugins, where Node's spawn gives a socket. `input` must fit the pipe's buffer.
     */
    stdinFifo?: string;
  },
): Promise<ProcessResult> {
  let stdinFd: number | undefined;
  if (o.stdinFifo !== undefined) {
    if (Buffer.byteLength(input) > 60 * 1024) throw new Error("spawnCollect: stdinFifo takes at most 60 KiB of input");
    // A blocking read end, as Go gives it: opened once a writer holds the FIFO (so the open does not wait).
    const opener = openSync(o.stdinFifo, constants.O_RDONLY | constants.O_NONBLOCK);
    const w = openSync(o.stdinFifo, constants.O_WRONLY);
    try {
      stdinFd = openSync(o.stdinFifo, constants.O_RDONLY);
      writeSync(w, input);
    } finally {
      closeSync(w);
      closeSync(opener);
    }
  }
  const started = performance.now();
  return new Promise<ProcessResult>((resolve, reject) => {
    const child = spawn(file, args, { env: o.env ?? process.env, stdio: [stdinFd ?? "pipe", "pipe", "pipe"] });
    if (stdinFd !== undefined) closeSync(stdinFd);
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill("SIGKILL");
    }, o.timeoutMs);
    child.stdout?.on("data", (c: Buffer) => out.push(c));
    child.stderr?.on("data", (c: Buffer) => err.push(c));
    child.on("error", (e) => {
      clearTimeout(timer);
      reject(e);
    });
    // A process may exit before reading stdin (a usage error); that is not a failure here.
    child.stdin?.on("error", () => undefined);
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      child.stdin?.destroy();
      resolve({ code, signal, stdout: Buffer.concat(out).toString("utf8"), stderr: Buffer.concat(err).toString("utf8"), ms: performance.now() - started, timedOut });
    });
    if (!o.holdStdin && stdinFd === undefined) child.stdin?.end(input);
  });
}
