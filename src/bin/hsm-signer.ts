import { readFileSync, writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { auditFilesIn, AuditLog, searchAudit, verifyAuditFiles } from "../audit/index.js";
import { Authenticator, PolicyStore, RateLimiter } from "../auth/index.js";
import { parseCaBundle } from "../client/peer-certificate.js";
import { SignerError } from "../errors/index.js";
import { SignerMetrics, startOpsServer } from "../metrics/index.js";
import { AccessControl } from "../server/access-control.js";
import { createTestChain, finalizeModule, initToken, KeyCustody, listTokens, loadModule, openHsm } from "../hsm/index.js";
import { ADMIN_USAGE, runAdminCommand } from "../admin/index.js";
import { startKeyAdminServer } from "../admin/key-admin-server.js";
import { createLogger, type Logger } from "../log/index.js";
import { isKeySpec, type KeySpec } from "../signing/key-spec.js";
import { SigningService } from "../signing/signing-service.js";
import { toPem } from "../signing/x509-builder.js";
import { startHealthServer, startSignerServer } from "../server/signer-server.js";
import { loadConfig, readPin, type Config } from "./config.js";

const USAGE = `usage: hsm-signer <command> [options]

commands:
  serve --config FILE                 run the signing service
  config check --config FILE          validate a configuration and exit
  test-chain --config FILE --key-id ID --key-spec SPEC [--root-key-id ID] [--root-key-spec SPEC]
             [--org O] [--state ST] [--country C] [--days N] [--root-out FILE]
                                      create (or reuse) a root CA key and a signing key in the HSM
                                      with a code-signing chain on the token; write the root as PEM
  audit verify (--dir DIR | FILE...)  check the audit hash chain; names the first bad record
  audit search (--dir DIR | FILE...) [--artifact sha256:...] [--key ID] [--identity ID]
               [--from TIME] [--to TIME] [--json]
                                      find audit records ("who signed sha256:...?")
  token init --module LIB --label LABEL --so-pin-file FILE --pin-file FILE [--if-missing]
                                      initialize a token (SoftHSM, development); PINs from files
  version

The HSM user PIN comes from hsm.pinFile or the environment variable in hsm.pinEnv (default HSM_SIGNER_PIN).

${ADMIN_USAGE}`;

class UsageError extends Error {}

/** How often the key list and certificate expiry metrics follow the token. */
const KEY_METRICS_REFRESH_MS = 60_000;

function need(v: string | undefined, flag: string): string {
  if (!v) throw new UsageError(`${flag} is required`);
  return v;
}

function spec(v: string | undefined, flag: string): KeySpec | undefined {
  if (v === undefined) return undefined;
  if (!isKeySpec(v)) throw new UsageError(`${flag} must be one of RSA-2048, RSA-3072, RSA-4096, EC-256, EC-384, EC-521`);
  return v;
}

async function openFromConfig(config: Config, onSign?: (keySpec: string, seconds: number) => void, logger?: Logger) {
  return openHsm({
    onSign,
    logger,
    modulePath: config.hsm.module,
    tokenLabel: config.hsm.tokenLabel,
    tokenSerial: config.hsm.tokenSerial,
    pin: readPin(config.hsm),
    poolSize: config.hsm.sessions,
    keyRefreshMs: config.hsm.keyRefreshMs,
  });
}

async function serve(configFile: string): Promise<void> {
  const config = loadConfig(configFile);
  const logger = createLogger(config.log.level);
  const version = (JSON.parse(readFileSync(new URL("../../../package.json", import.meta.url), "utf8")) as { version: string }).version;
  const metrics = new SignerMetrics({ version });
  const audit = await AuditLog.open({ dir: config.audit.dir, maxFileBytes: config.audit.maxFileBytes, fsync: config.audit.fsync, onFsync: metrics.onAuditFsync });
  const policy = await PolicyStore.open(config.policy.file, logger);
  policy.watch();
  const authenticator = await Authenticator.create({ mtlsIdentityFrom: config.auth.mtlsIdentityFrom, jwt: config.auth.jwt }, logger);
  const hsm = await openFromConfig(config, (spec, seconds) => metrics.observeHsmSign(spec, seconds), logger);
  const signing = new SigningService(hsm.keys, config.limits.maxPayloadBytes);
  const clientCa = config.tls.clientCaFile ? readFileSync(config.tls.clientCaFile) : undefined;
  // With bearer tokens configured, a client certificate is optional and verified by AccessControl.
  const optionalClientCerts = clientCa !== undefined && config.auth.jwt.length > 0;
  const access = new AccessControl({ authenticator, policy, limiter: new RateLimiter(), clientCas: optionalClientCerts && clientCa ? parseCaBundle(clientCa) : undefined });
  const tls = config.tls.insecure
    ? { insecure: true as const }
    : { insecure: false as const, cert: readFileSync(config.tls.certFile as string), key: readFileSync(config.tls.keyFile as string), clientCa, requireClientCertificate: !optionalClientCerts };
  const ready = (): boolean => hsm.pool.healthy && audit.healthy;
  const server = await startSignerServer({
    listen: config.listen,
    tls,
    signing,
    logger,
    maxDeadlineMs: config.limits.maxDeadlineMs,
    access,
    audit,
    ready,
    onRequest: (method, result, seconds, keyId) => metrics.observeRequest(method, result, seconds, keyId),
  });
  metrics.bindSessionPool(() => hsm.pool.stats);
  metrics.bindAudit(() => audit.stats);
  metrics.bindHsmUp(() => hsm.pool.healthy);
  const refreshKeyMetrics = async (): Promise<void> => {
    const keys = await hsm.keys.listKeys();
    metrics.setKnownKeys(keys.map((k) => k.keyId));
    metrics.setCertificateExpiries(keys.flatMap((k) => (k.certificate ? [{ keyId: k.keyId, notAfter: k.certificate.notAfter }] : [])));
  };
  await refreshKeyMetrics();
  const keyMetricsTimer = setInterval(() => void refreshKeyMetrics().catch(() => undefined), KEY_METRICS_REFRESH_MS);
  keyMetricsTimer.unref();
  const admin = config.admin.listen
    ? await startKeyAdminServer({
        listen: config.admin.listen,
        tls: { cert: readFileSync(config.admin.certFile as string), key: readFileSync(config.admin.keyFile as string), clientCa: readFileSync(config.admin.clientCaFile as string) },
        custody: new KeyCustody(hsm.pool, hsm.keys),
        keys: hsm.keys,
        pool: hsm.pool,
        access,
        audit,
        logger,
        maxDeadlineMs: config.limits.maxDeadlineMs,
        onRequest: (method, result, seconds, keyId) => metrics.observeRequest(method, result, seconds, keyId),
      })
    : undefined;
  const healthServer = config.metrics.grpcHealthListen ? await startHealthServer(config.metrics.grpcHealthListen, ready) : undefined;
  const ops = config.metrics.listen
    ? await startOpsServer({ listen: config.metrics.listen, metrics, ready: () => ({ ready: ready(), checks: { hsm: hsm.pool.healthy, audit: audit.healthy } }) })
    : undefined;
  const keys = await hsm.keys.listKeys();
  logger.info("hsm-signer listening", { listen: config.listen, port: server.port, adminPort: admin?.port, metricsPort: ops?.port, tls: !config.tls.insecure, mtls: Boolean(config.tls.clientCaFile), keys: keys.length, sessions: config.hsm.sessions });
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    logger.info("shutting down", { signal });
    // In-flight calls finish (and are audited) first; then the audit is flushed and closed.
    clearInterval(keyMetricsTimer);
    void Promise.all([server.close(), admin?.close(), healthServer?.close(1000)])
      .then(() => ops?.close())
      .then(() => audit.close())
      .then(() => {
        policy.close();
        authenticator.close();
        return hsm.close();
      })
      .then(() => {
        finalizeModule(config.hsm.module);
        logger.info("stopped");
      });
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
}

async function testChain(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      config: { type: "string" },
      "key-id": { type: "string" },
      "key-spec": { type: "string" },
      "root-key-id": { type: "string" },
      "root-key-spec": { type: "string" },
      org: { type: "string" },
      state: { type: "string" },
      country: { type: "string" },
      days: { type: "string" },
      "root-out": { type: "string" },
    },
  });
  const config = loadConfig(need(values.config, "--config"));
  const keyId = need(values["key-id"], "--key-id");
  const keySpec = spec(need(values["key-spec"], "--key-spec"), "--key-spec") as KeySpec;
  const days = values.days === undefined ? undefined : Number(values.days);
  if (days !== undefined && (!Number.isInteger(days) || days < 1 || days > 3650)) throw new UsageError("--days must be an integer from 1 to 3650");
  const hsm = await openFromConfig(config);
  try {
    const r = await createTestChain(hsm.pool, hsm.keys, {
      keyId,
      keySpec,
      rootKeyId: values["root-key-id"],
      rootKeySpec: spec(values["root-key-spec"], "--root-key-spec"),
      organization: values.org,
      state: values.state,
      country: values.country,
      validityDays: days,
    });
    if (values["root-out"]) writeFileSync(values["root-out"], toPem(r.root));
    const made = Object.entries(r.created).filter(([, v]) => v).map(([k]) => k);
    console.log(`key "${keyId}" (${keySpec}): chain of ${r.chain.length} certificates on the token; ${made.length ? `created ${made.join(", ")}` : "nothing to create, all present"}`);
    if (values["root-out"]) console.log(`root certificate written to ${values["root-out"]} (for: notation cert add --type ca --store <name> ${values["root-out"]})`);
  } finally {
    await hsm.close();
  }
}

async function auditCommand(sub: string | undefined, args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: { dir: { type: "string" }, artifact: { type: "string" }, key: { type: "string" }, identity: { type: "string" }, from: { type: "string" }, to: { type: "string" }, json: { type: "boolean" } },
  });
  const files = values.dir ? auditFilesIn(values.dir) : positionals;
  if (files.length === 0) throw new UsageError("give audit files, or --dir DIR");
  if (sub === "verify") {
    const r = await verifyAuditFiles(files);
    if (r.ok) {
      console.log(`OK: ${r.lines} records in ${files.length} file(s), hash chain intact`);
      return 0;
    }
    console.log(`FAILED at ${r.firstBad?.file}:${r.firstBad?.line}: ${r.firstBad?.reason}`);
    return 1;
  }
  if (sub === "search") {
    const date = (v: string | undefined, flag: string): Date | undefined => {
      if (v === undefined) return undefined;
      const d = new Date(v);
      if (Number.isNaN(d.getTime())) throw new UsageError(`${flag} must be a date such as 2026-11-24T10:00:00Z`);
      return d;
    };
    const q = { artifactDigest: values.artifact, keyId: values.key, identity: values.identity, from: date(values.from, "--from"), to: date(values.to, "--to") };
    let n = 0;
    for await (const r of searchAudit(files, q)) {
      n++;
      if (values.json) console.log(JSON.stringify(r));
      else {
        const a = r.artifact as { digest?: string } | undefined;
        console.log([r.time, `#${String(r.seq)}`, r.identity, r.method, r.keyId ?? "-", r.result, a?.digest ?? r.payloadDigest ?? "-"].join("  "));
      }
    }
    if (!values.json) console.log(`${n} record(s)`);
    return 0;
  }
  throw new UsageError("usage: hsm-signer audit verify|search ...");
}

function tokenInit(args: string[]): void {
  const { values } = parseArgs({ args, options: { module: { type: "string" }, label: { type: "string" }, "so-pin-file": { type: "string" }, "pin-file": { type: "string" }, "if-missing": { type: "boolean" } } });
  const read = (f: string): string => readFileSync(f, "utf8").replace(/\r?\n$/, "");
  const label = need(values.label, "--label");
  if (values["if-missing"] && listTokens(loadModule(need(values.module, "--module"))).some((t) => t.label === label)) {
    console.log(`token "${label}" already exists`);
    return;
  }
  const info = initToken(need(values.module, "--module"), label, read(need(values["so-pin-file"], "--so-pin-file")), read(need(values["pin-file"], "--pin-file")));
  console.log(`token "${info.label}" initialized (serial ${info.serial})`);
}

export async function run(argv: string[]): Promise<number> {
  const [cmd, sub, ...rest] = argv;
  try {
    switch (cmd) {
      case "serve": {
        const { values } = parseArgs({ args: argv.slice(1), options: { config: { type: "string" } } });
        await serve(need(values.config, "--config"));
        return -1; // keeps running
      }
      case "config": {
        if (sub !== "check") throw new UsageError("usage: hsm-signer config check --config FILE");
        const { values } = parseArgs({ args: rest, options: { config: { type: "string" } } });
        loadConfig(need(values.config, "--config"));
        console.log("configuration is valid");
        return 0;
      }
      case "test-chain":
        await testChain(argv.slice(1));
        return 0;
      case "audit":
        return await auditCommand(sub, rest);
      case "token":
        if (sub !== "init") throw new UsageError("usage: hsm-signer token init ...");
        tokenInit(rest);
        return 0;
      case "slots":
      case "keys":
      case "certs":
        return await runAdminCommand(argv);
      case "version":
      case "--version":
        console.log(JSON.parse(readFileSync(new URL("../../../package.json", import.meta.url), "utf8")).version);
        return 0;
      case undefined:
      case "help":
      case "--help":
        console.log(USAGE);
        return cmd === undefined ? 2 : 0;
      default:
        throw new UsageError(`unknown command "${cmd}"`);
    }
  } catch (e) {
    if (e instanceof UsageError || (e as { code?: string }).code === "ERR_PARSE_ARGS_UNKNOWN_OPTION") {
      console.error(`hsm-signer: ${(e as Error).message}\n\n${USAGE}`);
      return 2;
    }
    if (e instanceof SignerError) {
      console.error(`hsm-signer: ${e.message}`);
      return 1;
    }
    console.error(`hsm-signer: unexpected failure: ${(e as Error).message}`);
    return 1;
  }
}

run(process.argv.slice(2)).then(
  (code) => {
    if (code >= 0) process.exitCode = code;
  },
  (e: unknown) => {
    console.error(`hsm-signer: ${(e as Error).message}`);
    process.exitCode = 1;
  },
);
