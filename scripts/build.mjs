// Builds dist/: the TypeScript (tsc), the hsm-signer launcher, and the self-contained plugin
// executable dist/plugin/notation-hsm-signer (esbuild bundle, no node_modules needed).
import { execFileSync } from "node:child_process";
import { chmodSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { build } from "esbuild";

const root = new URL("..", import.meta.url).pathname;
const pkg = JSON.parse(readFileSync(`${root}package.json`, "utf8"));
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
