import { readFileSync } from "node:fs";
import { hostname } from "node:os";
import { isAbsolute, resolve } from "node:path";
import type pg from "pg";
import * as v from "valibot";
import { SignerError } from "../errors/index.js";
import { at, deepFreeze, isMapping, mapping, validate } from "../schema/index.js";
import { integer, optionalString, readablePath, secondsAsMs, variableNotSet } from "./config-fields.js";

/** The whole connection string, when the configuration has no audit.postgres (compose, simple setups). */
export const DATABASE_URL_ENV = "HSM_SIGNER_AUDIT_DATABASE_URL";
export const REPLICA_ID_ENV = "HSM_SIGNER_REPLICA_ID";
export const CHECKPOINT_KEY_ENV = "HSM_SIGNER_AUDIT_CHECKPOINT_KEY_ID";

/** audit.postgres: where the audit records go when a database is configured. Secrets are named, never given. */
export interface AuditPostgresConfig {
  host?: string;
  port?: number;
  database?: string;
  user?: string;
  passwordFile?: string;
  passwordEnv?: string;
  urlFile?: string;
  urlEnv?: string;
  tls: { caFile?: string; serverName?: string; disable: boolean };
  timeoutMs: number;
  lockWaitMs: number;
  migrate: boolean;
}

/** audit.checkpoints: the HSM key that signs checkpoints of the chain, and how often. */
export interface AuditCheckpointConfig {
  keyId: string;
  everyRecords: number;
  everyMs: number;
}

export interface AuditClusterConfig {
  /** This replica's chain: audit.replicaId, else $HSM_SIGNER_REPLICA_ID, else the host name (a StatefulSet pod's stable name). */
  replicaId: string;
  postgres: AuditPostgresConfig | undefined;
  checkpoints: AuditCheckpointConfig | undefined;
}

const LOOPBACK = /^(localhost|127(\.\d{1,3}){3}|::1|\[::1\])$/;
/** A database host reached without crossing a network: loopback, or a Unix socket's directory. */
const isLocalHost = (host: string): boolean => LOOPBACK.test(host) || host.startsWith("/");
const SECRETS = "secrets never go in the configuration file; use audit.postgres.passwordFile/passwordEnv or urlFile/urlEnv";

/**
 * The entries of audit.replicaId, audit.postgres and audit.checkpoints in the configuration's schema
 * (config.ts), with the environment already merged in (withAuditEnv). Relative paths are relative
 * to the configuration file's folder (`path`); files are read, variables looked up, so that every
 * problem is listed with the rest.
 */
export function auditClusterEntries(path: (p: string) => string, env: NodeJS.ProcessEnv) {
  const file = readablePath(path);
  const variable = v.pipe(
    optionalString,
    v.check(
      (name) => name === undefined || Boolean(env[name]),
      (issue) => variableNotSet(String(issue.input)),
    ),
  );
  const postgres = v.pipe(
    mapping({
      host: optionalString,
      port: integer(1, 65535, 5432),
      database: optionalString,
      user: optionalString,
      passwordFile: file,
      passwordEnv: variable,
      urlFile: file,
      urlEnv: variable,
      tls: v.optional(mapping({ caFile: file, serverName: optionalString, disable: v.optional(v.boolean("true or false"), false) }), {}),
      timeoutSeconds: secondsAsMs(1, 600, 10),
      lockWaitSeconds: secondsAsMs(0, 3600, 60),
      migrate: v.optional(v.boolean("true or false"), true),
      password: v.optional(v.custom<never>(() => false, SECRETS)),
      url: v.optional(v.custom<never>(() => false, SECRETS)),
      connectionString: v.optional(v.custom<never>(() => false, SECRETS)),
    }),
    v.rawCheck(({ dataset, addIssue }) => {
      const p = dataset.value;
      if (!isMapping(p)) return;
      const tls = isMapping(p.tls) ? p.tls : {};
      const byUrl = Boolean(p.urlFile || p.urlEnv);
      if (p.passwordFile && p.passwordEnv) addIssue({ message: "passwordFile or passwordEnv, not both" });
      if (p.urlFile && p.urlEnv) addIssue({ message: "urlFile or urlEnv, not both" });
      if (byUrl && (p.host || p.database || p.user || p.passwordFile || p.passwordEnv)) addIssue({ message: "a connection string (urlFile/urlEnv) or host/database/user/password settings, not both" });
      if (!byUrl && !p.host) addIssue({ message: "required (or urlFile/urlEnv)", path: [at(p, "host")] });
      if (tls.disable === true && tls.caFile) addIssue({ message: "caFile or disable, not both", path: [at(p, "tls")] });
      // Without TLS the records (and the password) cross the network in the clear: only over
      // loopback or a Unix socket, unless the operator says so (a network they trust).
      const host = p.host;
      if (!byUrl && typeof host === "string" && !tls.caFile && tls.disable !== true && !isLocalHost(host)) {
        addIssue({ message: `required for ${host} (TLS to the database), or tls.disable: true on a network you trust`, path: [at(p, "tls"), at(tls, "caFile")] });
      }
    }),
  );
  const checkpoints = mapping(
    {
      keyId: v.pipe(
        optionalString,
        v.check((k) => k !== undefined, "required (the EC key in the HSM that signs checkpoints)"),
      ),
      everyRecords: integer(1, 10_000_000, 1000),
      everySeconds: secondsAsMs(1, 86_400, 60),
    },
    { keyId: "required (the EC key in the HSM that signs checkpoints)" },
  );
  return {
    replicaId: v.pipe(
      optionalString,
      v.transform((id) => id ?? hostname()),
      v.check((id) => id.length <= 200 && !/[\x00-\x1f]/.test(id), "1 to 200 printable characters"),
    ),
    postgres: v.optional(v.nullable(postgres)),
    checkpoints: v.optional(v.nullable(checkpoints)),
  };
}

/**
 * The environment's part in the audit section, merged into (a copy of) it before validation:
 * HSM_SIGNER_REPLICA_ID, a whole connection string when there is no audit.postgres, the
 * checkpoint key.
 */
export function withAuditEnv(audit: Record<string, unknown>, env: NodeJS.ProcessEnv): Record<string, unknown> {
  const out = { ...audit };
  if (env[REPLICA_ID_ENV]) out.replicaId = env[REPLICA_ID_ENV];
  if ((out.postgres === undefined || out.postgres === null) && env[DATABASE_URL_ENV]) out.postgres = { urlEnv: DATABASE_URL_ENV };
  if (env[CHECKPOINT_KEY_ENV]) {
    if (out.checkpoints === undefined || out.checkpoints === null) out.checkpoints = {};
    if (isMapping(out.checkpoints)) out.checkpoints = { ...out.checkpoints, keyId: env[CHECKPOINT_KEY_ENV] };
  }
  return out;
}

type AuditClusterOutput = v.InferOutput<v.ObjectSchema<ReturnType<typeof auditClusterEntries>, undefined>>;

/** The validated entries as the services take them. */
export function auditClusterConfig(a: AuditClusterOutput): AuditClusterConfig {
  const p = a.postgres;
  const cp = a.checkpoints;
  return {
    replicaId: a.replicaId,
    postgres: p
      ? {
          host: p.host,
          port: p.port,
          database: p.database,
          user: p.user,
          passwordFile: p.passwordFile,
          passwordEnv: p.passwordEnv,
          urlFile: p.urlFile,
          urlEnv: p.urlEnv,
          tls: { caFile: p.tls.caFile, serverName: p.tls.serverName, disable: p.tls.disable },
          timeoutMs: p.timeoutSeconds,
          lockWaitMs: p.lockWaitSeconds,
          migrate: p.migrate,
        }
      : undefined,
    checkpoints: cp ? { keyId: cp.keyId as string, everyRecords: cp.everyRecords, everyMs: cp.everySeconds } : undefined,
  };
}

/**
 * The audit section alone (the audit commands, which need no HSM or TLS settings): its cluster
 * entries validated, its other settings ignored. Throws CONFIG_INVALID listing every problem.
 */
export function parseAuditCluster(audit: unknown, base: string, env: NodeJS.ProcessEnv, source: string): AuditClusterConfig {
  const path = (p: string): string => (isAbsolute(p) ? p : resolve(base, p));
  const r = validate(v.looseObject(auditClusterEntries(path, env), "must be a mapping"), withAuditEnv(isMapping(audit) ? audit : {}, env));
  if (!r.ok) throw new SignerError("CONFIG_INVALID", `configuration ${source} has ${r.problems.length} problem(s):\n  - ${r.problems.map((p) => `audit.${p}`).join("\n  - ")}`);
  return deepFreeze(auditClusterConfig(r.value));
}

function readSecret(file: string, what: string): string {
  try {
    return readFileSync(file, "utf8").replace(/\r?\n$/, "");
  } catch (e) {
    throw new SignerError("CONFIG_INVALID", `cannot read the ${what} file ${file} (${(e as NodeJS.ErrnoException).code ?? "error"})`);
  }
}

/** sslmode values with which node-postgres encrypts the connection (pg-connection-string). */
const TLS_SSLMODES = new Set(["prefer", "require", "verify-ca", "verify-full", "no-verify"]);

/**
 * The host a connection string reaches in the clear: not loopback or a Unix socket, and neither
 * TLS (sslmode, ssl=true) nor an explicit sslmode=disable. The same rule as for host settings: the
 * records and the password do not cross a network in the clear unless the operator says so. A
 * string that is not a URL is left to the driver (which names the problem without echoing it).
 */
export function plaintextRemoteHost(connectionString: string): string | undefined {
  let u: URL;
  try {
    u = new URL(connectionString);
  } catch {
    return undefined;
  }
  const q = u.searchParams;
  const host = u.hostname || q.get("host") || "";
  if (host === "" || isLocalHost(host)) return undefined;
  const sslmode = q.get("sslmode");
  if (sslmode === "disable" || (sslmode !== null && TLS_SSLMODES.has(sslmode))) return undefined;
  const sslParam = q.get("ssl");
  if (sslmode === null && (sslParam === "true" || sslParam === "1")) return undefined;
  return host;
}

/**
 * CONFIG_INVALID when the connection string reaches a remote host in the clear
 * (plaintextRemoteHost). `source` says where it came from, never what it is: it holds the password.
 */
function refusePlaintext(connectionString: string, source: string, otherFix = ""): void {
  const host = plaintextRemoteHost(connectionString);
  if (host === undefined) return;
  throw new SignerError(
    "CONFIG_INVALID",
    `the audit database connection string (${source}) reaches ${host} without TLS: add sslmode=verify-full with sslrootcert${otherFix}, or sslmode=disable on a network you trust`,
  );
}

/**
 * node-postgres settings for the audit commands' --database: $HSM_SIGNER_AUDIT_DATABASE_URL, else
 * the PG* variables the driver reads itself (PGHOST, PGSSLMODE...). The rule of audit.postgres
 * holds here too: nothing in the clear to a host that is not loopback or a Unix socket, checked
 * before connecting (the password would be sent in the clear otherwise).
 */
export function databaseFlagConnection(env: NodeJS.ProcessEnv = process.env): pg.ClientConfig {
  const url = env[DATABASE_URL_ENV];
  if (url) {
    refusePlaintext(url, DATABASE_URL_ENV);
    return { connectionString: url };
  }
  // node-postgres without settings: PGHOST (default localhost), TLS when PGSSLMODE asks for it.
  const host = env.PGHOST ?? "";
  const sslmode = env.PGSSLMODE ?? "";
  if (host !== "" && !isLocalHost(host) && sslmode !== "disable" && !TLS_SSLMODES.has(sslmode)) {
    throw new SignerError(
      "CONFIG_INVALID",
      `the audit database connection (PGHOST) reaches ${host} without TLS: set PGSSLMODE=verify-full (the system's CAs; for another CA, ${DATABASE_URL_ENV} with sslmode=verify-full and sslrootcert), or PGSSLMODE=disable on a network you trust`,
    );
  }
  return {};
}

/** node-postgres settings for audit.postgres, reading the password or connection string now. */
export function postgresConnection(c: AuditPostgresConfig, env: NodeJS.ProcessEnv = process.env): pg.ClientConfig {
  const ssl = c.tls.caFile ? { ca: readFileSync(c.tls.caFile), rejectUnauthorized: true, servername: c.tls.serverName } : undefined;
  if (c.urlFile || c.urlEnv) {
    const url = c.urlFile ? readSecret(c.urlFile, "connection string") : env[c.urlEnv as string];
    if (!url) throw new SignerError("CONFIG_INVALID", `no audit database connection string: ${c.urlFile ? `${c.urlFile} is empty` : `audit.postgres.urlEnv: ${variableNotSet(c.urlEnv as string)}`}`);
    if (!ssl && !c.tls.disable) refusePlaintext(url, c.urlFile ? "audit.postgres.urlFile" : (c.urlEnv as string), " (or set audit.postgres.tls.caFile)");
    return { connectionString: url, ...(ssl ? { ssl } : {}) };
  }
  const password = c.passwordFile ? readSecret(c.passwordFile, "password") : c.passwordEnv ? env[c.passwordEnv] : undefined;
  return { host: c.host, port: c.port, database: c.database, user: c.user, password, ...(ssl ? { ssl } : c.tls.disable ? { ssl: false } : {}) };
}
