import { randomBytes } from "node:crypto";
import { performance } from "node:perf_hooks";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { SignerError, toSignerError } from "../errors/index.js";
import type { Logger } from "../log/index.js";
import type { KeyRecord } from "../signing/ports.js";
import type { SigningService } from "../signing/signing-service.js";
import { grpcStatusOf } from "./status.js";

export const PROTO_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "../../../proto");
/** Longest a request may take when the caller sets no deadline (or a longer one). */
export const DEFAULT_MAX_DEADLINE_MS = 60_000;
/** gRPC's own receive limit sits above the payload limit so that an oversized payload gets a clear INVALID_ARGUMENT. */
const MAX_RECEIVE_BYTES = 4 * 1024 * 1024;

export type TlsOptions =
  | { insecure: false; cert: Buffer; key: Buffer; clientCa?: Buffer | undefined }
  | { insecure: true };

export interface SignerServerOptions {
  /** host:port; port 0 picks a free port. */
  listen: string;
  tls: TlsOptions;
  signing: SigningService;
  logger: Logger;
  maxDeadlineMs?: number;
}

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

  /** Wraps a handler: request id, deadline, error mapping (once, here), logging. */
  const unary = <Req, Res>(method: string, fn: (req: Req, ctx: { requestId: string; deadline: number }) => Promise<Res>): grpc.handleUnaryCall<Req, Res> =>
    (call, callback) => {
      const requestId = newRequestId();
      const started = performance.now();
      const deadline = deadlineOf(call as grpc.ServerUnaryCall<unknown, unknown>);
      const fail = (err: unknown): void => {
        const e = toSignerError(err);
        const code = grpcStatusOf(e.code);
        if (e.code === "INTERNAL") o.logger.error("request failed", { requestId, method, error: e.cause ?? e });
        else o.logger.info("request refused", { requestId, method, code: e.code, message: e.message });
        const md = new grpc.Metadata();
        md.set("request-id", requestId);
        if (e.retryAfterMs !== undefined) md.set("retry-after-ms", String(e.retryAfterMs));
        callback({ code, details: `${e.message} [request ${requestId}]`, metadata: md });
      };
      fn(call.request, { requestId, deadline }).then((res) => {
        if (Date.now() > deadline) {
          fail(new SignerError("DEADLINE_EXCEEDED", "the deadline passed before the answer was ready"));
          return;
        }
        if (o.logger.enabled("debug")) o.logger.debug("request", { requestId, method, result: "OK", ms: performance.now() - started });
        callback(null, res);
      }, fail);
    };

  server.addService(serviceOf(pkg, "Signer"), {
    Sign: unary<SignRequestMsg, unknown>("Sign", async (req, ctx) => {
      const input = {
        keyId: req.keyId,
        payload: req.input === "payload" ? req.payload : undefined,
        digest: req.input === "digest" ? req.digest : undefined,
        hashAlgorithm: req.hashAlgorithm || undefined,
        keySpec: req.keySpec || undefined,
        keyVersion: req.keyVersion || undefined,
        deadline: ctx.deadline,
      };
      const r = await o.signing.sign(input);
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
    GetCertificateChain: unary<{ keyId: string; keyVersion: number }, unknown>("GetCertificateChain", async (req) => {
      const k = await o.signing.chain(req.keyId, req.keyVersion || undefined);
      return { keyId: k.keyId, certificateChain: k.chain, keyVersion: k.version };
    }),
    DescribeKey: unary<{ keyId: string; keyVersion: number }, unknown>("DescribeKey", async (req) => {
      const k = await o.signing.describe(req.keyId, req.keyVersion || undefined);
      return { key: keyInfo(k) };
    }),
    ListKeys: unary<unknown, unknown>("ListKeys", async () => {
      const keys = await o.signing.list();
      // Only keys that can sign: CA keys and keys without a complete chain are not offered.
      return { keys: keys.filter((k) => !k.unusableReason).map(keyInfo) };
    }),
  });

  const creds = o.tls.insecure
    ? grpc.ServerCredentials.createInsecure()
    : grpc.ServerCredentials.createSsl(o.tls.clientCa ?? null, [{ private_key: o.tls.key, cert_chain: o.tls.cert }], o.tls.clientCa !== undefined);
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
