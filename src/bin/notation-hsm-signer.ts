import { main, writeAll } from "../plugin/main.js";

// Last resort: whatever escapes still leaves exactly one JSON error on stderr (contract §1.5).
let failed = false;
const die = (e: unknown): void => {
  if (failed) return;
  failed = true;
  writeAll(2, JSON.stringify({ errorCode: "ERROR", errorMessage: `unexpected failure: ${e instanceof Error ? e.message : String(e)}` }));
  process.exit(1);
};
process.on("uncaughtException", die);
process.on("unhandledRejection", die);

// The answer is already written (synchronously): exit now rather than wait for the TLS session
// to close gracefully, a few ms of each of notation's three calls.
main(process.argv.slice(2)).then((code) => process.exit(code), die);
