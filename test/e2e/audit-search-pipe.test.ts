import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { closeSync, mkdtempSync, openSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { auditFileName } from "../../src/audit/index.js";
import { HSM_SIGNER } from "../helpers/service-process.js";

/**
 * `hsm-signer audit search ... | head`: the reader goes away after the lines it wanted. The
 * search stops there, quietly, as other command-line tools do; it never dies with a stack trace.
 */
describe("audit search into a pipe whose reader stops early (| head)", function () {
  this.timeout(60_000);
  let dir: string;

  before(() => {
    dir = mkdtempSync(join(tmpdir(), "hsm-signer-search-pipe-"));
    // Search does not verify: plain records will do, enough of them to fill a pipe many times.
    const fd = openSync(join(dir, auditFileName(1)), "w");
    try {
      const lines: string[] = [];
      for (let seq = 1; seq <= 50_000; seq++) {
        lines.push(JSON.stringify({ seq, prev: "0".repeat(64), time: "2026-12-01T00:00:00.000Z", identity: "spiffe://ci/build", method: "Sign", keyId: "release", result: "OK" }));
      }
      writeSync(fd, `${lines.join("\n")}\n`);
    } finally {
      closeSync(fd);
    }
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  for (const json of [false, true]) {
    it(`${json ? "--json" : "the table"}: the first line, then the reader closes: exit 0, nothing on stderr`, async () => {
      const child = spawn(HSM_SIGNER, ["audit", "search", "--dir", dir, ...(json ? ["--json"] : [])], { stdio: ["ignore", "pipe", "pipe"] });
      let err = "";
      child.stderr.on("data", (c: Buffer) => (err += c.toString("utf8")));
      const first = await new Promise<string>((resolve) => {
        let got = "";
        const onData = (c: Buffer): void => {
          got += c.toString("utf8");
          if (got.includes("\n")) {
            child.stdout.off("data", onData);
            // As head does once it has its lines: the read end of the pipe closes.
            child.stdout.destroy();
            resolve(got.slice(0, got.indexOf("\n")));
          }
        };
        child.stdout.on("data", onData);
      });
      assert.match(first, /release/);
      const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolve) => child.on("close", (c, s) => resolve([c, s])));
      assert.equal(signal, null);
      assert.equal(err, "", "no stack trace");
      assert.equal(code, 0);
    });
  }
});
