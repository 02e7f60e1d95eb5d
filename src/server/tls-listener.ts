import { lookup } from "node:dns/promises";
import type { X509Certificate } from "node:crypto";
import { isIP, type Socket } from "node:net";
import { connect as tlsConnect, createSecureContext, createServer as createTlsServer, type Server as TlsServer, type TLSSocket } from "node:tls";
import type * as grpc from "@grpc/grpc-js";
import { ServerCredentials } from "@grpc/grpc-js";
import { SignerError } from "../errors/index.js";
import type { Logger } from "../log/index.js";
import { TLS_HANDSHAKE_FAILURE_REASONS, type TlsHandshakeFailureReason } from "../tls/handshake-failure-reasons.js";
import { parseCrls, revokedBy, type Crl } from "../tls/crl.js";
import { casWithoutIssuer, checkPeerChain, parseCaBundle, presentedChain } from "../tls/peer-certificate.js";

export { TLS_HANDSHAKE_FAILURE_REASONS, type TlsHandshakeFailureReason };

export interface TlsHandshakeFailure {
  reason: TlsHandshakeFailureReason;
  /** host:port of the client. */
  peer: string;
  /** OpenSSL's verification code or Node's error code, e.g. CERT_HAS_EXPIRED. */
  code: string;
  /** Subject and issuer of a refused client certificate, when one was presented. */
  subject?: string;
  issuer?: string;
}

/** The parts of a listener's secure context that may change while it runs (TlsListener.setMaterial). */
export interface TlsContextMaterial {
  cert: Buffer;
  key: Buffer;
  /** Client CA(s); without it no client certificate is requested. */
  clientCa?: Buffer | undefined;
  /** CRLs of the client CAs, one PEM each (tls-material.ts): a revoked client certificate is refused. */
  crl?: Buffer[] | undefined;
}

/** How long and how many connections a listener keeps (limits.* in the configuration). */
export interface ListenerLimits {
  /** A connection whose TLS handshake has not finished after this long is closed (default DEFAULT_HANDSHAKE_TIMEOUT_MS). */
  handshakeTimeoutMs?: number;
  /** Connections open at once, per bound address; one more is closed at once and reported as connection_limit (default DEFAULT_MAX_CONNECTIONS). */
  maxConnections?: number;
  /** A connection that received no byte for this long is closed (default DEFAULT_CONNECTION_IDLE_MS; see TlsListener.sweep). */
  idleMs?: number;
}

export interface TlsListenerOptions extends TlsContextMaterial, ListenerLimits {
  /** true: a client certificate from clientCa is required; false: optional (bearer tokens), but one that is presented must verify. */
  requireClientCertificate: boolean;
  onHandshakeFailure?: (f: TlsHandshakeFailure) => void;
}

/** TlsListenerOptions.handshakeTimeoutMs: Node's own default (120 s) lets idle TCP connections hold a slot for two minutes. */
export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;
/** TlsListenerOptions.maxConnections. */
export const DEFAULT_MAX_CONNECTIONS = 1024;
/** TlsListenerOptions.idleMs. */
export const DEFAULT_CONNECTION_IDLE_MS = 300_000;

/**
 * Whether a client CA bundle holds a CA without its issuer (an intermediate alone), which must then
 * be trusted on its own. A bundle Node cannot read is left to Node, which says why.
 */
function needsPartialChain(clientCa: Buffer | undefined): boolean {
  if (!clientCa) return false;
  try {
    return casWithoutIssuer(parseCaBundle(clientCa)).length > 0;
  } catch {
    return false;
  }
}

type PartialChainContext = { setAllowPartialTrustChain?: () => void } | undefined;

/**
 * What sets OpenSSL's X509_V_FLAG_PARTIAL_CHAIN (trust a CA of the bundle without its issuer) on
 * the server's current secure context; throws CONFIG_INVALID on a Node without it. The flag is
 * createSecureContext's allowPartialTrustChain in Node >= 20.18, but tls.Server passes only its
 * own list of options to it (not this one), at creation and in setSecureContext: so the flag is
 * set on the context it made, with the call createSecureContext makes for that option.
 * test/integration/tls-edge.test.ts fails if Node changes either.
 */
function partialChainFlag(s: TlsServer): () => void {
  const context = (s as unknown as { _sharedCreds?: { context?: PartialChainContext } })._sharedCreds?.context;
  const set = context?.setAllowPartialTrustChain;
  if (typeof set !== "function")
    throw new SignerError(
      "CONFIG_INVALID",
      `the client CA bundle holds an intermediate CA without its issuer, which this Node (${process.version}) cannot trust on its own (Node 20.18 or later can): add its issuer to the bundle`,
    );
  return () => set.call(context);
}

/** How long the start-up self-check waits for its loopback handshake. */
const SELF_CHECK_TIMEOUT_MS = 10_000;
/** Longest certificate subject or issuer a log line carries (a client chooses them). */
const NAME_MAX = 200;

const CERTIFICATE_REASONS: Record<string, TlsHandshakeFailureReason> = {
  CERT_HAS_EXPIRED: "certificate_expired",
  CERT_NOT_YET_VALID: "certificate_not_yet_valid",
  UNABLE_TO_GET_ISSUER_CERT: "unknown_ca",
  UNABLE_TO_GET_ISSUER_CERT_LOCALLY: "unknown_ca",
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: "unknown_ca",
  SELF_SIGNED_CERT_IN_CHAIN: "unknown_ca",
  DEPTH_ZERO_SELF_SIGNED_CERT: "unknown_ca",
  CERT_UNTRUSTED: "unknown_ca",
  CERT_REVOKED: "certificate_revoked",
  UNABLE_TO_GET_CRL: "crl_unavailable",
  CRL_HAS_EXPIRED: "crl_unavailable",
  CRL_NOT_YET_VALID: "crl_unavailable",
  CRL_SIGNATURE_FAILURE: "crl_unavailable",
  UNABLE_TO_DECRYPT_CRL_SIGNATURE: "crl_unavailable",
  UNABLE_TO_GET_CRL_ISSUER: "crl_unavailable",
  ERROR_IN_CRL_LAST_UPDATE_FIELD: "crl_unavailable",
  ERROR_IN_CRL_NEXT_UPDATE_FIELD: "crl_unavailable",
};

function bounded(s: string | undefined): string | undefined {
  if (s === undefined) return undefined;
  return s.length > NAME_MAX ? `${s.slice(0, NAME_MAX - 3)}...` : s;
}

/** The reason for a failed handshake, from Node's error and what the socket learned. */
export function classifyHandshakeFailure(err: NodeJS.ErrnoException | undefined, socket: TLSSocket | undefined): { reason: TlsHandshakeFailureReason; code: string } {
  const verify = socket?.authorizationError;
  // Set when a presented certificate did not verify; Node then closes the socket ("socket hang up").
  if (typeof verify === "string" && verify !== "") return { reason: CERTIFICATE_REASONS[verify] ?? "bad_certificate", code: verify };
  const code = err?.code ?? "";
  const message = err?.message ?? "";
  if (code === "ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE") return { reason: "no_certificate", code };
  if (code === "ERR_TLS_HANDSHAKE_TIMEOUT") return { reason: "timeout", code };
  if (/NO_APPLICATION_PROTOCOL/.test(code)) return { reason: "no_h2", code };
  if (/^ERR_SSL_(SSLV3|TLSV1|TLSV13)_ALERT/.test(code)) return { reason: "client_alert", code };
  if (code === "ECONNRESET" || code === "EPIPE" || message === "socket hang up") return { reason: "closed", code: code || "ECONNRESET" };
  if (code.startsWith("ERR_SSL_")) return { reason: "protocol", code };
  return { reason: "other", code: code || "unknown" };
}

/** "host:port" of a socket end; an IPv4 client of a dual-stack listener as plain IPv4. */
function hostPort(address: string | undefined, port: number | undefined): string {
  if (address === undefined) return "unknown";
  const a = address.replace(/^::ffff:(?=\d+\.\d+\.\d+\.\d+$)/i, "");
  return `${a.includes(":") ? `[${a}]` : a}:${port ?? 0}`;
}

/** "host:port" or "[v6]:port" into its parts; the host may be a name. */
export function parseListen(listen: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(listen);
  const port = Number(m?.[3]);
  if (!m || !Number.isInteger(port) || port > 65535) throw new SignerError("CONFIG_INVALID", `cannot listen on ${listen}: not host:port`);
  return { host: m[1] ?? m[2] ?? "", port };
}

/**
 * Where a local client reaches a listener bound to `address`, in order of preference. "::" is
 * dual-stack in Node, and some hosts (containers with IPv6 turned off) have no ::1.
 */
function selfCheckHosts(address: string): string[] {
  if (address === "0.0.0.0") return ["127.0.0.1"];
  if (address === "::") return ["::1", "127.0.0.1"];
  return [address];
}

/** The self-check could not connect at all (no such local address): another address may do. */
class Unreachable extends Error {}

/**
 * The gRPC listener's TLS, done here with node:tls rather than by grpc-js: each connection is
 * handed to the grpc.Server (a connection injector) only once its handshake is done. This way:
 * - an optional client certificate needs no grpc-js certificate provider (whose listeners,
 *   called synchronously, left grpc-js without credentials: every connection was dropped);
 * - a presented certificate that does not verify is refused even when certificates are
 *   optional (grpc-js would treat it as no certificate at all);
 * - every refused handshake is reported with its reason (grpc-js keeps them to itself).
 * One node:tls server per address the host resolves to, all on the same port.
 */
export class TlsListener {
  private readonly servers: TlsServer[] = [];
  /** Client ends of the self-check connections, "host:port": their refusal is expected, not reported. */
  private readonly selfChecks = new Set<string>();
  /** Every open TCP connection, so that destroy() can end those still in their handshake. */
  private readonly sockets = new Set<Socket>();
  /** The client address of each connection, read when it arrives: a socket Node closed itself no longer knows it. */
  private readonly peers = new WeakMap<Socket, string>();
  private injector: grpc.ConnectionInjector | undefined;
  private portNumber = 0;
  /** Each connection's bytes received at the last sweep, and since when that count has not moved. */
  private readonly lastRead = new WeakMap<Socket, { bytes: number; since: number }>();
  private sweeper: NodeJS.Timeout | undefined;
  /** Open connections whose client presented a certificate: checked again when the client CAs or CRLs change (setMaterial). */
  private readonly withClientCertificate = new Set<TLSSocket>();
  /** The client CAs and CRLs in force, to tell whether new material changes them. */
  private clientTrust: Buffer;

  private constructor(
    private readonly listen: string,
    private readonly o: TlsListenerOptions,
  ) {
    this.clientTrust = clientTrustOf(o);
  }

  get port(): number {
    return this.portNumber;
  }

  /**
   * Listens on `listen` for `server` and checks, with a loopback handshake to each bound address,
   * that a client can complete a TLS handshake (ALPN h2): a listener that cannot is a failed
   * start (CONFIG_INVALID naming what happened), never a silently dead port.
   */
  static async open(server: grpc.Server, listen: string, o: TlsListenerOptions): Promise<TlsListener> {
    const l = new TlsListener(listen, o);
    try {
      await l.bind(server);
      l.startSweeping();
      for (const s of l.servers) {
        const a = s.address();
        if (a && typeof a === "object") await l.selfCheckAny(selfCheckHosts(a.address), a.port);
      }
    } catch (e) {
      l.destroy();
      throw e;
    }
    return l;
  }

  /**
   * Replaces the certificate, key, client CAs and CRLs for the connections that arrive from now on.
   * The material must have been checked (loadTlsMaterial): Node throws on a key that is not the
   * certificate's, and this throws with it before changing anything. When the client CAs or CRLs
   * change, the connections already open are checked against them too (recheckClients).
   */
  setMaterial(m: TlsContextMaterial): void {
    const context = { cert: m.cert, key: m.key, ca: m.clientCa, crl: m.crl };
    const partial = needsPartialChain(m.clientCa);
    createSecureContext({ ...context, allowPartialTrustChain: partial });
    // A Node without the flag throws here, before any listener changes.
    if (partial) for (const s of this.servers) partialChainFlag(s);
    for (const s of this.servers) {
      s.setSecureContext(context);
      if (partial) partialChainFlag(s)();
    }
    const trust = clientTrustOf(m);
    if (!trust.equals(this.clientTrust)) {
      this.clientTrust = trust;
      this.recheckClients(m);
    }
  }

  /**
   * Closes the open connections whose client certificate the new client CAs and CRLs refuse:
   * revoked (of the leaf or a CA of its chain), no longer issued by a client CA, or expired. A
   * gRPC connection lives for hours and keepalives keep it from going idle, so a revoked build
   * runner would otherwise go on signing on the connection it has. Its calls in flight end
   * CANCELLED (and are audited so); its client's next handshake meets the new material. A
   * check that refuses what OpenSSL would still take costs that client a reconnect, nothing more.
   */
  private recheckClients(m: TlsContextMaterial): void {
    if (this.withClientCertificate.size === 0 || m.clientCa === undefined) return;
    let anchors: X509Certificate[];
    let crls: Crl[];
    try {
      anchors = parseCaBundle(m.clientCa);
      crls = (m.crl ?? []).flatMap((c) => parseCrls(c));
    } catch {
      return; // loadTlsMaterial read them already; nothing here is left half-checked
    }
    const now = Date.now();
    for (const socket of this.withClientCertificate) {
      const { leaf, all } = presentedChain(socket);
      if (!leaf) continue;
      const reason = refusalOf(leaf, all, anchors, crls, now);
      if (reason === undefined) continue;
      this.report(socket, { reason, code: REFUSED_AFTER_RELOAD, ...namesOf(leaf) });
      this.withClientCertificate.delete(socket);
      socket.destroy();
    }
  }

  /** Stops accepting connections; established ones are ended by the grpc.Server's shutdown. */
  stopAccepting(): void {
    for (const s of this.servers) if (s.listening) s.close();
  }

  /** Stops accepting and drops every connection at once, those still in their handshake included. */
  destroy(): void {
    clearInterval(this.sweeper);
    this.stopAccepting();
    for (const socket of this.sockets) socket.destroy();
    this.sockets.clear();
    this.injector?.destroy();
  }

  private async bind(server: grpc.Server): Promise<void> {
    const { host, port } = parseListen(this.listen);
    let addresses: string[];
    if (host === "" || isIP(host) !== 0) addresses = [host === "" ? "0.0.0.0" : host];
    else {
      try {
        addresses = [...new Set((await lookup(host, { all: true })).map((a) => a.address))];
      } catch (e) {
        throw new SignerError("CONFIG_INVALID", `cannot listen on ${this.listen}: ${(e as Error).message}`, { cause: e });
      }
    }
    // TLS is done here; the injected sockets are already secure, so grpc-js adds none of its own.
    this.injector = server.createConnectionInjector(ServerCredentials.createInsecure());
    const o = this.o;
    const requestCert = o.clientCa !== undefined;
    const partial = needsPartialChain(o.clientCa);
    for (const address of addresses) {
      const s = createTlsServer({
        cert: o.cert,
        key: o.key,
        ca: o.clientCa,
        crl: o.crl,
        handshakeTimeout: o.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS,
        requestCert,
        // Required certificates: OpenSSL refuses a client without one (alert "certificate
        // required", which the plugin explains) and Node closes on one that does not verify.
        rejectUnauthorized: requestCert && o.requireClientCertificate,
        ALPNProtocols: ["h2"],
      });
      if (partial) partialChainFlag(s)();
      s.on("connection", (raw: Socket) => {
        this.sockets.add(raw);
        this.peers.set(raw, hostPort(raw.remoteAddress, raw.remotePort));
        raw.once("close", () => this.sockets.delete(raw));
      });
      s.on("secureConnection", (socket: TLSSocket) => this.accepted(socket));
      s.on("tlsClientError", (err: NodeJS.ErrnoException, socket: TLSSocket) => this.refused(err, socket));
      // Over the limit Node closes the new connection itself, before any TLS ('drop', Node >= 18.6).
      s.maxConnections = o.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
      s.on("drop", (d?: { remoteAddress?: string; remotePort?: number }) =>
        this.o.onHandshakeFailure?.({ peer: hostPort(d?.remoteAddress, d?.remotePort), reason: "connection_limit", code: "MAX_CONNECTIONS" }),
      );
      await new Promise<void>((resolve, reject) => {
        s.once("error", (e) => reject(new SignerError("CONFIG_INVALID", `cannot listen on ${this.listen}: ${e.message}`, { cause: e })));
        s.listen({ host: address, port: this.portNumber || port }, () => resolve());
      });
      // A listening server's later errors (none expected) must not crash the process.
      s.on("error", () => undefined);
      this.servers.push(s);
      const a = s.address();
      if (a && typeof a === "object") this.portNumber = a.port;
    }
  }

  private accepted(socket: TLSSocket): void {
    // Certificates optional: a presented one that does not verify is refused all the same.
    if (this.o.clientCa !== undefined && !socket.authorized && socket.getPeerX509Certificate() !== undefined) {
      this.refused(undefined, socket);
      socket.destroy();
      return;
    }
    if (socket.alpnProtocol !== "h2") this.report(socket, { reason: "no_h2", code: "NO_ALPN_H2" });
    if (this.o.clientCa !== undefined && socket.authorized) {
      this.withClientCertificate.add(socket);
      socket.once("close", () => this.withClientCertificate.delete(socket));
    }
    // node:http2 answers a client without h2 itself (a short explanation, then close).
    this.injector?.injectConnection(socket);
  }

  private refused(err: NodeJS.ErrnoException | undefined, socket: TLSSocket): void {
    const r = classifyHandshakeFailure(err, socket);
    const cert = r.reason === "no_certificate" ? undefined : socket.getPeerX509Certificate?.();
    this.report(socket, { ...r, ...namesOf(cert) });
    // Node leaves a socket that failed its handshake to the 'tlsClientError' listener.
    if (!socket.destroyed) socket.destroy();
  }

  private report(socket: TLSSocket, f: Omit<TlsHandshakeFailure, "peer">): void {
    // A TLS socket's `_parent` is the TCP connection it wraps (Node sets it for sockets a
    // tls.Server makes); a socket Node has destroyed, after a certificate that did not verify,
    // no longer knows its remote address.
    const raw = (socket as unknown as { _parent?: Socket | null })._parent;
    const peer = socket.remoteAddress !== undefined ? hostPort(socket.remoteAddress, socket.remotePort) : ((raw ? this.peers.get(raw) : undefined) ?? "unknown");
    if (this.selfChecks.delete(peer)) return;
    this.o.onHandshakeFailure?.({ peer, ...f });
  }

  /**
   * Closes connections that received no byte for idleMs: an idle client's (it reconnects when it
   * next calls) or one that holds a slot of maxConnections without ever calling. Bytes received,
   * not calls, because grpc-js keeps its streams to itself, and its own idle timer
   * (grpc.max_connection_idle_ms) costs the event loop work on every call, measured as 5% of the
   * calls per second of a PostgreSQL-audited replica; this sweep costs nothing per call. A call
   * lasts at most limits.maxDeadlineSeconds, so a connection silent longer has none running.
   */
  private startSweeping(): void {
    const idleMs = this.o.idleMs ?? DEFAULT_CONNECTION_IDLE_MS;
    this.sweeper = setInterval(() => this.sweep(idleMs, Date.now()), Math.min(60_000, Math.max(250, idleMs / 4)));
    this.sweeper.unref();
  }

  private sweep(idleMs: number, now: number): void {
    for (const raw of this.sockets) {
      const seen = this.lastRead.get(raw);
      if (!seen || seen.bytes !== raw.bytesRead) this.lastRead.set(raw, { bytes: raw.bytesRead, since: now });
      else if (now - seen.since >= idleMs) raw.destroy();
    }
  }

  private async selfCheckAny(hosts: string[], port: number): Promise<void> {
    for (const [i, host] of hosts.entries()) {
      try {
        return await this.selfCheck(host, port);
      } catch (e) {
        if (!(e instanceof Unreachable) || i === hosts.length - 1) throw e instanceof Unreachable ? (e.cause as Error) : e;
      }
    }
  }

  /**
   * One local TLS handshake offering h2, without a client certificate; throws CONFIG_INVALID when
   * it does not complete (wrapped in Unreachable when the TCP connection itself failed).
   */
  private selfCheck(host: string, port: number): Promise<void> {
    const where = hostPort(host, port);
    return new Promise<void>((resolve, reject) => {
      let done = false;
      let connected = false;
      const finish = (problem?: string): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        socket.destroy();
        if (problem === undefined) return resolve();
        const e = new SignerError(
          "CONFIG_INVALID",
          `the TLS listener on ${this.listen} cannot complete a TLS handshake (a loopback handshake to ${where} ${problem}); check the listener's certificate and key (tls.certFile, tls.keyFile)`,
        );
        reject(connected ? e : new Unreachable(e.message, { cause: e }));
      };
      const timer = setTimeout(() => finish(`did not complete within ${SELF_CHECK_TIMEOUT_MS} ms`), SELF_CHECK_TIMEOUT_MS);
      // Only whether the handshake completes is checked here, not who the server is: no CA, no name.
      const socket = tlsConnect({ host, port, ALPNProtocols: ["h2"], rejectUnauthorized: false, servername: isIP(host) ? undefined : host });
      socket.once("connect", () => {
        connected = true;
        const key = hostPort(socket.localAddress, socket.localPort);
        this.selfChecks.add(key);
        // Forgotten after a while, should the server have nothing to report (certificates optional).
        setTimeout(() => this.selfChecks.delete(key), 2 * SELF_CHECK_TIMEOUT_MS).unref();
      });
      socket.once("secureConnect", () => finish(socket.alpnProtocol === "h2" ? undefined : `negotiated ${JSON.stringify(socket.alpnProtocol)} instead of ALPN "h2"`));
      socket.once("error", (e: NodeJS.ErrnoException) => finish(`failed: ${e.code ? `${e.code}: ` : ""}${e.message.trim()}`));
      socket.once("close", () => finish("was closed by the server before the handshake completed"));
    });
  }
}

/** The code of a connection closed because reloaded client CAs or CRLs refuse its certificate (TlsListener.setMaterial). */
export const REFUSED_AFTER_RELOAD = "REFUSED_AFTER_RELOAD";

/** Default for TlsHandshakeFailureLog: at most one line per reason per minute. */
export const TLS_FAILURE_LOG_INTERVAL_MS = 60_000;

/**
 * Logs refused handshakes without letting a flood of them flood the log: the first of a reason is
 * logged at once; later ones within `intervalMs` are only counted, and one line at the end of the
 * interval says how many there were (the next interval starts then, so a steady flood gives one
 * line per reason per interval). `count` is called for every one (the metric).
 */
export class TlsHandshakeFailureLog {
  private readonly windows = new Map<TlsHandshakeFailureReason, { suppressed: number; timer: NodeJS.Timeout }>();

  constructor(
    private readonly logger: Logger,
    private readonly count: (reason: TlsHandshakeFailureReason) => void = () => undefined,
    private readonly intervalMs = TLS_FAILURE_LOG_INTERVAL_MS,
  ) {}

  readonly report = (f: TlsHandshakeFailure): void => {
    this.count(f.reason);
    if (f.code === REFUSED_AFTER_RELOAD) {
      // One line each, never suppressed: a reload closes at most the connections open then.
      this.logger.warn("connection closed: the reloaded client CAs or CRLs refuse its client certificate", { ...f });
      return;
    }
    const w = this.windows.get(f.reason);
    if (w) {
      w.suppressed++;
      return;
    }
    this.logger.warn("TLS handshake refused", { ...f });
    this.open(f.reason);
  };

  /** Stops the timers (at shutdown); suppressed counts not yet logged are logged now. */
  close(): void {
    for (const [reason, w] of this.windows) {
      clearTimeout(w.timer);
      if (w.suppressed > 0) this.summary(reason, w.suppressed);
    }
    this.windows.clear();
  }

  private open(reason: TlsHandshakeFailureReason): void {
    const timer = setTimeout(() => {
      const w = this.windows.get(reason);
      this.windows.delete(reason);
      if (w && w.suppressed > 0) {
        this.summary(reason, w.suppressed);
        this.open(reason);
      }
    }, this.intervalMs);
    timer.unref();
    this.windows.set(reason, { suppressed: 0, timer });
  }

  private summary(reason: TlsHandshakeFailureReason, suppressed: number): void {
    this.logger.warn("TLS handshakes refused (not logged one by one)", { reason, suppressed, seconds: this.intervalMs / 1000 });
  }
}

/** A refused client certificate's subject and issuer, as a report names them. */
function namesOf(cert: X509Certificate | undefined): { subject: string | undefined; issuer: string | undefined } {
  return { subject: bounded(cert?.subject.replace(/\n/g, ", ")), issuer: bounded(cert?.issuer.replace(/\n/g, ", ")) };
}

/**
 * Why client CAs and CRLs refuse an open connection's certificate (`all`: its presented chain,
 * leaf first), or undefined: revoked (the leaf or a CA of its chain not among the anchors), no
 * longer issued by a client CA, or expired.
 */
function refusalOf(leaf: X509Certificate, all: X509Certificate[], anchors: X509Certificate[], crls: Crl[], now: number): TlsHandshakeFailureReason | undefined {
  if (all.some((c) => !anchors.some((a) => a.fingerprint256 === c.fingerprint256) && revokedBy(c, crls))) return "certificate_revoked";
  if (checkPeerChain(leaf, all.slice(1), anchors, "client", now) === undefined) return undefined;
  return now > Date.parse(leaf.validTo) ? "certificate_expired" : "unknown_ca";
}

/** The client CAs and CRLs of some material, as one buffer to compare. */
function clientTrustOf(m: TlsContextMaterial): Buffer {
  return Buffer.concat([m.clientCa ?? Buffer.alloc(0), Buffer.from([0]), ...(m.crl ?? [])]);
}
