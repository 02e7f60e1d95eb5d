import assert from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import { getFixture, startTestServer, type Fixture, type TestServer } from "../helpers/fixture.js";
import { spawnCollect } from "../helpers/process.js";
import { HSM_SIGNER } from "../helpers/service-process.js";
import { callSigner, signerClient } from "../helpers/signer-client.js";

/**
 * The audit records what a refused caller asked for, escape sequences included (JSON-escaped in
 * the file). `hsm-signer audit search` prints records on a custodian's terminal: there, the
 * caller's text must not become terminal control (cursor moves, a rewritten line, a new window
 * title). The real server over TLS, the built CLI as a process.
 */
describe("audit search shows a caller's control characters as text (CLI)", function () {
  this.timeout(60_000);
  let f: Fixture;
  let server: TestServer;

  before(async () => {
    f = await getFixture();
    server = await startTestServer(f);
  });

  after(async () => {
    await server?.close();
  });

  it("a key id with ESC, BEL and the one-byte CSI: refused INVALID_ARGUMENT, audited, and printed as \\x1b, \\x07, \\x9b", async () => {
    const client = signerClient(f.tls.ca, server.port);
    const keyId = "evil\x1b]0;owned\x07\x1b[2K\x9b31m";
    try {
      await assert.rejects(callSigner(client, "Sign", { keyId, digest: Buffer.alloc(32), hashAlgorithm: "SHA-256" }), (e: grpc.ServiceError) => e.code === grpc.status.INVALID_ARGUMENT);
    } finally {
      client.close();
    }
    const table = await spawnCollect(HSM_SIGNER, ["audit", "search", "--dir", server.auditDir], "", { timeoutMs: 30_000 });
    assert.equal(table.code, 0, table.stderr);
    const row = table.stdout.split("\n").find((l) => l.includes("evil"));
    assert.ok(row, table.stdout);
    assert.doesNotMatch(row, /[\x00-\x1f\x7f-\x9f]/, "no control character reaches the terminal");
    assert.ok(row.includes("evil\\x1b]0;owned\\x07\\x1b[2K\\x9b31m"), row);
    // --json is for programs: the record as it is, which they parse back to the caller's text.
    const json = await spawnCollect(HSM_SIGNER, ["audit", "search", "--dir", server.auditDir, "--json"], "", { timeoutMs: 30_000 });
    const rec = json.stdout
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { keyId?: string })
      .find((r) => r.keyId?.startsWith("evil"));
    assert.equal(rec?.keyId, keyId);
  });
});
