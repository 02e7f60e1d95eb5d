// Packages the built plugin for `notation plugin install --file`: a .tar.gz holding only the
// executable notation-hsm-signer, and its sha256 (notation-plugin-protocol.md §1.3).
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";

const root = new URL("..", import.meta.url).pathname;
const { version } = JSON.parse(readFileSync(`${root}package.json`, "utf8"));
const out = `${root}dist/notation-hsm-signer_${version}.tar.gz`;
execFileSync("tar", ["--owner=0", "--group=0", "--numeric-owner", "--mode=0755", "-czf", out, "-C", `${root}dist/plugin`, "notation-hsm-signer"]);
const sum = createHash("sha256").update(readFileSync(out)).digest("hex");
writeFileSync(`${out}.sha256`, `${sum}  notation-hsm-signer_${version}.tar.gz\n`);
console.log(`${out}\nsha256 ${sum}`);
