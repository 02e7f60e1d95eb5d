import { main } from "../plugin/main.js";

// exitCode rather than exit(): stdout to a pipe is written asynchronously.
main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  () => {
    process.exitCode = 1;
  },
);
