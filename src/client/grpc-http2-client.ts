import { isIP } from "node:net";
import tls from "node:tls";
import type { ClientHttp2Session, ClientHttp2Stream, IncomingHttpHeaders, OutgoingHttpHeaders } from "node:http2";
import { ERROR_CODE_TRAILER, ERROR_CODES, type ErrorCode } from "../errors/index.js";
import { checkServerCertificate, parseCaBundle, presentedChain } from "../tls/peer-certificate.js";

/** gRPC status codes (grpc/doc/statuscodes.md), as this client decodes them. */
export const Status = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  DEADLINE_EXCEEDED: 4,
  NOT_FOUND: 5,
  ALREADY_EXISTS: 6,
  PERMISSION_DENIED: 7,
  RESOURCE_EXHAUSTED: 8,
  FAILED_PRECONDITION: 9,
  ABORTED: 10,
  OUT_OF_RANGE: 11,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
  DATA_LOSS: 15,
  UNAUTHENTICATED: 16,
} as const;

export const STATUS_NAMES: Record<number, string> = Object.fromEntries(Object.entries(Status).map(([k, v]) => [v, k]));

/** Catalog codes a retry can clear (an outage that passes, a limit that refills); never a refused PIN. */
const RETRYABLE_CODES: ReadonlySet<ErrorCode> = new Set(["HSM_UNAVAILABLE", "AUDIT_UNAVAILABLE", "POOL_EXHAUSTED", "RATE_LIMITED"]);
const KNOWN_CODES: ReadonlySet<string> = new Set(ERROR_CODES);

/** The trailer's value when it is a code of the catalog; anything else (another server, a proxy) is ignored. */
function catalogCodeOf(value: string | undefined): ErrorCode | undefined {
  return value !== undefined && KNOWN_CODES.has(value) ? (value as ErrorCode) : undefined;
}

export class GrpcCallError extends Error {
  constructor(
    readonly code: number,
    readonly details: string,
    /** Server-suggested retry delay in ms (the `retry-after-ms` trailer), if any. */
    readonly retryAfterMs?: number,
    /** True when retrying cannot help (for example a TLS verification failure). */
    readonly permanent = false,
    /** The service's error catalog code (the `hsm-signer-error-code` trailer), when it sent one. */
    readonly errorCode?: ErrorCode,
    /**
     * True when the status is the server's answer (its grpc-status and grpc-message); false when
     * this client made it up: its own deadline, a connection that failed, an answer it refused.
     */
    readonly received = false,
  ) {
    super(`${STATUS_NAMES[code] ?? code}: ${details}`);
    this.name = "GrpcCallError";
  }
}

export interface ChannelOptions {
  /** host:port */
  endpoint: string;
  /** PEM CA bundle; the system roots when absent. */
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
  /** TLS server name, when it differs from the endpoint's host. */
  serverName?: string;
  userAgent?: string;
  /** A response message above this is refused (RESOURCE_EXHAUSTED). Default 4 MiB, as gRPC's. */
  maxResponseBytes?: number;
}

export interface CallOptions {
  /** Absolute deadline, ms since the epoch. */
  deadline: number;
  metadata?: Record<string, string>;
}

/** TLS alerts a server sends when it wants a client certificate it did not get or did not accept. */
const CLIENT_CERT_REFUSED = /certificate required|alert bad certificate|alert unknown ca|alert certificate unknown/i;
const TLS_PERMANENT = /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ERR_TLS|HOSTNAME|ALTNAME|certificate/i;

/** A failure to reach or set up TLS with the service, as a call error. */
function connectError(e: unknown, endpoint: string, sentCert: boolean): GrpcCallError {
  if (e instanceof GrpcCallError) return e;
  const err = e as NodeJS.ErrnoException;
  if (/no application protocol/i.test(err.message)) {
    return new GrpcCallError(Status.UNAVAILABLE, `${endpoint} did not agree to HTTP/2 (the TLS server refused ALPN "h2"); is this a gRPC endpoint?`, undefined, true);
  }
  if (CLIENT_CERT_REFUSED.test(err.message)) {
    const why = sentCert ? "not accepted by the server's client CA" : "none was sent; set client_cert_file and client_key_file";
    return new GrpcCallError(Status.UNAUTHENTICATED, `${endpoint} refused the TLS client certificate (${why}): ${err.message.trim()}`, undefined, true);
  }
  if (err.code === undefined || /^ERR_OSSL|^ERR_INVALID|PEM|key values mismatch/i.test(`${err.code ?? ""} ${err.message}`)) {
    // Unusable TLS options (a key that does not match its certificate, bad PEM) fail before any connection.
    if (!/ECONN|EHOST|ENET|ETIMEDOUT|EAI_/.test(err.code ?? "")) {
      return new GrpcCallError(Status.INVALID_ARGUMENT, `cannot set up TLS to ${endpoint} (check the CA, client certificate and client key files): ${err.message}`, undefined, true);
    }
  }
  const permanent = TLS_PERMANENT.test(`${err.code ?? ""} ${err.message}`);
  return new GrpcCallError(Status.UNAVAILABLE, permanent ? `TLS connection to ${endpoint} failed: ${err.message}` : `cannot reach ${endpoint}: ${err.message}`, undefined, permanent);
}

function splitEndpoint(endpoint: string): { host: string; port: string } {
  const m = /^\[?([^\]]+?)\]?:(\d+)$/.exec(endpoint);
  if (!m?.[1] || !m[2]) throw new GrpcCallError(Status.INVALID_ARGUMENT, `endpoint "${endpoint}" is not host:port`, undefined, true);
  return { host: m[1], port: m[2] };
}

/** HTTP/2 error codes (RFC 9113 §7) this client interprets. */
const H2 = { NO_ERROR: 0x0, REFUSED_STREAM: 0x7, CANCEL: 0x8, ENHANCE_YOUR_CALM: 0xb, INADEQUATE_SECURITY: 0xc } as const;
const H2_NAMES = [
  "NO_ERROR",
  "PROTOCOL_ERROR",
  "INTERNAL_ERROR",
  "FLOW_CONTROL_ERROR",
  "SETTINGS_TIMEOUT",
  "STREAM_CLOSED",
  "FRAME_SIZE_ERROR",
  "REFUSED_STREAM",
  "CANCEL",
  "COMPRESSION_ERROR",
  "CONNECT_ERROR",
  "ENHANCE_YOUR_CALM",
  "INADEQUATE_SECURITY",
  "HTTP_1_1_REQUIRED",
];
const h2Name = (code: number): string => H2_NAMES[code] ?? `error code 0x${code.toString(16)}`;

/** gRPC's mapping of an HTTP/2 reset code to a status (grpc/doc/PROTOCOL-HTTP2.md). */
function statusOfReset(code: number): number {
  if (code === H2.REFUSED_STREAM) return Status.UNAVAILABLE;
  if (code === H2.CANCEL) return Status.CANCELLED;
  if (code === H2.ENHANCE_YOUR_CALM) return Status.RESOURCE_EXHAUSTED;
  if (code === H2.INADEQUATE_SECURITY) return Status.PERMISSION_DENIED;
  return Status.INTERNAL;
}

const first = (v: string | string[] | undefined): string | undefined => (Array.isArray(v) ? v[0] : v);

/** Metadata that carries credentials: sent "never indexed" (RFC 7541 §7.1.3), kept out of HPACK tables. */
const SENSITIVE = ["authorization"];

/**
 * A metadata value gRPC cannot carry (PROTOCOL-HTTP2.md: ASCII-Value is %x20-%x7E): node:http2
 * drops a header holding a line break without a word (a token lost: the call goes out anonymous)
 * and sends other characters mangled, so the call is refused instead. Names the key and the
 * position, never the value (a token).
 */
function metadataProblem(metadata: Record<string, string> | undefined): string | undefined {
  for (const [k, v] of Object.entries(metadata ?? {})) {
    const i = v.search(/[^\x20-\x7e]/);
    if (i >= 0) return `metadata "${k}" cannot be sent: character ${i + 1} of its value is not printable ASCII`;
  }
  return undefined;
}

type Http2Module = typeof import("node:http2");
let http2Module: Http2Module | undefined;
/**
 * node:http2, loaded by the first connection only: the plugin's commands without one never pay
 * for it. process.getBuiltinModule rather than import(): in the plugin's CommonJS bundle a
 * dynamic import() would first load Node's whole ES module loader, several ms of each start.
 */
async function loadHttp2(): Promise<Http2Module> {
  // A Node before 20.16 has no getBuiltinModule: import() there.
  http2Module ??= typeof process.getBuiltinModule === "function" ? process.getBuiltinModule("node:http2") : await import("node:http2");
  return http2Module;
}

/** A session and what this channel learned about it. */
interface Session {
  h2: ClientHttp2Session;
  /** http2.sensitiveHeaders */
  sensitive: symbol;
  /** Set by GOAWAY, an error or close: no new streams go on it. */
  ended: boolean;
  /** Calls started on it and not yet finished. */
  open: number;
  /**
   * Resolves with the server's first SETTINGS (or the session's end). Until then one call at a
   * time: the server's stream limit is not known yet, and node:http2 would send every call at
   * once, the ones above a low limit then refused. A plugin's one call goes out at once.
   */
  settings: Promise<void> | undefined;
}

/**
 * A gRPC unary client over TLS and node:http2, without @grpc/grpc-js (tens of milliseconds to
 * load; the plugin starts three times per signature). node:http2 itself is loaded only when a
 * command connects. The TLS socket is set up here, its certificate chain checked against
 * ca_file, and only then handed to http2.connect, so not one HTTP/2 byte (let alone a request
 * with a token or a payload) goes to a server that has not been verified.
 */
export class GrpcHttp2Channel {
  private session: Promise<Session> | undefined;
  /** The session once connected, so close() can end it synchronously (the plugin exits next). */
  private live: Session | undefined;
  /** A connection attempt under way: close() destroys its socket. */
  private connecting: tls.TLSSocket | undefined;
  private closed = false;

  private readonly host: string;
  private readonly port: string;
  private readonly authority: string;
  private readonly maxResponseBytes: number;

  constructor(private readonly o: ChannelOptions) {
    ({ host: this.host, port: this.port } = splitEndpoint(o.endpoint));
    this.authority = this.host.includes(":") ? `[${this.host}]:${this.port}` : `${this.host}:${this.port}`;
    this.maxResponseBytes = o.maxResponseBytes ?? 4 * 1024 * 1024;
  }

  /** One session at a time, shared by concurrent calls; a new one once it is no longer usable. */
  private connect(): Promise<Session> {
    const current = this.session;
    if (current) {
      return current.then(
        (s) => (!s.ended && !s.h2.closed && !s.h2.destroyed ? s : this.open()),
        () => this.open(),
      );
    }
    return this.open();
  }

  private open(): Promise<Session> {
    const p = this.openSession();
    this.session = p;
    // A failed attempt is reported to its callers; the next call tries again.
    p.catch(() => undefined);
    return p;
  }

  private async openSession(): Promise<Session> {
    if (this.closed) throw new GrpcCallError(Status.CANCELLED, "the channel is closed", undefined, true);
    const socket = await this.secureSocket();
    const http2 = await loadHttp2();
    if (this.closed || socket.destroyed) {
      socket.destroy();
      throw new GrpcCallError(Status.CANCELLED, "the channel is closed", undefined, true);
    }
    const h2 = http2.connect(`https://${this.authority}`, {
      createConnection: () => socket,
      // No server push; room for a whole 4 MiB answer without waiting on WINDOW_UPDATEs.
      settings: { enablePush: false, initialWindowSize: 4 * 1024 * 1024 },
    });
    const s: Session = { h2, sensitive: http2.sensitiveHeaders, ended: false, open: 0, settings: undefined };
    let settingsSeen: () => void = () => undefined;
    s.settings = new Promise<void>((resolve) => (settingsSeen = resolve));
    h2.once("remoteSettings", () => {
      s.settings = undefined;
      settingsSeen();
    });
    const end = (): void => {
      s.ended = true;
      settingsSeen();
      if (this.live === s) this.live = undefined;
    };
    // A session error also fails its streams (each reports it); here it only retires the session.
    h2.on("error", end);
    h2.on("goaway", end);
    h2.on("close", end);
    h2.unref();
    this.live = s;
    return s;
  }

  /**
   * The TLS connection, verified: with ca_file, the chain is checked here (tls/peer-certificate.ts
   * says why not by OpenSSL); the server must agree to "h2".
   */
  private secureSocket(): Promise<tls.TLSSocket> {
    const { host, port } = this;
    const name = this.o.serverName ?? host;
    // RFC 6066 allows no IP address as SNI (Node warns, DEP0123): a name is sent, an address is not.
    const servername = isIP(name) ? undefined : name;
    return new Promise((resolve, reject) => {
      // With ca_file, `ca: []` keeps Node from loading its bundled roots; the chain is checked
      // against ca_file below, before any HTTP/2 byte is sent. Without it, OpenSSL verifies
      // against the system roots, always (whatever NODE_TLS_REJECT_UNAUTHORIZED says), and the
      // name checked is server_name when set, IP address or not.
      const common = { host, port: Number(port), servername, ALPNProtocols: ["h2"], cert: this.o.cert, key: this.o.key };
      let socket: tls.TLSSocket;
      try {
        socket = this.o.ca
          ? tls.connect({ ...common, ca: [], rejectUnauthorized: false })
          : tls.connect({ ...common, rejectUnauthorized: true, checkServerIdentity: (_h, cert) => tls.checkServerIdentity(name, cert) });
      } catch (e) {
        reject(e);
        return;
      }
      this.connecting = socket;
      const fail = (e: unknown): void => {
        socket.destroy();
        if (this.connecting === socket) this.connecting = undefined;
        reject(e);
      };
      socket.setNoDelay(true);
      let anchors: ReturnType<typeof parseCaBundle> | undefined;
      // Once TCP is up the ClientHello has gone out (tls.connect's own "connect" listener sends
      // it): reading the CA bundle and loading node:http2 while the server works on its part of
      // the handshake saves a few ms of each plugin start.
      socket.once("connect", () => {
        try {
          anchors = this.o.ca ? parseCaBundle(this.o.ca) : undefined;
          // Synchronous where getBuiltinModule exists: the loading happens here and now.
          loadHttp2().catch(() => undefined);
        } catch (e) {
          fail(e);
        }
      });
      const closed = (): void => fail(new Error("the connection closed during the TLS handshake"));
      socket.once("error", fail);
      socket.once("close", closed);
      socket.once("secureConnect", () => {
        socket.off("close", closed);
        socket.off("error", fail);
        if (this.connecting === socket) this.connecting = undefined;
        const refuse = (problem: string): void => fail(new GrpcCallError(Status.UNAVAILABLE, `TLS connection to ${this.o.endpoint} failed: ${problem}`, undefined, true));
        if (this.o.ca) {
          try {
            anchors ??= parseCaBundle(this.o.ca);
          } catch (e) {
            return fail(e);
          }
          const { leaf, all } = presentedChain(socket);
          const problem = leaf ? checkServerCertificate(leaf, all, anchors, name) : "the server sent no certificate";
          if (problem) return refuse(problem);
        }
        if (socket.alpnProtocol !== "h2") return refuse(`the server did not agree to HTTP/2 (ALPN ${socket.alpnProtocol || "none"}); is this a gRPC endpoint?`);
        // Errors from here on reach the HTTP/2 session; until it exists, none may go unheard.
        socket.on("error", () => undefined);
        resolve(socket);
      });
    });
  }

  unary(path: string, body: Buffer, opts: CallOptions): Promise<Buffer> {
    return new Promise<Buffer>((resolve, reject) => {
      const bad = metadataProblem(opts.metadata);
      if (bad) {
        reject(new GrpcCallError(Status.INVALID_ARGUMENT, bad, undefined, true));
        return;
      }
      const remaining = opts.deadline - Date.now();
      if (remaining <= 0) {
        reject(new GrpcCallError(Status.DEADLINE_EXCEEDED, "deadline exceeded before the call started"));
        return;
      }
      let settled = false;
      let stream: ClientHttp2Stream | undefined;
      const finish = (err: GrpcCallError | undefined, value?: Buffer): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (err) {
          if (stream && !stream.closed) stream.close(H2.CANCEL);
          reject(err);
        } else {
          resolve(value as Buffer);
        }
      };
      const timer = setTimeout(() => finish(new GrpcCallError(Status.DEADLINE_EXCEEDED, `no answer within ${Math.ceil(remaining)} ms`)), remaining);
      const sentCert = this.o.cert !== undefined;
      this.connect().then(
        async (session) => {
          while (session.settings && session.open > 0 && !settled) await session.settings;
          if (settled) return;
          if (session.ended) {
            // It ended while this call waited for its SETTINGS: never sent, safe to retry.
            finish(new GrpcCallError(Status.UNAVAILABLE, `${this.o.endpoint}: the connection closed before the call was sent`));
            return;
          }
          try {
            stream = this.start(session, path, body, opts, finish);
          } catch (e) {
            // A session that went away between connect() and request() (ERR_HTTP2_INVALID_SESSION, GOAWAY_SESSION).
            session.ended = true;
            finish(new GrpcCallError(Status.UNAVAILABLE, `${this.o.endpoint}: ${(e as Error).message}`));
          }
        },
        (e: unknown) => finish(connectError(e, this.o.endpoint, sentCert)),
      );
    });
  }

  /** Sends one call on the session; `finish` gets its outcome once the stream has closed. */
  private start(session: Session, path: string, body: Buffer, opts: CallOptions, finish: (err: GrpcCallError | undefined, value?: Buffer) => void): ClientHttp2Stream {
    const stream = session.h2.request(this.headers(path, opts, session.sensitive), { endStream: false });
    session.open++;
    let headers: IncomingHttpHeaders | undefined;
    let trailers: IncomingHttpHeaders | undefined;
    let error: Error | undefined;
    const chunks: Buffer[] = [];
    let received = 0;
    /** END_STREAM on the response headers: a trailers-only answer (stream.endAfterHeaders does not say so in Node 20). */
    let trailersOnly = false;
    stream.on("response", (h, flags) => {
      headers = h;
      trailersOnly = (flags & 0x1) !== 0;
    });
    stream.on("trailers", (t) => (trailers = t));
    stream.on("data", (d: Buffer) => {
      received += d.length;
      if (received > this.maxResponseBytes + 5) {
        finish(new GrpcCallError(Status.RESOURCE_EXHAUSTED, `${this.o.endpoint}: the response is larger than ${this.maxResponseBytes} bytes`, undefined, true));
        return;
      }
      chunks.push(d);
    });
    stream.on("error", (e) => (error = e));
    stream.on("close", () => {
      session.open--;
      const rst = stream.rstCode ?? H2.NO_ERROR;
      // A trailers-only answer carries the status in its one header block.
      const statusBlock = trailers ?? headers;
      if (statusBlock?.["grpc-status"] !== undefined && (trailers !== undefined || trailersOnly)) {
        finish(...this.result(statusBlock, chunks));
      } else if (session.h2.destroyed || session.h2.closed || (session.ended && rst === H2.REFUSED_STREAM)) {
        // The connection went (whatever code node:http2 closed the stream with), or the stream
        // was above a GOAWAY's last stream id (REFUSED_STREAM: never processed, safe to retry).
        // In TLS 1.3 a server refuses a client certificate after the client's handshake is done:
        // its alert arrives here, as the connection's error.
        if (error && CLIENT_CERT_REFUSED.test(error.message)) return finish(connectError(error, this.o.endpoint, this.o.cert !== undefined));
        finish(new GrpcCallError(Status.UNAVAILABLE, `${this.o.endpoint}: the connection ended before an answer${error ? `: ${error.message}` : ""} (${h2Name(rst)})`));
      } else if (rst !== H2.NO_ERROR) {
        finish(new GrpcCallError(statusOfReset(rst), `${this.o.endpoint}: the server reset the stream (${h2Name(rst)})`));
      } else if (error) {
        finish(new GrpcCallError(Status.UNAVAILABLE, `${this.o.endpoint}: the connection failed: ${error.message}`));
      } else if (headers && Number(headers[":status"]) !== 200) {
        finish(new GrpcCallError(Status.UNAVAILABLE, `HTTP status ${headers[":status"] ?? "missing"} from ${this.o.endpoint}`));
      } else if (headers) {
        finish(new GrpcCallError(Status.INTERNAL, `the call to ${this.o.endpoint} ended without a gRPC status`));
      } else {
        finish(new GrpcCallError(Status.UNAVAILABLE, `${this.o.endpoint}: the connection closed before an answer`));
      }
    });
    stream.end(frameMessage(body));
    return stream;
  }

  private headers(path: string, opts: CallOptions, sensitiveHeaders: symbol): OutgoingHttpHeaders {
    const remaining = Math.max(1, Math.ceil(opts.deadline - Date.now()));
    const h: OutgoingHttpHeaders = {
      ":method": "POST",
      ":scheme": "https",
      ":path": path,
      ":authority": this.authority,
      "content-type": "application/grpc",
      "te": "trailers",
      "grpc-timeout": `${remaining}m`,
      "user-agent": this.o.userAgent ?? "hsm-signer-client",
    };
    const sensitive: string[] = [];
    for (const [k, v] of Object.entries(opts.metadata ?? {})) {
      const name = k.toLowerCase();
      h[name] = v;
      if (SENSITIVE.includes(name)) sensitive.push(name);
    }
    // node:http2 types the symbol key as a string index; it is http2.sensitiveHeaders.
    if (sensitive.length > 0) (h as Record<string | symbol, unknown>)[sensitiveHeaders] = sensitive;
    return h;
  }

  /** The call's outcome from the response: the message, or the gRPC status as an error. */
  private result(statusBlock: IncomingHttpHeaders, chunks: Buffer[]): [GrpcCallError | undefined, Buffer?] {
    const status = Number(first(statusBlock["grpc-status"]));
    if (status !== Status.OK) {
      const raw = first(statusBlock["grpc-message"]) ?? "";
      let message: string;
      try {
        message = decodeURIComponent(raw);
      } catch {
        message = raw; // not percent-encoded after all (a proxy's text): show it as it came
      }
      const ra = first(statusBlock["retry-after-ms"]);
      const retryAfter = ra === undefined || !/^\d{1,9}$/.test(ra) ? undefined : Number(ra);
      const errorCode = catalogCodeOf(first(statusBlock[ERROR_CODE_TRAILER]));
      // The catalog says for certain what a retry can do: only a passing outage or a limit can clear.
      const permanent = errorCode !== undefined && !RETRYABLE_CODES.has(errorCode);
      return [new GrpcCallError(Number.isInteger(status) ? status : Status.UNKNOWN, message, retryAfter, permanent, errorCode, true)];
    }
    const data = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
    if (data.length < 5) return [new GrpcCallError(Status.INTERNAL, "empty gRPC response")];
    if (data[0] !== 0) return [new GrpcCallError(Status.INTERNAL, "compressed gRPC responses are not supported")];
    const len = data.readUInt32BE(1);
    if (data.length < 5 + len) return [new GrpcCallError(Status.INTERNAL, "truncated gRPC response")];
    return [undefined, data.subarray(5, 5 + len)];
  }

  close(): void {
    this.closed = true;
    const s = this.session;
    this.session = undefined;
    this.connecting?.destroy();
    this.connecting = undefined;
    this.live?.h2.destroy();
    this.live = undefined;
    // A session still connecting is closed once it is there.
    s?.then(
      (x) => x.h2.destroy(),
      () => undefined,
    );
  }
}

/** The gRPC length-prefixed message: no compression flag, 4-byte length, the bytes. */
export function frameMessage(body: Buffer): Buffer {
  const frame = Buffer.alloc(5 + body.length);
  frame.writeUInt32BE(body.length, 1);
  body.copy(frame, 5);
  return frame;
}

export interface RetryOptions {
  /** Attempts in all, the first included. */
  attempts: number;
  baseDelayMs: number;
}

/**
 * Retries UNAVAILABLE, and RESOURCE_EXHAUSTED that comes with the server's suggested delay (a
 * rate limit; without one it is a size or resource refusal that the same call meets again),
 * while the deadline allows; notation itself never retries a plugin.
 */
export async function withRetries<T>(deadline: number, retry: RetryOptions, call: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await call();
    } catch (e) {
      if (!(e instanceof GrpcCallError) || e.permanent || attempt >= retry.attempts) throw e;
      if (e.code !== Status.UNAVAILABLE && !(e.code === Status.RESOURCE_EXHAUSTED && e.retryAfterMs !== undefined)) throw e;
      const delay = e.retryAfterMs ?? retry.baseDelayMs * 2 ** (attempt - 1);
      if (Date.now() + delay >= deadline) throw e;
      await new Promise((r) => setTimeout(r, delay));
    }
  }
}
