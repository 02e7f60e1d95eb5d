import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { appendFileSync, closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AuditLog, LOCK_FILE_NAME, type AuditRecordInput } from "../../src/audit/index.js";
import { CHECKPOINTS_FILE, CheckpointingStore, FileCheckpointSink } from "../../src/audit/checkpoints.js";
import { verifyAuditDir } from "../../src/audit/store-verify.js";
import { SignerError } from "../../src/errors/index.js";
import { getFixture, keyIdOf } from "../helpers/fixture.js";

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

describe("CheckpointingStore: a checkpoint that never finishes", function () {
  this.timeout(20_000);

  it("is reported once after two checkpoint intervals, since it holds back every later checkpoint", async () => {
    const dir = mkdtempSync(join(tmpdir(), "hsm-signer-cp-stall-"));
    const errors: string[] = [];
    const store = new CheckpointingStore(await AuditLog.open({ dir }), {
      replicaId: "r",
      // A hung HSM: the checkpoint's signature never comes.
      signer: { keyId: "audit", alg: "ES256", signDigest: () => new Promise<Buffer>(() => undefined) },
      sink: new FileCheckpointSink(dir),
      everyRecords: 1000,
      everyMs: 150,
      closeTimeoutMs: 100,
      onError: (e) => errors.push((e as Error).message),
    });
    try {
      for (let i = 1; i <= 3; i++) await store.append(record(i));
      const deadline = Date.now() + 5_000;
      while (errors.length === 0 && Date.now() < deadline) await new Promise((res) => setTimeout(res, 50));
      assert.match(errors[0] ?? "(nothing reported)", /the audit checkpoint of seq 3, started at .*, has not finished after \d+ s .*no later checkpoint is made until it does/);
      await store.append(record(4));
      await new Promise((res) => setTimeout(res, 600));
      assert.equal(errors.length, 1, `reported once: ${errors.join("; ")}`);
    } finally {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe("FileCheckpointSink: checkpoints.jsonl after a crash in the middle of a checkpoint", function () {
  this.timeout(60_000);
  let root: string;

  before(() => {
    root = mkdtempSync(join(tmpdir(), "hsm-signer-cp-torn-"));
  });
  after(() => rmSync(root, { recursive: true, force: true }));

  /** A file log in root/name whose checkpoints (only when asked for) the fixture's EC-256 key signs into checkpoints.jsonl. */
  async function checkpointedLog(name: string): Promise<{ dir: string; store: CheckpointingStore; cert: X509Certificate }> {
    const f = await getFixture();
    const keyId = keyIdOf("EC-256");
    const key = await f.hsm.keys.getKey(keyId);
    const dir = join(root, name);
    const store = new CheckpointingStore(await AuditLog.open({ dir }), {
      replicaId: name,
      signer: { keyId, alg: "ES256", signDigest: (d) => f.hsm.keys.signDigest(key, "SHA-256", d) },
      sink: new FileCheckpointSink(dir),
      everyRecords: 1000,
      everyMs: 3_600_000,
    });
    return { dir, store, cert: new X509Certificate(key.chain[0]!) };
  }

  it("a torn last line is cut away before the next checkpoint is written, which stands on its own line and verifies", async () => {
    const { dir, store, cert } = await checkpointedLog("torn");
    for (let i = 1; i <= 3; i++) await store.append(record(i));
    await store.checkpoint();
    const file = join(dir, CHECKPOINTS_FILE);
    const first = readFileSync(file, "utf8");
    // The process (or the machine) died while the next checkpoint was being written: part of a line.
    appendFileSync(file, first.slice(0, 120).replace('"seq":3', '"seq":5'));
    for (let i = 4; i <= 6; i++) await store.append(record(i));
    await store.checkpoint();
    await store.close();
    const lines = readFileSync(file, "utf8").split("\n");
    assert.equal(lines.length, 3, "two checkpoints, each on its own line");
    assert.equal(lines[0], first.trimEnd());
    const report = await verifyAuditDir(dir, cert);
    assert.deepEqual(report.findings, []);
    assert.equal(report.chains[0]?.checkpoints, 2);
    assert.equal(report.chains[0]?.lastCheckpointSeq, 6);
  });

  it("a checkpoints.jsonl over 512 MiB (two years of a checkpoint a minute) is verified, not refused as too long a string", async function () {
    this.timeout(120_000);
    const { dir, store, cert } = await checkpointedLog("big");
    for (let i = 1; i <= 3; i++) await store.append(record(i));
    await store.close();
    // The volume of about a million checkpoint lines (about 560 bytes each), as blank lines, which
    // verify skips: signing a million real ones would take the test minutes.
    const fd = openSync(join(dir, CHECKPOINTS_FILE), "a");
    try {
      const block = Buffer.from(`${" ".repeat(559)}\n`.repeat(64 * 1024));
      for (let written = 0; written < 600 * 1024 * 1024; written += block.length) writeSync(fd, block);
    } finally {
      closeSync(fd);
    }
    try {
      const report = await verifyAuditDir(dir, cert);
      assert.deepEqual(report.findings, []);
      assert.equal(report.chains[0]?.lastCheckpointSeq, 3);
    } finally {
      rmSync(join(dir, CHECKPOINTS_FILE), { force: true });
    }
  });
});
