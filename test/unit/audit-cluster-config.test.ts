import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { databaseFlagConnection, parseAuditCluster, postgresConnection } from "../../src/bin/audit-cluster-config.js";
import { loadConfig } from "../../src/bin/config.js";
import { SignerError } from "../../src/errors/index.js";

describe("configuration: audit.postgres, audit.replicaId and audit.checkpoints", () => {
  let dir: string;
  const base = "listen: 127.0.0.1:8443\ntls: { insecure: true }\nhsm: { module: /usr/lib/softhsm/libsofthsm2.so, tokenLabel: t, pinFile: pin }\npolicy: { file: policy.yaml }\n";
  const write = (yaml: string): string => {
    const f = join(dir, "config.yaml");
    writeFileSync(f, base + yaml);
    return f;
  };
  const problems = (yaml: string, env: NodeJS.ProcessEnv = {}): string => {
    try {
      loadConfig(write(yaml), env);
    } catch (e) {
      assert.ok(e instanceof SignerError && e.code === "CONFIG_INVALID");
      return e.message;
    }
    assert.fail("the configuration was accepted");
  };

  before(() => {
    dir = mkdtempSync(join(tmpdir(), "hsm-signer-audit-config-"));
    writeFileSync(join(dir, "pg-password"), "s3cret\n");
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it("a database instead of audit.dir; the password read from its file at connection time; replica id from the host name by default", () => {
    const c = loadConfig(write("audit:\n  postgres: { host: 127.0.0.1, database: audit, user: signer, passwordFile: pg-password }\n  checkpoints: { keyId: audit-cp }\n"), {});
    assert.equal(c.audit.dir, "");
    assert.equal(c.audit.replicaId, hostname());
    assert.deepEqual(c.audit.checkpoints, { keyId: "audit-cp", everyRecords: 1000, everyMs: 60_000 });
    assert.equal(c.audit.postgres?.passwordFile, join(dir, "pg-password"));
    assert.equal(JSON.stringify(c).includes("s3cret"), false, "the password is not in the configuration");
    const conn = postgresConnection(c.audit.postgres!, {});
    assert.equal(conn.password, "s3cret");
    assert.equal(conn.port, 5432);
  });

  it("HSM_SIGNER_REPLICA_ID, HSM_SIGNER_AUDIT_DATABASE_URL and HSM_SIGNER_AUDIT_CHECKPOINT_KEY_ID configure a replica without YAML", () => {
    const env = { HSM_SIGNER_REPLICA_ID: "hsm-signer-2", HSM_SIGNER_AUDIT_DATABASE_URL: "postgres://u:p@db:5432/audit?sslmode=disable", HSM_SIGNER_AUDIT_CHECKPOINT_KEY_ID: "audit-cp" };
    const c = loadConfig(write(""), env);
    assert.equal(c.audit.replicaId, "hsm-signer-2");
    assert.equal(c.audit.postgres?.urlEnv, "HSM_SIGNER_AUDIT_DATABASE_URL");
    assert.equal(c.audit.checkpoints?.keyId, "audit-cp");
    assert.equal(postgresConnection(c.audit.postgres!, env).connectionString, env.HSM_SIGNER_AUDIT_DATABASE_URL);
  });

  it("a connection string to a remote database without TLS is refused (naming the host, never the string); TLS, an explicit sslmode=disable, loopback and sockets pass", () => {
    const c = loadConfig(write(""), { HSM_SIGNER_AUDIT_DATABASE_URL: "x" });
    const conn = (url: string): unknown => postgresConnection(c.audit.postgres!, { HSM_SIGNER_AUDIT_DATABASE_URL: url });
    for (const url of ["postgres://u:pw-SECRET@db.example:5432/audit", "postgres://u:pw-SECRET@10.0.0.5/audit?sslmode=allow", "postgresql://u:pw-SECRET@db.example/audit?application_name=x"]) {
      assert.throws(
        () => conn(url),
        (e: SignerError) => e.code === "CONFIG_INVALID" && /HSM_SIGNER_AUDIT_DATABASE_URL\) reaches (db\.example|10\.0\.0\.5) without TLS/.test(e.message) && !e.message.includes("pw-SECRET"),
        url,
      );
    }
    for (const url of [
      "postgres://u:p@db.example/audit?sslmode=verify-full&sslrootcert=/etc/ca.crt",
      "postgres://u:p@db.example/audit?sslmode=require",
      "postgres://u:p@db.example/audit?ssl=true",
      "postgres://u:p@db.example/audit?sslmode=disable",
      "postgres://u:p@127.0.0.1:5432/audit",
      "postgres://u:p@localhost/audit",
      "postgres://u:p@[::1]/audit",
      "postgres:///audit?host=/var/run/postgresql",
    ]) {
      assert.equal((conn(url) as { connectionString: string }).connectionString, url);
    }
  });

  it("the audit commands' --database (HSM_SIGNER_AUDIT_DATABASE_URL, else PG*): the same rule, before connecting; loopback, sockets, TLS and an explicit disable pass", () => {
    const refused = (env: NodeJS.ProcessEnv, source: RegExp): void =>
      assert.throws(
        () => databaseFlagConnection(env),
        (e: SignerError) => e.code === "CONFIG_INVALID" && source.test(e.message) && / reaches db\.example without TLS/.test(e.message) && !e.message.includes("pw-SECRET"),
      );
    refused({ HSM_SIGNER_AUDIT_DATABASE_URL: "postgres://u:pw-SECRET@db.example/audit" }, /connection string \(HSM_SIGNER_AUDIT_DATABASE_URL\)/);
    refused({ PGHOST: "db.example", PGPASSWORD: "pw-SECRET" }, /connection \(PGHOST\)/);
    refused({ PGHOST: "db.example", PGSSLMODE: "allow" }, /connection \(PGHOST\)/);
    const url = "postgres://u:p@db.example/audit?sslmode=verify-full&sslrootcert=/etc/ca.crt";
    assert.deepEqual(databaseFlagConnection({ HSM_SIGNER_AUDIT_DATABASE_URL: url }), { connectionString: url });
    for (const env of [{}, { PGHOST: "/var/run/postgresql" }, { PGHOST: "127.0.0.1" }, { PGHOST: "db.example", PGSSLMODE: "verify-full" }, { PGHOST: "db.example", PGSSLMODE: "disable" }]) {
      assert.deepEqual(databaseFlagConnection(env), {}, JSON.stringify(env));
    }
  });

  it("secrets in the YAML, plaintext to a remote database, and every other problem are listed at once", () => {
    const msg = problems("audit:\n  postgres: { host: db.example, password: hunter2, url: x, timeoutSeconds: 0, bogus: 1 }\n  checkpoints: { everyRecords: 0 }\n");
    assert.match(msg, /audit\.postgres\.password: secrets never go in the configuration file/);
    assert.match(msg, /audit\.postgres\.url: secrets never go/);
    assert.match(msg, /audit\.postgres\.tls\.caFile: required for db\.example/);
    assert.match(msg, /audit\.postgres\.timeoutSeconds: must be an integer from 1 to 600/);
    assert.match(msg, /audit\.postgres\.bogus: unknown setting/);
    assert.match(msg, /audit\.checkpoints\.keyId: required/);
    assert.match(msg, /audit\.checkpoints\.everyRecords: must be an integer/);
    assert.equal(msg.includes("hunter2"), false, "the secret is not echoed");
    assert.match(problems(""), /audit\.dir: required \(every request is audited\), or audit\.postgres/);
    assert.match(problems("audit:\n  postgres: { urlEnv: NOPE }\n"), /the environment variable NOPE is not set/);
  });

  it("a connection string or a password written where its variable's name goes (urlEnv, passwordEnv) is not echoed; a variable's name is", () => {
    const url = "postgres://svc:hunter2SECRET@db.example/audit";
    for (const [yaml, setting] of [
      [`audit:\n  postgres: { urlEnv: "${url}" }\n`, "urlEnv"],
      ["audit:\n  postgres: { host: 127.0.0.1, passwordEnv: hunter2SECRET }\n", "passwordEnv"],
      ["audit:\n  postgres: { host: 127.0.0.1, passwordEnv: 'pw with spaces hunter2SECRET' }\n", "passwordEnv"],
    ] as const) {
      const msg = problems(yaml);
      assert.match(msg, new RegExp(`audit\\.postgres\\.${setting}: is not the name of a set environment variable.*so it is not shown; give the NAME of a variable`), msg);
      assert.equal(msg.includes("hunter2SECRET"), false, `the secret is not echoed:\n${msg}`);
    }
    assert.match(problems("audit:\n  postgres: { host: 127.0.0.1, passwordEnv: AUDIT_DB_PASSWORD }\n"), /audit\.postgres\.passwordEnv: the environment variable AUDIT_DB_PASSWORD is not set/);
    // The service's own path (audit search --config, serve): parseAuditCluster, the same rule.
    assert.throws(
      () => parseAuditCluster({ postgres: { urlEnv: url } }, dir, {}, "c2.yaml"),
      (e: SignerError) => e.code === "CONFIG_INVALID" && /audit\.postgres\.urlEnv: is not the name/.test(e.message) && !e.message.includes("hunter2SECRET"),
    );
  });
});
