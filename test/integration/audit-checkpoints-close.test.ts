import assert from "node:assert/strict";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AuditLog, LOCK_FILE_NAME, type AuditRecordInput } from "../../src/audit/index.js";
import { CheckpointingStore, FileCheckpointSink } from "../../src/audit/checkpoints.js";
import { SignerError } from "../../src/errors/index.js";

function record(i: number): AuditRecordInput {
  return { requestId: `req-${i}`, peer: "ipv4:127.0.0.1:50000", identity: "spiffe://ci/build", method: "Sign", keyId: "release-2026", decision: "allow", result: "OK", latencyMs: 3 };
}

describe("CheckpointingStore: closing with a hung HSM", function () {
  this.timeout(20_000);
  let root: string;

  before(() => {
    root = mkdtempSync(join(tmpdir(), "hsm-signer-cp-close-"));
  });
  after(() => rmSync(root, { recursive: true, force: true }));

  it("close() does not wait for ever for a checkpoint the HSM never signs: the failure is reported and the log is closed", async () => {
    const dir = join(root, "audit");
    const log = await AuditLog.open({ dir });
    const errors: unknown[] = [];
    // A hung HSM (or network to it): the native C_Sign never returns, so neither does signDigest.
    const store = new CheckpointingStore(log, {
      replicaId: "r",
      signer: { keyId: "audit", alg: "ES256", signDigest: () => new Promise<Buffer>(() => undefined) },
      sink: new FileCheckpointSink(dir),
      everyRecords: 2,
      everyMs: 3_600_000,
      closeTimeoutMs: 500,
      onError: (e) => errors.push(e),
    });
    for (let i = 1; i <= 3; i++) await store.append(record(i));
    const started = Date.now();
    const closed = await Promise.race([store.close().then(() => "closed"), new Promise((res) => setTimeout(() => res("hung"), 5_000))]);
    assert.equal(closed, "closed", "close() returned");
    assert.ok(Date.now() - started < 3_000, `close() took ${Date.now() - started} ms`);
    assert.equal(existsSync(join(dir, LOCK_FILE_NAME)), false, "the audit log was closed: its directory lock is released");
    await assert.rejects(store.append(record(4)), (e: unknown) => e instanceof SignerError && e.code === "AUDIT_UNAVAILABLE");
    assert.ok(
      errors.some((e) => /checkpoint/.test((e as Error).message)),
      `the missing checkpoint is reported: ${errors.map((e) => (e as Error).message).join("; ")}`,
    );
  });
});
