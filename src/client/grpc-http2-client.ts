import http2 from "node:http2";
import { isIP } from "node:net";
import tls from "node:tls";
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

export class GrpcCallError extends Error {
  constructor(
    readonly code: number,
    readonly details: string,
    /** Server-suggested retry delay in ms (the `retry-after-ms` trailer), if any. */
    readonly retryAfterMs?: number,
    /** True when retrying cannot help (for example a TLS verification failure). */
    readonly permanent = false,
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

/**
 * A gRPC unary client over Node's own http2 and TLS, a few hundred microseconds to load where
 * @grpc/grpc-js takes tens of milliseconds: the plugin starts three times per signature.
 */
export class GrpcHttp2Channel {
  private session: http2.ClientHttp2Session | undefined;

  constructor(private readonly o: ChannelOptions) {
    splitEndpoint(o.endpoint);
  }

  private connect(): Promise<http2.ClientHttp2Session> {
    if (this.session && !this.session.closed && !this.session.destroyed) return Promise.resolve(this.session);
    const { host, port } = splitEndpoint(this.o.endpoint);
    const authority = host.includes(":") ? `https://[${host}]:${port}` : `https://${host}:${port}`;
    const servername = this.o.serverName ?? (isIP(host) ? undefined : host);
    if (!this.o.ca) {
      // System roots: OpenSSL verifies.
      return Promise.resolve(this.adopt(http2.connect(authority, { cert: this.o.cert, key: this.o.key, servername })));
    }
    const anchors = parseCaBundle(this.o.ca);
    return new Promise((resolve, reject) => {
      // `ca: []` keeps Node from loading its bundled roots; the chain is checked against ca_file
      // below, before any request byte is sent (tls/peer-certificate.ts says why).
      const socket = tls.connect({ host, port: Number(port), servername, ALPNProtocols: ["h2"], ca: [], rejectUnauthorized: false, cert: this.o.cert, key: this.o.key });
      socket.setNoDelay(true);
      const fail = (e: Error): void => {
        socket.destroy();
        reject(e);
      };
      socket.once("error", fail);
      socket.once("secureConnect", () => {
        socket.off("error", fail);
        const { leaf, all } = presentedChain(socket);
        const problem = leaf ? checkServerCertificate(leaf, all, anchors, this.o.serverName ?? host) : "the server sent no certificate";
        if (problem) {
          socket.destroy();
          reject(new GrpcCallError(Status.UNAVAILABLE, `TLS connection to ${this.o.endpoint} failed: ${problem}`, undefined, true));
          return;
        }
        resolve(this.adopt(http2.connect(authority, { createConnection: () => socket })));
      });
    });
  }

  private adopt(s: http2.ClientHttp2Session): http2.ClientHttp2Session {
    s.on("error", () => undefined); // surfaced through the stream's error
    s.unref();
    this.session = s;
    return s;
  }

  unary(path: string, body: Buffer, opts: CallOptions): Promise<Buffer> {
    return new Promise<Buffer>((resolve, reject) => {
      const remaining = opts.deadline - Date.now();
      if (remaining <= 0) {
        reject(new GrpcCallError(Status.DEADLINE_EXCEEDED, "deadline exceeded before the call started"));
        return;
      }
      let settled = false;
      const finish = (err: GrpcCallError | undefined, value?: Buffer): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (err) reject(err);
        else resolve(value as Buffer);
      };
      const timer = setTimeout(() => finish(new GrpcCallError(Status.DEADLINE_EXCEEDED, `no answer within ${Math.ceil(remaining)} ms`)), remaining);
      this.connect().then(
        (session) => {
          if (!settled) this.send(session, path, body, opts, finish);
        },
        (e: unknown) => finish(connectError(e, this.o.endpoint, this.o.cert !== undefined)),
      );
    });
  }

  private send(session: http2.ClientHttp2Session, path: string, body: Buffer, opts: CallOptions, finish: (err: GrpcCallError | undefined, value?: Buffer) => void): void {
    const remaining = Math.max(1, opts.deadline - Date.now());
    const headers: http2.OutgoingHttpHeaders = {
      ":method": "POST",
      ":path": path,
      "content-type": "application/grpc",
      te: "trailers",
      "grpc-timeout": `${Math.max(1, Math.ceil(remaining))}m`,
      "user-agent": this.o.userAgent ?? "hsm-signer-client",
      ...opts.metadata,
    };
    let req: http2.ClientHttp2Stream;
    try {
      req = session.request(headers);
    } catch (e) {
      finish(connectError(e, this.o.endpoint, this.o.cert !== undefined));
      return;
    }
    const cancel = setTimeout(() => req.close(http2.constants.NGHTTP2_CANCEL), remaining);
    req.on("close", () => clearTimeout(cancel));
    const chunks: Buffer[] = [];
    let httpStatus = 0;
    let status: number | undefined;
    let message = "";
    let retryAfterMs: number | undefined;
    const readStatus = (h: http2.IncomingHttpHeaders): void => {
      if (h["grpc-status"] !== undefined) {
        status = Number(h["grpc-status"]);
        const raw = String(h["grpc-message"] ?? "");
        try {
          message = decodeURIComponent(raw);
        } catch {
          message = raw; // not percent-encoded after all (a proxy's text): show it as it came
        }
        const ra = h["retry-after-ms"];
        if (ra !== undefined) retryAfterMs = Number(ra);
      }
    };
    req.on("response", (h) => {
      httpStatus = Number(h[":status"]);
      readStatus(h);
    });
    req.on("trailers", readStatus);
    req.on("data", (c: Buffer) => chunks.push(c));
    req.on("error", (e) => finish(connectError(e, this.o.endpoint, this.o.cert !== undefined)));
    req.on("close", () => {
      if (status === undefined) {
        finish(new GrpcCallError(httpStatus && httpStatus !== 200 ? Status.UNAVAILABLE : Status.INTERNAL, httpStatus && httpStatus !== 200 ? `HTTP status ${httpStatus} from ${this.o.endpoint}` : `the call to ${this.o.endpoint} ended without a gRPC status`));
        return;
      }
      if (status !== Status.OK) {
        finish(new GrpcCallError(status, message, retryAfterMs));
        return;
      }
      const data = Buffer.concat(chunks);
      if (data.length < 5) return finish(new GrpcCallError(Status.INTERNAL, "empty gRPC response"));
      if (data[0] !== 0) return finish(new GrpcCallError(Status.INTERNAL, "compressed gRPC responses are not supported"));
      const len = data.readUInt32BE(1);
      finish(undefined, data.subarray(5, 5 + len));
    });
    const frame = Buffer.alloc(5 + body.length);
    frame.writeUInt32BE(body.length, 1);
    body.copy(frame, 5);
    req.end(frame);
  }

  close(): void {
    this.session?.close();
    this.session = undefined;
  }
}

export interface RetryOptions {
  /** Attempts in all, the first included. */
  attempts: number;
  baseDelayMs: number;
}

/**
 * Retries UNAVAILABLE (and RESOURCE_EXHAUSTED, after the server's suggested delay) while the
 * deadline allows; notation itself never retries a plugin.
 */
export async function withRetries<T>(deadline: number, retry: RetryOptions, call: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await call();
    } catch (e) {
      if (!(e instanceof GrpcCallError) || e.permanent || attempt >= retry.attempts) throw e;
      if (e.code !== Status.UNAVAILABLE && e.code !== Status.RESOURCE_EXHAUSTED) throw e;
      const delay = e.retryAfterMs ?? retry.baseDelayMs * 2 ** (attempt - 1);
      if (Date.now() + delay >= deadline) throw e;
      await new Promise((r) => setTimeout(r, delay));
    }
  }
}
