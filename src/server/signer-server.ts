import type { CallerIdentity } from "../auth/index.js";
import { SignerError } from "../errors/index.js";
import { SignerDefinition, type KeyInfo } from "../gen/hsm_signer/v1/signer.js";
import type { Logger } from "../log/index.js";
import type { KeyRecord } from "../signing/ports.js";
import type { SigningService } from "../signing/signing-service.js";
import type { AccessControl } from "./access-control.js";
import { addHealthService } from "./health-service.js";
import {
  bindServer,
  EarlyAnswers,
  isLoopbackAddress,
  methodNames,
  newGrpcServer,
  serviceDefinition,
  unaryHandler,
  type AuditSink,
  type RunningServer,
  type ServiceHandlers,
  type TlsOptions,
} from "./grpc-common.js";

export { DEFAULT_MAX_DEADLINE_MS, isLoopbackAddress, type AuditSink, type CallContext, type RunningServer, type TlsOptions } from "./grpc-common.js";

/** gRPC's own receive limit sits above the payload limit so that an oversized payload gets a clear INVALID_ARGUMENT. */
const MAX_RECEIVE_BYTES = 4 * 1024 * 1024;

export interface SignerServerOptions {
  /** host:port; port 0 picks a free port. */
  listen: string;
  tls: TlsOptions;
  /** The signing core: it authorizes (through the same AccessControl), looks keys up and signs. */
  signing: SigningService<CallerIdentity>;
  logger: Logger;
  maxDeadlineMs?: number;
  /** Who is calling: every call is authenticated here, and authorized by the signing core. */
  access: AccessControl;
  /** Every call is recorded here before its answer leaves (an AuditLog). */
  audit: AuditSink;
  /** Readiness for grpc.health.v1 (HSM logged in, audit writable); default: always serving. */
  ready?: () => boolean;
  /** Called once per answered call, for metrics. */
  onRequest?: (method: string, result: string, seconds: number, keyId: string | undefined) => void;
}

function keyInfo(k: KeyRecord): KeyInfo {
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

/** Builds the gRPC server for hsm_signer.v1.Signer. */
export async function startSignerServer(o: SignerServerOptions): Promise<RunningServer> {
  if (o.tls.insecure && !isLoopbackAddress(o.listen)) {
    throw new SignerError("CONFIG_INVALID", `plaintext (tls.insecure) is only allowed on a loopback address, not ${o.listen}`);
  }
  const unary = unaryHandler({ logger: o.logger, access: o.access, audit: o.audit, listen: o.listen, maxDeadlineMs: o.maxDeadlineMs, onRequest: o.onRequest });
  const definition = serviceDefinition(SignerDefinition);
  const server = newGrpcServer({ "grpc.max_receive_message_length": MAX_RECEIVE_BYTES }, new EarlyAnswers(unary, new Map(methodNames(definition))));
  const handlers: ServiceHandlers<typeof SignerDefinition> = {
    // Each handler decodes, lets the core run the call (it fills ctx.facts, which the shared
    // unary handler copies into the call's one audit line), and encodes the answer.
    Sign: unary("Sign", async (req, ctx) => {
      const request = {
        keyId: req.keyId,
        payload: req.payload,
        digest: req.digest,
        hashAlgorithm: req.hashAlgorithm || undefined,
        keySpec: req.keySpec || undefined,
        keyVersion: req.keyVersion || undefined,
        deadline: ctx.deadline,
      };
      const r = await o.signing.sign(request, ctx.caller, ctx.facts);
      return {
        keyId: r.key.keyId,
        signature: r.signature,
        signingAlgorithm: r.key.info.signingAlgorithm,
        keySpec: r.key.spec,
        certificateChain: r.key.chain,
        keyVersion: r.key.version,
        requestId: ctx.requestId,
        // The unary handler adds it once the call's audit line is durable.
        receipt: undefined,
      };
    }),
    GetCertificateChain: unary("GetCertificateChain", async (req, ctx) => {
      const k = await o.signing.certificateChain({ keyId: req.keyId, keyVersion: req.keyVersion || undefined }, ctx.caller, ctx.facts);
      return { keyId: k.keyId, certificateChain: k.chain, keyVersion: k.version };
    }),
    DescribeKey: unary("DescribeKey", async (req, ctx) => {
      const k = await o.signing.describeKey({ keyId: req.keyId, keyVersion: req.keyVersion || undefined }, ctx.caller, ctx.facts);
      return { key: keyInfo(k) };
    }),
    ListKeys: unary("ListKeys", async (_req, ctx) => ({ keys: (await o.signing.listKeys(ctx.caller, ctx.facts)).map(keyInfo) })),
  };
  server.addService(definition, handlers);

  addHealthService(server, o.ready ?? (() => true));
  return bindServer(server, o.listen, o.tls, unary.inFlight);
}
