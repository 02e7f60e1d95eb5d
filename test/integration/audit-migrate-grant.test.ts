import assert from "node:assert/strict";
import pg from "pg";
import { getPostgres, type PostgresServer } from "../helpers/postgres.js";
import { spawnCollect } from "../helpers/process.js";
import { HSM_SIGNER } from "../helpers/service-process.js";

/** What README "Roles and GRANTs" documents for the service's role, as (table, privilege). */
const DOCUMENTED = [
  "audit_checkpoints INSERT",
  "audit_checkpoints SELECT",
  "audit_records INSERT",
  "audit_records SELECT",
  "audit_replicas INSERT",
  "audit_replicas SELECT",
  "audit_schema_version SELECT",
];

describe("hsm-signer audit migrate --grant-to ROLE: the schema owner grants the service's role exactly what it needs (real PostgreSQL)", function () {
  this.timeout(120_000);
  const database = "audit_grant_test";
  const owner = `${database}_owner`;
  let server: PostgresServer;
  let app: { role: string; password: string };

  /** `hsm-signer audit migrate --database ...` as the schema owner (not a superuser), over the Unix socket. */
  const migrate = (...more: string[]): ReturnType<typeof spawnCollect> =>
    spawnCollect(HSM_SIGNER, ["audit", "migrate", "--database", ...more], "", {
      env: { ...process.env, HSM_SIGNER_AUDIT_DATABASE_URL: "", PGHOST: server.socketDir, PGPORT: String(server.port), PGUSER: owner, PGDATABASE: database },
      timeoutMs: 60_000,
    });
  const grants = async (grantee: string): Promise<string[]> => {
    const c = await server.admin(database);
    try {
      const r = await c.query<{ g: string }>(
        "SELECT table_name || ' ' || privilege_type AS g FROM information_schema.role_table_grants WHERE grantee = $1 AND table_name LIKE 'audit\\_%' ORDER BY 1",
        [grantee],
      );
      return r.rows.map((x) => x.g);
    } finally {
      await c.end();
    }
  };

  before(async () => {
    server = await getPostgres();
    const d = await server.createDatabase(database);
    app = { role: d.role, password: d.password };
    // The schema's owner: a role of its own that owns the database's public schema, as in a cluster.
    const admin = await server.admin();
    try {
      await admin.query(`CREATE ROLE "${owner}" LOGIN`);
    } finally {
      await admin.end();
    }
    const inDb = await server.admin(database);
    try {
      await inDb.query(`ALTER SCHEMA public OWNER TO "${owner}"`);
    } finally {
      await inDb.end();
    }
  });

  it("refuses PUBLIC, predefined roles, empty and over-long names, and other commands, before connecting (exit 2)", async () => {
    for (const bad of ["public", "PUBLIC", "Public", "pg_write_all_data", "", "r".repeat(64)]) {
      const r = await migrate("--grant-to", bad);
      assert.equal(r.code, 2, `--grant-to ${JSON.stringify(bad)}: exit ${r.code}\n${r.stderr}`);
      assert.match(r.stderr, /--grant-to: /);
    }
    const search = await spawnCollect(HSM_SIGNER, ["audit", "search", "--database", "--grant-to", app.role], "", { timeoutMs: 60_000 });
    assert.equal(search.code, 2, search.stderr);
    assert.match(search.stderr, /--grant-to is an option of audit migrate only/);
    assert.deepEqual(await grants("PUBLIC"), []);
  });

  it("creates the schema, then grants exactly the documented privileges; the role can add and read, not change or remove", async () => {
    const r = await migrate("--grant-to", app.role);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /audit schema migrated to version 1/);
    assert.match(r.stdout, new RegExp(`granted to role ${app.role}: SELECT, INSERT on audit_records, audit_checkpoints, audit_replicas; SELECT on audit_schema_version`));
    assert.deepEqual(await grants(app.role), DOCUMENTED);
    assert.deepEqual(await grants("PUBLIC"), []);

    const c = new pg.Client({ host: server.host, port: server.port, database, user: app.role, password: app.password });
    await c.connect();
    try {
      await c.query("INSERT INTO audit_replicas (replica_id) VALUES ('grant-test')");
      assert.equal((await c.query("SELECT replica_id FROM audit_replicas")).rowCount, 1);
      await c.query("SELECT max(version) FROM audit_schema_version");
      await assert.rejects(c.query("UPDATE audit_replicas SET first_seen = now()"), /permission denied/);
      await assert.rejects(c.query("DELETE FROM audit_replicas"), /permission denied/);
      await assert.rejects(c.query("INSERT INTO audit_schema_version (version) VALUES (99)"), /permission denied/);
    } finally {
      await c.end();
    }

    // Again (the Job re-run): the schema is left alone, the grants are the same.
    const again = await migrate("--grant-to", app.role);
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stdout, /audit schema is up to date\ngranted to role /);
    assert.deepEqual(await grants(app.role), DOCUMENTED);
  });

  it("quotes the name as an identifier: a name with quotes and SQL is a role that does not exist (exit 1), nothing runs", async () => {
    const r = await migrate("--grant-to", 'x"; DROP TABLE audit_records; --');
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /cannot grant the service's privileges to role .*does not exist/);
    const c = await server.admin(database);
    try {
      assert.equal((await c.query("SELECT to_regclass('audit_records')::text AS t")).rows[0]?.t, "audit_records");
    } finally {
      await c.end();
    }
    assert.deepEqual(await grants("PUBLIC"), []);
  });
});
