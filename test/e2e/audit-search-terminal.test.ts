import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
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

/**
 * A tampered audit file may hold any JSON. Search shows what it finds and goes on: an object
 * where text belongs is printed as its JSON text (String() on {"toString":1} threw, and the whole
 * search ended "unexpected failure: Cannot convert object to primitive value"). Only verify
 * judges the records. Files on disk, the built CLI as a process.
 */
describe("audit search over a tampered record goes on (CLI)", function () {
  this.timeout(60_000);
  let dir: string;
  const normal = { seq: 2, time: "2026-11-24T10:00:00.000Z", identity: "spiffe://ci/build", method: "Sign", keyId: "release", result: "OK", payloadDigest: `sha256:${"a".repeat(64)}` };

  before(() => {
    dir = mkdtempSync(join(tmpdir(), "hsm-signer-tampered-search-"));
    writeFileSync(join(dir, "audit-0000000000000001.jsonl"), `{"seq":1,"payloadDigest":{"toString":1}}\n${JSON.stringify(normal)}\n{"seq":{"toString":1},"keyId":{"valueOf":1}}\n`);
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('a record whose payloadDigest is {"toString":1} beside a normal one: exit 0, every record shown, the normal one found by a filter', async () => {
    const search = (...args: string[]): ReturnType<typeof spawnCollect> => spawnCollect(HSM_SIGNER, ["audit", "search", "--dir", dir, ...args], "", { timeoutMs: 30_000 });
    const [all, byKey, json] = await Promise.all([search(), search("--key-id", "release"), search("--json")]);
    for (const r of [all, byKey, json]) {
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stderr, "");
    }
    const row = `2026-11-24T10:00:00.000Z  #2  spiffe://ci/build  Sign  release  OK  sha256:${"a".repeat(64)}`;
    assert.equal(all.stdout, `-  #1  -  -  -  -  {"toString":1}\n${row}\n-  #{"toString":1}  -  -  {"valueOf":1}  -  -\n3 record(s)\n`);
    assert.equal(byKey.stdout, `${row}\n1 record(s)\n`);
    assert.deepEqual(
      json.stdout
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l) as unknown)[1],
      normal,
    );
  });
});
