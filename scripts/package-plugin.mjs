// Packages the built plugin for `notation plugin install --file`: a .tar.gz holding only the
// executable notation-hsm-signer (one executable per archive, as notation expects), and its sha256.
// Reproducible: the same dist/plugin/notation-hsm-signer gives the same bytes on every run and
// every machine, so the printed --sha256sum only changes when the plugin does. The archive is
// written here rather than by tar and gzip, whose versions and defaults (entry order, owner
// names, mtimes, the gzip header's time) vary: one ustar entry, fixed owner 0:0, mode 0755,
// mtime SOURCE_DATE_EPOCH (default 0), then gzip with a zero header time.
//
// --standalone also packages notation-hsm-signer_<version>_linux_<arch>.tar.gz: the same plugin
// as a Node single executable application (this Node's binary with the bundle injected by
// postject), for hosts without Node, such as a CI job that only has notation. It is as
// reproducible as the Node that builds it: the same Node binary gives the same bytes.
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { constants, gzipSync } from "node:zlib";

// fileURLToPath, not .pathname: a checkout under a path with a space would read "%20".
const root = fileURLToPath(new URL("..", import.meta.url));
const { version } = JSON.parse(readFileSync(`${root}package.json`, "utf8"));
const standalone = process.argv.includes("--standalone");
const mtime = Number.parseInt(process.env.SOURCE_DATE_EPOCH ?? "0", 10) || 0;

/** One ustar header block (POSIX.1-1988) for a regular file. */
function ustarHeader(file, size) {
  const h = Buffer.alloc(512);
  const field = (offset, length, value) => h.write(value, offset, length, "ascii");
  const octal = (offset, length, n) => field(offset, length, `${n.toString(8).padStart(length - 1, "0")}\0`);
  field(0, 100, file);
  octal(100, 8, 0o755); // mode
  octal(108, 8, 0); // uid
  octal(116, 8, 0); // gid
  octal(124, 12, size);
  octal(136, 12, mtime);
  field(148, 8, "        "); // the checksum counts its own field as spaces
  field(156, 1, "0"); // regular file
  field(257, 6, "ustar\0");
  field(263, 2, "00");
  field(265, 32, "root"); // uname
  field(297, 32, "root"); // gname
  let sum = 0;
  for (const b of h) sum += b;
  field(148, 8, `${sum.toString(8).padStart(6, "0")}\0 `);
  return h;
}

/** Writes dist/<name> holding the one executable `body` as notation-hsm-signer, and its .sha256. */
function pack(name, body) {
  const out = `${root}dist/${name}`;
  const pad = Buffer.alloc((512 - (body.length % 512)) % 512);
  // Two zero blocks end the archive; GNU tar pads to a 10240-byte record, which readers do not need.
  const tar = Buffer.concat([ustarHeader("notation-hsm-signer", body.length), body, pad, Buffer.alloc(1024)]);
  // Node's zlib writes a gzip header with time 0 and no file name.
  const gz = gzipSync(tar, { level: constants.Z_BEST_COMPRESSION });
  writeFileSync(out, gz);
  const sum = createHash("sha256").update(gz).digest("hex");
  writeFileSync(`${out}.sha256`, `${sum}  ${name}\n`);
  console.log(`${out}\nsha256 ${sum}`);
}

const bundle = `${root}dist/plugin/notation-hsm-signer`;
pack(`notation-hsm-signer_${version}.tar.gz`, readFileSync(bundle));

if (standalone) {
  if (process.platform !== "linux") throw new Error("--standalone packages a Linux executable: run it on Linux");
  const dir = `${root}dist/plugin-standalone`;
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const exe = `${dir}/notation-hsm-signer`;
  // Relative names, run from dir: the blob records the main script's path as given.
  copyFileSync(bundle, `${dir}/plugin.js`);
  writeFileSync(`${dir}/sea-config.json`, JSON.stringify({ main: "plugin.js", output: "sea.blob", disableExperimentalSEAWarning: true }));
  execFileSync(process.execPath, ["--experimental-sea-config", "sea-config.json"], { cwd: dir, stdio: "ignore" });
  copyFileSync(process.execPath, exe);
  const { inject } = await import("postject");
  // The fuse Node's binary carries for this (Node's single-executable-applications documentation).
  await inject(exe, "NODE_SEA_BLOB", readFileSync(`${dir}/sea.blob`), { sentinelFuse: "NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2" });
  const arch = { x64: "amd64", arm64: "arm64" }[process.arch] ?? process.arch;
  pack(`notation-hsm-signer_${version}_linux_${arch}.tar.gz`, readFileSync(exe));
}
