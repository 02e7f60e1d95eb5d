/**
 * Prometheus metrics of the signing service (prom-client), on a registry of their own: never the
 * global one, so that several instances (tests, embedding) never collide.
 *
 * Every label value is bounded: RPC names come from a fixed list, results from the error catalog,
 * key ids only when the service knows the key (a caller's string becomes "other"), key specs from
 * the Notation list. Gauges that describe live state (session pool, audit, HSM) are computed at
 * scrape time from callbacks, so they are never stale.
 */
import type { SessionPoolCounters } from "../hsm/session-pool.js";
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from "prom-client";
import { ERROR_CODES } from "../errors/index.js";
import { KeyAdminDefinition } from "../gen/hsm_signer/v1/key_admin.js";
import { SignerDefinition } from "../gen/hsm_signer/v1/signer.js";
import { KEY_SPECS } from "../signing/key-spec.js";
import { TLS_HANDSHAKE_FAILURE_REASONS } from "../tls/handshake-failure-reasons.js";

/** The RPCs of hsm_signer.v1.Signer and KeyAdmin (src/gen/); any other method name is counted as "other". */
export const RPC_METHODS: readonly string[] = [...Object.values(SignerDefinition.methods).map((m) => m.name), ...Object.values(KeyAdminDefinition.methods).map((m) => `KeyAdmin.${m.name}`)];

/** Label value for anything outside a label's bounded set. */
export const OTHER = "other";

/** Request latency: 0.5 ms to 10 s. */
export const REQUEST_DURATION_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];
/** One fsync of the audit log: 0.1 ms to 5 s. */
export const FSYNC_DURATION_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];
/** Audit lines made durable by one fsync (group commit). */
export const LINES_PER_FSYNC_BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

export interface SessionPoolGauges {
  inUse: number;
  idle: number;
  waiting: number;
  /** HSM fault and recovery counters of the pool since start (SessionPoolCounters), when it has them. */
  counters?: SessionPoolCounters;
}

export interface AuditGauges {
  queueDepth: number;
  healthy: boolean;
}

export interface CertificateExpiry {
  keyId: string;
  notAfter: Date;
}

export interface SignerMetricsOptions {
  /** The service's version, for hsm_signer_build_info. */
  version: string;
}

const METHODS: ReadonlySet<string> = new Set(RPC_METHODS);
const RESULTS: ReadonlySet<string> = new Set<string>(["OK", ...ERROR_CODES]);
const SPECS: ReadonlySet<string> = new Set<string>(KEY_SPECS);
const TLS_FAILURE_REASONS: ReadonlySet<string> = new Set<string>(TLS_HANDSHAKE_FAILURE_REASONS);

const bounded = (value: string | undefined, allowed: ReadonlySet<string>): string => (value !== undefined && allowed.has(value) ? value : OTHER);

/** A scrape must never fail because a callback did: a throwing callback reads as "unknown". */
function safely<T>(fn: (() => T) | undefined): T | undefined {
  if (!fn) return undefined;
  try {
    return fn();
  } catch {
    return undefined;
  }
}

export class SignerMetrics {
  private readonly reg = new Registry();
  private knownKeys: ReadonlySet<string> = new Set();
  private expiries = new Map<string, number>();
  /** Per TLS listener ("signer", "admin"): its certificate's notAfter and its CRLs' earliest nextUpdate (ms). */
  private readonly tlsDates = new Map<string, { certNotAfter: number; crlNextUpdate: number | undefined }>();
  private sessionPool: (() => SessionPoolGauges) | undefined;
  private audit: (() => AuditGauges) | undefined;
  private hsmUp: (() => boolean) | undefined;
  private longestSign: (() => number) | undefined;
  private longestRead: (() => number) | undefined;

  private readonly requests: Counter<"method" | "result">;
  private readonly signRequests: Counter<"key" | "result">;
  private readonly requestDuration: Histogram<"method">;
  private readonly hsmSignDuration: Histogram<"key_spec">;
  private readonly authFailures: Counter<"reason">;
  private readonly rateLimited: Counter;
  private readonly auditFsyncDuration: Histogram;
  private readonly auditLinesPerFsync: Histogram;
  private readonly tlsHandshakeFailures: Counter<"reason">;
  private readonly tlsReloads: Counter<"listener" | "result">;
  private readonly auditTailRepairs: Counter;
  private readonly auditRepairedBytes: Counter;

  constructor(o: SignerMetricsOptions) {
    const registers = [this.reg];
    collectDefaultMetrics({ register: this.reg });

    const buildInfo = new Gauge({
      name: "hsm_signer_build_info",
      help: "Build information of the running hsm-signer; always 1.",
      labelNames: ["version", "node"] as const,
      registers,
    });
    buildInfo.set({ version: o.version, node: process.version }, 1);

    this.requests = new Counter({
      name: "hsm_signer_requests_total",
      help: "Answered gRPC calls by method and result (OK or an error catalog code).",
      labelNames: ["method", "result"] as const,
      registers,
    });
    this.signRequests = new Counter({
      name: "hsm_signer_sign_requests_total",
      help: 'Answered Sign calls by key (a key the service knows, else "other") and result.',
      labelNames: ["key", "result"] as const,
      registers,
    });
    this.requestDuration = new Histogram({
      name: "hsm_signer_request_duration_seconds",
      help: "Latency of answered gRPC calls, from arrival to answer, including the audit write.",
      labelNames: ["method"] as const,
      buckets: REQUEST_DURATION_BUCKETS,
      registers,
    });
    this.hsmSignDuration = new Histogram({
      name: "hsm_signer_hsm_sign_duration_seconds",
      help: "Duration of one signature in the HSM, by key spec.",
      labelNames: ["key_spec"] as const,
      buckets: REQUEST_DURATION_BUCKETS,
      registers,
    });
    this.authFailures = new Counter({
      name: "hsm_signer_auth_failures_total",
      help: "Calls refused because the caller was not authenticated or not authorized.",
      labelNames: ["reason"] as const,
      registers,
    });
    // Both reasons exist from the start, so that rate() and alerts see a 0 rather than no series.
    this.authFailures.inc({ reason: "unauthenticated" }, 0);
    this.authFailures.inc({ reason: "permission_denied" }, 0);
    this.rateLimited = new Counter({
      name: "hsm_signer_rate_limited_total",
      help: "Calls refused by the rate limiter.",
      registers,
    });
    this.auditFsyncDuration = new Histogram({
      name: "hsm_signer_audit_fsync_duration_seconds",
      help: "Duration of one write and fsync of the audit log.",
      buckets: FSYNC_DURATION_BUCKETS,
      registers,
    });
    this.auditLinesPerFsync = new Histogram({
      name: "hsm_signer_audit_lines_per_fsync",
      help: "Audit records made durable by one fsync.",
      buckets: LINES_PER_FSYNC_BUCKETS,
      registers,
    });
    this.auditTailRepairs = new Counter({
      name: "hsm_signer_audit_tail_repairs_total",
      help: "Torn last lines of the audit log cut away when it was opened or recovered (each also an AuditLog.Repaired line).",
      registers,
    });
    this.auditRepairedBytes = new Counter({
      name: "hsm_signer_audit_repaired_bytes_total",
      help: "Bytes of torn audit lines cut away when the log was opened or recovered.",
      registers,
    });

    this.tlsHandshakeFailures = new Counter({
      name: "hsm_signer_tls_handshake_failures_total",
      help: "Connections refused during the TLS handshake, before any call (no audit line): no or untrusted client certificate, not TLS, no h2...",
      labelNames: ["reason"] as const,
      registers,
    });
    for (const reason of TLS_HANDSHAKE_FAILURE_REASONS) this.tlsHandshakeFailures.inc({ reason }, 0);
    this.tlsReloads = new Counter({
      name: "hsm_signer_tls_reloads_total",
      help: "Reloads of a TLS listener's certificate, key, client CAs and CRLs (SIGHUP or a file change): applied, or rejected (the previous material stays).",
      labelNames: ["listener", "result"] as const,
      registers,
    });
    /** Seconds from now to a date each TLS listener has (none: no series for that listener). */
    const listenerSeconds = (name: string, help: string, read: (d: { certNotAfter: number; crlNextUpdate: number | undefined }) => number | undefined): void => {
      const g: Gauge<"listener"> = new Gauge({
        name,
        help,
        labelNames: ["listener"] as const,
        registers,
        collect: () => {
          const now = Date.now();
          g.reset();
          for (const [listener, d] of this.tlsDates) {
            const at = read(d);
            if (at !== undefined) g.set({ listener }, (at - now) / 1000);
          }
        },
      });
    };
    listenerSeconds("hsm_signer_tls_certificate_expiry_seconds", "Seconds until the certificate a TLS listener presents expires (negative once expired).", (d) => d.certNotAfter);
    listenerSeconds(
      "hsm_signer_tls_crl_next_update_seconds",
      "Seconds until the earliest nextUpdate of a TLS listener's client CRLs; negative: clients of that CA are refused until a newer CRL is loaded.",
      (d) => d.crlNextUpdate,
    );

    // Scrape-time gauges: prom-client calls collect() before reading each metric.
    const poolSessions: Gauge<"state"> = new Gauge({
      name: "hsm_signer_session_pool_sessions",
      help: "HSM sessions of the pool by state (in_use, idle).",
      labelNames: ["state"] as const,
      registers,
      collect: () => {
        const s = safely(this.sessionPool);
        if (!s) return poolSessions.reset();
        poolSessions.set({ state: "in_use" }, s.inUse);
        poolSessions.set({ state: "idle" }, s.idle);
      },
    });
    const poolWaiting: Gauge = new Gauge({
      name: "hsm_signer_session_pool_waiting",
      help: "Requests waiting for an HSM session.",
      registers,
      collect: () => poolWaiting.set(safely(this.sessionPool)?.waiting ?? 0),
    });
    // Counters kept by the session pool, read at scrape time like the gauges above.
    const poolCounter = (name: string, help: string, read: (c: NonNullable<SessionPoolGauges["counters"]>) => number): void => {
      const c: Counter = new Counter({
        name,
        help,
        registers,
        collect: () => {
          const v = safely(this.sessionPool)?.counters;
          c.reset();
          if (v) c.inc(read(v));
        },
      });
    };
    poolCounter("hsm_signer_hsm_faults_total", "Times the HSM (token, login or sessions) was found unavailable and signing stopped.", (c) => c.faults);
    poolCounter("hsm_signer_hsm_recoveries_total", "Times the service reconnected to the HSM by itself after a fault.", (c) => c.recoveries);
    poolCounter("hsm_signer_hsm_sessions_replaced_total", "HSM sessions dropped and replaced after a failure on them.", (c) => c.sessionsReplaced);
    const logins: Counter<"result"> = new Counter({
      name: "hsm_signer_hsm_logins_total",
      help: "C_Login calls by result: ok, pin_incorrect (never retried), error.",
      labelNames: ["result"] as const,
      registers,
      collect: () => {
        const v = safely(this.sessionPool)?.counters;
        logins.reset();
        if (!v) return;
        logins.inc({ result: "ok" }, v.logins);
        logins.inc({ result: "pin_incorrect" }, v.loginsPinIncorrect);
        logins.inc({ result: "error" }, v.loginsFailed);
      },
    });
    const auditQueueDepth: Gauge = new Gauge({
      name: "hsm_signer_audit_queue_depth",
      help: "Audit records accepted and not yet durable.",
      registers,
      collect: () => auditQueueDepth.set(safely(this.audit)?.queueDepth ?? 0),
    });
    const auditHealthy: Gauge = new Gauge({
      name: "hsm_signer_audit_healthy",
      help: "1 while the audit log can be written, else 0.",
      registers,
      collect: () => auditHealthy.set(safely(this.audit)?.healthy === true ? 1 : 0),
    });
    const hsmUp: Gauge = new Gauge({
      name: "hsm_signer_hsm_up",
      help: "1 while the HSM token is reachable and logged in, else 0.",
      registers,
      collect: () => hsmUp.set(safely(this.hsmUp) === true ? 1 : 0),
    });
    const longestSign: Gauge = new Gauge({
      name: "hsm_signer_hsm_longest_running_sign_seconds",
      help: "How long the oldest signature still inside the HSM has been running (0: none); seconds mean the HSM hangs.",
      registers,
      collect: () => longestSign.set(safely(this.longestSign) ?? 0),
    });
    const longestRead: Gauge = new Gauge({
      name: "hsm_signer_hsm_longest_running_read_seconds",
      help: "How long the oldest housekeeping read still inside the HSM (token check, key poll or rescan) has been running (0: none); seconds mean the HSM hangs.",
      registers,
      collect: () => longestRead.set(safely(this.longestRead) ?? 0),
    });
    const certificateExpiry: Gauge<"key"> = new Gauge({
      name: "hsm_signer_certificate_expiry_seconds",
      help: "Seconds until the leaf certificate of each known key expires (negative once expired).",
      labelNames: ["key"] as const,
      registers,
      collect: () => {
        certificateExpiry.reset();
        const now = Date.now();
        for (const [key, notAfterMs] of this.expiries) certificateExpiry.set({ key }, (notAfterMs - now) / 1000);
      },
    });
  }

  get registry(): Registry {
    return this.reg;
  }

  /** The Content-Type of metricsText() (Prometheus text format 0.0.4). */
  get contentType(): string {
    return this.reg.contentType;
  }

  metricsText(): Promise<string> {
    return this.reg.metrics();
  }

  /**
   * One answered call (SignerServerOptions.onRequest). `result` is "OK" or an error catalog code;
   * `keyId` is the key the caller named, counted under its own name only if the service knows it.
   */
  observeRequest(method: string, result: string, seconds: number, keyId?: string): void {
    const m = bounded(method, METHODS);
    const r = bounded(result, RESULTS);
    this.requests.inc({ method: m, result: r });
    if (Number.isFinite(seconds) && seconds >= 0) this.requestDuration.observe({ method: m }, seconds);
    if (m === "Sign") this.signRequests.inc({ key: bounded(keyId, this.knownKeys), result: r });
    if (r === "UNAUTHENTICATED") this.authFailures.inc({ reason: "unauthenticated" });
    else if (r === "PERMISSION_DENIED") this.authFailures.inc({ reason: "permission_denied" });
    else if (r === "RATE_LIMITED") this.rateLimited.inc();
  }

  /** One connection refused during its TLS handshake (TlsHandshakeFailureLog's count); bound. */
  readonly observeTlsHandshakeFailure = (reason: string): void => {
    this.tlsHandshakeFailures.inc({ reason: bounded(reason, TLS_FAILURE_REASONS) });
  };

  /** The TLS material a listener now uses (at start and after each applied reload). */
  setTlsMaterial(listener: "signer" | "admin", m: { certNotAfter: Date; crlNextUpdate: Date | undefined }): void {
    this.tlsDates.set(listener, { certNotAfter: m.certNotAfter.getTime(), crlNextUpdate: m.crlNextUpdate?.getTime() });
  }

  /** One reload of a listener's TLS material, applied or rejected. */
  observeTlsReload(listener: "signer" | "admin", result: "applied" | "rejected"): void {
    this.tlsReloads.inc({ listener, result });
  }

  /** One signature in the HSM (Pkcs11KeyStoreOptions.onSign). */
  observeHsmSign(keySpec: string, seconds: number): void {
    if (Number.isFinite(seconds) && seconds >= 0) this.hsmSignDuration.observe({ key_spec: bounded(keySpec, SPECS) }, seconds);
  }

  /** One audit fsync (AuditLogOptions.onFsync); bound, so it can be passed as is. */
  readonly onAuditFsync = (seconds: number, lines: number): void => {
    if (Number.isFinite(seconds) && seconds >= 0) this.auditFsyncDuration.observe(seconds);
    if (Number.isFinite(lines) && lines >= 0) this.auditLinesPerFsync.observe(lines);
  };

  /** A torn audit tail of `bytes` bytes was cut away (AuditLog.tornLine). */
  auditTailRepaired(bytes: number): void {
    this.auditTailRepairs.inc();
    if (Number.isFinite(bytes) && bytes > 0) this.auditRepairedBytes.inc(bytes);
  }

  /** The key ids that may appear as a `key` label; replaces the previous set. */
  setKnownKeys(ids: readonly string[]): void {
    this.knownKeys = new Set(ids);
  }

  /**
   * The leaf certificate expiry of each known key; replaces the whole set, so a key that is gone
   * loses its series. When a key id appears more than once (several versions), the latest notAfter
   * counts: the key can sign until then.
   */
  setCertificateExpiries(list: readonly CertificateExpiry[]): void {
    const next = new Map<string, number>();
    for (const { keyId, notAfter } of list) {
      const ms = notAfter.getTime();
      if (!Number.isFinite(ms)) continue;
      next.set(keyId, Math.max(ms, next.get(keyId) ?? -Infinity));
    }
    this.expiries = next;
  }

  /** Session pool state, read at each scrape (e.g. `() => pool.stats`). Unbound: no series / 0. */
  bindSessionPool(fn: () => SessionPoolGauges): void {
    this.sessionPool = fn;
  }

  /** Audit state, read at each scrape (e.g. `() => audit.stats`). Unbound: depth 0, unhealthy. */
  bindAudit(fn: () => AuditGauges): void {
    this.audit = fn;
  }

  /** Whether the HSM is up, read at each scrape. Unbound or throwing: 0. */
  bindLongestSign(fn: () => number): void {
    this.longestSign = fn;
  }

  bindLongestRead(fn: () => number): void {
    this.longestRead = fn;
  }

  bindHsmUp(fn: () => boolean): void {
    this.hsmUp = fn;
  }
}
