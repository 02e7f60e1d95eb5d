import assert from "node:assert/strict";
import { generateKeyPairSync, sign as nodeSign, X509Certificate } from "node:crypto";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { connect, createServer, type AddressInfo, type Socket } from "node:net";
import type pg from "pg";
import { AuditLog, auditFilesIn, hashLine, verifyAuditFiles, type AuditReceipt, type AuditRecordInput } from "../../src/audit/index.js";
import { CheckpointingStore, FileCheckpointSink, makeCheckpoint, CHECKPOINTS_FILE, type CheckpointSigner } from "../../src/audit/checkpoints.js";
import { PostgresAuditStore, type PostgresAuditOptions } from "../../src/audit/postgres-store.js";
import { exportReplica, searchDatabase, verifyAuditDir, verifyDatabase, type Finding } from "../../src/audit/store-verify.js";
import { SignerError } from "../../src/errors/index.js";
import { getFixture, keyIdOf } from "../helpers/fixture.js";
import { getPostgres, grantAuditRole, startPostgres, type PostgresServer } from "../helpers/postgres.js";
import { spawnCollect } from "../helpers/process.js";
import { HSM_SIGNER } from "../helpers/service-process.js";

const AUDIT_KEY = keyIdOf("EC-256");

function record(i: number, over: Partial<AuditRecordInput> = {}): AuditRecordInput {
  return { requestId: `req-${i}`, peer: "ipv4:127.0.0.1:50000", identity: "spiffe://ci/build", method: "Sign", keyId: "release-2026", decision: "allow", result: "OK", latencyMs: 3, ...over };
}

/** The fixture's EC-256 key in SoftHSM signs checkpoints, as the service's audit key does. */
async function hsmSigner(): Promise<{ signer: CheckpointSigner; cert: X509Certificate }> {
  const f = await getFixture();
  const key = await f.hsm.keys.getKey(AUDIT_KEY);
  return {
    signer: { keyId: AUDIT_KEY, alg: "ES256", signDigest: (d) => f.hsm.keys.signDigest(key, "SHA-256", d) },
    cert: new X509Certificate(key.chain[0]!),
  };
}

function kinds(findings: Finding[], replica: string): string[] {
  return findings.filter((f) => f.replica === replica).map((f) => f.kind);
}

describe("PostgreSQL audit store: group commit, replica chains, checkpoints, verify, search, export (real PostgreSQL)", function () {
  this.timeout(180_000);
  let server: PostgresServer;
  let db: { database: string; role: string; password: string };
  let admin: pg.Client;
  let root: string;
  const stores: { close(): Promise<void> }[] = [];
  /** As the service's least-privileged role (INSERT and SELECT only), over TCP with its password. */
  const appConnection = (): pg.ClientConfig => ({ host: server.host, port: server.port, database: db.database, user: db.role, password: db.password });
  const open = async (replicaId: string, o: Partial<PostgresAuditOptions> = {}): Promise<PostgresAuditStore> => {
    const s = await PostgresAuditStore.open({ connection: appConnection(), replicaId, migrate: false, lockWaitMs: 0, ...o });
    stores.push(s);
    return s;
  };

  before(async () => {
    server = await getPostgres();
    db = await server.createDatabase("audit_store_test");
    root = mkdtempSync(join(tmpdir(), "hsm-signer-pgaudit-"));
    // The schema is made by its owner (`audit migrate`), then the service's role gets INSERT and SELECT.
    const out = await spawnCollect(HSM_SIGNER, ["audit", "migrate", "--database"], "", {
      env: { ...process.env, PGHOST: server.socketDir, PGPORT: String(server.port), PGUSER: "postgres", PGDATABASE: db.database },
      timeoutMs: 60_000,
    });
    assert.equal(out.code, 0, out.stderr);
    assert.match(out.stdout, /migrated to version 1/);
    await grantAuditRole(server, db.database, db.role);
    admin = await server.admin(db.database);
  });
  afterEach(async () => {
    for (const s of stores.splice(0)) await s.close().catch(() => undefined);
  });
  after(async () => {
    await admin?.end();
    rmSync(root, { recursive: true, force: true });
  });

  it("writes the same lines as the file log, group-committed: exported, they verify with the file verifier", async () => {
    let commits = 0;
    const store = await open("same-lines", { onCommit: () => commits++ });
    const receipts = await Promise.all(
      Array.from({ length: 300 }, (_, i) => store.append(record(i, i === 7 ? { artifact: { digest: "sha256:AB12", mediaType: "m", size: 1 }, identity: 'ünïcødé \u2028 "q"\nnl' } : {}))),
    );
    assert.deepEqual(
      receipts.map((r) => r.sequence),
      Array.from({ length: 300 }, (_, i) => i + 1),
    );
    assert.ok(commits < 300 / 2, `group commit: ${commits} commits for 300 records`);
    const rows = (await admin.query<{ seq: string; line: string }>("SELECT seq::text AS seq, line FROM audit_records WHERE replica_id = 'same-lines' ORDER BY audit_records.seq")).rows;
    rows.forEach((row, i) => assert.equal(hashLine(row.line), receipts[i]!.lineHash, "each receipt is the hash of its committed line"));
    // The file log writes the same record the same way (key order, fields).
    const fileDir = join(root, "file-log");
    const log = await AuditLog.open({ dir: fileDir, fsync: false });
    await log.append(record(0));
    await log.close();
    const fileLine = JSON.parse(readFileSync(auditFilesIn(fileDir)[0]!, "utf8")) as Record<string, unknown>;
    assert.deepEqual(Object.keys(JSON.parse(rows[0]!.line) as object), Object.keys(fileLine));
    const out = join(root, "export-same-lines");
    await exportReplica(admin, "same-lines", out);
    assert.deepEqual(await verifyAuditFiles(auditFilesIn(out)), { ok: true, lines: 300 });
  });

  it("a commit waits for the records of calls that have started (commitDelayMs), and one INSERT takes them all", async () => {
    const batches: number[] = [];
    const store = await open("commit-delay", { commitDelayMs: 100, onCommit: (_s, records) => batches.push(records) });
    store.expect();
    store.expect();
    let firstDone = false;
    const first = store.append(record(1)).then((r) => ((firstDone = true), r));
    await sleep(5);
    assert.equal(firstDone, false, "the first record waits for the other call");
    const receipts = await Promise.all([first, store.append(record(2))]);
    assert.deepEqual(
      receipts.map((r) => r.sequence),
      [1, 2],
    );
    assert.deepEqual(batches, [2], "one commit for both records");
  });

  it("takes a record's searchable columns at append: a change the caller makes to its record afterwards reaches neither the line nor the columns", async () => {
    const store = await open("columns-at-append", { commitDelayMs: 100 });
    // A call still announced keeps the commit waiting, so the record is changed while it is queued.
    store.expect();
    store.expect();
    const r = record(1, { artifact: { digest: "sha256:AB12", mediaType: "m", size: 1 } });
    const appended = store.append(r);
    Object.assign(r, { identity: "someone-else", method: "ListKeys", keyId: "other-key", result: "INTERNAL", artifact: { digest: "sha256:FFFF", mediaType: "m", size: 1 } });
    await store.append(record(2));
    await appended;
    const row = (
      await admin.query<{ line: string; method: string; identity: string; key_id: string; artifact_digest: string; result: string }>(
        "SELECT line, method, identity, key_id, artifact_digest, result FROM audit_records WHERE replica_id = 'columns-at-append' AND seq = 1",
      )
    ).rows[0]!;
    const line = JSON.parse(row.line) as Record<string, unknown>;
    assert.deepEqual(
      { method: row.method, identity: row.identity, keyId: row.key_id, artifactDigest: row.artifact_digest, result: row.result },
      { method: "Sign", identity: "spiffe://ci/build", keyId: "release-2026", artifactDigest: "sha256:ab12", result: "OK" },
    );
    assert.deepEqual([line.method, line.identity, line.keyId, line.result], ["Sign", "spiffe://ci/build", "release-2026", "OK"]);
  });

  it("the service's role has INSERT and SELECT only: it cannot UPDATE or DELETE records", async () => {
    const store = await open("grants");
    await store.append(record(1));
    const { default: pgm } = await import("pg");
    const c = new pgm.Client(appConnection());
    await c.connect();
    try {
      await assert.rejects(c.query("UPDATE audit_records SET line = 'x' WHERE replica_id = 'grants'"), /permission denied/);
      await assert.rejects(c.query("DELETE FROM audit_records WHERE replica_id = 'grants'"), /permission denied/);
    } finally {
      await c.end();
    }
  });

  it("two replicas write one database concurrently; each chain verifies", async () => {
    const { cert } = await hsmSigner();
    const [a, b] = [await open("replica-a"), await open("replica-b")];
    await Promise.all(Array.from({ length: 200 }, (_, i) => (i % 2 ? a : b).append(record(i))));
    const report = await verifyDatabase(admin, cert);
    for (const r of ["replica-a", "replica-b"]) {
      assert.deepEqual(kinds(report.findings, r), []);
      assert.equal(report.chains.find((c) => c.replica === r)?.records, 100);
    }
  });

  it("one writer per replica id: a second process waits and is refused; after a restart the chain continues, unforked", async () => {
    const first = await open("restart-me");
    // Past seq 9, so that the chain's end is found by number, not by text order ("9" > "12").
    for (let i = 0; i < 12; i++) await first.append(record(i));
    await assert.rejects(
      open("restart-me", { lockWaitMs: 1500 }),
      (e: unknown) => e instanceof SignerError && e.code === "AUDIT_UNAVAILABLE" && /another process writes the audit chain of replica "restart-me"/.test(e.message),
    );
    await first.close();
    const second = await open("restart-me", { lockWaitMs: 5000 });
    assert.equal(second.stats.sequence, 12);
    const r = await second.append(record(13));
    assert.equal(r.sequence, 13);
    const report = await verifyDatabase(admin, undefined, "restart-me");
    assert.deepEqual(report.findings, []);
    assert.equal(report.chains[0]?.records, 13);
  });

  it("tampering done in SQL is found and named at the right place; records after the last checkpoint are reported unprotected", async () => {
    const { signer, cert } = await hsmSigner();
    const names = ["t-edit", "t-tail", "t-gone", "t-rehash", "t-forged", "t-delete", "t-reorder", "t-clean"];
    for (const name of names) {
      const store = new CheckpointingStore(await open(name), {
        replicaId: name,
        signer,
        everyRecords: 10,
        everyMs: 3_600_000,
        sink: { write: (cp) => (stores.at(-1) as PostgresAuditStore).appendCheckpoint(cp) },
      });
      for (let i = 1; i <= 50; i++) await store.append(record(i));
      await store.checkpoint();
      assert.equal(store.checkpointedSequence, 50);
      // Three more, not yet checkpointed.
      if (name === "t-clean") for (let i = 51; i <= 53; i++) await store.append(record(i));
      stores.pop();
      await store.close();
    }
    const line = async (replica: string, seq: number): Promise<string> =>
      (await admin.query<{ line: string }>("SELECT line FROM audit_records WHERE replica_id = $1 AND seq = $2", [replica, seq])).rows[0]!.line;
    // UPDATE a record.
    await admin.query("UPDATE audit_records SET line = replace(line, 'spiffe://ci/build', 'spiffe://ci/other') WHERE replica_id = 't-edit' AND seq = 17");
    // DELETE the tail past three checkpoints (they signed seq 30, 40 and 50): one cut, one finding.
    await admin.query("DELETE FROM audit_records WHERE replica_id = 't-tail' AND seq > 24");
    // DELETE a whole chain; and one that never had a checkpoint, with its checkpoints table rows gone too.
    await admin.query("DELETE FROM audit_records WHERE replica_id = 't-gone'");
    await (await open("never-wrote")).close();
    const unprotected = await open("t-gone-registry");
    for (let i = 1; i <= 3; i++) await unprotected.append(record(i));
    await admin.query("DELETE FROM audit_records WHERE replica_id = 't-gone-registry'");
    // Re-hash a chain: edit seq 25, then recompute every later prev.
    let prev = "";
    for (let seq = 25; seq <= 50; seq++) {
      const r = JSON.parse(await line("t-rehash", seq)) as Record<string, unknown>;
      if (seq === 25) r.identity = "spiffe://attacker";
      else r.prev = prev;
      const text = JSON.stringify(r);
      await admin.query("UPDATE audit_records SET line = $3 WHERE replica_id = $1 AND seq = $2", ["t-rehash", seq, text]);
      prev = hashLine(text);
    }
    // Insert a forged checkpoint: signed by a key that is not the audit key, covering seq 60.
    const other = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const forged = await makeCheckpoint({ keyId: AUDIT_KEY, alg: "ES256", signDigest: async () => Buffer.alloc(64) }, "t-forged", 60, "ab".repeat(32));
    forged.signature = nodeSign("sha256", Buffer.from(forged.statement), { key: other.privateKey, dsaEncoding: "ieee-p1363" }).toString("base64");
    await admin.query("INSERT INTO audit_checkpoints (replica_id, seq, hash, time, key_id, statement, signature) VALUES ($1, $2, $3, $4, $5, $6, $7)", [
      "t-forged",
      forged.seq,
      forged.hash,
      forged.time,
      forged.keyId,
      forged.statement,
      forged.signature,
    ]);
    // DELETE one record in the middle; swap two records.
    await admin.query("DELETE FROM audit_records WHERE replica_id = 't-delete' AND seq = 33");
    const [l12, l13] = [await line("t-reorder", 12), await line("t-reorder", 13)];
    await admin.query("UPDATE audit_records SET line = $2 WHERE replica_id = 't-reorder' AND seq = $1", [12, l13]);
    await admin.query("UPDATE audit_records SET line = $2 WHERE replica_id = 't-reorder' AND seq = $1", [13, l12]);

    const report = await verifyDatabase(admin, cert);
    assert.equal(report.ok, false);
    const at = (replica: string, kind: string): Finding | undefined => report.findings.find((f) => f.replica === replica && f.kind === kind);
    assert.equal(at("t-edit", "edited")?.seq, 17, JSON.stringify(report.findings));
    assert.deepEqual(kinds(report.findings, "t-tail"), ["tail-cut"]);
    assert.equal(at("t-tail", "tail-cut")?.seq, 50);
    assert.match(at("t-tail", "tail-cut")!.message, /records 25 to 50 were cut off/);
    assert.ok(at("t-gone", "chain-removed"), JSON.stringify(kinds(report.findings, "t-gone")));
    assert.match(at("t-gone-registry", "chain-removed")!.message, /the replicas registry lists it, but it has no records/);
    assert.equal(
      report.chains.some((c) => c.replica === "never-wrote"),
      false,
      "a replica that never wrote a record is not registered",
    );
    // Checkpoints are made every 10 records in the background: on a busy machine one may come a
    // few records later. The re-hash (from seq 25) shows at the first checkpoint after it.
    const cps = (await admin.query<{ seq: string }>("SELECT seq FROM audit_checkpoints WHERE replica_id = 't-rehash' ORDER BY seq")).rows.map((r) => Number(r.seq));
    const firstAfter = cps.find((q) => q >= 25);
    const lastBefore = cps.filter((q) => q < 25).at(-1);
    assert.equal(at("t-rehash", "rehashed")?.seq, firstAfter, `checkpoints at ${cps.join(", ")}`);
    assert.match(at("t-rehash", "rehashed")!.message, new RegExp(`after seq ${lastBefore}`));
    assert.deepEqual(kinds(report.findings, "t-rehash"), ["rehashed"]);
    assert.deepEqual(kinds(report.findings, "t-forged"), ["forged-checkpoint"]);
    assert.equal(at("t-forged", "forged-checkpoint")?.seq, 60);
    assert.equal(at("t-delete", "deleted")?.seq, 33);
    assert.ok(at("t-reorder", "reordered"));
    assert.equal(at("t-reorder", "reordered")?.seq, 12);
    assert.deepEqual(kinds(report.findings, "t-clean"), []);
    const clean = report.chains.find((c) => c.replica === "t-clean")!;
    assert.equal(clean.lastCheckpointSeq, 50);
    assert.equal(clean.unprotected, 3);
    assert.ok(clean.unprotectedSince && Date.parse(clean.unprotectedSince) > 0);

    // The command line names them too, and exits 1.
    const certFile = join(root, "audit-cert.pem");
    writeFileSync(certFile, cert.toString());
    const env = { ...process.env, PGHOST: server.socketDir, PGPORT: String(server.port), PGUSER: "postgres", PGDATABASE: db.database };
    const cli = await spawnCollect(HSM_SIGNER, ["audit", "verify", "--database", "--cert", certFile], "", { env, timeoutMs: 60_000 });
    assert.equal(cli.code, 1, cli.stderr);
    for (const k of ["EDITED", "TAIL-CUT", "CHAIN-REMOVED", "REHASHED", "FORGED-CHECKPOINT", "DELETED", "REORDERED"]) assert.match(cli.stdout, new RegExp(`^${k}: `, "m"));
    assert.match(cli.stdout, /replica t-clean: 53 record\(s\).*the last at seq 50\n {2}3 record\(s\) after the last checkpoint, since 20/);
    // A replica id the database never knew (a typo) is an error of the auditor's, not a removed chain.
    const typo = await spawnCollect(HSM_SIGNER, ["audit", "verify", "--database", "--cert", certFile, "--replica", "t-cleen"], "", { env, timeoutMs: 60_000 });
    assert.equal(typo.code, 1, typo.stderr);
    assert.doesNotMatch(typo.stdout, /CHAIN-REMOVED/);
    assert.equal(typo.stderr, 'hsm-signer: the audit database knows no replica "t-cleen" (no record, checkpoint or registry row names it)\n');
    // Export refuses it the same way: an empty export would verify offline as that replica's chain.
    const typoOut = join(root, "export-t-cleen");
    const typoExport = await spawnCollect(HSM_SIGNER, ["audit", "export", "--database", "--replica", "t-cleen", "--out", typoOut], "", { env, timeoutMs: 60_000 });
    assert.equal(typoExport.code, 1, typoExport.stdout + typoExport.stderr);
    assert.equal(typoExport.stdout, "");
    assert.equal(typoExport.stderr, typo.stderr);
    assert.equal(existsSync(typoOut), false, "nothing is written");
    await assert.rejects(exportReplica(admin, "t-cleen", typoOut), (e: unknown) => e instanceof SignerError && e.code === "INVALID_ARGUMENT");
    assert.equal(existsSync(typoOut), false, "nothing is written");
  });

  it("a database without any audit record: verify says there is nothing to verify (exit 1), not OK", async () => {
    const empty = await server.createDatabase("audit_store_empty");
    const env = { ...process.env, PGHOST: server.socketDir, PGPORT: String(server.port), PGUSER: "postgres", PGDATABASE: empty.database };
    const migrated = await spawnCollect(HSM_SIGNER, ["audit", "migrate", "--database"], "", { env, timeoutMs: 60_000 });
    assert.equal(migrated.code, 0, migrated.stderr);
    const certFile = join(root, "empty-cert.pem");
    writeFileSync(certFile, (await hsmSigner()).cert.toString());
    const r = await spawnCollect(HSM_SIGNER, ["audit", "verify", "--database", "--cert", certFile], "", { env, timeoutMs: 60_000 });
    assert.equal(r.code, 1, r.stdout + r.stderr);
    assert.doesNotMatch(r.stdout, /OK/);
    assert.equal(r.stderr, "hsm-signer: nothing to verify: no audit records in the audit database\n");
  });

  it("searches across replicas by digest, key, identity (globs) and time, with the same JSON lines as stored", async () => {
    const [a, b] = [await open("search-a"), await open("search-b")];
    const digest = `sha256:${"c".repeat(64)}`;
    await a.append(record(1, { identity: "spiffe://corp/build/one", keyId: "k-search", artifact: { digest, mediaType: "m", size: 1 } }));
    await b.append(record(2, { identity: "spiffe://corp/build/two", keyId: "k-search", artifact: { digest: digest.toUpperCase().replace("SHA256", "sha256"), mediaType: "m", size: 1 } }));
    await b.append(record(3, { identity: "spiffe://corp/deploy", keyId: "k-search" }));
    const all = async (q: Parameters<typeof searchDatabase>[1]): Promise<string[]> => {
      const out: string[] = [];
      for await (const r of searchDatabase(admin, q)) out.push(`${r.replica}:${String(r.record.requestId)}`);
      return out;
    };
    assert.deepEqual(await all({ artifactDigest: digest }), ["search-a:req-1", "search-b:req-2"]);
    assert.deepEqual(await all({ keyId: "k-search", identity: "spiffe://corp/build/*" }), ["search-a:req-1", "search-b:req-2"]);
    assert.deepEqual(await all({ identity: "spiffe://corp/deploy" }), ["search-b:req-3"]);
    assert.deepEqual(await all({ keyId: "k-search", from: new Date(Date.now() + 60_000) }), []);
    const env = { ...process.env, PGHOST: server.socketDir, PGPORT: String(server.port), PGUSER: "postgres", PGDATABASE: db.database };
    const cli = await spawnCollect(HSM_SIGNER, ["audit", "search", "--database", "--artifact", digest, "--json"], "", { env, timeoutMs: 60_000 });
    assert.equal(cli.code, 0, cli.stderr);
    const stored = (await admin.query<{ line: string }>("SELECT line FROM audit_records WHERE artifact_digest = $1 ORDER BY time", [digest])).rows.map((r) => r.line);
    assert.deepEqual(
      cli.stdout.trim().split("\n"),
      stored.map((l) => JSON.stringify(JSON.parse(l))),
    );
    const table = await spawnCollect(HSM_SIGNER, ["audit", "search", "--database", "--key-id", "k-search"], "", { env, timeoutMs: 60_000 });
    assert.match(table.stdout, /search-b#2 {2}spiffe:\/\/corp\/deploy {2}Sign {2}k-search {2}OK {2}-\n3 record\(s\)\n$/);
    // Tampered lines in SQL: a field that is an object whose toString is no function (String()
    // threw on it, ending the search) and a line that is no object. Search is not verify: it goes on.
    await (await open("search-tampered")).append(record(4, { keyId: "k-tampered" }));
    await admin.query("INSERT INTO audit_records (replica_id, seq, time, line, key_id) VALUES ('search-tampered', 2, now(), $1, 'k-tampered'), ('search-tampered', 3, now(), 'null', 'k-tampered')", [
      '{"seq":{"toString":1},"payloadDigest":{"toString":1}}',
    ]);
    const tampered = await spawnCollect(HSM_SIGNER, ["audit", "search", "--database", "--key-id", "k-tampered"], "", { env, timeoutMs: 60_000 });
    assert.equal(tampered.code, 0, tampered.stderr);
    assert.equal(tampered.stderr, "");
    assert.match(tampered.stdout, /^\S+ {2}search-tampered#1 {2}spiffe:\/\/ci\/build {2}Sign {2}k-tampered {2}OK {2}-\n/);
    assert.match(tampered.stdout, /\n- {2}search-tampered#\{"toString":1\} {2}- {2}- {2}- {2}- {2}\{"toString":1\}\n2 record\(s\)\n$/);
  });

  it("audit verify, search and export over the database fail with a message, never wait for ever, when a table stays locked", async () => {
    const env = { ...process.env, PGHOST: server.socketDir, PGPORT: String(server.port), PGUSER: "postgres", PGDATABASE: db.database };
    // A session holding the table (a VACUUM FULL, an ALTER TABLE, a forgotten transaction in psql).
    const holder = await server.admin(db.database);
    try {
      await holder.query("BEGIN");
      await holder.query("LOCK TABLE audit_records IN ACCESS EXCLUSIVE MODE");
      const certFile = join(root, "locked-cert.pem");
      writeFileSync(certFile, (await hsmSigner()).cert.toString());
      const runs = await Promise.all([
        spawnCollect(HSM_SIGNER, ["audit", "verify", "--database", "--cert", certFile], "", { env, timeoutMs: 45_000 }),
        spawnCollect(HSM_SIGNER, ["audit", "search", "--database", "--key-id", "k-search"], "", { env, timeoutMs: 45_000 }),
        spawnCollect(HSM_SIGNER, ["audit", "export", "--database", "--replica", "search-a", "--out", join(root, "locked-export")], "", { env, timeoutMs: 45_000 }),
      ]);
      for (const r of runs) {
        assert.equal(r.timedOut, false, "the command ended by itself");
        assert.equal(r.code, 1, r.stderr);
        assert.match(r.stderr, /lock timeout/);
      }
    } finally {
      await holder.query("ROLLBACK").catch(() => undefined);
      await holder.end();
    }
  });

  it("an export that fails half-way leaves nothing an auditor could take for the chain; run again, it succeeds", async () => {
    const { signer, cert } = await hsmSigner();
    const inner = await open("half-exported");
    const store = new CheckpointingStore(inner, { replicaId: "half-exported", signer, everyRecords: 1000, everyMs: 3_600_000, sink: { write: (cp) => inner.appendCheckpoint(cp) } });
    for (let i = 1; i <= 6; i++) await store.append(record(i));
    await store.checkpoint();
    await store.close();
    const env = { ...process.env, PGHOST: server.socketDir, PGPORT: String(server.port), PGUSER: "postgres", PGDATABASE: db.database };
    const out = join(root, "half-export", "hsm-signer-0");
    const exportCli = (): ReturnType<typeof spawnCollect> => spawnCollect(HSM_SIGNER, ["audit", "export", "--database", "--replica", "half-exported", "--out", out], "", { env, timeoutMs: 45_000 });
    // The records are read, then the checkpoints: the connection fails in between (here: the
    // checkpoints table stays locked, so the command gives up).
    const holder = await server.admin(db.database);
    try {
      await holder.query("BEGIN");
      await holder.query("LOCK TABLE audit_checkpoints IN ACCESS EXCLUSIVE MODE");
      const failed = await exportCli();
      assert.equal(failed.code, 1, failed.stderr);
    } finally {
      await holder.query("ROLLBACK").catch(() => undefined);
      await holder.end();
    }
    // Records without their checkpoints would verify "OK" (unprotected) even if cut short.
    assert.equal(existsSync(out), false, `${out} is not left behind: ${existsSync(out) ? readdirSync(out).join(", ") : ""}`);
    const again = await exportCli();
    assert.equal(again.code, 0, again.stderr);
    const report = await verifyAuditDir(out, cert);
    assert.deepEqual(report.findings, []);
    assert.equal(report.chains[0]?.checkpoints, 1);
  });

  it("export writes files an auditor verifies offline with the audit certificate alone; an edit of the export is found", async () => {
    const { signer, cert } = await hsmSigner();
    const inner = await open("exported");
    const store = new CheckpointingStore(inner, { replicaId: "exported", signer, everyRecords: 5, everyMs: 3_600_000, sink: { write: (cp) => inner.appendCheckpoint(cp) } });
    for (let i = 1; i <= 12; i++) {
      await store.append(record(i));
      // The checkpoints of seq 5 and 10 are made before the next append: when the appends ran ahead
      // of the checkpoint of seq 5, the two were one checkpoint (seq 12) and the test saw only two.
      if (i % 5 === 0) await store.checkpoint();
    }
    await store.checkpoint();
    const out = join(root, "export-offline");
    const certFile = join(root, "exported-cert.pem");
    writeFileSync(certFile, cert.toString());
    const env = { ...process.env, PGHOST: server.socketDir, PGPORT: String(server.port), PGUSER: "postgres", PGDATABASE: db.database };
    const ex = await spawnCollect(HSM_SIGNER, ["audit", "export", "--database", "--replica", "exported", "--out", out], "", { env, timeoutMs: 60_000 });
    assert.equal(ex.code, 0, ex.stderr);
    assert.match(ex.stdout, /12 record\(s\) in 1 file\(s\), 3 checkpoint\(s\)/);
    // Offline: no database in the environment.
    const offline = { PATH: process.env.PATH ?? "" };
    const ok = await spawnCollect(HSM_SIGNER, ["audit", "verify", "--dir", out, "--cert", certFile], "", { env: offline, timeoutMs: 60_000 });
    assert.equal(ok.code, 0, ok.stdout + ok.stderr);
    assert.match(ok.stdout, /replica exported: 12 record\(s\), seq 1 to 12; 3 checkpoint\(s\), the last at seq 12\nOK/);
    // Cut the last two lines of the exported file: the chain alone still verifies, the checkpoint does not.
    const file = auditFilesIn(out)[0]!;
    const lines = readFileSync(file, "utf8").split("\n").filter(Boolean);
    writeFileSync(file, `${lines.slice(0, 10).join("\n")}\n`);
    assert.equal((await verifyAuditFiles([file])).ok, true, "the hash chain alone cannot see a cut tail");
    const cut = await spawnCollect(HSM_SIGNER, ["audit", "verify", "--dir", out, "--cert", certFile], "", { env: offline, timeoutMs: 60_000 });
    assert.equal(cut.code, 1);
    assert.match(cut.stdout, /^TAIL-CUT: the chain ends at seq 10 but a checkpoint .* up to seq 12: records 11 to 12 were cut off$/m);
  });

  it("the file log's checkpoints (checkpoints.jsonl) catch a cut tail, a removed first file and a removed log", async () => {
    const { signer, cert } = await hsmSigner();
    const dir = join(root, "file-cp");
    const log = await AuditLog.open({ dir, fsync: false, maxFileBytes: 4096 });
    const store = new CheckpointingStore(log, { replicaId: "file-replica", signer, everyRecords: 10, everyMs: 3_600_000, sink: new FileCheckpointSink(dir) });
    const receipts: AuditReceipt[] = [];
    for (let i = 1; i <= 40; i++) receipts.push(await store.append(record(i)));
    await store.close();
    assert.deepEqual((await verifyAuditDir(dir, cert)).findings, []);
    const files = auditFilesIn(dir);
    assert.ok(files.length >= 3, "rotated into several files");
    // Cut the tail: the last file loses its last 3 lines.
    const last = files.at(-1)!;
    const text = readFileSync(last, "utf8");
    const kept = text.split("\n").filter(Boolean).slice(0, -3);
    writeFileSync(last, kept.length ? `${kept.join("\n")}\n` : "");
    assert.equal((await verifyAuditFiles(auditFilesIn(dir))).ok, true, "the hash chain alone cannot see it");
    const cut = await verifyAuditDir(dir, cert);
    assert.deepEqual(
      cut.findings.map((f) => f.kind),
      ["tail-cut"],
    );
    assert.equal(cut.findings[0]!.seq, 40);
    writeFileSync(last, text);
    // Remove the first file.
    const firstText = readFileSync(files[0]!);
    rmSync(files[0]!);
    const head = await verifyAuditDir(dir, cert);
    assert.equal(head.findings[0]?.kind, "deleted");
    assert.match(head.findings[0]!.message, /records 1 to \d+ are missing/);
    writeFileSync(files[0]!, firstText);
    // Insert a line (a copy of one already there) into the middle of a file.
    const middle = files[1]!;
    const middleText = readFileSync(middle, "utf8");
    const ml = middleText.split("\n").filter(Boolean);
    writeFileSync(middle, `${[...ml.slice(0, 2), ml[1], ...ml.slice(2)].join("\n")}\n`);
    const inserted = await verifyAuditDir(dir, cert);
    assert.equal(inserted.findings[0]?.kind, "inserted", JSON.stringify(inserted.findings));
    assert.equal(inserted.findings[0]?.where, `${middle}:3`);
    writeFileSync(middle, middleText);
    assert.deepEqual((await verifyAuditDir(dir, cert)).findings, []);
    // Remove every audit file: the checkpoints still name the chain.
    for (const f of auditFilesIn(dir)) rmSync(f);
    const gone = await verifyAuditDir(dir, cert);
    assert.deepEqual(
      gone.findings.map((f) => f.kind),
      ["chain-removed"],
    );
    assert.ok(readFileSync(join(dir, CHECKPOINTS_FILE), "utf8").includes('"replica":"file-replica"'));
    assert.equal(receipts.length, 40);
  });

  it("a hung database (its processes stopped) fails appends within the timeout, never the event loop, and recovers when it resumes", async () => {
    const own = await startPostgres();
    const pids: number[] = [];
    try {
      const d = await own.createDatabase("hung");
      const store = await PostgresAuditStore.open({
        connection: { host: own.socketDir, port: own.port, database: d.database, user: "postgres" },
        replicaId: "hung",
        timeoutMs: 1500,
        retry: { minMs: 200, maxMs: 1000 },
      });
      stores.push(store);
      await store.append(record(1));
      // The postmaster and every backend: SIGSTOP, so that connections stay open but nothing answers.
      const postmaster = Number(readFileSync(join(own.dir, "data", "postmaster.pid"), "utf8").split("\n")[0]);
      const children = (await spawnCollect("ps", ["-o", "pid=", "--ppid", String(postmaster)], "", { timeoutMs: 10_000 })).stdout
        .split("\n")
        .map((x) => Number(x.trim()))
        .filter((x) => x > 0);
      pids.push(postmaster, ...children);
      for (const pid of pids) process.kill(pid, "SIGSTOP");
      let ticks = 0;
      const ticker = setInterval(() => ticks++, 50);
      const started = Date.now();
      try {
        await assert.rejects(store.append(record(2)), (e: unknown) => e instanceof SignerError && e.code === "AUDIT_UNAVAILABLE");
      } finally {
        clearInterval(ticker);
      }
      const waited = Date.now() - started;
      assert.ok(waited < 15_000, `rejected after ${waited} ms (timeout 1500 ms)`);
      assert.ok(ticks >= 5, `the event loop ran meanwhile (${ticks} ticks)`);
      assert.equal(store.healthy, false);
      assert.equal(store.stats.healthy, false, "stats answer at once while the database hangs");
      for (const pid of pids.splice(0)) process.kill(pid, "SIGCONT");
      const deadline = Date.now() + 60_000;
      while (!store.healthy && Date.now() < deadline) await sleep(100);
      assert.equal(store.healthy, true, "recovered once the database answers again");
      assert.equal((await store.append(record(3))).sequence >= 3, true);
    } finally {
      for (const pid of pids) process.kill(pid, "SIGCONT");
      await own.destroy();
    }
  });

  it("a network partition: the lost connection's session outlives it on the server, holding the replica's lock; the store recovers by itself once the network is back", async () => {
    // Between the store and PostgreSQL, a TCP relay that can drop everything both ways, as a
    // partition (a failed switch, a lost conntrack entry) does: the store's close of its lost
    // connection never reaches the server, whose session stays until its TCP keepalive (two hours
    // by default) notices.
    let partitioned = false;
    const sockets: Socket[] = [];
    const relay = createServer((downstream) => {
      const upstream = connect(server.port, server.host);
      sockets.push(downstream, upstream);
      const pass = (from: Socket, to: Socket): void => {
        from.on("data", (c: Buffer) => {
          if (!partitioned) to.write(c);
        });
        from.on("close", () => {
          if (!partitioned) to.destroy();
        });
        from.on("error", () => undefined);
      };
      pass(downstream, upstream);
      pass(upstream, downstream);
    });
    await new Promise<void>((res) => relay.listen(0, "127.0.0.1", res));
    const failures: string[] = [];
    try {
      const store = await open("partitioned", {
        connection: { ...appConnection(), host: "127.0.0.1", port: (relay.address() as AddressInfo).port },
        timeoutMs: 1000,
        idleCheckMs: 300,
        retry: { minMs: 200, maxMs: 1000, onFailed: (e) => failures.push(e.message) },
      });
      await store.append(record(1));
      partitioned = true;
      // No call comes: the idle check finds the lost connection by itself (300 ms idle, then a
      // SELECT 1 that times out after 1 s), so /readyz says so before a caller waits for it.
      const noticed = Date.now() + 5_000;
      while (store.healthy && Date.now() < noticed) await sleep(50);
      assert.equal(store.healthy, false, "an idle store notices its lost connection without a call");
      await assert.rejects(store.append(record(2)), (e: unknown) => e instanceof SignerError && e.code === "AUDIT_UNAVAILABLE");
      await sleep(1500);
      partitioned = false;
      const deadline = Date.now() + 20_000;
      while (!store.healthy && Date.now() < deadline) await sleep(100);
      assert.equal(store.healthy, true, `recovered once the network is back; the attempts since: ${[...new Set(failures)].join("; ")}`);
      assert.equal((await store.append(record(3))).sequence >= 3, true);
      const report = await verifyDatabase(admin, undefined, "partitioned");
      assert.deepEqual(report.findings, []);
    } finally {
      for (const s of sockets) s.destroy();
      await new Promise((res) => relay.close(res));
    }
  });

  it("a database that comes back without records this process committed (a failover to a standby behind it, a restore): the loss shows as a gap, no answered seq is reused", async () => {
    const failures: string[] = [];
    const store = await open("lost-tail", { retry: { minMs: 200, maxMs: 1000, onFailed: (e) => failures.push(e.message) } });
    const answered: AuditReceipt[] = [];
    for (let i = 1; i <= 5; i++) answered.push(await store.append(record(i)));
    // The database the store reconnects to lacks the last two records (committed, and answered).
    await admin.query("DELETE FROM audit_records WHERE replica_id = 'lost-tail' AND seq > 3");
    await admin.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'hsm-signer-audit'");
    const deadline = Date.now() + 20_000;
    while (store.healthy && Date.now() < deadline) await sleep(20); // the lost connection is noticed
    while (!store.healthy && Date.now() < deadline) await sleep(50);
    assert.equal(store.healthy, true, failures.join("; "));
    const later = await store.append(record(6));
    assert.ok(later.sequence > 5, `seq ${later.sequence} was the receipt of an answered record already`);
    const rows = (await admin.query<{ line: string }>("SELECT line FROM audit_records WHERE replica_id = 'lost-tail' ORDER BY seq")).rows.map((r) => JSON.parse(r.line) as Record<string, unknown>);
    const recovered = rows.find((r) => r.method === "AuditLog.Recovered");
    assert.ok(recovered, "the outage is recorded");
    assert.deepEqual((recovered as { missingRecords?: unknown }).missingRecords, { fromSeq: 4, toSeq: 5, reason: "committed and answered, but not in the database reconnected to" });
    const report = await verifyDatabase(admin, undefined, "lost-tail");
    assert.deepEqual(
      report.findings.map((f) => [f.kind, f.seq]),
      [["deleted", 4]],
      "audit verify shows the records the database lost",
    );
    assert.match(report.findings[0]!.message, /records 4 to 5 are missing/);
    assert.ok(answered.every((r) => r.sequence <= 5));
  });

  it("a record is durable before its append resolves, even where the database's default is synchronous_commit = off", async () => {
    const own = await startPostgres();
    try {
      const d = await own.createDatabase("async_commit");
      const c = await own.admin(d.database);
      try {
        // A DBA's speed-up (or a managed database's default): commits return before their WAL is
        // written. The WAL writer is made slow here so that the window is wide and certain.
        await c.query(`ALTER DATABASE ${d.database} SET synchronous_commit = off`);
        await c.query("ALTER SYSTEM SET wal_writer_delay = '10s'");
        await c.query("SELECT pg_reload_conf()");
      } finally {
        await c.end();
      }
      const store = await PostgresAuditStore.open({ connection: { host: own.socketDir, port: own.port, database: d.database, user: "postgres" }, replicaId: "durable" });
      const receipts: AuditReceipt[] = [];
      for (let i = 1; i <= 5; i++) receipts.push(await store.append(record(i)));
      // The server crashes right after the answers left (immediate shutdown: no checkpoint, no WAL flush).
      const postmaster = Number(readFileSync(join(own.dir, "data", "postmaster.pid"), "utf8").split("\n")[0]);
      process.kill(postmaster, "SIGQUIT");
      for (let alive = true; alive;) {
        await sleep(50);
        try {
          process.kill(postmaster, 0);
        } catch {
          alive = false;
        }
      }
      await store.close();
      own.running = false;
      await own.start();
      const after = await own.admin(d.database);
      try {
        const rows = (await after.query<{ line: string }>("SELECT line FROM audit_records WHERE replica_id = 'durable' ORDER BY seq")).rows;
        assert.deepEqual(
          rows.map((r) => hashLine(r.line)),
          receipts.map((r) => r.lineHash),
          "every answered record survived the crash",
        );
      } finally {
        await after.end();
      }
    } finally {
      await own.destroy();
    }
  });

  it("fails closed when the database goes down and recovers by itself when it is back", async () => {
    const own = await startPostgres();
    try {
      const d = await own.createDatabase("outage");
      const store = await PostgresAuditStore.open({
        connection: { host: own.socketDir, port: own.port, database: d.database, user: "postgres" },
        replicaId: "outage",
        timeoutMs: 5000,
        retry: { minMs: 200, maxMs: 1000 },
      });
      stores.push(store);
      const before = await Promise.all([1, 2, 3].map((i) => store.append(record(i))));
      await own.stop();
      await assert.rejects(store.append(record(4)), (e: unknown) => e instanceof SignerError && e.code === "AUDIT_UNAVAILABLE");
      assert.equal(store.healthy, false);
      await assert.rejects(store.append(record(5)), (e: unknown) => e instanceof SignerError && e.code === "AUDIT_UNAVAILABLE");
      await own.start();
      const deadline = Date.now() + 60_000;
      while (!store.healthy && Date.now() < deadline) await sleep(100);
      assert.equal(store.healthy, true, "recovered without being reopened");
      const after = await store.append(record(6));
      const c = await own.admin(d.database);
      try {
        const rows = (await c.query<{ seq: string; line: string }>("SELECT seq::text AS seq, line FROM audit_records ORDER BY audit_records.seq")).rows;
        assert.equal(hashLine(rows[0]!.line), before[0]!.lineHash);
        const methods = rows.map((r) => (JSON.parse(r.line) as { method: string }).method);
        assert.ok(methods.includes("AuditLog.Recovered"), "the outage is recorded");
        assert.equal(hashLine(rows.at(-1)!.line), after.lineHash);
        assert.deepEqual((await verifyDatabase(c, undefined)).findings, []);
        assert.ok(!rows.some((r) => (JSON.parse(r.line) as { requestId: string }).requestId === "req-4"), "a rejected record is not there");
      } finally {
        await c.end();
      }
    } finally {
      await own.destroy();
    }
  });
});
