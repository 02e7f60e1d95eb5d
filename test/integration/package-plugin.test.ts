import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { appendFileSync, cpSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { gunzipSync } from "node:zlib";
import { PROJECT_ROOT } from "../helpers/softhsm.js";

const run = promisify(execFile);
const { version } = JSON.parse(readFileSync(join(PROJECT_ROOT, "package.json"), "utf8")) as { version: string };
const PACKAGE = `dist/notation-hsm-signer_${version}.tar.gz`;

/** Runs scripts/package-plugin.mjs in a project folder and returns the package's sha256 (checked against its .sha256 file). */
async function packagePlugin(root: string): Promise<string> {
  await run(process.execPath, [join(root, "scripts/package-plugin.mjs")], { timeout: 60_000 });
  const sum = createHash("sha256")
    .update(readFileSync(join(root, PACKAGE)))
    .digest("hex");
  assert.equal(readFileSync(join(root, `${PACKAGE}.sha256`), "utf8"), `${sum}  notation-hsm-signer_${version}.tar.gz\n`);
  return sum;
}

/**
 * Every quick start used to rebuild dist/ and the plugin package's sha256 changed each time (tar
 * stored the new file's mtime), so the printed `notation plugin install --sha256sum` changed too.
 */
describe("the plugin package is reproducible and an unchanged build is not redone", function () {
  this.timeout(600_000); // two full builds (tsc + esbuild) on a loaded 2-core machine
  let copy: string;

  before(() => {
    // A second checkout of the same sources in another folder, built at another time.
    copy = mkdtempSync(join(tmpdir(), "hsm-signer-rebuild-"));
    for (const p of ["src", "test", "scripts", "proto", "package.json", "package-lock.json", "tsconfig.json"]) cpSync(join(PROJECT_ROOT, p), join(copy, p), { recursive: true });
    symlinkSync(join(PROJECT_ROOT, "node_modules"), join(copy, "node_modules"));
  });

  after(() => rmSync(copy, { recursive: true, force: true }));

  it("packaging twice gives the same bytes: one ustar entry, owner 0:0, mode 0755, mtime 0, gzip time 0", async () => {
    const first = await packagePlugin(PROJECT_ROOT);
    await new Promise((r) => setTimeout(r, 1100)); // a later second, for any clock that leaks in
    assert.equal(await packagePlugin(PROJECT_ROOT), first);
    const gz = readFileSync(join(PROJECT_ROOT, PACKAGE));
    assert.equal(gz.readUInt32LE(4), 0, "gzip header time");
    const tar = gunzipSync(gz);
    const field = (offset: number, length: number): string =>
      tar
        .subarray(offset, offset + length)
        .toString("latin1")
        .replace(/[\0 ]+$/, "");
    assert.equal(field(0, 100), "notation-hsm-signer");
    assert.equal(field(100, 8), "0000755");
    assert.equal(field(108, 8), "0000000");
    assert.equal(field(116, 8), "0000000");
    assert.equal(field(136, 12), "00000000000");
    assert.equal(field(156, 1), "0");
    const size = Number.parseInt(field(124, 12), 8);
    assert.deepEqual(tar.subarray(512, 512 + size), readFileSync(join(PROJECT_ROOT, "dist/plugin/notation-hsm-signer")));
    // Nothing after the one entry but the end-of-archive zero blocks.
    assert.ok(tar.subarray(512 + Math.ceil(size / 512) * 512).every((b) => b === 0));
  });

  it("a fresh build of the same sources elsewhere packages to the same sha256", async () => {
    await run(process.execPath, [join(copy, "scripts/build.mjs")], { cwd: copy, timeout: 300_000 });
    assert.equal(await packagePlugin(copy), await packagePlugin(PROJECT_ROOT));
  });

  it("build.mjs --if-changed leaves an up-to-date dist/ alone and rebuilds after a source changes", async () => {
    const plugin = join(copy, "dist/plugin/notation-hsm-signer");
    const built = statSync(plugin).mtimeMs;
    const same = await run(process.execPath, [join(copy, "scripts/build.mjs"), "--if-changed"], { cwd: copy, timeout: 300_000 });
    assert.match(same.stdout, /dist\/ is up to date/);
    assert.equal(statSync(plugin).mtimeMs, built, "dist/ was rebuilt although nothing changed");
    appendFileSync(join(copy, "src/bin/notation-hsm-signer.ts"), "\n// changed\n");
    const changed = await run(process.execPath, [join(copy, "scripts/build.mjs"), "--if-changed"], { cwd: copy, timeout: 300_000 });
    assert.doesNotMatch(changed.stdout, /up to date/);
    assert.notEqual(statSync(plugin).mtimeMs, built, "a changed source did not rebuild dist/");
  });
});
