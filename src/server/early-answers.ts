import type * as http2 from "node:http2";
import { TLSSocket } from "node:tls";
import * as grpc from "@grpc/grpc-js";
import { SignerError } from "../errors/index.js";
import { auditText } from "../signing/signing-service.js";

/**
 * Answers that grpc-js gives by itself, before any method's handler runs, made to go through the
 * audit like every other answer (README, "Audit"):
 *
 * - a path no service of the listener serves (grpc-js: UNIMPLEMENTED) reaches a handler of its
 *   own, which the unary handler runs like any method: audited with the path, UNIMPLEMENTED;
 * - a request that is not gRPC at all (a content-type other than application/grpc*; grpc-js: HTTP
 *   415 with no gRPC status) is audited INVALID_ARGUMENT with its path and the caller, then
 *   answered 415 as grpc-js would, or 503 when its line cannot be written;
 * - a request message over the receive limit (grpc-js: RESOURCE_EXHAUSTED, after the 5-byte
 *   message prefix, so without buffering the message), a grpc-timeout header that does not parse,
 *   a compression the server does not take, no request message or a second one: the call's one
 *   answer becomes the catalog's (PAYLOAD_TOO_LARGE, DEADLINE_EXCEEDED, INVALID_ARGUMENT), with a
 *   request id, and leaves only once its audit line is durable; if it cannot be written, the call
 *   fails UNAVAILABLE as any other.
 *
 * grpc-js has no public hook for any of these. This relies on three of its internals (1.14, pinned by
 * package-lock.json): Server._retrieveHandler(path), Server._verifyContentType(stream, headers)
 * (true, or false once it has answered 415), and the base server call, which an interceptor
 * receives and which answers these cases with this.sendStatus() and carries the request's metadata
 * as `metadata`. test/integration/early-answers.test.ts fails if an upgrade changes either.
 */

/** A status as grpc-js's server call sends it (its PartialStatusObject, which it does not export). */
export interface CallStatus {
  code: grpc.status;
  details?: string;
  metadata?: grpc.Metadata | null;
}

/** How far the base server call of grpc-js is relied on (server-interceptors.ts, BaseServerInterceptingCall). */
interface BaseCall {
  metadata: grpc.Metadata;
  getPeer(): string;
  getAuthContext(): ReturnType<grpc.ServerUnaryCall<unknown, unknown>["getAuthContext"]>;
  sendStatus(status: CallStatus): void;
}

/** What an early answer knows of its call: enough to name the caller. */
export type EarlyCall = Pick<BaseCall, "metadata" | "getPeer" | "getAuthContext">;

/** The unary handler's side: it audits an early answer and gives the status to send, and it takes the calls that reach a method. */
export interface EarlyAnswerSink {
  answerEarly(call: EarlyCall, method: string, e: SignerError): Promise<CallStatus>;
  unknownMethod(path: string): grpc.handleUnaryCall<Buffer, Buffer>;
}

const STATE = Symbol("hsm-signer call state");
/** The codec of unknown paths' bodies (the bytes as they came); also how the interceptor tells those calls. */
const RAW = (b: Buffer): Buffer => b;
type Marked = grpc.Metadata & { [STATE]?: "handler" | "early" };

/**
 * The method's handler takes the call (the unary handler, first thing); false when an early
 * answer went already, and then the handler neither answers nor audits: the call has its line.
 */
export function takeCall(metadata: grpc.Metadata): boolean {
  const m = metadata as Marked;
  if (m[STATE] === "early") return false;
  m[STATE] = "handler";
  return true;
}

/** The longest path an audit line or a log line repeats. */
const MAX_PATH_CHARS = 200;

const shownPath = (path: string): string => auditText(path, MAX_PATH_CHARS);

/** The catalog error for a status grpc-js gives before the handler runs. */
function earlyError(s: CallStatus): SignerError {
  const details = s.details ?? "";
  if (s.code === grpc.status.RESOURCE_EXHAUSTED) return new SignerError("PAYLOAD_TOO_LARGE", `the request message is too large: ${details}`);
  if (s.code === grpc.status.DEADLINE_EXCEEDED) return new SignerError("DEADLINE_EXCEEDED", "the deadline passed before the request message arrived");
  return new SignerError("INVALID_ARGUMENT", `the request was refused before its method ran: ${details}`);
}

/**
 * Both, for one server: newGrpcServer(options, early) builds it with `interceptor` and calls `install`. `methods` names the
 * audit's method for each path served (e.g. "/hsm_signer.v1.Signer/Sign" → "Sign").
 */
export class EarlyAnswers {
  constructor(
    private readonly sink: EarlyAnswerSink,
    private readonly methods: ReadonlyMap<string, string>,
  ) {}

  /**
   * The interceptor to build the server with: nothing per call but one closure and one property.
   * Only the audited methods and unknown paths: grpc.health.v1 is never audited (README, "Audit").
   */
  readonly interceptor: grpc.ServerInterceptor = (method, call) => {
    if (!this.methods.has(method.path) && method.requestDeserialize !== RAW) return call as grpc.ServerInterceptingCall;
    const base = call as unknown as BaseCall;
    // A grpc-js whose base call looks otherwise: the call goes on as grpc-js makes it, never a
    // crash in the middle of one (the integration test fails on such an upgrade).
    if (!(base.metadata instanceof grpc.Metadata) || typeof base.sendStatus !== "function") return call as grpc.ServerInterceptingCall;
    const send = base.sendStatus;
    base.sendStatus = (s) => this.guarded(base, send, method.path, s);
    // The same call, not a wrapper (a ServerInterceptingCall per call would cost the hot path).
    return call as grpc.ServerInterceptingCall;
  };

  private guarded(base: BaseCall, send: BaseCall["sendStatus"], path: string, s: CallStatus): void {
    const m = base.metadata as Marked;
    if (m[STATE] === "handler" || s.code === grpc.status.OK) return send.call(base, s);
    // Answered early already: grpc-js may refuse the same call again (each further data frame of
    // an oversized message, the half-close), but the first answer is the call's one answer.
    if (m[STATE] === "early") return;
    m[STATE] = "early";
    void this.sink
      .answerEarly(base, this.methods.get(path) ?? shownPath(path), earlyError(s))
      // answerEarly turns an audit failure into UNAVAILABLE itself; a rejection would be a bug, never an unaudited refusal.
      .catch((): CallStatus => ({ code: grpc.status.INTERNAL, details: "internal error" }))
      .then((answer) => send.call(base, answer));
  }

  /**
   * Routes paths no service serves to the sink's unknown-method handler instead of grpc-js's own
   * UNIMPLEMENTED, and audits requests that are not gRPC before their 415.
   */
  install(server: grpc.Server): void {
    const s = server as unknown as {
      _retrieveHandler?: (path: string) => unknown;
      _verifyContentType?: (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders) => boolean;
    };
    const own = s._retrieveHandler;
    if (typeof own !== "function") throw new Error("grpc-js no longer has Server._retrieveHandler: unknown methods would go unaudited (server/early-answers.ts)");
    if (typeof s._verifyContentType !== "function") throw new Error("grpc-js no longer has Server._verifyContentType: requests that are not gRPC would go unaudited (server/early-answers.ts)");
    s._retrieveHandler = (path: string) => own.call(server, path) ?? { func: this.sink.unknownMethod(shownPath(path)), serialize: RAW, deserialize: RAW, type: "unary", path };
    // grpc-js's own test, word for word; it answers 415 at once, so the refusal is answered here instead.
    s._verifyContentType = (stream, headers) => {
      const type = headers["content-type"];
      if (typeof type === "string" && type.startsWith("application/grpc")) return true;
      this.notGrpc(stream, headers, type);
      return false;
    };
  }

  /** A request that is not gRPC: its line (path, caller, INVALID_ARGUMENT), then grpc-js's 415, or 503 when the line cannot be written. */
  private notGrpc(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, type: string | undefined): void {
    const path = headers[":path"] ?? "-";
    const e = new SignerError("INVALID_ARGUMENT", `not a gRPC request: content-type ${type === undefined ? "missing" : shownPath(type)}`);
    void this.sink
      .answerEarly(streamCall(stream, headers), this.methods.get(path) ?? shownPath(path), e)
      .catch((): CallStatus => ({ code: grpc.status.INTERNAL }))
      .then((answer) => {
        if (stream.closed || stream.destroyed) return;
        const status = answer.code === grpc.status.INVALID_ARGUMENT ? 415 : answer.code === grpc.status.UNAVAILABLE ? 503 : 500;
        try {
          stream.respond({ ":status": status }, { endStream: true });
        } catch {
          // The client went away meanwhile: its line is written, there is no one to answer.
        }
      });
  }
}

/** The caller of a raw HTTP/2 stream as grpc-js's base call would name it (server-interceptors.ts: getPeer, getAuthContext). */
function streamCall(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): EarlyCall {
  const socket = stream.session?.socket;
  let metadata: grpc.Metadata;
  try {
    metadata = grpc.Metadata.fromHttp2Headers(headers);
  } catch {
    metadata = new grpc.Metadata();
  }
  return {
    metadata,
    getPeer: () => (socket?.remoteAddress ? (socket.remotePort ? `${socket.remoteAddress}:${socket.remotePort}` : socket.remoteAddress) : "unknown"),
    getAuthContext: () => {
      if (!(socket instanceof TLSSocket) || !socket.authorized) return {};
      const cert = socket.getPeerCertificate();
      return { transportSecurityType: "ssl", sslPeerCertificate: cert.raw ? cert : undefined };
    },
  };
}

/** The audit's method names of a service's paths: "/<service>/<Method>" → prefix + Method. */
export function methodNames(definition: grpc.ServiceDefinition, prefix = ""): [string, string][] {
  return Object.values(definition).map((d) => [d.path, `${prefix}${d.path.slice(d.path.lastIndexOf("/") + 1)}`]);
}
