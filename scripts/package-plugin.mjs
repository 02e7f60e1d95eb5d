// Packages the built plugin for `notation plugin install --file`: a .tar.gz holding only the
// executable notation-hsm-signer (one executable per archive, as notation expects), and its sha256.
// Reproducible: the same dist/plugin/notation-hsm-signer gives the same bytes on every run and
// every machine, so the printed --sha256sum only changes when the plugin does. The archive is
// written here rather than by tar and gzip, whose versions and defaults (entry order, owner
// names, mtimes, the gzip header's time) vary: one ustar entry, fixed owner 0:0, mode 0755,
// mtime SOURCE_DATE_EPOCH (default 0), then gzip with a zero header time.
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { constants, gzipSync } from "node:zlib";

const root = new URL("..", import.meta.url).pathname;
const { version } = JSON.parse(readFileSync(`${root}package.json`, "utf8"));
const name = `notation-hsm-signer_${version}.tar.gz`;
const out = `${root}dist/${name}`;
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

const body = readFileSync(`${root}dist/plugin/notation-hsm-signer`);
const pad = Buffer.alloc((512 - (body.length % 512)) % 512);
// Two zero blocks end the archive; GNU tar pads to a 10240-byte record, which readers do not need.
const tar = Buffer.concat([ustarHeader("notation-hsm-signer", body.length), body, pad, Buffer.alloc(1024)]);
// Node's zlib writes a gzip header with time 0 and no file name.
const gz = gzipSync(tar, { level: constants.Z_BEST_COMPRESSION });
writeFileSync(out, gz);
const sum = createHash("sha256").update(gz).digest("hex");
writeFileSync(`${out}.sha256`, `${sum}  ${name}\n`);
console.log(`${out}\nsha256 ${sum}`);
