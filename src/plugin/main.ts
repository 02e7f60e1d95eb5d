import { fstatSync, readSync, writeSync } from "node:fs";
import { errorJson, PluginError } from "./contract.js";
import { describeKey, generateSignature, getPluginMetadata } from "./commands.js";

const COMMANDS = ["get-plugin-metadata", "describe-key", "generate-signature"] as const;
/** notation sends small documents; anything this large is not a request. */
const MAX_STDIN_BYTES = 64 * 1024 * 1024;

/** How long a non-blocking standard input may give nothing, neither data nor its end. */
const STDIN_IDLE_LIMIT_MS = 10_000;

/** Sleeps a little before the next read of a non-blocking stdin: 1 ms at first, up to 20 ms; returns the ms slept. */
function waitForWriter(idleMs: number): number {
  const ms = Math.min(20, 1 + Math.floor(idleMs / 10));
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
  return ms;
}

/**
 * Reads the request with one synchronous read of fd 0: process.stdin would load the stream and
 * net machinery, milliseconds of start-up on each of notation's three calls.
 */
function readStdin(): string {
  // A terminal (someone trying the plugin by hand) sends nothing; fstat avoids loading tty/net.
  if (fstatSync(0).isCharacterDevice()) return "";
  const chunks: Buffer[] = [];
  let total = 0;
  let idleMs = 0;
  for (;;) {
    const chunk = Buffer.allocUnsafe(64 * 1024);
    let n: number;
    try {
      n = readSync(0, chunk, 0, chunk.length, null);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === "EAGAIN") {
        // A non-blocking pipe whose writer is behind (or has not written yet): wait for it, as a
        // blocking read would, but not forever: a writer that neither writes nor closes is an error.
        idleMs += waitForWriter(idleMs);
        if (idleMs >= STDIN_IDLE_LIMIT_MS) {
          throw new PluginError("VALIDATION_ERROR", `no request on standard input for ${STDIN_IDLE_LIMIT_MS / 1000} s, and it was not closed: notation writes its request and closes standard input`);
        }
        continue;
      }
      if (code === "EOF") break;
      throw new PluginError("VALIDATION_ERROR", `cannot read the request on standard input: ${code ?? (e as Error).message}`);
    }
    if (n === 0) break;
    idleMs = 0;
    total += n;
    // Checked as it comes: standard input could be endless.
    if (total > MAX_STDIN_BYTES) throw new PluginError("VALIDATION_ERROR", "the request on standard input is larger than 64 MiB");
    chunks.push(n === chunk.length ? chunk : chunk.subarray(0, n));
  }
  return Buffer.concat(chunks, total).toString("utf8");
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
export async function main(argv: string[]): Promise<number> {
  let out: Record<string, unknown>;
  try {
    const command = argv[0] ?? "";
    if (argv.length !== 1 || !(COMMANDS as readonly string[]).includes(command)) {
      throw new PluginError("VALIDATION_ERROR", `usage: notation-hsm-signer <${COMMANDS.join("|")}> with the request on standard input (got: ${argv.join(" ") || "no command"})`);
    }
    const req = parseRequest(readStdin(), command);
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
