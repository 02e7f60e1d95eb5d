import { readFileSync } from "node:fs";
import { dirname, isAbsolute, resolve } from "node:path";
import { parse as parseYaml } from "yaml";
import { auditDirProblem, DEFAULT_WRITE_TIMEOUT_MS } from "../audit/index.js";
import { SignerError } from "../errors/index.js";
import { DEFAULT_POOL_SIZE, DEFAULT_KEY_REFRESH_MS } from "../hsm/index.js";
import type { LogLevel } from "../log/index.js";
import { MAX_PAYLOAD_BYTES } from "../signing/signing-service.js";

/** A signature still inside the HSM after this long means the HSM or the network to it hangs (hsm.signStallSeconds). */
const DEFAULT_SIGN_STALL_MS = 15_000;
import { DEFAULT_MAX_DEADLINE_MS, isLoopbackAddress } from "../server/signer-server.js";
import { parseAuditCluster, type AuditClusterConfig } from "./audit-cluster-config.js";

export const DEFAULT_PIN_ENV = "HSM_SIGNER_PIN";

export interface Config {
  listen: string;
  tls: { insecure: boolean; certFile?: string; keyFile?: string; clientCaFile?: string };
  hsm: { module: string; tokenLabel?: string; tokenSerial?: string; pinFile?: string; pinEnv: string; sessions: number; keyRefreshMs: number; signStallMs: number };
  limits: { maxPayloadBytes: number; maxDeadlineMs: number };
  log: { level: LogLevel };
  auth: { mtlsIdentityFrom: ("uri" | "dns" | "cn")[]; jwt: JwtIssuerConfig[] };
  policy: { file: string };
  audit: { dir: string; maxFileBytes: number; fsync: boolean; writeTimeoutMs: number } & AuditClusterConfig;
  /** The HTTP listener for /metrics, /healthz and /readyz, and a plaintext grpc.health.v1-only listener (kubelet probes); none when unset. */
  metrics: { listen: string | undefined; grpcHealthListen: string | undefined };
  /** SIGTERM: how long in-flight calls may take to finish before they are cancelled. */
  shutdown: { graceMs: number };
  /** The KeyAdmin listener (mTLS only); none when unset. */
  admin: { listen: string | undefined; certFile?: string; keyFile?: string; clientCaFile?: string };
}

export interface JwtIssuerConfig {
  issuer: string;
  audience: string;
  jwksFile?: string;
  jwksUrl?: string;
  jwksCaFile?: string;
  algorithms: string[];
  clockSkewSeconds?: number;
}

export const DEFAULT_AUDIT_MAX_FILE_BYTES = 64 * 1024 * 1024;

/** The files and settings serve opens, as the configuration names them (undefined: missing, already a problem); for `config check`. */
export interface ConfigFiles {
  tls: { insecure: boolean; certFile: string | undefined; keyFile: string | undefined; clientCaFile: string | undefined };
  hsm: { module: string | undefined; pinFile: string | undefined; pinEnv: string };
  jwt: JwtIssuerConfig[];
  policyFile: string | undefined;
  auditDir: string | undefined;
  admin: { listen: string | undefined; certFile: string | undefined; keyFile: string | undefined; clientCaFile: string | undefined };
}

/** Opens what the configuration names and returns each problem (config-check.ts). */
export type ConfigFilesCheck = (files: ConfigFiles, env: NodeJS.ProcessEnv) => string[];

type Obj = Record<string, unknown>;

/**
 * Reads the YAML (or JSON) configuration, applies HSM_SIGNER_* environment overrides and
 * validates everything, reporting every problem at once. Relative paths are relative to the file.
 */
export function loadConfig(file: string, env: NodeJS.ProcessEnv = process.env, checkFiles?: ConfigFilesCheck): Readonly<Config> {
  let raw: unknown;
  try {
    raw = parseYaml(readFileSync(file, "utf8"));
  } catch (e) {
    throw new SignerError("CONFIG_INVALID", `cannot read configuration ${file}: ${(e as Error).message}`);
  }
  const base = dirname(resolve(file));
  const problems: string[] = [];
  const root = (raw ?? {}) as Obj;
  const section = (name: string): Obj => {
    const v = root[name];
    if (v === undefined) return {};
    if (typeof v !== "object" || v === null || Array.isArray(v)) {
      problems.push(`${name}: must be a mapping`);
      return {};
    }
    return v as Obj;
  };
  const tls = section("tls");
  const hsm = section("hsm");
  const limits = section("limits");
  const log = section("log");
  const str = (o: Obj, k: string, where: string, envName?: string): string | undefined => {
    const e = envName ? env[envName] : undefined;
    const v = e ?? o[k];
    if (v === undefined || v === null || v === "") return undefined;
    if (typeof v !== "string") {
      problems.push(`${where}.${k}: must be a string`);
      return undefined;
    }
    return v;
  };
  const path = (o: Obj, k: string, where: string, envName?: string): string | undefined => {
    const v = str(o, k, where, envName);
    return v === undefined ? undefined : isAbsolute(v) ? v : resolve(base, v);
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
  const listen = (env.HSM_SIGNER_LISTEN ?? root.listen ?? "127.0.0.1:8443") as string;
  if (typeof listen !== "string" || !/^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}$/.test(listen)) problems.push(`listen: "${String(listen)}" is not host:port`);
  const insecure = tls.insecure === true;
  const certFile = path(tls, "certFile", "tls");
  const keyFile = path(tls, "keyFile", "tls");
  const clientCaFile = path(tls, "clientCaFile", "tls");
  if (insecure) {
    if (typeof listen === "string" && !isLoopbackAddress(listen)) problems.push(`tls.insecure: plaintext is only allowed on a loopback address, and listen is ${listen}`);
  } else {
    if (!certFile) problems.push("tls.certFile: required (or tls.insecure: true on a loopback address)");
    if (!keyFile) problems.push("tls.keyFile: required (or tls.insecure: true on a loopback address)");
  }
  for (const [k, p] of [
    ["tls.certFile", certFile],
    ["tls.keyFile", keyFile],
    ["tls.clientCaFile", clientCaFile],
  ] as const) {
    if (p) {
      try {
        readFileSync(p);
      } catch (e) {
        problems.push(`${k}: cannot read ${p} (${(e as NodeJS.ErrnoException).code ?? "error"})`);
      }
    }
  }
  const module = path(hsm, "module", "hsm", "HSM_SIGNER_HSM_MODULE");
  if (!module) problems.push("hsm.module: required (path of the PKCS#11 library)");
  const tokenLabel = str(hsm, "tokenLabel", "hsm", "HSM_SIGNER_TOKEN_LABEL");
  const tokenSerial = str(hsm, "tokenSerial", "hsm", "HSM_SIGNER_TOKEN_SERIAL");
  if (!tokenLabel && !tokenSerial) problems.push("hsm.tokenLabel or hsm.tokenSerial: one is required");
  if ("pin" in hsm) problems.push("hsm.pin: the PIN never goes in the configuration file; use hsm.pinFile or hsm.pinEnv");
  const pinFile = path(hsm, "pinFile", "hsm", "HSM_SIGNER_PIN_FILE");
  const pinEnv = str(hsm, "pinEnv", "hsm") ?? DEFAULT_PIN_ENV;
  const sessions = int(hsm, "sessions", "hsm", DEFAULT_POOL_SIZE, 1, 256);
  const keyRefreshMs = int(hsm, "keyRefreshSeconds", "hsm", DEFAULT_KEY_REFRESH_MS / 1000, 0, 86400) * 1000;
  const signStallMs = int(hsm, "signStallSeconds", "hsm", DEFAULT_SIGN_STALL_MS / 1000, 1, 3600) * 1000;
  const maxPayloadBytes = int(limits, "maxPayloadBytes", "limits", MAX_PAYLOAD_BYTES, 1, MAX_PAYLOAD_BYTES);
  const maxDeadlineMs = int(limits, "maxDeadlineSeconds", "limits", DEFAULT_MAX_DEADLINE_MS / 1000, 1, 3600) * 1000;
  const level = (env.HSM_SIGNER_LOG_LEVEL ?? log.level ?? "info") as LogLevel;
  if (!["debug", "info", "warn", "error"].includes(level)) problems.push(`log.level: "${String(level)}" is not debug, info, warn or error`);
  const auth = section("auth");
  const policySection = section("policy");
  const auditSection = section("audit");
  const from = (auth.mtlsIdentityFrom ?? ["uri", "dns", "cn"]) as unknown;
  const mtlsIdentityFrom: ("uri" | "dns" | "cn")[] = [];
  if (!Array.isArray(from) || from.length === 0 || from.some((x) => x !== "uri" && x !== "dns" && x !== "cn")) problems.push("auth.mtlsIdentityFrom: a non-empty list of uri, dns, cn");
  else mtlsIdentityFrom.push(...(from as ("uri" | "dns" | "cn")[]));
  const jwt: JwtIssuerConfig[] = [];
  const jwtRaw = auth.jwt ?? [];
  if (!Array.isArray(jwtRaw)) problems.push("auth.jwt: must be a list of issuers");
  else
    jwtRaw.forEach((j: unknown, i: number) => {
      const w = `auth.jwt[${i}]`;
      if (typeof j !== "object" || j === null) {
        problems.push(`${w}: must be a mapping`);
        return;
      }
      const o = j as Obj;
      const issuer = str(o, "issuer", w);
      const audience = str(o, "audience", w);
      const jwksFile = path(o, "jwksFile", w);
      const jwksUrl = str(o, "jwksUrl", w);
      const jwksCaFile = path(o, "jwksCaFile", w);
      if (!issuer) problems.push(`${w}.issuer: required`);
      if (!audience) problems.push(`${w}.audience: required`);
      if (!jwksFile === !jwksUrl) problems.push(`${w}: exactly one of jwksFile or jwksUrl`);
      if (jwksUrl && !jwksUrl.startsWith("https://")) problems.push(`${w}.jwksUrl: must be https`);
      const algs = o.algorithms ?? ["RS256", "ES256"];
      if (!Array.isArray(algs) || algs.length === 0 || algs.some((a) => typeof a !== "string")) problems.push(`${w}.algorithms: a non-empty list`);
      else if (algs.some((a) => a === "none" || /^HS/i.test(a as string))) problems.push(`${w}.algorithms: "none" and HMAC (HS*) are not allowed`);
      const skew = o.clockSkewSeconds;
      if (skew !== undefined && (typeof skew !== "number" || skew < 0 || skew > 300)) problems.push(`${w}.clockSkewSeconds: 0 to 300`);
      if (issuer && audience) jwt.push({ issuer, audience, jwksFile, jwksUrl, jwksCaFile, algorithms: algs as string[], clockSkewSeconds: skew as number | undefined });
    });
  const policyFile = path(policySection, "file", "policy", "HSM_SIGNER_POLICY_FILE");
  if (!policyFile) problems.push("policy.file: required (who may use which key; deny by default)");
  const auditDir = path(auditSection, "dir", "audit", "HSM_SIGNER_AUDIT_DIR");
  // Where it is, not who may write there: that is checked when serve opens it (another user here).
  const auditDirBad = auditDir ? auditDirProblem(auditDir, { writable: false }) : undefined;
  if (auditDirBad) problems.push(`audit.dir: ${auditDirBad}`);
  const writeTimeoutMs = int(auditSection, "writeTimeoutSeconds", "audit", DEFAULT_WRITE_TIMEOUT_MS / 1000, 1, 600) * 1000;
  const auditCluster = parseAuditCluster(auditSection, base, env, problems);
  if (!auditDir && !auditCluster.postgres) problems.push("audit.dir: required (every request is audited), or audit.postgres");
  const maxFileBytes = int(auditSection, "maxFileBytes", "audit", DEFAULT_AUDIT_MAX_FILE_BYTES, 4096, 2 ** 40);
  if (auditSection.fsync !== undefined && typeof auditSection.fsync !== "boolean") problems.push("audit.fsync: true or false");
  const fsync = auditSection.fsync !== false;
  const metricsSection = section("metrics");
  const metricsListen = str(metricsSection, "listen", "metrics", "HSM_SIGNER_METRICS_LISTEN");
  if (metricsListen !== undefined && !/^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}$/.test(metricsListen)) problems.push(`metrics.listen: "${metricsListen}" is not host:port`);
  const grpcHealthListen = str(metricsSection, "grpcHealthListen", "metrics", "HSM_SIGNER_GRPC_HEALTH_LISTEN");
  if (grpcHealthListen !== undefined && !/^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}$/.test(grpcHealthListen)) problems.push(`metrics.grpcHealthListen: "${grpcHealthListen}" is not host:port`);
  const adminSection = section("admin");
  const adminListen = str(adminSection, "listen", "admin", "HSM_SIGNER_ADMIN_LISTEN");
  const adminCertFile = path(adminSection, "certFile", "admin") ?? certFile;
  const adminKeyFile = path(adminSection, "keyFile", "admin") ?? keyFile;
  const adminClientCaFile = path(adminSection, "clientCaFile", "admin") ?? clientCaFile;
  if (adminListen !== undefined) {
    if (!/^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}$/.test(adminListen)) problems.push(`admin.listen: "${adminListen}" is not host:port`);
    if (!adminCertFile || !adminKeyFile) problems.push("admin.certFile and admin.keyFile (or tls.certFile and tls.keyFile): required, KeyAdmin is TLS only");
    if (!adminClientCaFile) problems.push("admin.clientCaFile (or tls.clientCaFile): required, KeyAdmin callers are identified by client certificates only");
    for (const [k, p] of [
      ["admin.certFile", adminCertFile],
      ["admin.keyFile", adminKeyFile],
      ["admin.clientCaFile", adminClientCaFile],
    ] as const) {
      if (p && !canRead(p)) problems.push(`${k}: cannot read ${p}`);
    }
  }
  const shutdownSection = section("shutdown");
  const graceEnv = env.HSM_SIGNER_SHUTDOWN_GRACE_SECONDS;
  const graceMs = int(graceEnv !== undefined && graceEnv !== "" ? { graceSeconds: Number(graceEnv) } : shutdownSection, "graceSeconds", "shutdown", 10, 0, 3600) * 1000;
  const known = new Set(["listen", "tls", "hsm", "limits", "log", "auth", "policy", "audit", "metrics", "admin", "shutdown"]);
  for (const k of Object.keys(root)) if (!known.has(k)) problems.push(`${k}: unknown setting`);
  // `config check`: what serve would open (policy, PIN, module, TLS and JWKS files...), listed with the rest.
  if (checkFiles) {
    const admin = { listen: adminListen, certFile: adminCertFile, keyFile: adminKeyFile, clientCaFile: adminClientCaFile };
    problems.push(...checkFiles({ tls: { insecure, certFile, keyFile, clientCaFile }, hsm: { module, pinFile, pinEnv }, jwt, policyFile, auditDir: auditDirBad ? undefined : auditDir, admin }, env));
  }
  if (problems.length > 0) {
    throw new SignerError("CONFIG_INVALID", `configuration ${file} has ${problems.length} problem(s):\n  - ${problems.join("\n  - ")}`);
  }
  return Object.freeze({
    listen,
    tls: { insecure, certFile, keyFile, clientCaFile },
    hsm: { module: module as string, tokenLabel, tokenSerial, pinFile, pinEnv, sessions, keyRefreshMs, signStallMs },
    limits: { maxPayloadBytes, maxDeadlineMs },
    log: { level },
    auth: { mtlsIdentityFrom, jwt },
    policy: { file: policyFile as string },
    audit: { dir: auditDir ?? "", maxFileBytes, fsync, writeTimeoutMs, ...auditCluster },
    metrics: { listen: metricsListen, grpcHealthListen },
    shutdown: { graceMs },
    admin: { listen: adminListen, certFile: adminCertFile, keyFile: adminKeyFile, clientCaFile: adminClientCaFile },
  });
}

function canRead(p: string): boolean {
  try {
    readFileSync(p);
    return true;
  } catch {
    return false;
  }
}

/** The user PIN, from hsm.pinFile or the environment variable hsm.pinEnv; never from argv. */
export function readPin(c: Config["hsm"], env: NodeJS.ProcessEnv = process.env): string {
  if (c.pinFile) {
    try {
      return readFileSync(c.pinFile, "utf8").replace(/\r?\n$/, "");
    } catch (e) {
      throw new SignerError("CONFIG_INVALID", `cannot read the PIN file ${c.pinFile} (${(e as NodeJS.ErrnoException).code ?? "error"})`);
    }
  }
  const pin = env[c.pinEnv];
  if (!pin) throw new SignerError("CONFIG_INVALID", `no HSM PIN: set hsm.pinFile, or the environment variable ${c.pinEnv}`);
  return pin;
}
