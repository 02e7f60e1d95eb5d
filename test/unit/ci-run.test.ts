import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PROJECT_ROOT } from "../helpers/softhsm.js";

/**
 * .ci/run's summary: it runs the real .ci/run in a folder of its own, whose scripts/test.sh
 * prints what mocha would and exits as mocha would, and reads the last line and the exit code.
 */
describe(".ci/run summary line", () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), "hsm-signer-ci-run-"));
    mkdirSync(join(dir, ".ci"));
    mkdirSync(join(dir, "scripts"));
    copyFileSync(join(PROJECT_ROOT, ".ci/run"), join(dir, ".ci/run"));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  /** `output` is printed by the fake test.sh (which also prints its arguments), then it exits with `rc`. */
  function ciRun(output: string, rc: number): { last: string; status: number | null; args: string } {
    writeFileSync(join(dir, "scripts/test.sh"), `echo "args: $*"\nprintf '%b' '${output.replace(/'/g, "'\\''")}'\nexit ${rc}\n`);
    const r = spawnSync("bash", [join(dir, ".ci/run")], { encoding: "utf8", timeout: 30_000 });
    const lines = r.stdout.trimEnd().split("\n");
    return { last: lines.at(-1) ?? "", status: r.status, args: lines[0] ?? "" };
  }

  it("mocha's counts, exit 0 when every test passed", () => {
    const r = ciRun("\\n  12 passing (3s)\\n  2 pending\\n", 0);
    assert.equal(r.last, "12 passed, 0 failed");
    assert.equal(r.status, 0);
  });

  it("mocha's counts when its output is coloured (FORCE_COLOR)", () => {
    const r = ciRun("\\n\\x1b[92m \\x1b[0m\\x1b[32m 5 passing\\x1b[0m\\x1b[90m (3ms)\\x1b[0m\\n\\x1b[31m  1 failing\\x1b[0m\\n", 1);
    assert.equal(r.last, "5 passed, 1 failed");
    assert.notEqual(r.status, 0);
  });

  it("a crash before mocha's summary (a test file that fails to load) does not claim success", () => {
    const r = ciRun("Error: Cannot find module 'x'\\n    at loadFilesAsync\\n", 1);
    assert.equal(r.last, "0 passed, 1 failed");
    assert.notEqual(r.status, 0);
  });

  it("mocha killed mid-run (SIGKILL: 137) does not claim success", () => {
    const r = ciRun("  ✔ a test\\n  ✔ another\\n", 137);
    assert.equal(r.last, "0 passed, 1 failed");
    assert.notEqual(r.status, 0);
  });

  it("an exit 0 without any summary (a process.exit(0) in the code under test) does not claim success", () => {
    const r = ciRun("  ✔ a test\\n", 0);
    assert.equal(r.last, "0 passed, 1 failed");
    assert.notEqual(r.status, 0);
  });

  it("a SIGTERM to .ci/run (a CI timeout) stops the tests at once and does not claim success", async () => {
    const pidFile = join(dir, "sleep.pid");
    writeFileSync(join(dir, "scripts/test.sh"), `echo "  3 passing"\nsleep 60 &\necho $! > '${pidFile}'\necho started\nwait\n`);
    const child = spawn("bash", [join(dir, ".ci/run")], { stdio: ["ignore", "pipe", "inherit"] });
    let stdout = "";
    child.stdout.setEncoding("utf8");
    const ended = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));
    await new Promise<void>((resolve) =>
      child.stdout.on("data", (d: string) => {
        stdout += d;
        if (stdout.includes("started")) resolve();
      }),
    );
    const started = Date.now();
    child.kill("SIGTERM");
    const code = await ended;
    assert.ok(Date.now() - started < 10_000, "ended at once, not when the tests would have");
    assert.notEqual(code, 0);
    const lines = stdout.trimEnd().split("\n");
    assert.equal(lines.at(-1), "3 passed, 1 failed");
    assert.match(stdout, /stopped by SIGTERM/);
    const sleepPid = Number(readFileSync(pidFile, "utf8"));
    // SIGTERM is asynchronous, and a killed process whose parent is gone stays a zombie until
    // init reaps it: stopped means gone or a zombie, within a few seconds.
    const state = (): string | undefined => {
      try {
        const stat = readFileSync(`/proc/${sleepPid}/stat`, "utf8");
        return stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
      } catch {
        return undefined;
      }
    };
    const until = Date.now() + 5_000;
    while (state() !== undefined && state() !== "Z" && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
    assert.ok(state() === undefined || state() === "Z", `the tests' processes were stopped (sleep ${sleepPid} is in state ${state()})`);
  });

  it("asks mocha to refuse an it.only or describe.only left in a test (--forbid-only)", () => {
    assert.equal(ciRun("  1 passing\\n", 0).args, "args: --forbid-only");
  });
});
