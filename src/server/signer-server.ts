import { createHash, randomBytes } from "node:crypto";
import { performance } from "node:perf_hooks";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import { experimental } from "@grpc/grpc-js";
import { parseNotaryPayload, type AuditReceipt, type AuditRecordInput } from "../audit/index.js";
import type { CallerIdentity } from "../auth/index.js";
import type { AccessControl } from "./access-control.js";
import { StaticCertificateProvider } from "./static-certificate-provider.js";
import * as protoLoader from "@grpc/proto-loader";
import { SignerError, toSignerError } from "../errors/index.js";
import type { Logger } from "../log/index.js";
import type { KeyRecord } from "../signing/ports.js";
import { validateKeyId, type SigningService } from "../signing/signing-service.js";
import { grpcStatusOf } from "./status.js";

export const PROTO_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "../../../proto");
/** Longest a request may take when the caller sets no deadline (or a longer one). */
export const DEFAULT_MAX_DEADLINE_MS = 60_000;
/** gRPC's own receive limit sits above the payload limit so that an oversized payload gets a clear INVALID_ARGUMENT. */
const MAX_RECEIVE_BYTES = 4 * 1024 * 1024;

/** What the server needs of the audit: a durable append that yields a receipt. */
export interface AuditSink {
  append(record: AuditRecordInput): Promise<AuditReceipt>;
}

export type TlsOptions =
  | {
      insecure: false;
      cert: Buffer;
      key: Buffer;
      clientCa?: Buffer | undefined;
      /** true: every client must present a certificate from clientCa (mTLS only); false: a certificate is optional (bearer tokens too). */
      requireClientCertificate?: boolean;
    }
  | { insecure: true };

export interface SignerServerOptions {
  /** host:port; port 0 picks a free port. */
  listen: string;
  tls: TlsOptions;
  signing: SigningService;
  logger: Logger;
  maxDeadlineMs?: number;
  /** Who is calling and what they may do: every call is authenticated and authorized. */
  access: AccessControl;
  /** Every call is recorded here before its answer leaves (an AuditLog). */
  audit: AuditSink;
  /** Readiness for grpc.health.v1 (HSM logged in, audit writable); default: always serving. */
  ready?: () => boolean;
  /** Called once per answered call, for metrics. */
  onRequest?: (method: string, result: string, seconds: number, keyId: string | undefined) => void;
}

/** How often a grpc.health.v1 Watch stream looks for a change of status. */
const HEALTH_WATCH_INTERVAL_MS = 1000;

export interface RunningServer {
  port: number;
  server: grpc.Server;
  /** Stops accepting, waits for in-flight calls up to graceMs, then cancels the rest. */
  close(graceMs?: number): Promise<void>;
}

export function isLoopbackAddress(listen: string): boolean {
  const host = listen.replace(/:\d+$/, "").replace(/^\[|\]$/g, "");
  return host === "localhost" || host === "::1" || /^127\.\d+\.\d+\.\d+$/.test(host);
}

export function loadSignerProto(): grpc.GrpcObject {
  const def = protoLoader.loadSync(resolve(PROTO_DIR, "hsm_signer/v1/signer.proto"), {
    keepCase: false,
    longs: Number,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  return grpc.loadPackageDefinition(def);
}

function serviceOf(pkg: grpc.GrpcObject, name: string): grpc.ServiceDefinition {
  const v1 = (pkg.hsm_signer as grpc.GrpcObject).v1 as grpc.GrpcObject;
  return (v1[name] as grpc.ServiceClientConstructor).service;
}

function keyInfo(k: KeyRecord): Record<string, unknown> {
  return {
    keyId: k.keyId,
    keySpec: k.spec,
    signingAlgorithm: k.info.signingAlgorithm,
    hashAlgorithm: k.info.hash,
    certificateSubject: k.certificate?.subject ?? "",
    certificateIssuer: k.certificate?.issuer ?? "",
    notBefore: k.certificate?.notBefore.toISOString() ?? "",
    notAfter: k.certificate?.notAfter.toISOString() ?? "",
    keyVersion: k.version,
    certificateSha256: k.certificate?.sha256 ?? "",
  };
}

/** Request ids: a random per-process prefix and a counter; unique across replicas without a syscall per request. */
const REQUEST_ID_PREFIX = randomBytes(4).toString("hex");
let requestCounter = 0;
const round = (ms: number): number => Math.round(ms * 1000) / 1000;

export interface CallContext {
  requestId: string;
  deadline: number;
  caller: CallerIdentity;
  /** The audit record of this call; handlers add what they learn (key, payload, decision). */
  record: AuditRecordInput;
}

/** What the audit records of a Sign payload: its digest and, for a Notary signing input, the artifact. */
function describePayload(record: AuditRecordInput, payload: Buffer | undefined, digest: Buffer | undefined, hash: string | undefined): void {
  if (payload) {
    record.payloadDigest = `sha256:${createHash("sha256").update(payload).digest("hex")}`;
    const p = parseNotaryPayload(payload);
    record.payloadKind = p.kind;
    if (p.artifact) record.artifact = p.artifact;
  } else if (digest) {
    record.payloadDigest = `${(hash ?? "unknown").toLowerCase().replace("-", "")}:${digest.toString("hex")}`;
    record.payloadKind = "digest";
  }
}

/**
 * TLS with an optional client CA. When client certificates are optional (bearer tokens are
 * accepted too), TLS only requests one and access-control.ts verifies it against the CA.
 */
function serverCredentials(tls: TlsOptions): grpc.ServerCredentials {
  if (tls.insecure) return grpc.ServerCredentials.createInsecure();
  const pair = [{ private_key: tls.key, cert_chain: tls.cert }];
  if (!tls.clientCa) return grpc.ServerCredentials.createSsl(null, pair, false);
  if (tls.requireClientCertificate !== false) return grpc.ServerCredentials.createSsl(tls.clientCa, pair, true);
  const provider = new StaticCertificateProvider(tls.cert, tls.key, tls.clientCa);
  return experimental.createCertificateProviderServerCredentials(provider, provider, false);
}

/** grpc.health.v1: "" and hsm_signer.v1.Signer are SERVING while ready() says so. */
function addHealthService(server: grpc.Server, ready: () => boolean): void {
  const def = protoLoader.loadSync(resolve(PROTO_DIR, "grpc/health/v1/health.proto"), { keepCase: true, enums: String, defaults: true });
  const health = ((grpc.loadPackageDefinition(def).grpc as grpc.GrpcObject).health as grpc.GrpcObject).v1 as grpc.GrpcObject;
  const known = new Set(["", "hsm_signer.v1.Signer"]);
  const statusOf = (service: string): string => (!known.has(service) ? "SERVICE_UNKNOWN" : ready() ? "SERVING" : "NOT_SERVING");
  server.addService((health.Health as grpc.ServiceClientConstructor).service, {
    Check: ((call: grpc.ServerUnaryCall<{ service: string }, unknown>, cb: grpc.sendUnaryData<unknown>) => {
      if (!known.has(call.request.service)) cb({ code: grpc.status.NOT_FOUND, details: `unknown service "${call.request.service}"` });
      else cb(null, { status: statusOf(call.request.service) });
    }) as grpc.handleUnaryCall<unknown, unknown>,
    Watch: ((call: grpc.ServerWritableStream<{ service: string }, unknown>) => {
      let last = "";
      const send = (): void => {
        const now = statusOf(call.request.service);
        if (now !== last) call.write({ status: now });
        last = now;
      };
      send();
      const timer = setInterval(send, HEALTH_WATCH_INTERVAL_MS);
      call.on("cancelled", () => clearInterval(timer));
      call.on("close", () => clearInterval(timer));
    }) as grpc.handleServerStreamingCall<unknown, unknown>,
  });
}

function newRequestId(): string {
  requestCounter = (requestCounter + 1) % 0x100000000;
  return REQUEST_ID_PREFIX + requestCounter.toString(16).padStart(8, "0");
}

interface SignRequestMsg {
  keyId: string;
  payload?: Buffer;
  digest?: Buffer;
  input?: "payload" | "digest";
  hashAlgorithm: string;
  keySpec: string;
  keyVersion: number;
}

/** Builds the gRPC server for hsm_signer.v1.Signer. */
export async function startSignerServer(o: SignerServerOptions): Promise<RunningServer> {
  if (o.tls.insecure && !isLoopbackAddress(o.listen)) {
    throw new SignerError("CONFIG_INVALID", `plaintext (tls.insecure) is only allowed on a loopback address, not ${o.listen}`);
  }
  const maxDeadline = o.maxDeadlineMs ?? DEFAULT_MAX_DEADLINE_MS;
  const server = new grpc.Server({ "grpc.max_receive_message_length": MAX_RECEIVE_BYTES });
  const pkg = loadSignerProto();

  const deadlineOf = (call: grpc.ServerUnaryCall<unknown, unknown>): number => {
    const d = call.getDeadline();
    const t = d instanceof Date ? d.getTime() : d;
    return Math.min(Number.isFinite(t) ? t : Infinity, Date.now() + maxDeadline);
  };

  const loopbackListener = isLoopbackAddress(o.listen);

  /**
   * Wraps a handler: request id, deadline, caller identity, the audit record (written, and
   * fsynced, before any answer leaves), error mapping (once, here), logging.
   */
  const unary = <Req, Res extends object>(method: string, fn: (req: Req, ctx: CallContext) => Promise<Res>): grpc.handleUnaryCall<Req, Res> =>
    (call, callback) => {
      const requestId = newRequestId();
      const started = performance.now();
      const deadline = deadlineOf(call as grpc.ServerUnaryCall<unknown, unknown>);
      const record: AuditRecordInput = { requestId, peer: call.getPeer(), identity: "-", method, decision: "none", result: "", latencyMs: 0 };
      const fail = async (err: unknown): Promise<void> => {
        let e = toSignerError(err);
        record.result = e.code;
        record.latencyMs = round(performance.now() - started);
        try {
          await o.audit.append(record);
        } catch (auditError) {
          e = toSignerError(auditError);
        }
        const code = grpcStatusOf(e.code);
        o.onRequest?.(method, e.code, (performance.now() - started) / 1000, record.keyId);
        if (e.code === "INTERNAL" || e.code === "AUDIT_UNAVAILABLE") o.logger.error("request failed", { requestId, method, code: e.code, error: e.cause ?? e });
        else o.logger.info("request refused", { requestId, method, code: e.code, message: e.message, identity: record.identity });
        const md = new grpc.Metadata();
        md.set("request-id", requestId);
        if (e.retryAfterMs !== undefined) md.set("retry-after-ms", String(e.retryAfterMs));
        callback({ code, details: `${e.message} [request ${requestId}]`, metadata: md });
      };
      const run = async (): Promise<void> => {
        const caller = await o.access.authenticate(call as grpc.ServerUnaryCall<unknown, unknown>, loopbackListener);
        record.identity = caller.id;
        const res = await fn(call.request, { requestId, deadline, caller, record });
        if (Date.now() > deadline) throw new SignerError("DEADLINE_EXCEEDED", "the deadline passed before the answer was ready");
        record.result = "OK";
        record.latencyMs = round(performance.now() - started);
        const receipt = await o.audit.append(record);
        if ("signature" in res) Object.assign(res, { receipt });
        if (o.logger.enabled("debug")) o.logger.debug("request", { requestId, method, result: "OK", ms: performance.now() - started });
        o.onRequest?.(method, "OK", (performance.now() - started) / 1000, record.keyId);
        callback(null, res);
      };
      run().catch(fail).catch((e: unknown) => o.logger.error("request failed while failing", { requestId, error: e }));
    };

  server.addService(serviceOf(pkg, "Signer"), {
    Sign: unary<SignRequestMsg, object>("Sign", async (req, ctx) => {
      ctx.record.keyId = req.keyId;
      if (req.keyVersion) ctx.record.keyVersion = req.keyVersion;
      const input = {
        keyId: req.keyId,
        payload: req.input === "payload" ? req.payload : undefined,
        digest: req.input === "digest" ? req.digest : undefined,
        hashAlgorithm: req.hashAlgorithm || undefined,
        keySpec: req.keySpec || undefined,
        keyVersion: req.keyVersion || undefined,
        deadline: ctx.deadline,
      };
      // Shape first (INVALID_ARGUMENT says what is wrong), then the policy, then the key.
      o.signing.validate(input);
      describePayload(ctx.record, input.payload, input.digest, input.hashAlgorithm);
      const decision = o.access.authorize(ctx, "Sign", req.keyId);
      const key = await o.signing.resolve(input);
      if (!key.current && !decision.allowOldVersions) {
        throw new SignerError("PERMISSION_DENIED", `${ctx.caller.id} may sign only with the current version of key "${key.keyId}", not version ${key.version} (the policy rule must set allowOldVersions)`);
      }
      const r = await o.signing.signWith(key, input);
      ctx.record.keyVersion = r.key.version;
      return {
        keyId: r.key.keyId,
        signature: r.signature,
        signingAlgorithm: r.key.info.signingAlgorithm,
        keySpec: r.key.spec,
        certificateChain: r.key.chain,
        keyVersion: r.key.version,
        requestId: ctx.requestId,
      };
    }),
    GetCertificateChain: unary<{ keyId: string; keyVersion: number }, object>("GetCertificateChain", async (req, ctx) => {
      ctx.record.keyId = req.keyId;
      o.access.authorize(ctx, "GetCertificateChain", validateKeyId(req.keyId));
      const k = await o.signing.chain(req.keyId, req.keyVersion || undefined);
      return { keyId: k.keyId, certificateChain: k.chain, keyVersion: k.version };
    }),
    DescribeKey: unary<{ keyId: string; keyVersion: number }, object>("DescribeKey", async (req, ctx) => {
      ctx.record.keyId = req.keyId;
      o.access.authorize(ctx, "DescribeKey", validateKeyId(req.keyId));
      const k = await o.signing.describe(req.keyId, req.keyVersion || undefined);
      return { key: keyInfo(k) };
    }),
    ListKeys: unary<unknown, object>("ListKeys", async (_req, ctx) => {
      o.access.authorize(ctx, "ListKeys", undefined);
      const keys = await o.signing.list();
      // Only keys that can sign (CA keys and keys without a complete chain are not offered),
      // and only those the caller may use.
      return { keys: keys.filter((k) => !k.unusableReason && !k.disabledReason && o.access.mayUseKey(ctx.caller, k.keyId)).map(keyInfo) };
    }),
  });

  addHealthService(server, o.ready ?? (() => true));

  const creds = serverCredentials(o.tls);
  const port = await new Promise<number>((res, rej) => {
    server.bindAsync(o.listen, creds, (err, p) => (err ? rej(new SignerError("CONFIG_INVALID", `cannot listen on ${o.listen}: ${err.message}`, { cause: err })) : res(p)));
  });
  return {
    port,
    server,
    close(graceMs = 10_000) {
      return new Promise<void>((res) => {
        const timer = setTimeout(() => {
          server.forceShutdown();
          res();
        }, graceMs);
        server.tryShutdown(() => {
          clearTimeout(timer);
          res();
        });
      });
    },
  };
}
