import { closeSync, constants, fstatSync, openSync, readSync, writeSync } from "node:fs";
import { errorJson, PluginError } from "./contract.js";
import { describeKey, generateSignature, getPluginMetadata } from "./commands.js";

const COMMANDS = ["get-plugin-metadata", "describe-key", "generate-signature"] as const;
/** notation sends small documents; anything this large is not a request. */
const MAX_STDIN_BYTES = 64 * 1024 * 1024;

/** How long standard input may give nothing, neither data nor its end (the default of MainOptions.stdinIdleLimitMs). */
export const STDIN_IDLE_LIMIT_MS = 10_000;

export interface MainOptions {
  /**
   * The idle limit of standard input in ms, as given (bin/ reads HSM_SIGNER_PLUGIN_STDIN_IDLE_MS):
   * a whole number from 1 to 600000; STDIN_IDLE_LIMIT_MS when undefined or "".
   */
  stdinIdleLimitMs?: string;
}

function idleLimitOf(v: string | undefined): number {
  if (v === undefined || v === "") return STDIN_IDLE_LIMIT_MS;
  const ms = /^\d{1,6}$/.test(v) ? Number(v) : NaN;
  if (!(ms >= 1 && ms <= 600_000)) throw new PluginError("VALIDATION_ERROR", `HSM_SIGNER_PLUGIN_STDIN_IDLE_MS "${v.slice(0, 20)}" must be a whole number of ms from 1 to 600000`);
  return ms;
}

const idleError = (idleLimitMs: number): PluginError =>
  new PluginError("VALIDATION_ERROR", `no request on standard input for ${idleLimitMs / 1000} s, and it was not closed: notation writes its request and closes standard input`);
const tooLarge = (): PluginError => new PluginError("VALIDATION_ERROR", "the request on standard input is larger than 64 MiB");
const unreadable = (e: unknown): PluginError => new PluginError("VALIDATION_ERROR", `cannot read the request on standard input: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);

/** Sleeps a little before the next read of a non-blocking stdin: 1 ms at first, up to 20 ms; returns the ms slept. */
function waitForWriter(idleMs: number): number {
  const ms = Math.min(20, 1 + Math.floor(idleMs / 10));
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
  return ms;
}

/**
 * Reads `fd` to its end with synchronous reads: a regular file, or a pipe opened non-blocking
 * (a read never waits there: the idle limit is counted between reads that find nothing).
 */
function readToEnd(fd: number, idleLimitMs: number): string {
  const chunks: Buffer[] = [];
  let total = 0;
  let idleMs = 0;
  for (;;) {
    const chunk = Buffer.allocUnsafe(64 * 1024);
    let n: number;
    try {
      n = readSync(fd, chunk, 0, chunk.length, null);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === "EAGAIN") {
        // A writer that is behind (or has not written yet): wait for it, as a blocking read
        // would, but not forever: a writer that neither writes nor closes is an error.
        idleMs += waitForWriter(idleMs);
        if (idleMs >= idleLimitMs) throw idleError(idleLimitMs);
        continue;
      }
      if (code === "EOF") break;
      throw unreadable(e);
    }
    if (n === 0) break;
    idleMs = 0;
    total += n;
    // Checked as it comes: standard input could be endless.
    if (total > MAX_STDIN_BYTES) throw tooLarge();
    chunks.push(n === chunk.length ? chunk : chunk.subarray(0, n));
  }
  return Buffer.concat(chunks, total).toString("utf8");
}

/**
 * The pipe on fd 0 opened again, non-blocking: Linux opens /proc/self/fd/0 of a pipe as a new
 * open file description of the same pipe, with flags of its own (Node has no fcntl to make fd 0
 * non-blocking, and a flag set there would hold for every process sharing it). undefined where
 * that cannot be done: no /proc (macOS), a pipe of another user.
 */
function reopenNonBlocking(): number | undefined {
  try {
    return openSync("/proc/self/fd/0", constants.O_RDONLY | constants.O_NONBLOCK);
  } catch {
    return undefined;
  }
}

/**
 * Reads standard input through the event loop (process.stdin, libuv's non-blocking I/O) with a
 * timer for the idle limit: for a socket, or a pipe that cannot be opened again. It loads
 * node:net and the stream machinery, a few ms, so only these do: notation's pipe does not.
 */
function readStream(idleLimitMs: number): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let total = 0;
    let timer: NodeJS.Timeout | undefined;
    let done = false;
    const fail = (e: PluginError): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      reject(e);
    };
    const idle = (): void => {
      clearTimeout(timer);
      timer = setTimeout(() => fail(idleError(idleLimitMs)), idleLimitMs);
    };
    let stdin: NodeJS.ReadStream;
    try {
      stdin = process.stdin;
    } catch (e) {
      fail(unreadable(e));
      return;
    }
    stdin.on("data", (c: Buffer) => {
      if (done) return;
      total += c.length;
      if (total > MAX_STDIN_BYTES) return fail(tooLarge());
      chunks.push(c);
      idle();
    });
    stdin.once("end", () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      resolve(Buffer.concat(chunks, total).toString("utf8"));
    });
    stdin.once("error", (e) => fail(unreadable(e)));
    idle();
  });
}

/**
 * Reads the request to the end of standard input, never waiting longer than the idle limit for
 * data or the end (notation writes its request and closes standard input, §1.5, so only another
 * caller ever meets it). Not a synchronous read of fd 0 as it comes: on a blocking pipe or
 * socket whose writer neither writes nor closes it would wait forever, where no timer runs.
 * Not process.stdin for everything: it loads the stream and net machinery, milliseconds of
 * start-up on each of notation's three calls.
 */
function readStdin(idleLimitMs: number): string | Promise<string> {
  const st = fstatSync(0);
  // A terminal (someone trying the plugin by hand) sends nothing; fstat avoids loading tty/net.
  if (st.isCharacterDevice()) return "";
  // A regular file: a read never waits.
  if (!st.isFIFO() && !st.isSocket()) return readToEnd(0, idleLimitMs);
  const fd = st.isFIFO() ? reopenNonBlocking() : undefined;
  if (fd === undefined) return readStream(idleLimitMs);
  try {
    return readToEnd(fd, idleLimitMs);
  } finally {
    closeSync(fd);
  }
}

/**
 * Writes the whole text to fd 1 or 2 synchronously, so the process may exit right after: no
 * process.stdout stream (which would load the net machinery for a pipe), no pending write.
 */
export function writeAll(fd: 1 | 2, text: string): void {
  const data = Buffer.from(text, "utf8");
  let off = 0;
  while (off < data.length) {
    try {
      off += writeSync(fd, data, off, data.length - off);
    } catch (e) {
      // A non-blocking pipe whose reader is behind: wait for it rather than lose the answer.
      if ((e as NodeJS.ErrnoException).code !== "EAGAIN") throw e;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1);
    }
  }
}

function parseRequest(text: string, command: string): Record<string, unknown> {
  if (text.trim() === "") {
    if (command === "get-plugin-metadata") return {};
    throw new PluginError("VALIDATION_ERROR", `${command}: the request on standard input is empty; notation sends a JSON object`);
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new PluginError("VALIDATION_ERROR", `${command}: the request on standard input is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw new PluginError("VALIDATION_ERROR", `${command}: the request must be a JSON object`);
  return v as Record<string, unknown>;
}

/**
 * The plugin process: one command, one JSON response on stdout and exit 0, or one error object
 * on stderr and exit 1; nothing else is ever written to either stream (§1.5). Both are written
 * synchronously before this resolves.
 */
export async function main(argv: string[], o: MainOptions = {}): Promise<number> {
  let out: Record<string, unknown>;
  try {
    const command = argv[0] ?? "";
    if (argv.length !== 1 || !(COMMANDS as readonly string[]).includes(command)) {
      throw new PluginError("VALIDATION_ERROR", `usage: notation-hsm-signer <${COMMANDS.join("|")}> with the request on standard input (got: ${argv.join(" ") || "no command"})`);
    }
    const req = parseRequest(await readStdin(idleLimitOf(o.stdinIdleLimitMs)), command);
    if (command === "get-plugin-metadata") out = getPluginMetadata();
    else if (command === "describe-key") out = await describeKey(req);
    else out = await generateSignature(req);
  } catch (e) {
    const err = e instanceof PluginError ? e : new PluginError("ERROR", `unexpected failure: ${e instanceof Error ? e.message : String(e)}`);
    writeAll(2, errorJson(err.errorCode, err.message));
    return 1;
  }
  writeAll(1, JSON.stringify(out));
  return 0;
}
