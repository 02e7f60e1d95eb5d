import assert from "node:assert/strict";
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { randomBytes, X509Certificate } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import * as grpc from "@grpc/grpc-js";
import { hashLine } from "../../src/audit/index.js";
import { OPEN_LOOPBACK_POLICY } from "../helpers/fixture.js";
import { getPostgres, grantAuditRole, startPostgres, type PostgresServer } from "../helpers/postgres.js";
import { spawnCollect } from "../helpers/process.js";
import { freePort, HSM_SIGNER, isolatedToken, waitForLog } from "../helpers/service-process.js";
import { callSigner, signerClient, type SignResponse } from "../helpers/signer-client.js";
import type { SoftHsmToken } from "../helpers/softhsm.js";
import { createTlsMaterial, type TlsMaterial } from "../helpers/tls.js";

const run = promisify(execFile);
const SIGNING_KEY = "rel-ec";
const AUDIT_KEY = "audit-cp";

interface Db {
  server: PostgresServer;
  database: string;
  role: string;
  passwordFile: string;
}

interface Service {
  child: ChildProcess;
  port: number;
  metricsPort: number;
  configFile: string;
  client: grpc.Client;
  exited: Promise<number | null>;
  stop(): Promise<number | null>;
}

interface Receipt {
  sequence: number;
  lineHash: string;
}

/** A database with the schema made by its owner (`audit migrate`) and the service's INSERT+SELECT role. */
async function auditDatabase(server: PostgresServer, name: string, dir: string): Promise<Db> {
  const d = await server.createDatabase(name);
  const out = await spawnCollect(HSM_SIGNER, ["audit", "migrate", "--database"], "", {
    env: { ...process.env, PGHOST: server.socketDir, PGPORT: String(server.port), PGUSER: "postgres", PGDATABASE: d.database },
    timeoutMs: 60_000,
  });
  assert.equal(out.code, 0, out.stderr);
  await grantAuditRole(server, d.database, d.role);
  const passwordFile = join(dir, `${name}.password`);
  writeFileSync(passwordFile, `${d.password}\n`, { mode: 0o600 });
  return { server, database: d.database, role: d.role, passwordFile };
}

describe("the audit in PostgreSQL with hsm-signer processes: replicas, outages, SIGKILL, replacement, checkpoints", function () {
  this.timeout(300_000);
  let dir: string;
  let token: SoftHsmToken;
  let tls: TlsMaterial;
  let policyFile: string;
  let certFile: string;
  const services: Service[] = [];

  /** The service's configuration: the database as its INSERT+SELECT role over TCP, checkpoints by the audit key. */
  const writeConfig = async (name: string, db: Db | undefined, replica: string, o: { lockWaitSeconds?: number } = {}): Promise<{ file: string; port: number; metricsPort: number }> => {
    const [port, metricsPort] = [await freePort(), await freePort()];
    const file = join(dir, `${name}.yaml`);
    writeFileSync(
      file,
      [
        `listen: 127.0.0.1:${port}`,
        `tls: { certFile: ${join(tls.dir, "server.pem")}, keyFile: ${join(tls.dir, "server-key.pem")}, clientCaFile: ${tls.caFile} }`,
        `hsm: { module: ${token.module}, tokenLabel: ${token.label}, pinFile: ${token.pinFile}, sessions: 2, keyRefreshSeconds: 0 }`,
        `policy: { file: ${policyFile} }`,
        "audit:",
        `  replicaId: ${replica}`,
        // Without a database: the local files, with checkpoints.jsonl beside them.
        db
          ? `  postgres: { host: ${db.server.host}, port: ${db.server.port}, database: ${db.database}, user: ${db.role}, passwordFile: ${db.passwordFile}, migrate: false, timeoutSeconds: 5, lockWaitSeconds: ${o.lockWaitSeconds ?? 30} }`
          : `  dir: ${join(dir, `${name}-audit`)}`,
        `  checkpoints: { keyId: ${AUDIT_KEY}, everyRecords: 20, everySeconds: 2 }`,
        `metrics: { listen: 127.0.0.1:${metricsPort} }`,
        "shutdown: { graceSeconds: 5 }",
        "",
      ].join("\n"),
    );
    return { file, port, metricsPort };
  };

  const startService = async (name: string, db: Db | undefined, replica: string, o: { lockWaitSeconds?: number } = {}): Promise<Service> => {
    const c = await writeConfig(name, db, replica, o);
    const child = spawn(HSM_SIGNER, ["serve", "--config", c.file], { env: { ...process.env, SOFTHSM2_CONF: token.conf }, stdio: ["ignore", "pipe", "pipe"] });
    const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
    await waitForLog(child, "hsm-signer listening", 90_000);
    const s: Service = {
      child,
      port: c.port,
      metricsPort: c.metricsPort,
      configFile: c.file,
      client: signerClient(tls.ca, c.port, { key: tls.clientKey, cert: tls.clientCert }),
      exited,
      stop: () => {
        s.client.close();
        if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
        return exited;
      },
    };
    services.push(s);
    return s;
  };

  const sign = (s: Service): Promise<SignResponse> => callSigner<SignResponse>(s.client, "Sign", { keyId: SIGNING_KEY, digest: randomBytes(32), hashAlgorithm: "SHA-256" }, Date.now() + 20_000);

  /** Every receipt a client got is a committed record with that hash. */
  const assertCommitted = async (db: Db, replica: string, receipts: Receipt[]): Promise<void> => {
    const c = await db.server.admin(db.database);
    try {
      const rows = (await c.query<{ seq: string; line: string }>("SELECT seq::text AS seq, line FROM audit_records WHERE replica_id = $1", [replica])).rows;
      const byRowSeq = new Map(rows.map((r) => [Number(r.seq), hashLine(r.line)]));
      for (const r of receipts) assert.equal(byRowSeq.get(Number(r.sequence)), r.lineHash, `receipt seq ${r.sequence} of ${replica} is committed`);
    } finally {
      await c.end();
    }
  };

  const verifyCli = (configFile: string): Promise<{ code: number | null; stdout: string; stderr: string }> =>
    spawnCollect(HSM_SIGNER, ["audit", "verify", "--config", configFile, "--cert", certFile], "", { timeoutMs: 120_000 });

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "hsm-signer-audit-cluster-"));
    token = isolatedToken(join(dir, "hsm"), "cluster");
    tls = createTlsMaterial(join(dir, "tls"));
    policyFile = join(dir, "policy.yaml");
    writeFileSync(policyFile, OPEN_LOOPBACK_POLICY);
    // The custodian makes the signing key and the audit key (EC-256) with their chains.
    const bootstrap = join(dir, "bootstrap.yaml");
    mkdirSync(join(dir, "bootstrap-audit"));
    writeFileSync(
      bootstrap,
      [
        `tls: { insecure: true }`,
        `hsm: { module: ${token.module}, tokenLabel: ${token.label}, pinFile: ${token.pinFile} }`,
        `policy: { file: ${policyFile} }`,
        `audit: { dir: ${join(dir, "bootstrap-audit")} }`,
        "",
      ].join("\n"),
    );
    const env = { ...process.env, SOFTHSM2_CONF: token.conf };
    for (const key of [SIGNING_KEY, AUDIT_KEY]) await run(HSM_SIGNER, ["test-chain", "--config", bootstrap, "--key-id", key, "--key-spec", "EC-256"], { env, timeout: 120_000 });
    // The audit key's certificate, read from the token as an auditor would get it from a custodian.
    const der = join(dir, "audit-cp.der");
    await run("pkcs11-tool", ["--module", token.module, "--token-label", token.label, "--read-object", "--type", "cert", "--label", AUDIT_KEY, "-o", der], { env, timeout: 60_000 });
    certFile = join(dir, "audit-cp.pem");
    writeFileSync(certFile, new X509Certificate(readFileSync(der)).toString());
  });

  after(async () => {
    for (const s of services) {
      s.client.close();
      s.child.kill("SIGKILL");
    }
    rmSync(dir, { recursive: true, force: true });
  });

  it("two replicas write one database concurrently; each chain and its checkpoints verify; the audit key signs nothing for callers", async () => {
    const db = await auditDatabase(await getPostgres(), "cluster_two", dir);
    const [a, b] = [await startService("a", db, "replica-a"), await startService("b", db, "replica-b")];
    const receipts = new Map<string, Receipt[]>([
      ["replica-a", []],
      ["replica-b", []],
    ]);
    await Promise.all(
      Array.from({ length: 80 }, async (_, i) => {
        const [s, r] = i % 2 ? [a, "replica-a"] : [b, "replica-b"];
        const res = await sign(s);
        assert.ok(res.receipt);
        receipts.get(r)!.push(res.receipt);
      }),
    );
    await assert.rejects(
      callSigner(a.client, "Sign", { keyId: AUDIT_KEY, digest: randomBytes(32), hashAlgorithm: "SHA-256" }),
      (e: grpc.ServiceError) => e.code === grpc.status.NOT_FOUND && /reserved for audit checkpoints/.test(e.details),
    );
    assert.equal(await a.stop(), 0);
    assert.equal(await b.stop(), 0);
    for (const [r, list] of receipts) await assertCommitted(db, r, list);
    const v = await verifyCli(a.configFile);
    assert.equal(v.code, 0, v.stdout + v.stderr);
    // The last checkpoint, made at shutdown, covers each chain to its end.
    assert.match(v.stdout, /replica replica-a: 41 record\(s\), seq 1 to 41; \d+ checkpoint\(s\), the last at seq 41\n/);
    assert.match(v.stdout, /replica replica-b: 40 record\(s\), seq 1 to 40; \d+ checkpoint\(s\), the last at seq 40\n/);
    assert.match(v.stdout, /^OK/m);
  });

  it("the database stopped mid-burst: no OK without its record, calls fail UNAVAILABLE, not ready, and it recovers without a restart", async () => {
    const own = await startPostgres();
    try {
      const db = await auditDatabase(own, "cluster_outage", dir);
      const s = await startService("outage", db, "replica-outage");
      const ok: Receipt[] = [];
      const failures: number[] = [];
      let running = true;
      const worker = async (): Promise<void> => {
        while (running) {
          try {
            const res = await sign(s);
            ok.push(res.receipt!);
          } catch (e) {
            failures.push((e as grpc.ServiceError).code);
            await sleep(20);
          }
        }
      };
      const workers = Array.from({ length: 4 }, worker);
      const until = async (what: string, cond: () => boolean | Promise<boolean>, ms = 90_000): Promise<void> => {
        const deadline = Date.now() + ms;
        while (!(await cond())) {
          if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
          await sleep(50);
        }
      };
      const ready = async (): Promise<number> => (await fetch(`http://127.0.0.1:${s.metricsPort}/readyz`)).status;
      await until("20 signatures", () => ok.length >= 20);
      // Hold the next group commit in flight (its INSERT waits for this lock), then stop the
      // database under it: those calls must fail, not be answered with an uncommitted record.
      const blocker = await own.admin(db.database);
      await blocker.query("BEGIN");
      await blocker.query("LOCK TABLE audit_records IN ACCESS EXCLUSIVE MODE");
      const watcher = await own.admin(db.database);
      await until(
        "an INSERT waiting for the lock",
        async () =>
          Number((await watcher.query<{ n: string }>("SELECT count(*)::text AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%INSERT INTO audit_records%'")).rows[0]!.n) > 0,
      );
      await watcher.end();
      await own.stop();
      await blocker.end().catch(() => undefined);
      const okWhenStopped = ok.length;
      await until("UNAVAILABLE answers", () => failures.length >= 5);
      await until("readiness NOT_SERVING", async () => (await ready()) === 503);
      await own.start();
      await until("signatures again, without a restart", () => ok.length >= okWhenStopped + 20);
      running = false;
      await Promise.all(workers);
      assert.equal(await ready(), 200);
      assert.ok(failures.length > 0);
      assert.deepEqual([...new Set(failures)], [grpc.status.UNAVAILABLE], "every failed call failed UNAVAILABLE");
      assert.equal(await s.stop(), 0);
      await assertCommitted(db, "replica-outage", ok);
      const c = await own.admin(db.database);
      try {
        const recovered = await c.query("SELECT 1 FROM audit_records WHERE method = 'AuditLog.Recovered'");
        assert.ok(recovered.rowCount! >= 1, "the outage is in the chain");
      } finally {
        await c.end();
      }
      const v = await verifyCli(s.configFile);
      assert.equal(v.code, 0, v.stdout + v.stderr);
    } finally {
      await own.destroy();
    }
  });

  it("a replica SIGKILLed mid-burst: every receipt is committed; a duplicate is refused while it lives; its replacement continues the chain unforked", async () => {
    const db = await auditDatabase(await getPostgres(), "cluster_kill", dir);
    const first = await startService("kill-1", db, "replica-k");
    // A second process with the same replica id while the first lives: refused (it waited lockWaitSeconds).
    const dup = await writeConfig("kill-dup", db, "replica-k", { lockWaitSeconds: 1 });
    const refused = await spawnCollect(HSM_SIGNER, ["serve", "--config", dup.file], "", { env: { ...process.env, SOFTHSM2_CONF: token.conf }, timeoutMs: 120_000 });
    assert.equal(refused.code, 1, refused.stdout + refused.stderr);
    assert.match(refused.stderr, /another process writes the audit chain of replica "replica-k"/);
    const ok: Receipt[] = [];
    let running = true;
    const worker = async (): Promise<void> => {
      while (running) {
        try {
          ok.push((await sign(first)).receipt!);
        } catch {
          return; // killed
        }
      }
    };
    const workers = Array.from({ length: 8 }, worker);
    const deadline = Date.now() + 90_000;
    while (ok.length < 40 && Date.now() < deadline) await sleep(20);
    first.child.kill("SIGKILL");
    await first.exited;
    running = false;
    await Promise.all(workers);
    assert.ok(ok.length >= 40);
    await assertCommitted(db, "replica-k", ok);
    // The replacement takes the chain over (the dead process's connection, and its lock, are gone).
    const second = await startService("kill-2", db, "replica-k");
    const c = await db.server.admin(db.database);
    let before: number;
    try {
      before = Number((await c.query<{ m: string }>("SELECT max(seq)::text AS m FROM audit_records WHERE replica_id = 'replica-k'")).rows[0]!.m);
    } finally {
      await c.end();
    }
    const after: Receipt[] = [];
    for (let i = 0; i < 5; i++) after.push((await sign(second)).receipt!);
    assert.deepEqual(
      after.map((r) => Number(r.sequence)),
      [1, 2, 3, 4, 5].map((i) => before + i),
      "the chain continues where it ended",
    );
    assert.equal(await second.stop(), 0);
    await assertCommitted(db, "replica-k", after);
    const v = await verifyCli(second.configFile);
    assert.equal(v.code, 0, v.stdout + v.stderr);
    assert.match(v.stdout, new RegExp(`replica replica-k: ${before + 5} record\\(s\\), seq 1 to ${before + 5}; \\d+ checkpoint\\(s\\), the last at seq ${before + 5}\\n`));
  });

  it("the file log of a service process gets checkpoints too: verify --dir --cert passes, and a cut tail is caught", async () => {
    const s = await startService("files", undefined, "replica-files");
    for (let i = 0; i < 30; i++) await sign(s);
    assert.equal(await s.stop(), 0);
    const auditDir = join(dir, "files-audit");
    const ok = await spawnCollect(HSM_SIGNER, ["audit", "verify", "--dir", auditDir, "--cert", certFile], "", { timeoutMs: 60_000 });
    assert.equal(ok.code, 0, ok.stdout + ok.stderr);
    assert.match(ok.stdout, /replica replica-files: 30 record\(s\), seq 1 to 30; \d+ checkpoint\(s\), the last at seq 30\n/);
    const file = join(auditDir, "audit-0000000000000001.jsonl");
    const lines = readFileSync(file, "utf8").split("\n").filter(Boolean);
    writeFileSync(file, `${lines.slice(0, 25).join("\n")}\n`);
    const cut = await spawnCollect(HSM_SIGNER, ["audit", "verify", "--dir", auditDir, "--cert", certFile], "", { timeoutMs: 60_000 });
    assert.equal(cut.code, 1);
    assert.match(cut.stdout, /^TAIL-CUT: the chain ends at seq 25 but a checkpoint .* up to seq 30: records 26 to 30 were cut off$/m);
  });
});
