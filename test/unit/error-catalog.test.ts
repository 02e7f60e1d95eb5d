import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { status } from "@grpc/grpc-js";
import { ERROR_CODES } from "../../src/errors/index.js";
import { pluginCodeOf, pluginCodeOfError } from "../../src/plugin/remote-signer.js";
import { grpcStatusOf } from "../../src/server/status.js";
import { PROJECT_ROOT } from "../helpers/softhsm.js";

/** The README's "Error codes" table: code → [gRPC status, notation errorCode]. */
function readmeTable(): Map<string, [string, string]> {
  const text = readFileSync(join(PROJECT_ROOT, "README.md"), "utf8");
  const section = text.split("## Error codes")[1]?.split("\n## ")[0] ?? "";
  const rows = new Map<string, [string, string]>();
  for (const line of section.split("\n")) {
    const m = /^\| `([A-Z_]+)` \| ([A-Z_]+) \| ([A-Z_]+) \|/.exec(line);
    if (m?.[1] && m[2] && m[3]) rows.set(m[1], [m[2], m[3]]);
  }
  return rows;
}

describe("the error catalog and the README table", () => {
  it("every code has a row whose gRPC status and notation errorCode are what the edges produce", () => {
    const rows = readmeTable();
    for (const code of ERROR_CODES) {
      const row = rows.get(code);
      assert.ok(row, `README "Error codes" has no row for ${code}`);
      const grpcCode = grpcStatusOf(code);
      assert.equal(row[0], status[grpcCode], `${code}: README says ${row[0]}, the server sends ${status[grpcCode]}`);
      assert.equal(row[1], pluginCodeOfError(code), `${code}: README says ${row[1]}, the plugin reports ${pluginCodeOfError(code)}`);
      // A server that sends no catalog code (an older one) gets the same answer from its status.
      assert.equal(pluginCodeOf(grpcCode), pluginCodeOfError(code), `${code}: the status fallback differs`);
    }
  });

  it("the table lists no code the catalog does not have", () => {
    for (const code of readmeTable().keys()) assert.ok((ERROR_CODES as readonly string[]).includes(code), `README lists unknown code ${code}`);
  });
});
