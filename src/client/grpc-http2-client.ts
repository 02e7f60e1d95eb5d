import { isIP } from "node:net";
import tls from "node:tls";
import { H2Session, H2StreamError, H2Code, type H2Response } from "./h2-session.js";
import type { HeaderList } from "./hpack.js";
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

/** gRPC's mapping of an HTTP/2 reset code to a status (grpc/doc/PROTOCOL-HTTP2.md). */
function statusOfReset(code: number | undefined): number {
  if (code === H2Code.REFUSED_STREAM) return Status.UNAVAILABLE;
  if (code === H2Code.CANCEL) return Status.CANCELLED;
  if (code === H2Code.ENHANCE_YOUR_CALM) return Status.RESOURCE_EXHAUSTED;
  if (code === H2Code.INADEQUATE_SECURITY) return Status.PERMISSION_DENIED;
  return Status.INTERNAL;
}

function callErrorOf(e: unknown, endpoint: string, sentCert: boolean): GrpcCallError {
  if (!(e instanceof H2StreamError)) return connectError(e, endpoint, sentCert);
  // A socket error (a TLS alert such as "certificate required" included) reads as it always did.
  if (e.kind === "connection" && e.cause instanceof Error) return connectError(e.cause, endpoint, sentCert);
  switch (e.kind) {
    case "refused":
    case "connection":
      return new GrpcCallError(Status.UNAVAILABLE, `${endpoint}: ${e.message}`);
    case "reset":
      return new GrpcCallError(statusOfReset(e.h2Code), `${endpoint}: ${e.message}`);
    case "too-large":
      return new GrpcCallError(Status.RESOURCE_EXHAUSTED, `${endpoint}: ${e.message}`);
    default:
      return new GrpcCallError(Status.INTERNAL, `${endpoint}: ${e.message}`);
  }
}

const header = (list: HeaderList | undefined, name: string): string | undefined => list?.find(([n]) => n === name)?.[1];

/** Metadata that carries credentials: sent "never indexed" (hpack.ts). */
const SENSITIVE = new Set(["authorization"]);

/**
 * A gRPC unary client over TLS and the project's own HTTP/2 (h2-session.ts), which loads in well
 * under a millisecond where node:http2 costs 15-20 ms and @grpc/grpc-js tens of milliseconds:
 * the plugin starts three times per signature.
 */
export class GrpcHttp2Channel {
  private session: Promise<H2Session> | undefined;
  /** The session once connected, so close() can end it synchronously (the plugin exits next). */
  private live: H2Session | undefined;

  private readonly host: string;
  private readonly port: string;
  private readonly authority: string;

  constructor(private readonly o: ChannelOptions) {
    ({ host: this.host, port: this.port } = splitEndpoint(o.endpoint));
    this.authority = this.host.includes(":") ? `[${this.host}]:${this.port}` : `${this.host}:${this.port}`;
  }

  /** One session at a time, shared by concurrent calls; a new one once it is no longer usable. */
  private connect(): Promise<H2Session> {
    const current = this.session;
    if (current) {
      return current.then(
        (s) => (s.usable ? s : this.open()),
        () => this.open(),
      );
    }
    return this.open();
  }

  private open(): Promise<H2Session> {
    const p = this.openSession();
    this.session = p;
    return p;
  }

  private openSession(): Promise<H2Session> {
    const { host, port } = this;
    const servername = this.o.serverName ?? (isIP(host) ? undefined : host);
    return new Promise((resolve, reject) => {
      // With ca_file, `ca: []` keeps Node from loading its bundled roots; the chain is checked
      // against ca_file below, before any request byte is sent (tls/peer-certificate.ts says why).
      // Without it, OpenSSL verifies against the system roots.
      const socket = this.o.ca
        ? tls.connect({ host, port: Number(port), servername, ALPNProtocols: ["h2"], ca: [], rejectUnauthorized: false, cert: this.o.cert, key: this.o.key })
        : tls.connect({ host, port: Number(port), servername, ALPNProtocols: ["h2"], cert: this.o.cert, key: this.o.key });
      socket.setNoDelay(true);
      // The session writes the HTTP/2 preface and SETTINGS at once: constant bytes, no secret, so
      // they may go out as soon as the handshake ends. Setting up the session and reading the CA
      // bundle while the handshake is under way saves a few ms of each plugin start. Requests
      // (headers with tokens, payloads) are only sent once the session is handed out below.
      const session = new H2Session(socket);
      const fail = (e: unknown): void => {
        socket.destroy();
        reject(e);
      };
      let anchors: ReturnType<typeof parseCaBundle> | undefined;
      try {
        anchors = this.o.ca ? parseCaBundle(this.o.ca) : undefined;
      } catch (e) {
        fail(e);
        return;
      }
      socket.once("error", fail);
      socket.once("secureConnect", () => {
        socket.off("error", fail);
        const refuse = (problem: string): void => fail(new GrpcCallError(Status.UNAVAILABLE, `TLS connection to ${this.o.endpoint} failed: ${problem}`, undefined, true));
        if (anchors) {
          const { leaf, all } = presentedChain(socket);
          const problem = leaf ? checkServerCertificate(leaf, all, anchors, this.o.serverName ?? host) : "the server sent no certificate";
          if (problem) return refuse(problem);
        }
        if (socket.alpnProtocol !== "h2") return refuse(`the server did not agree to HTTP/2 (ALPN ${socket.alpnProtocol || "none"}); is this a gRPC endpoint?`);
        socket.unref();
        this.live = session;
        resolve(session);
      });
    });
  }

  unary(path: string, body: Buffer, opts: CallOptions): Promise<Buffer> {
    return new Promise<Buffer>((resolve, reject) => {
      const remaining = opts.deadline - Date.now();
      if (remaining <= 0) {
        reject(new GrpcCallError(Status.DEADLINE_EXCEEDED, "deadline exceeded before the call started"));
        return;
      }
      let settled = false;
      let cancel: ((e: Error) => void) | undefined;
      const finish = (err: GrpcCallError | undefined, value?: Buffer): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        if (err) {
          cancel?.(err);
          reject(err);
        } else {
          resolve(value as Buffer);
        }
      };
      const timer = setTimeout(() => finish(new GrpcCallError(Status.DEADLINE_EXCEEDED, `no answer within ${Math.ceil(remaining)} ms`)), remaining);
      const sentCert = this.o.cert !== undefined;
      this.connect().then(
        (session) => {
          if (settled) return;
          const call = session.request(this.headers(path, opts), frameMessage(body), SENSITIVE);
          cancel = call.cancel;
          call.response.then(
            (r) => finish(...this.result(r)),
            (e: unknown) => finish(callErrorOf(e, this.o.endpoint, sentCert)),
          );
        },
        (e: unknown) => finish(connectError(e, this.o.endpoint, sentCert)),
      );
    });
  }

  private headers(path: string, opts: CallOptions): HeaderList {
    const remaining = Math.max(1, Math.ceil(opts.deadline - Date.now()));
    const list: HeaderList = [
      [":method", "POST"],
      [":scheme", "https"],
      [":path", path],
      [":authority", this.authority],
      ["content-type", "application/grpc"],
      ["te", "trailers"],
      ["grpc-timeout", `${remaining}m`],
      ["user-agent", this.o.userAgent ?? "hsm-signer-client"],
    ];
    for (const [k, v] of Object.entries(opts.metadata ?? {})) list.push([k.toLowerCase(), v]);
    return list;
  }

  /** The call's outcome from the response: the message, or the gRPC status as an error. */
  private result(r: H2Response): [GrpcCallError | undefined, Buffer?] {
    // A trailers-only answer carries the status in its one header block.
    const statusBlock = r.trailers ?? r.headers;
    const httpStatus = Number(header(r.headers, ":status") ?? 0);
    const grpcStatus = header(statusBlock, "grpc-status");
    if (grpcStatus === undefined) {
      return httpStatus !== 200
        ? [new GrpcCallError(Status.UNAVAILABLE, `HTTP status ${httpStatus || "missing"} from ${this.o.endpoint}`)]
        : [new GrpcCallError(Status.INTERNAL, `the call to ${this.o.endpoint} ended without a gRPC status`)];
    }
    const status = Number(grpcStatus);
    if (status !== Status.OK) {
      const raw = header(statusBlock, "grpc-message") ?? "";
      let message: string;
      try {
        message = decodeURIComponent(raw);
      } catch {
        message = raw; // not percent-encoded after all (a proxy's text): show it as it came
      }
      const ra = header(statusBlock, "retry-after-ms");
      return [new GrpcCallError(status, message, ra === undefined ? undefined : Number(ra))];
    }
    const data = r.data;
    if (data.length < 5) return [new GrpcCallError(Status.INTERNAL, "empty gRPC response")];
    if (data[0] !== 0) return [new GrpcCallError(Status.INTERNAL, "compressed gRPC responses are not supported")];
    const len = data.readUInt32BE(1);
    if (data.length < 5 + len) return [new GrpcCallError(Status.INTERNAL, "truncated gRPC response")];
    return [undefined, data.subarray(5, 5 + len)];
  }

  close(): void {
    const s = this.session;
    this.session = undefined;
    this.live?.close();
    this.live = undefined;
    // A session still connecting is closed once it is there.
    s?.then(
      (x) => x.close(),
      () => undefined,
    );
  }
}

/** The gRPC length-prefixed message: no compression flag, 4-byte length, the bytes. */
function frameMessage(body: Buffer): Buffer {
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
