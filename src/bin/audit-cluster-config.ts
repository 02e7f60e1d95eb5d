import { readFileSync } from "node:fs";
import { hostname } from "node:os";
import { isAbsolute, resolve } from "node:path";
import type pg from "pg";
import { SignerError } from "../errors/index.js";

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

type Obj = Record<string, unknown>;
const LOOPBACK = /^(localhost|127(\.\d{1,3}){3}|::1|\[::1\])$/;

/**
 * Reads audit.replicaId, audit.postgres and audit.checkpoints, adding every problem to `problems`.
 * Relative paths are relative to `base` (the configuration file's folder).
 */
export function parseAuditCluster(audit: Obj, base: string, env: NodeJS.ProcessEnv, problems: string[]): AuditClusterConfig {
  const abs = (v: string): string => (isAbsolute(v) ? v : resolve(base, v));
  const str = (o: Obj, k: string, where: string): string | undefined => {
    const v = o[k];
    if (v === undefined || v === null || v === "") return undefined;
    if (typeof v !== "string") {
      problems.push(`${where}.${k}: must be a string`);
      return undefined;
    }
    return v;
  };
  const int = (o: Obj, k: string, where: string, def: number, min: number, max: number): number => {
    const v = o[k];
    if (v === undefined) return def;
    if (typeof v !== "number" || !Number.isInteger(v) || v < min || v > max) {
      problems.push(`${where}.${k}: must be an integer from ${min} to ${max}`);
      return def;
    }
    return v;
  };
  const mapping = (o: Obj, k: string, where: string): Obj | undefined => {
    const v = o[k];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== "object" || Array.isArray(v)) {
      problems.push(`${where}.${k}: must be a mapping`);
      return undefined;
    }
    return v as Obj;
  };
  const replicaId = env[REPLICA_ID_ENV] || str(audit, "replicaId", "audit") || hostname();
  if (replicaId.length > 200 || /[\x00-\x1f]/.test(replicaId)) problems.push("audit.replicaId: 1 to 200 printable characters");

  let postgres: AuditPostgresConfig | undefined;
  let pgSection = mapping(audit, "postgres", "audit");
  if (!pgSection && env[DATABASE_URL_ENV]) pgSection = { urlEnv: DATABASE_URL_ENV };
  if (pgSection) {
    const w = "audit.postgres";
    for (const k of ["password", "url", "connectionString"]) {
      if (k in pgSection) problems.push(`${w}.${k}: secrets never go in the configuration file; use ${w}.passwordFile/passwordEnv or urlFile/urlEnv`);
    }
    const known = new Set([
      "host",
      "port",
      "database",
      "user",
      "passwordFile",
      "passwordEnv",
      "urlFile",
      "urlEnv",
      "tls",
      "timeoutSeconds",
      "lockWaitSeconds",
      "migrate",
      "password",
      "url",
      "connectionString",
    ]);
    for (const k of Object.keys(pgSection)) if (!known.has(k)) problems.push(`${w}.${k}: unknown setting`);
    const host = str(pgSection, "host", w);
    const port = int(pgSection, "port", w, 5432, 1, 65535);
    const database = str(pgSection, "database", w);
    const user = str(pgSection, "user", w);
    const passwordFile = str(pgSection, "passwordFile", w);
    const passwordEnv = str(pgSection, "passwordEnv", w);
    const urlFile = str(pgSection, "urlFile", w);
    const urlEnv = str(pgSection, "urlEnv", w);
    if (passwordFile && passwordEnv) problems.push(`${w}: passwordFile or passwordEnv, not both`);
    if (urlFile && urlEnv) problems.push(`${w}: urlFile or urlEnv, not both`);
    const byUrl = Boolean(urlFile || urlEnv);
    if (byUrl && (host || database || user || passwordFile || passwordEnv)) problems.push(`${w}: a connection string (urlFile/urlEnv) or host/database/user/password settings, not both`);
    if (!byUrl && !host) problems.push(`${w}.host: required (or urlFile/urlEnv)`);
    if (urlEnv && !env[urlEnv]) problems.push(`${w}.urlEnv: the environment variable ${urlEnv} is not set`);
    if (passwordEnv && !env[passwordEnv]) problems.push(`${w}.passwordEnv: the environment variable ${passwordEnv} is not set`);
    const tlsSection = mapping(pgSection, "tls", w) ?? {};
    const caFile = str(tlsSection, "caFile", `${w}.tls`);
    const serverName = str(tlsSection, "serverName", `${w}.tls`);
    if (tlsSection.disable !== undefined && typeof tlsSection.disable !== "boolean") problems.push(`${w}.tls.disable: true or false`);
    const disable = tlsSection.disable === true;
    if (disable && caFile) problems.push(`${w}.tls: caFile or disable, not both`);
    // Without TLS the records (and the password) cross the network in the clear: only over
    // loopback or a Unix socket, unless the operator says so (a network they trust).
    if (!byUrl && host && !caFile && !disable && !LOOPBACK.test(host) && !host.startsWith("/")) {
      problems.push(`${w}.tls.caFile: required for ${host} (TLS to the database), or tls.disable: true on a network you trust`);
    }
    const files: [string, string | undefined][] = [
      [`${w}.passwordFile`, passwordFile],
      [`${w}.urlFile`, urlFile],
      [`${w}.tls.caFile`, caFile],
    ];
    for (const [k, p] of files) {
      if (p) {
        try {
          readFileSync(abs(p));
        } catch (e) {
          problems.push(`${k}: cannot read ${abs(p)} (${(e as NodeJS.ErrnoException).code ?? "error"})`);
        }
      }
    }
    const migrate = pgSection.migrate;
    if (migrate !== undefined && typeof migrate !== "boolean") problems.push(`${w}.migrate: true or false`);
    postgres = {
      host,
      port,
      database,
      user,
      passwordFile: passwordFile ? abs(passwordFile) : undefined,
      passwordEnv,
      urlFile: urlFile ? abs(urlFile) : undefined,
      urlEnv,
      tls: { caFile: caFile ? abs(caFile) : undefined, serverName, disable },
      timeoutMs: int(pgSection, "timeoutSeconds", w, 10, 1, 600) * 1000,
      lockWaitMs: int(pgSection, "lockWaitSeconds", w, 60, 0, 3600) * 1000,
      migrate: migrate !== false,
    };
  }

  let checkpoints: AuditCheckpointConfig | undefined;
  const cpSection = mapping(audit, "checkpoints", "audit") ?? (env[CHECKPOINT_KEY_ENV] ? {} : undefined);
  if (cpSection) {
    const keyId = env[CHECKPOINT_KEY_ENV] || str(cpSection, "keyId", "audit.checkpoints");
    if (!keyId) problems.push("audit.checkpoints.keyId: required (the EC key in the HSM that signs checkpoints)");
    checkpoints = {
      keyId: keyId ?? "",
      everyRecords: int(cpSection, "everyRecords", "audit.checkpoints", 1000, 1, 10_000_000),
      everyMs: int(cpSection, "everySeconds", "audit.checkpoints", 60, 1, 86_400) * 1000,
    };
  }
  return { replicaId, postgres, checkpoints };
}

function readSecret(file: string, what: string): string {
  try {
    return readFileSync(file, "utf8").replace(/\r?\n$/, "");
  } catch (e) {
    throw new SignerError("CONFIG_INVALID", `cannot read the ${what} file ${file} (${(e as NodeJS.ErrnoException).code ?? "error"})`);
  }
}

/** node-postgres settings for audit.postgres, reading the password or connection string now. */
export function postgresConnection(c: AuditPostgresConfig, env: NodeJS.ProcessEnv = process.env): pg.ClientConfig {
  const ssl = c.tls.caFile ? { ca: readFileSync(c.tls.caFile), rejectUnauthorized: true, servername: c.tls.serverName } : undefined;
  if (c.urlFile || c.urlEnv) {
    const url = c.urlFile ? readSecret(c.urlFile, "connection string") : env[c.urlEnv as string];
    if (!url) throw new SignerError("CONFIG_INVALID", `no audit database connection string: the environment variable ${c.urlEnv} is empty`);
    return { connectionString: url, ...(ssl ? { ssl } : {}) };
  }
  const password = c.passwordFile ? readSecret(c.passwordFile, "password") : c.passwordEnv ? env[c.passwordEnv] : undefined;
  return { host: c.host, port: c.port, database: c.database, user: c.user, password, ...(ssl ? { ssl } : c.tls.disable ? { ssl: false } : {}) };
}
