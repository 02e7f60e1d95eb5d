import { main } from "../plugin/main.js";

// Last resort: whatever escapes still leaves exactly one JSON error on stderr (contract §1.5).
let failed = false;
const die = (e: unknown): void => {
  if (failed) return;
  failed = true;
  process.stderr.write(JSON.stringify({ errorCode: "ERROR", errorMessage: `unexpected failure: ${e instanceof Error ? e.message : String(e)}` }));
  process.exit(1);
};
process.on("uncaughtException", die);
process.on("unhandledRejection", die);

// exitCode rather than exit(): stdout to a pipe is written asynchronously.
main(process.argv.slice(2)).then((code) => {
  process.exitCode = code;
}, die);
