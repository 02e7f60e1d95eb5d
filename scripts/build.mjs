// Builds dist/: the TypeScript (tsc), the hsm-signer launcher, and the self-contained plugin
// executable dist/plugin/notation-hsm-signer (esbuild bundle, no node_modules needed).
// With --if-changed (the quick start) nothing is done when dist/.build-stamp holds the hash of
// every input of the last complete build: src/, test/, this script, package.json,
// package-lock.json and tsconfig.json.
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

// fileURLToPath, not .pathname: a checkout under a path with a space would read "%20".
const root = fileURLToPath(new URL("..", import.meta.url));
const pkg = JSON.parse(readFileSync(`${root}package.json`, "utf8"));
const STAMP = `${root}dist/.build-stamp`;

/** sha256 over the inputs' relative paths and contents, in a fixed order. */
function inputsHash() {
  const h = createHash("sha256");
  const add = (rel) => {
    h.update(`${rel}\0`);
    h.update(readFileSync(`${root}${rel}`));
    h.update("\0");
  };
  const walk = (rel) => {
    for (const e of readdirSync(`${root}${rel}`, { withFileTypes: true }).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
      if (e.isDirectory()) walk(`${rel}/${e.name}`);
      else if (e.isFile()) add(`${rel}/${e.name}`);
    }
  };
  for (const dir of ["src", "test"]) walk(dir);
  for (const file of ["scripts/build.mjs", "package.json", "package-lock.json", "tsconfig.json"]) add(file);
  return h.digest("hex");
}

const hash = inputsHash();
if (process.argv.includes("--if-changed") && existsSync(STAMP) && readFileSync(STAMP, "utf8").trim() === hash) {
  console.log("dist/ is up to date (its sources have not changed since the last build)");
  process.exit(0);
}
rmSync(`${root}dist`, { recursive: true, force: true });
execFileSync(process.execPath, [`${root}node_modules/typescript/bin/tsc`, "-p", `${root}tsconfig.json`], { stdio: "inherit" });

writeFileSync(`${root}dist/hsm-signer`, '#!/usr/bin/env node\nimport "./src/bin/hsm-signer.js";\n');
chmodSync(`${root}dist/hsm-signer`, 0o755);

mkdirSync(`${root}dist/plugin`, { recursive: true });
// The bundle is CommonJS; this keeps the project's "type":"module" from applying to it here.
writeFileSync(`${root}dist/plugin/package.json`, '{ "type": "commonjs" }\n');
await build({
  entryPoints: [`${root}src/bin/notation-hsm-signer.ts`],
  outfile: `${root}dist/plugin/notation-hsm-signer`,
  bundle: true,
  platform: "node",
  target: "node20",
  format: "cjs",
  minify: true,
  legalComments: "none",
  // If a parent package.json says "type":"module" (NOTATION_LIBEXEC can put the plugin anywhere),
  // Node runs this file as ESM, where require is missing: the bundle only needs built-ins.
  banner: { js: '#!/usr/bin/env node\nvar require = typeof require === "function" ? require : process.getBuiltinModule;' },
  define: { __PLUGIN_VERSION__: JSON.stringify(pkg.version) },
  logLevel: "warning",
});
chmodSync(`${root}dist/plugin/notation-hsm-signer`, 0o755);
// Last: an interrupted build leaves no stamp, so --if-changed builds again.
writeFileSync(STAMP, `${hash}\n`);
