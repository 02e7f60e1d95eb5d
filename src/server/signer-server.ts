import { createHash } from "node:crypto";
import { resolve } from "node:path";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { parseNotaryPayload, type AuditRecordInput } from "../audit/index.js";
import { SignerError } from "../errors/index.js";
import type { Logger } from "../log/index.js";
import type { KeyRecord } from "../signing/ports.js";
import { validateKeyId, type SigningService } from "../signing/signing-service.js";
import type { AccessControl } from "./access-control.js";
import { auditKeyId, bindServer, isLoopbackAddress, loadService, PROTO_DIR, unaryHandler, type AuditSink, type RunningServer, type TlsOptions } from "./grpc-common.js";

export { DEFAULT_MAX_DEADLINE_MS, isLoopbackAddress, type AuditSink, type CallContext, type RunningServer, type TlsOptions } from "./grpc-common.js";

/** gRPC's own receive limit sits above the payload limit so that an oversized payload gets a clear INVALID_ARGUMENT. */
const MAX_RECEIVE_BYTES = 4 * 1024 * 1024;

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
 * A plaintext listener that serves only grpc.health.v1, for kubelet gRPC probes (which cannot
 * speak TLS). It reveals nothing but SERVING / NOT_SERVING.
 */
export async function startHealthServer(listen: string, ready: () => boolean): Promise<RunningServer> {
  const server = new grpc.Server();
  addHealthService(server, ready);
  return bindServer(server, listen, { insecure: true });
}

/** grpc.health.v1: "" and hsm_signer.v1.Signer are SERVING while ready() says so. */
export function addHealthService(server: grpc.Server, ready: () => boolean): void {
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
  const server = new grpc.Server({ "grpc.max_receive_message_length": MAX_RECEIVE_BYTES });
  const unary = unaryHandler({ logger: o.logger, access: o.access, audit: o.audit, listen: o.listen, maxDeadlineMs: o.maxDeadlineMs, onRequest: o.onRequest });
  server.addService(loadService("signer.proto", "Signer"), {
    Sign: unary<SignRequestMsg, object>("Sign", async (req, ctx) => {
      ctx.record.keyId = auditKeyId(req.keyId);
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
      ctx.record.keyId = auditKeyId(req.keyId);
      o.access.authorize(ctx, "GetCertificateChain", validateKeyId(req.keyId));
      const k = await o.signing.chain(req.keyId, req.keyVersion || undefined);
      return { keyId: k.keyId, certificateChain: k.chain, keyVersion: k.version };
    }),
    DescribeKey: unary<{ keyId: string; keyVersion: number }, object>("DescribeKey", async (req, ctx) => {
      ctx.record.keyId = auditKeyId(req.keyId);
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
  return bindServer(server, o.listen, o.tls, unary.inFlight);
}
