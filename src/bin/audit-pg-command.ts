import { existsSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { parseArgs } from "node:util";
import pg from "pg";
import { auditFilesIn } from "../audit/audit-log.js";
import { CHECKPOINTS_FILE, parseAuditCertificate } from "../audit/checkpoints.js";
import { grantServiceRole, migrateSchema, serviceRoleProblem, SERVICE_ROLE_PRIVILEGES } from "../audit/postgres-store.js";
import { exportReplica, searchDatabase, verifyAuditDir, verifyDatabase, type StoreVerifyReport } from "../audit/store-verify.js";
import { SignerError } from "../errors/index.js";
import { databaseFlagConnection, parseAuditCluster, postgresConnection } from "./audit-cluster-config.js";
import { auditSearchText, dateFlag, fieldText, LineOutput, noAuditFiles, noAuditRecords, refuseKeyFlag, UsageError } from "./cli-args.js";
import { readConfigYaml } from "./config-fields.js";

/**
 * How long a command waits for a lock (a table another session holds: a VACUUM FULL, an ALTER
 * TABLE, a transaction left open) before it fails, and for any one answer of a hung server or
 * network. A page of verify, search or export is one indexed query.
 */
const LOCK_TIMEOUT_MS = 10_000;
const QUERY_TIMEOUT_MS = 300_000;

/** A client for the audit database, connected; bounded waits so that a hung database fails the command. */
async function connect(configFile: string | undefined, database: boolean | undefined): Promise<pg.Client> {
  let conn: pg.ClientConfig;
  if (configFile) {
    const raw = readConfigYaml(configFile);
    const audit = ((raw ?? {}) as { audit?: unknown }).audit;
    const c = parseAuditCluster(audit, dirname(resolve(configFile)), process.env, configFile);
    if (!c.postgres) throw new UsageError(`${configFile} has no audit.postgres`);
    conn = postgresConnection(c.postgres);
  } else if (database) {
    conn = databaseFlagConnection(process.env);
  } else {
    throw new UsageError("give --config FILE (its audit.postgres) or --database (the connection from the environment)");
  }
  const client = new pg.Client({ ...conn, connectionTimeoutMillis: 10_000, lock_timeout: LOCK_TIMEOUT_MS, query_timeout: QUERY_TIMEOUT_MS, application_name: "hsm-signer-audit-cli" });
  client.on("error", () => undefined); // a lost connection fails the query in flight
  try {
    await client.connect();
  } catch (e) {
    await client.end().catch(() => undefined);
    throw new SignerError("AUDIT_UNAVAILABLE", `cannot connect to the audit database: ${(e as Error).message}`);
  }
  return client;
}

function printReport(r: StoreVerifyReport, json: boolean | undefined): void {
  if (json) {
    console.log(JSON.stringify(r));
    return;
  }
  for (const c of r.chains) {
    const range = c.records > 0 ? `seq ${c.firstSeq} to ${c.lastSeq}` : "no records";
    const cp = c.lastCheckpointSeq ? `${c.checkpoints} checkpoint(s), the last at seq ${c.lastCheckpointSeq}` : "no valid checkpoint";
    console.log(`replica ${c.replica}: ${c.records} record(s), ${range}; ${cp}`);
    if (c.unprotected > 0) console.log(`  ${c.unprotected} record(s) after the last checkpoint, since ${c.unprotectedSince ?? "?"}: not yet protected against truncation`);
  }
  for (const f of r.findings) console.log(`${f.kind.toUpperCase()}: ${f.message}`);
  console.log(r.ok ? "OK: every chain intact and consistent with its checkpoints" : `FAILED: ${r.findings.length} finding(s)`);
}

export async function auditStoreCommand(sub: string | undefined, args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    allowPositionals: false,
    options: {
      "config": { type: "string" },
      "database": { type: "boolean" },
      "dir": { type: "string" },
      "cert": { type: "string" },
      "replica": { type: "string" },
      "out": { type: "string" },
      "artifact": { type: "string" },
      "key-id": { type: "string" },
      "key": { type: "string" },
      "identity": { type: "string" },
      "from": { type: "string" },
      "to": { type: "string" },
      "limit": { type: "string" },
      "json": { type: "boolean" },
      "grant-to": { type: "string" },
    },
  });
  refuseKeyFlag(values.key);
  const grantTo = values["grant-to"];
  if (grantTo !== undefined) {
    if (sub !== "migrate") throw new UsageError("--grant-to is an option of audit migrate only");
    const problem = serviceRoleProblem(grantTo);
    if (problem) throw new UsageError(`--grant-to: ${problem}`);
  }
  const cert = values.cert ? parseAuditCertificate(readFileSync(values.cert)) : undefined;
  if (sub === "verify") {
    if (!cert) throw new UsageError("audit verify with checkpoints needs --cert FILE (the audit key's certificate)");
    let report: StoreVerifyReport;
    if (values.dir) {
      // Without audit files, a checkpoints.jsonl still proves a chain was removed; without both, nothing is there.
      if (auditFilesIn(values.dir).length === 0 && !existsSync(join(values.dir, CHECKPOINTS_FILE))) throw noAuditFiles(values.dir, "verify");
      report = await verifyAuditDir(values.dir, cert, values.replica);
    } else {
      const client = await connect(values.config, values.database);
      try {
        report = await verifyDatabase(client, cert, values.replica);
      } finally {
        await client.end().catch(() => undefined);
      }
    }
    if (report.findings.length === 0 && report.chains.every((c) => c.records === 0)) {
      throw noAuditRecords(values.dir ?? (values.replica === undefined ? "the audit database" : `the audit database for replica "${values.replica}"`));
    }
    printReport(report, values.json);
    return report.ok ? 0 : 1;
  }
  if (sub === "search") {
    const limit = values.limit === undefined ? undefined : Number(values.limit);
    if (limit !== undefined && (!Number.isInteger(limit) || limit < 1)) throw new UsageError("--limit must be a positive integer");
    const q = {
      artifactDigest: values.artifact,
      keyId: values["key-id"],
      identity: values.identity,
      from: dateFlag(values.from, "--from"),
      to: dateFlag(values.to, "--to"),
      replica: values.replica,
      limit,
    };
    const client = await connect(values.config, values.database);
    const out = new LineOutput();
    let n = 0;
    try {
      for await (const { replica, record: r } of searchDatabase(client, q)) {
        n++;
        // The reader is gone (| head): the search stops.
        if (!(await out.line(auditSearchText(r, `${replica}#${fieldText(r.seq)}`, values.json)))) return 0;
      }
    } finally {
      await client.end().catch(() => undefined);
    }
    if (!values.json) await out.line(`${n} record(s)`);
    return 0;
  }
  if (sub === "export") {
    if (!values.replica) throw new UsageError("audit export needs --replica ID");
    if (!values.out) throw new UsageError("audit export needs --out DIR");
    const client = await connect(values.config, values.database);
    try {
      const r = await exportReplica(client, values.replica, values.out);
      console.log(`exported replica ${values.replica}: ${r.records} record(s) in ${r.files} file(s), ${r.checkpoints} checkpoint(s) to ${values.out}`);
    } finally {
      await client.end().catch(() => undefined);
    }
    return 0;
  }
  if (sub === "migrate") {
    const client = await connect(values.config, values.database);
    try {
      const applied = await migrateSchema(client);
      console.log(applied.length ? `audit schema migrated to version ${applied.at(-1)}` : "audit schema is up to date");
      if (grantTo !== undefined) {
        await grantServiceRole(client, grantTo).catch((e: unknown) => {
          throw new SignerError("AUDIT_UNAVAILABLE", `cannot grant the service's privileges to role ${grantTo}: ${(e as Error).message}`);
        });
        console.log(`granted to role ${grantTo}: ${SERVICE_ROLE_PRIVILEGES.map((g) => `${g.privileges} on ${g.tables}`).join("; ")}`);
      }
    } finally {
      await client.end().catch(() => undefined);
    }
    return 0;
  }
  throw new UsageError("usage: hsm-signer audit verify|search|export|migrate ...");
}
