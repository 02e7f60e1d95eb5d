import { readFileSync, writeFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { AuditLog } from "../audit/index.js";
import { Authenticator, PolicyStore, RateLimiter } from "../auth/index.js";
import { SignerMetrics, startOpsServer } from "../metrics/index.js";
import { AccessControl } from "../server/access-control.js";
import { createTestChain, finalizeModule, KeyCustody, openHsm } from "../hsm/index.js";
import { startKeyAdminServer } from "../server/key-admin-server.js";
import { createLogger, type Logger } from "../log/index.js";
import type { KeySpec } from "../signing/key-spec.js";
import { SigningService } from "../signing/signing-service.js";
import { toPem } from "../signing/pem.js";
import { startHealthServer } from "../server/health-service.js";
import { startSignerServer, type RunningServer } from "../server/signer-server.js";
import { loadTlsMaterial, TlsMaterialWatch, type TlsFiles, type TlsMaterial } from "../server/tls-material.js";
import { TlsHandshakeFailureLog } from "../server/tls-listener.js";
import { need, spec, UsageError } from "./cli-args.js";
import { loadConfig, readPin, type Config } from "./config.js";
import { openPostgresAudit, withCheckpoints, withoutAuditKey } from "./audit-setup.js";

const KEY_METRICS_REFRESH_MS = 60_000;
/** Retries of a failed audit log (audit-log.ts, retry): soon at first, then at most this often. */
const AUDIT_RETRY_MIN_MS = 1_000;
const AUDIT_RETRY_MAX_MS = 30_000;

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
    answerHoldMs: config.hsm.answerHoldMs,
  });
}

export async function serve(configFile: string): Promise<void> {
  const config = loadConfig(configFile);
  // What a failed start (a port in use, a bad certificate file...) must close again, newest
  // first: otherwise the listeners, the HSM threads and the watchers already started would keep
  // the process alive, reporting nothing, instead of exiting with the error.
  const undo: (() => unknown)[] = [];
  const closeOpened = async (): Promise<void> => {
    for (const close of undo.splice(0))
      await Promise.resolve()
        .then(close)
        .catch(() => undefined);
  };
  // A stop asked for while the service starts (waiting for the HSM or the audit database, up to
  // minutes): close what is open and exit. start() installs the running service's own handlers at
  // its end; until then Node has none, and as a container's PID 1 it ignores SIGTERM, so the pod
  // waited out its whole grace period for SIGKILL.
  let stopping: Promise<never> | undefined;
  const early = (signal: NodeJS.Signals): void => {
    if (stopping) return;
    createLogger(config.log.level).info("stopping during start-up", { signal });
    stopping = closeOpened().then(() => process.exit(0));
  };
  process.on("SIGTERM", early);
  process.on("SIGINT", early);
  try {
    await start(config, undo);
  } catch (e) {
    if (stopping) return stopping;
    await closeOpened();
    throw e;
  } finally {
    process.off("SIGTERM", early);
    process.off("SIGINT", early);
  }
  if (stopping) await stopping;
}

async function start(config: Readonly<Config>, undo: (() => unknown)[]): Promise<void> {
  const opened = <T>(value: T, close: (v: T) => unknown): T => {
    undo.unshift(() => close(value));
    return value;
  };
  const logger = createLogger(config.log.level);
  const version = (JSON.parse(readFileSync(new URL("../../../package.json", import.meta.url), "utf8")) as { version: string }).version;
  const metrics = new SignerMetrics({ version });
  // The listeners' TLS material, read and checked before anything opens (a bad CRL fails the start at once).
  const signerFiles: TlsFiles | undefined = config.tls.insecure
    ? undefined
    : { section: "tls", certFile: config.tls.certFile as string, keyFile: config.tls.keyFile as string, clientCaFile: config.tls.clientCaFile, clientCrlFile: config.tls.clientCrlFile };
  const adminFiles: TlsFiles | undefined = config.admin.listen
    ? {
        section: "admin",
        certFile: config.admin.certFile as string,
        keyFile: config.admin.keyFile as string,
        clientCaFile: config.admin.clientCaFile,
        clientCrlFile: config.admin.clientCrlFile,
      }
    : undefined;
  const signerTls = signerFiles && loadTlsMaterial(signerFiles);
  const adminTls = adminFiles && loadTlsMaterial(adminFiles);
  /** Reloads a listener's certificate, key, client CAs and CRLs on SIGHUP and file changes. */
  const watchTls = (listener: "signer" | "admin", files: TlsFiles, material: TlsMaterial, running: RunningServer): void => {
    const w = new TlsMaterialWatch(files, material, {
      apply: (m) => running.setTlsMaterial(m),
      logger,
      onApplied: (m) => metrics.setTlsMaterial(listener, m),
      onReload: (result) => metrics.observeTlsReload(listener, result),
    });
    opened(w, (x) => x.close()).watch();
  };
  const listenerLimits = { handshakeTimeoutMs: config.limits.tlsHandshakeTimeoutMs, maxConnections: config.limits.maxConnections, idleMs: config.limits.connectionIdleMs };
  // With audit.postgres the database is the store (audit-setup.ts); else the local files.
  const storeAudit = opened(
    (await openPostgresAudit(config, logger, metrics.onAuditFsync)) ??
      (await AuditLog.open({
        dir: config.audit.dir,
        maxFileBytes: config.audit.maxFileBytes,
        fsync: config.audit.fsync,
        writeTimeoutMs: config.audit.writeTimeoutMs,
        commitDelayMs: config.audit.commitDelayMs,
        onFsync: metrics.onAuditFsync,
        // Requests fail (UNAVAILABLE) while the audit cannot be written; once it can again (space
        // freed, the I/O error gone), signing resumes by itself, without a restart.
        retry: {
          minMs: AUDIT_RETRY_MIN_MS,
          maxMs: AUDIT_RETRY_MAX_MS,
          onRecovered: () => logger.info("audit log writable again; requests are accepted", { dir: config.audit.dir }),
          onFailed: (e, nextAttemptMs) => logger.warn("audit log still cannot be written; requests fail until it can", { dir: config.audit.dir, error: e.message, nextAttemptMs }),
        },
      })),
    (a) => a.close(),
  );
  const torn = storeAudit instanceof AuditLog ? storeAudit.tornLine : undefined;
  if (torn) {
    // A crash in the middle of a write: the chain records the cut too (AuditLog.Repaired).
    logger.warn("audit log: a torn last line was cut away", { file: torn.file, bytes: torn.bytes, sha256: torn.sha256, preview: torn.preview });
    metrics.auditTailRepaired(torn.bytes);
  }
  const policy = opened(await PolicyStore.open(config.policy.file, logger), (p) => p.close());
  policy.watch();
  const authenticator = opened(await Authenticator.create({ mtlsIdentityFrom: config.auth.mtlsIdentityFrom, jwt: config.auth.jwt }, logger), (a) => a.close());
  authenticator.watch();
  const hsm = opened(await openFromConfig(config, (spec, seconds) => metrics.observeHsmSign(spec, seconds), logger), async (h) => {
    await h.close();
    finalizeModule(config.hsm.module);
  });
  // HSM-signed checkpoints of the chain (audit.checkpoints); the Signer API never sees their key.
  const audit = await withCheckpoints(storeAudit, config, hsm.keys, logger);
  // With bearer tokens configured, a client certificate is optional; one that is presented must
  // verify (the TLS listener refuses it otherwise) and AccessControl checks it again.
  const optionalClientCerts = signerTls?.clientCa !== undefined && config.auth.jwt.length > 0;
  const access = new AccessControl({ authenticator, policy, limiter: new RateLimiter() });
  // Connections refused in their TLS handshake never reach the audit: counted and logged (rate-limited).
  const tlsFailures = opened(new TlsHandshakeFailureLog(logger, metrics.observeTlsHandshakeFailure), (l) => l.close());
  const signing = new SigningService({ keys: withoutAuditKey(hsm.keys, config), authorizer: access, maxPayloadBytes: config.limits.maxPayloadBytes });
  const tls = !signerTls
    ? { insecure: true as const }
    : {
        insecure: false as const,
        cert: signerTls.cert,
        key: signerTls.key,
        clientCa: signerTls.clientCa,
        crl: signerTls.crl,
        ...listenerLimits,
        requireClientCertificate: !optionalClientCerts,
        onHandshakeFailure: tlsFailures.report,
      };
  // A native call into a hung HSM cannot be interrupted: its callers get DEADLINE_EXCEEDED, and
  // the replica reports itself not ready so that traffic goes elsewhere until the HSM answers.
  const signingAnswers = (): boolean => hsm.longestSignMs() < config.hsm.signStallMs;
  // The same for the housekeeping's reads (health check, key polls): they run on a thread of their own.
  const hsmHealthy = (): boolean => hsm.pool.healthy && hsm.longestReadMs() < config.hsm.signStallMs;
  const ready = (): boolean => hsmHealthy() && audit.healthy && signingAnswers();
  const server = opened(
    await startSignerServer({
      listen: config.listen,
      tls,
      signing,
      logger,
      maxDeadlineMs: config.limits.maxDeadlineMs,
      access,
      audit,
      ready,
      onRequest: (method, result, seconds, keyId) => metrics.observeRequest(method, result, seconds, keyId),
    }),
    (x) => x.close(0),
  );
  metrics.bindSessionPool(() => hsm.pool.stats);
  metrics.bindAudit(() => audit.stats);
  metrics.bindHsmUp(() => hsm.pool.healthy);
  metrics.bindLongestSign(() => hsm.longestSignMs() / 1000);
  metrics.bindLongestRead(() => hsm.longestReadMs() / 1000);
  const refreshKeyMetrics = async (): Promise<void> => {
    const keys = await hsm.keys.listKeys();
    metrics.setKnownKeys(keys.map((k) => k.keyId));
    metrics.setCertificateExpiries(keys.flatMap((k) => (k.certificate ? [{ keyId: k.keyId, notAfter: k.certificate.notAfter }] : [])));
  };
  await refreshKeyMetrics();
  const keyMetricsTimer = setInterval(() => void refreshKeyMetrics().catch(() => undefined), KEY_METRICS_REFRESH_MS);
  keyMetricsTimer.unref();
  undo.unshift(() => clearInterval(keyMetricsTimer));
  if (signerFiles && signerTls) watchTls("signer", signerFiles, signerTls, server);
  const admin =
    config.admin.listen && adminTls
      ? await startKeyAdminServer({
          listen: config.admin.listen,
          tls: {
            cert: adminTls.cert,
            key: adminTls.key,
            clientCa: adminTls.clientCa as Buffer,
            crl: adminTls.crl,
            ...listenerLimits,
            onHandshakeFailure: tlsFailures.report,
          },
          custody: new KeyCustody(hsm.pool, hsm.keys),
          keys: hsm.keys,
          // KeyAdmin's TLS verifies client certificates against admin.clientCaFile itself; the
          // Signer's check against tls.clientCaFile (bearer tokens on) would refuse custodians
          // whose CA is another one.
          access: new AccessControl({ authenticator, policy, limiter: new RateLimiter() }),
          audit,
          logger,
          maxDeadlineMs: config.limits.maxDeadlineMs,
          onRequest: (method, result, seconds, keyId) => metrics.observeRequest(method, result, seconds, keyId),
        })
      : undefined;
  if (admin) opened(admin, (a) => a.close(0));
  if (admin && adminFiles && adminTls) watchTls("admin", adminFiles, adminTls, admin);
  const healthServer = config.metrics.grpcHealthListen ? opened(await startHealthServer(config.metrics.grpcHealthListen, ready), (h) => h.close(0)) : undefined;
  const ops = config.metrics.listen
    ? await startOpsServer({ listen: config.metrics.listen, metrics, ready: () => ({ ready: ready(), checks: { hsm: hsmHealthy(), audit: audit.healthy, signing: signingAnswers() } }) })
    : undefined;
  if (ops) opened(ops, (o) => o.close());
  const keys = await hsm.keys.listKeys();
  logger.info("hsm-signer listening", {
    listen: config.listen,
    port: server.port,
    adminPort: admin?.port,
    metricsPort: ops?.port,
    tls: !config.tls.insecure,
    mtls: Boolean(config.tls.clientCaFile),
    keys: keys.length,
    sessions: config.hsm.sessions,
  });
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    logger.info("shutting down", { signal });
    // In-flight calls finish (and are audited) first; then the audit is flushed and closed.
    clearInterval(keyMetricsTimer);
    const grace = config.shutdown.graceMs;
    // Each step runs whatever the ones before it did (the HSM is closed and the module finalized
    // even when the audit cannot be): a failure is logged, and the exit code (1) says the
    // shutdown was not clean.
    const failed: string[] = [];
    const step = async (name: string, run: () => unknown): Promise<void> => {
      try {
        await run();
      } catch (e) {
        failed.push(name);
        logger.error("shutdown: a step failed; the others still run", { step: name, error: e instanceof Error ? e.message : String(e) });
      }
    };
    void (async () => {
      await Promise.all([
        step("signer listener", () => server.close(grace)),
        step("admin listener", () => admin?.close(grace)),
        step("health listener", () => healthServer?.close(Math.min(grace, 1000))),
      ]);
      await step("metrics listener", () => ops?.close());
      await step("audit", () => audit.close());
      await step("policy", () => policy.close());
      await step("authenticator", () => authenticator.close());
      await step("TLS failure log", () => tlsFailures.close());
      await step("HSM", () => hsm.close());
      await step("PKCS#11 module", () => finalizeModule(config.hsm.module));
      if (failed.length === 0) logger.info("stopped");
      else {
        logger.error("stopped, not cleanly", { failed });
        process.exitCode = 1;
      }
    })();
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
}

export async function testChain(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      "config": { type: "string" },
      "key-id": { type: "string" },
      "key-spec": { type: "string" },
      "root-key-id": { type: "string" },
      "root-key-spec": { type: "string" },
      "org": { type: "string" },
      "state": { type: "string" },
      "country": { type: "string" },
      "days": { type: "string" },
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
    const made = Object.entries(r.created)
      .filter(([, v]) => v)
      .map(([k]) => k);
    console.log(`key "${keyId}" (${keySpec}): chain of ${r.chain.length} certificates on the token; ${made.length ? `created ${made.join(", ")}` : "nothing to create, all present"}`);
    if (values["root-out"]) console.log(`root certificate written to ${values["root-out"]} (for: notation cert add --type ca --store <name> ${values["root-out"]})`);
  } finally {
    // Threads stopped and sessions closed first, then C_Finalize on this thread, as serve does:
    // leaving the module to process exit raced with the signing threads' teardown (a rare SIGSEGV).
    await hsm.close();
    finalizeModule(config.hsm.module);
  }
}
