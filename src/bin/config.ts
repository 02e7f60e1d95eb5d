import { dirname, isAbsolute, resolve } from "node:path";
import * as v from "valibot";
import { auditDirProblem, DEFAULT_COMMIT_DELAY_MS, DEFAULT_WRITE_TIMEOUT_MS, MAX_COMMIT_DELAY_MS } from "../audit/index.js";
import { jwtIssuersSchema, mtlsIdentityFromSchema } from "../auth/index.js";
import { SignerError } from "../errors/index.js";
import { DEFAULT_ANSWER_HOLD_MS, DEFAULT_POOL_SIZE, DEFAULT_KEY_REFRESH_MS, MAX_ANSWER_HOLD_MS } from "../hsm/index.js";
import type { LogLevel } from "../log/index.js";
import { deepFreeze, isMapping, mapping, pathOf, problemsOf } from "../schema/index.js";
import { MAX_PAYLOAD_BYTES } from "../signing/signing-service.js";

/** A signature, token check or key poll still inside the HSM after this long means the HSM or the network to it hangs (hsm.signStallSeconds). */
const DEFAULT_SIGN_STALL_MS = 15_000;
import { DEFAULT_MAX_DEADLINE_MS, isLoopbackAddress } from "../server/signer-server.js";
import { DEFAULT_CONNECTION_IDLE_MS, DEFAULT_HANDSHAKE_TIMEOUT_MS, DEFAULT_MAX_CONNECTIONS } from "../server/tls-listener.js";
import { MAX_CRL_FILE_BYTES, readRegular } from "../fs/regular-file.js";
import { auditClusterConfig, auditClusterEntries, withAuditEnv, type AuditClusterConfig } from "./audit-cluster-config.js";
import { integer, isHostPort, looksLikeVariableName, optionalHostPort, optionalPath, optionalString, readablePath, readConfigYaml, readProblem, secondsAsMs, variableNotSet } from "./config-fields.js";

export const DEFAULT_PIN_ENV = "HSM_SIGNER_PIN";

export interface Config {
  listen: string;
  tls: { insecure: boolean; certFile?: string; keyFile?: string; clientCaFile?: string; clientCrlFile?: string };
  hsm: { module: string; tokenLabel?: string; tokenSerial?: string; pinFile?: string; pinEnv: string; sessions: number; keyRefreshMs: number; signStallMs: number; answerHoldMs: number };
  /** Per call, and per listener: open connections, how long a TLS handshake may take, how long a connection without calls is kept. */
  limits: { maxPayloadBytes: number; maxDeadlineMs: number; maxConnections: number; tlsHandshakeTimeoutMs: number; connectionIdleMs: number };
  log: { level: LogLevel };
  auth: { mtlsIdentityFrom: ("uri" | "dns" | "cn")[]; jwt: JwtIssuerConfig[] };
  policy: { file: string };
  audit: { dir: string; maxFileBytes: number; fsync: boolean; writeTimeoutMs: number; commitDelayMs: number } & AuditClusterConfig;
  /** The HTTP listener for /metrics, /healthz and /readyz, and a plaintext grpc.health.v1-only listener (kubelet probes); none when unset. */
  metrics: { listen: string | undefined; grpcHealthListen: string | undefined };
  /** SIGTERM: how long in-flight calls may take to finish before they are cancelled. */
  shutdown: { graceMs: number };
  /** The KeyAdmin listener (mTLS only); none when unset. */
  admin: { listen: string | undefined; certFile?: string; keyFile?: string; clientCaFile?: string; clientCrlFile?: string };
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
  tls: { insecure: boolean; certFile: string | undefined; keyFile: string | undefined; clientCaFile: string | undefined; clientCrlFile: string | undefined };
  hsm: { module: string | undefined; pinFile: string | undefined; pinEnv: string };
  jwt: JwtIssuerConfig[];
  policyFile: string | undefined;
  auditDir: string | undefined;
  /** audit.postgres is configured (its files and variables are checked by the schema; nothing connects). */
  auditPostgres: boolean;
  admin: { listen: string | undefined; certFile: string | undefined; keyFile: string | undefined; clientCaFile: string | undefined; clientCrlFile: string | undefined };
}

/** Opens what the configuration names and returns each problem (config-check.ts). */
export type ConfigFilesCheck = (files: ConfigFiles, env: NodeJS.ProcessEnv) => string[];

type Obj = Record<string, unknown>;
const LOG_LEVELS: readonly LogLevel[] = ["debug", "info", "warn", "error"];
const DEFAULT_JWT_ALGORITHMS = ["RS256", "ES256"];

/** Where the environment overrides a setting: [section (undefined: top level), key, variable]. */
const ENV_OVERRIDES: readonly [string | undefined, string, string][] = [
  [undefined, "listen", "HSM_SIGNER_LISTEN"],
  ["hsm", "module", "HSM_SIGNER_HSM_MODULE"],
  ["hsm", "tokenLabel", "HSM_SIGNER_TOKEN_LABEL"],
  ["hsm", "tokenSerial", "HSM_SIGNER_TOKEN_SERIAL"],
  ["hsm", "pinFile", "HSM_SIGNER_PIN_FILE"],
  ["log", "level", "HSM_SIGNER_LOG_LEVEL"],
  ["policy", "file", "HSM_SIGNER_POLICY_FILE"],
  ["audit", "dir", "HSM_SIGNER_AUDIT_DIR"],
  ["metrics", "listen", "HSM_SIGNER_METRICS_LISTEN"],
  ["metrics", "grpcHealthListen", "HSM_SIGNER_GRPC_HEALTH_LISTEN"],
  ["admin", "listen", "HSM_SIGNER_ADMIN_LISTEN"],
];

/** The file's settings with HSM_SIGNER_* overrides merged in (a copy; a section that is not a mapping stays as it is, a problem). */
function withEnv(raw: unknown, env: NodeJS.ProcessEnv): unknown {
  if (!isMapping(raw)) return raw;
  const root: Obj = { ...raw };
  const section = (name: string): Obj | undefined => {
    const s = root[name] ?? {};
    if (!isMapping(s)) return undefined;
    return (root[name] = { ...s });
  };
  for (const [name, key, variable] of ENV_OVERRIDES) {
    const value = env[variable];
    if (value === undefined) continue;
    const target = name === undefined ? root : section(name);
    if (target) target[key] = value;
  }
  const grace = env.HSM_SIGNER_SHUTDOWN_GRACE_SECONDS;
  if (grace !== undefined && grace !== "") {
    const shutdown = section("shutdown");
    if (shutdown) shutdown.graceSeconds = Number(grace);
  }
  const audit = root.audit ?? {};
  if (isMapping(audit)) root.audit = withAuditEnv(audit, env);
  return root;
}

/**
 * The configuration file's schema: every setting, its default, its bounds, and the rules between
 * settings; relative paths resolved from `base`; files serve reads at once are read.
 */
function configSchema(base: string, env: NodeJS.ProcessEnv) {
  const resolvePath = (p: string): string => (isAbsolute(p) ? p : resolve(base, p));
  const path = optionalPath(resolvePath);
  /** TLS material: serve reads it at once. */
  const readable = readablePath(resolvePath);
  const crlPath = readablePath(resolvePath, MAX_CRL_FILE_BYTES);
  const section = <E extends v.ObjectEntries>(entries: E) => {
    const m = mapping(entries);
    return v.optional(m, () => ({}) as v.InferInput<typeof m>);
  };
  const schema = mapping(
    {
      listen: v.optional(
        v.custom<string>(isHostPort, (issue) => `"${String(issue.input)}" is not host:port`),
        "127.0.0.1:8443",
      ),
      tls: section({ insecure: v.optional(v.boolean("true or false"), false), certFile: readable, keyFile: readable, clientCaFile: readable, clientCrlFile: crlPath }),
      hsm: section({
        module: path,
        tokenLabel: optionalString,
        tokenSerial: optionalString,
        pin: v.optional(v.custom<never>(() => false, "the PIN never goes in the configuration file; use hsm.pinFile or hsm.pinEnv")),
        pinFile: path,
        pinEnv: v.pipe(
          optionalString,
          v.transform((name) => name ?? DEFAULT_PIN_ENV),
        ),
        sessions: integer(1, 256, DEFAULT_POOL_SIZE),
        keyRefreshSeconds: secondsAsMs(0, 86400, DEFAULT_KEY_REFRESH_MS / 1000),
        signStallSeconds: secondsAsMs(1, 3600, DEFAULT_SIGN_STALL_MS / 1000),
        answerHoldMs: integer(0, MAX_ANSWER_HOLD_MS, DEFAULT_ANSWER_HOLD_MS),
      }),
      limits: section({
        maxPayloadBytes: integer(1, MAX_PAYLOAD_BYTES, MAX_PAYLOAD_BYTES),
        maxDeadlineSeconds: secondsAsMs(1, 3600, DEFAULT_MAX_DEADLINE_MS / 1000),
        maxConnections: integer(1, 65536, DEFAULT_MAX_CONNECTIONS),
        tlsHandshakeTimeoutSeconds: secondsAsMs(1, 120, DEFAULT_HANDSHAKE_TIMEOUT_MS / 1000),
        connectionIdleSeconds: secondsAsMs(10, 86400, DEFAULT_CONNECTION_IDLE_MS / 1000),
      }),
      log: section({
        level: v.optional(
          v.custom<LogLevel>(
            (l) => (LOG_LEVELS as readonly unknown[]).includes(l),
            (issue) => `"${String(issue.input)}" is not debug, info, warn or error`,
          ),
          "info",
        ),
      }),
      auth: section({
        mtlsIdentityFrom: v.optional(mtlsIdentityFromSchema, () => ["uri" as const, "dns" as const, "cn" as const]),
        jwt: v.optional(jwtIssuersSchema({ path: resolvePath, defaultAlgorithms: DEFAULT_JWT_ALGORITHMS }), []),
      }),
      policy: section({ file: path }),
      audit: section({
        // Where it is, not who may write there: that is checked when serve opens it (another user here).
        dir: v.pipe(
          path,
          v.check(
            (d) => d === undefined || auditDirProblem(d, { writable: false }) === undefined,
            (issue) => auditDirProblem(issue.input as string, { writable: false }) ?? "invalid",
          ),
        ),
        maxFileBytes: integer(4096, 2 ** 40, DEFAULT_AUDIT_MAX_FILE_BYTES),
        fsync: v.optional(v.boolean("true or false"), true),
        writeTimeoutSeconds: secondsAsMs(1, 600, DEFAULT_WRITE_TIMEOUT_MS / 1000),
        commitDelayMs: integer(0, MAX_COMMIT_DELAY_MS, DEFAULT_COMMIT_DELAY_MS),
        ...auditClusterEntries(resolvePath, env),
      }),
      metrics: section({ listen: optionalHostPort, grpcHealthListen: optionalHostPort }),
      admin: section({ listen: optionalHostPort, certFile: path, keyFile: path, clientCaFile: path, clientCrlFile: crlPath }),
      shutdown: section({ graceSeconds: secondsAsMs(0, 3600, 10) }),
    },
    {},
    "the configuration must be a mapping",
  );
  return v.pipe(
    schema,
    v.rawCheck(({ dataset, addIssue }) => crossChecks(dataset.value, addIssue)),
  );
}

/** The rules between settings, on what was parsed so far (a part may be invalid, and is then skipped). */
function crossChecks(value: unknown, addIssue: (info: { message: string }) => void): void {
  if (!isMapping(value)) return;
  const problem = (message: string): void => addIssue({ message });
  const sec = (name: string): Obj => (isMapping(value[name]) ? value[name] : {});
  const [tls, hsm, policy, audit, admin] = ["tls", "hsm", "policy", "audit", "admin"].map(sec) as [Obj, Obj, Obj, Obj, Obj];
  if (tls.insecure === true) {
    if (isHostPort(value.listen) && !isLoopbackAddress(value.listen)) problem(`tls.insecure: plaintext is only allowed on a loopback address, and listen is ${value.listen}`);
  } else {
    if (!tls.certFile) problem("tls.certFile: required (or tls.insecure: true on a loopback address)");
    if (!tls.keyFile) problem("tls.keyFile: required (or tls.insecure: true on a loopback address)");
    if (tls.clientCrlFile && !tls.clientCaFile) problem("tls.clientCrlFile: needs tls.clientCaFile (the CAs whose revocations it lists)");
  }
  const limits = sec("limits");
  // The listeners close a connection that received nothing this long: a call in progress receives nothing.
  if (typeof limits.connectionIdleSeconds === "number" && typeof limits.maxDeadlineSeconds === "number" && limits.connectionIdleSeconds <= limits.maxDeadlineSeconds)
    problem("limits.connectionIdleSeconds: must be longer than limits.maxDeadlineSeconds (a connection waiting for an answer receives nothing meanwhile)");
  listenerClashes(value, problem);
  if (!hsm.module) problem("hsm.module: required (path of the PKCS#11 library)");
  if (!hsm.tokenLabel && !hsm.tokenSerial) problem("hsm.tokenLabel or hsm.tokenSerial: one is required");
  if (!policy.file) problem("policy.file: required (who may use which key; deny by default)");
  if (!audit.dir && !audit.postgres) problem("audit.dir: required (every request is audited), or audit.postgres");
  if (admin.listen) {
    const files = adminFiles(admin, tls);
    if (!files.certFile || !files.keyFile) problem("admin.certFile and admin.keyFile (or tls.certFile and tls.keyFile): required, KeyAdmin is TLS only");
    if (!files.clientCaFile) problem("admin.clientCaFile (or tls.clientCaFile): required, KeyAdmin callers are identified by client certificates only");
    if (str(admin.clientCrlFile) && !str(admin.clientCaFile)) problem("admin.clientCrlFile: needs admin.clientCaFile (without it KeyAdmin uses tls.clientCaFile and tls.clientCrlFile)");
    for (const k of ["certFile", "keyFile", "clientCaFile"] as const) {
      const p = files[k];
      const why = p === undefined ? undefined : readProblem(p);
      if (why !== undefined) problem(`admin.${k}: ${why}`);
    }
  }
}

const str = (x: unknown): string | undefined => (typeof x === "string" && x !== "" ? x : undefined);

/** Addresses that take a port on every interface: another listener on that port cannot bind (EADDRINUSE). */
const WILDCARD_HOSTS: ReadonlySet<string> = new Set(["0.0.0.0", "::", "[::]"]);

/**
 * Two listeners on one port: serve's second bind fails (EADDRINUSE) after the HSM and the audit
 * are open, so `config check` says so first. Same host, or either on every interface; port 0 is
 * a free port each time.
 */
function listenerClashes(value: Obj, problem: (message: string) => void): void {
  const sec = (name: string): Obj => (isMapping(value[name]) ? value[name] : {});
  const listeners: [string, unknown][] = [
    ["listen", value.listen ?? "127.0.0.1:8443"],
    ["admin.listen", sec("admin").listen],
    ["metrics.listen", sec("metrics").listen],
    ["metrics.grpcHealthListen", sec("metrics").grpcHealthListen],
  ];
  const parsed = listeners.flatMap(([setting, address]) => {
    if (!isHostPort(address)) return [];
    const at = address.lastIndexOf(":");
    const port = Number(address.slice(at + 1));
    return port === 0 ? [] : [{ setting, address, host: address.slice(0, at), port }];
  });
  parsed.forEach((a, i) => {
    for (const b of parsed.slice(i + 1))
      if (a.port === b.port && (a.host === b.host || WILDCARD_HOSTS.has(a.host) || WILDCARD_HOSTS.has(b.host)))
        problem(`${b.setting}: ${b.address} takes the port of ${a.setting} (${a.address}); serve could not listen on both`);
  });
}

/** KeyAdmin's TLS material: its own, else the Signer listener's; its own client CAs come with its own CRLs only. */
function adminFiles(admin: Obj, tls: Obj): { certFile: string | undefined; keyFile: string | undefined; clientCaFile: string | undefined; clientCrlFile: string | undefined } {
  const ownCa = str(admin.clientCaFile);
  return {
    certFile: str(admin.certFile) ?? str(tls.certFile),
    keyFile: str(admin.keyFile) ?? str(tls.keyFile),
    clientCaFile: ownCa ?? str(tls.clientCaFile),
    clientCrlFile: ownCa ? str(admin.clientCrlFile) : str(tls.clientCrlFile),
  };
}

/** What `config check` opens, from what was parsed (a setting with a problem of its own is left out: already reported). */
function configFilesOf(value: unknown, bad: (path: string) => boolean): ConfigFiles {
  const root = isMapping(value) ? value : {};
  const sec = (name: string): Obj => (isMapping(root[name]) ? root[name] : {});
  const [tls, hsm, policy, audit, admin, auth] = ["tls", "hsm", "policy", "audit", "admin", "auth"].map(sec) as [Obj, Obj, Obj, Obj, Obj, Obj];
  const jwt = (Array.isArray(auth.jwt) ? (auth.jwt as unknown[]) : []).filter(isMapping).map((j) => ({ ...j, jwksFile: str(j.jwksFile), jwksCaFile: str(j.jwksCaFile) }) as JwtIssuerConfig);
  return {
    tls: { insecure: tls.insecure === true, certFile: str(tls.certFile), keyFile: str(tls.keyFile), clientCaFile: str(tls.clientCaFile), clientCrlFile: str(tls.clientCrlFile) },
    hsm: { module: str(hsm.module), pinFile: str(hsm.pinFile), pinEnv: str(hsm.pinEnv) ?? DEFAULT_PIN_ENV },
    jwt,
    policyFile: str(policy.file),
    auditDir: bad("audit.dir") ? undefined : str(audit.dir),
    auditPostgres: isMapping(audit.postgres),
    admin: { listen: str(admin.listen), ...adminFiles(admin, tls) },
  };
}

/**
 * Reads the YAML (or JSON) configuration, applies HSM_SIGNER_* environment overrides and
 * validates everything against one schema, reporting every problem at once. Relative paths are
 * relative to the file. The result is deep-frozen.
 */
export function loadConfig(file: string, env: NodeJS.ProcessEnv = process.env, checkFiles?: ConfigFilesCheck): Readonly<Config> {
  const raw = readConfigYaml(file);
  const result = v.safeParse(configSchema(dirname(resolve(file)), env), withEnv(raw ?? {}, env));
  const problems = result.success ? [] : problemsOf(result.issues);
  // `config check`: what serve would open (policy, PIN, module, TLS and JWKS files...), listed with the rest.
  if (checkFiles) {
    const bad = new Set(result.success ? [] : result.issues.map((i) => pathOf(i)));
    problems.push(
      ...checkFiles(
        configFilesOf(result.output, (p) => bad.has(p)),
        env,
      ),
    );
  }
  if (!result.success || problems.length > 0) {
    throw new SignerError("CONFIG_INVALID", `configuration ${file} has ${problems.length} problem(s):\n  - ${problems.join("\n  - ")}`);
  }
  const c = result.output;
  return deepFreeze({
    listen: c.listen,
    tls: c.tls,
    hsm: {
      module: c.hsm.module as string,
      tokenLabel: c.hsm.tokenLabel,
      tokenSerial: c.hsm.tokenSerial,
      pinFile: c.hsm.pinFile,
      pinEnv: c.hsm.pinEnv,
      sessions: c.hsm.sessions,
      keyRefreshMs: c.hsm.keyRefreshSeconds,
      signStallMs: c.hsm.signStallSeconds,
      answerHoldMs: c.hsm.answerHoldMs,
    },
    limits: {
      maxPayloadBytes: c.limits.maxPayloadBytes,
      maxDeadlineMs: c.limits.maxDeadlineSeconds,
      maxConnections: c.limits.maxConnections,
      tlsHandshakeTimeoutMs: c.limits.tlsHandshakeTimeoutSeconds,
      connectionIdleMs: c.limits.connectionIdleSeconds,
    },
    log: c.log,
    auth: c.auth,
    policy: { file: c.policy.file as string },
    audit: {
      dir: c.audit.dir ?? "",
      maxFileBytes: c.audit.maxFileBytes,
      fsync: c.audit.fsync,
      writeTimeoutMs: c.audit.writeTimeoutSeconds,
      commitDelayMs: c.audit.commitDelayMs,
      ...auditClusterConfig(c.audit),
    },
    metrics: c.metrics,
    shutdown: { graceMs: c.shutdown.graceSeconds },
    admin: { listen: c.admin.listen, ...adminFiles(c.admin, c.tls) },
  });
}

/** The user PIN, from hsm.pinFile or the environment variable hsm.pinEnv; never from argv. */
export function readPin(c: Pick<Config["hsm"], "pinFile" | "pinEnv">, env: NodeJS.ProcessEnv = process.env): string {
  if (c.pinFile) {
    // A regular file only: a FIFO with no writer would block the start for ever, a device never end.
    const r = readRegular("hsm.pinFile", c.pinFile);
    if (typeof r === "string") throw new SignerError("CONFIG_INVALID", r);
    const pin = r.toString("utf8").replace(/\r?\n$/, "");
    r.fill(0);
    if (!pin) throw new SignerError("CONFIG_INVALID", `hsm.pinFile: ${c.pinFile} is empty`);
    return pin;
  }
  const pin = env[c.pinEnv];
  if (!pin) {
    throw new SignerError(
      "CONFIG_INVALID",
      `no HSM PIN: set hsm.pinFile, or ${looksLikeVariableName(c.pinEnv) ? `the environment variable ${c.pinEnv}` : `hsm.pinEnv, which ${variableNotSet(c.pinEnv)}`}`,
    );
  }
  return pin;
}
