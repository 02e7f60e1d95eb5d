import { randomBytes } from "node:crypto";
import { execFileSync } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { initToken } from "../../src/hsm/index.js";

export const PROJECT_ROOT = fileURLToPath(new URL("../../../", import.meta.url));

export function softHsmModule(): string {
  return execFileSync("bash", [join(PROJECT_ROOT, "scripts/find-softhsm.sh")], { encoding: "utf8" }).trim();
}

export interface SoftHsmToken {
  dir: string;
  conf: string;
  module: string;
  label: string;
  pin: string;
  pinFile: string;
  cleanup(): void;
}

/**
 * A fresh SoftHSM2 token in a temporary directory. SOFTHSM2_CONF is set for this process (it is
 * read at C_Initialize, so before any other PKCS#11 use) and for the child processes it starts.
 */
export function createSoftHsmToken(label = "hsm-signer-test"): SoftHsmToken {
  const dir = mkdtempSync(join(tmpdir(), "hsm-signer-test-"));
  mkdirSync(join(dir, "tokens"));
  const conf = join(dir, "softhsm2.conf");
  writeFileSync(conf, `directories.tokendir = ${dir}/tokens\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`);
  process.env.SOFTHSM2_CONF = conf;
  const pin = randomBytes(8).toString("hex");
  const pinFile = join(dir, "pin");
  writeFileSync(pinFile, `${pin}\n`, { mode: 0o600 });
  const module = softHsmModule();
  initToken(module, label, randomBytes(8).toString("hex"), pin);
  return { dir, conf, module, label, pin, pinFile, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}
