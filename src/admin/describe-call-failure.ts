import { GrpcCallError, Status } from "../client/index.js";

/** Where to give KeyAdmin's CA: the flag and the variable (admin-args.ts reads both). */
const CA_HINT = "--ca FILE or HSM_SIGNER_ADMIN_CA";

/**
 * KeyAdmin's certificate did not chain to a trusted CA: OpenSSL's words against the system
 * roots, or the channel's own check against the --ca bundle (tls/peer-certificate.ts).
 */
const UNTRUSTED_SERVER = /self[- ]signed certificate|unable to verify the first certificate|unable to get local issuer certificate|unable to get issuer certificate|is not issued by a CA in/i;

export interface CallContext {
  /** host:port of KeyAdmin. */
  endpoint: string;
  /** --timeout, the budget of the whole command. */
  timeoutMs: number;
  /** Whether --ca (or HSM_SIGNER_ADMIN_CA) was given. */
  caGiven: boolean;
}

/**
 * What a custodian reads when a KeyAdmin call fails. The failure itself is the client's one
 * decoding (client/grpc-http2-client.ts): the service's catalog code from the
 * `hsm-signer-error-code` trailer, the gRPC status when there is none. An answer with a catalog
 * code is the service's own message, printed as-is (with the endpoint when the service is
 * unavailable); without one an UNAVAILABLE status is the channel's: the service could not be
 * reached (named, with where to give the CA when its certificate is not trusted).
 */
export function describeCallFailure(e: GrpcCallError, c: CallContext): string {
  const timedOut = e.errorCode !== undefined ? e.errorCode === "DEADLINE_EXCEEDED" : e.code === Status.DEADLINE_EXCEEDED;
  if (timedOut) return `KeyAdmin at ${c.endpoint} did not answer within ${c.timeoutMs / 1000}s (--timeout, the budget of the whole command): ${e.details}`;
  if (e.code !== Status.UNAVAILABLE) return e.details;
  // The service answered, and said it cannot serve now (its HSM or audit store is down).
  if (e.errorCode !== undefined) return `KeyAdmin at ${c.endpoint} is unavailable: ${e.details}`;
  // The channel's own words name the endpoint already ("cannot reach host:port: ...").
  const reason = e.details.startsWith(`cannot reach ${c.endpoint}: `) ? e.details.slice(`cannot reach ${c.endpoint}: `.length) : e.details;
  if (!UNTRUSTED_SERVER.test(reason)) return `cannot reach KeyAdmin at ${c.endpoint}: ${reason}`;
  const hint = c.caGiven
    ? `the CA bundle given (${CA_HINT}) does not hold the CA that issued KeyAdmin's certificate, or the server does not send its intermediates`
    : `KeyAdmin's certificate is checked against the system roots; give the CA that issued it with ${CA_HINT}`;
  return `cannot reach KeyAdmin at ${c.endpoint}: ${reason} (${hint})`;
}
