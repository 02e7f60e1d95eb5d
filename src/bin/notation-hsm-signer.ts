// First: nothing but the one JSON object may reach stderr (see quiet-process.ts).
import "../plugin/quiet-process.js";
import { errorJson } from "../plugin/contract.js";
import { main, writeAll } from "../plugin/main.js";

// Last resort: whatever escapes still leaves exactly one JSON error on stderr (contract §1.5),
// with no stack trace.
let failed = false;
const die = (e: unknown): void => {
  if (failed) return;
  failed = true;
  let what = "unknown";
  try {
    what = e instanceof Error ? e.message : String(e);
  } catch {
    // an object without a usable string form
  }
  try {
    writeAll(2, errorJson("ERROR", `unexpected failure: ${what}`));
  } finally {
    process.exit(1);
  }
};
process.on("uncaughtException", die);
process.on("unhandledRejection", die);

// The answer is already written (synchronously): exit now rather than wait for the TLS session
// to close gracefully, a few ms of each of notation's three calls.
// It also ends a read of standard input (a socket's, on the event loop) left open at its idle limit.
main(process.argv.slice(2), { stdinIdleLimitMs: process.env.HSM_SIGNER_PLUGIN_STDIN_IDLE_MS }).then((code) => process.exit(code), die);
