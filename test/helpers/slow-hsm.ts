import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PROJECT_ROOT } from "./softhsm.js";

/** One traced PKCS#11 call: the thread that made it. */
export interface TracedCall {
  tid: number;
  fn: string;
}

/**
 * SoftHSM behind test/fixtures/slow-pkcs11/slow-pkcs11.c: a network HSM whose calls take as long
 * as the test says, and which records the thread of each call. The module is built with the
 * machine's C compiler (scripts/install-system-deps.sh installs it) into a temporary folder.
 */
export interface SlowHsm {
  /** The module to load instead of SoftHSM's. */
  module: string;
  /** The variables the module reads; this process has them already, a child process needs them. */
  env: Record<string, string>;
  /** From now on these calls (all of the traced ones when none are named) take `ms` each; 0 ends the delay, also of calls waiting. */
  delay(ms: number, calls?: string[]): void;
  trace(): TracedCall[];
  clearTrace(): void;
  cleanup(): void;
}

export function slowHsm(realModule: string): SlowHsm {
  const dir = mkdtempSync(join(tmpdir(), "slow-pkcs11-"));
  const module = join(dir, "libslowpkcs11.so");
  execFileSync("cc", ["-shared", "-fPIC", "-O2", "-I", join(PROJECT_ROOT, "node_modules/pkcs11js/includes/pkcs11"), "-o", module, join(PROJECT_ROOT, "test/fixtures/slow-pkcs11/slow-pkcs11.c")], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  const delayFile = join(dir, "delay");
  const traceFile = join(dir, "trace");
  writeFileSync(delayFile, "0");
  writeFileSync(traceFile, "");
  const env = { SLOW_PKCS11_MODULE: realModule, SLOW_PKCS11_DELAY_FILE: delayFile, SLOW_PKCS11_TRACE_FILE: traceFile };
  Object.assign(process.env, env);
  return {
    module,
    env,
    delay: (ms, calls) => writeFileSync(delayFile, calls?.length ? `${ms} ${calls.join(",")}` : String(ms)),
    trace: () =>
      readFileSync(traceFile, "utf8")
        .split("\n")
        .filter(Boolean)
        .map((l) => {
          const [tid, fn] = l.split(" ");
          return { tid: Number(tid), fn: fn ?? "" };
        }),
    clearTrace: () => writeFileSync(traceFile, ""),
    cleanup: () => {
      writeFileSync(delayFile, "0");
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
