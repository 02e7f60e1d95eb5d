import { X509Certificate } from "node:crypto";
import type * as grpc from "@grpc/grpc-js";
import type { Authenticator, CallerIdentity, PolicyDecision, PolicyStore, RateLimiter } from "../auth/index.js";
import { checkPeerChain } from "../tls/peer-certificate.js";
import { SignerError } from "../errors/index.js";
import type { CallContext } from "./grpc-common.js";

export interface AccessControlOptions {
  authenticator: Authenticator;
  policy: PolicyStore;
  limiter: RateLimiter;
  /**
   * Set when TLS only requests client certificates (bearer tokens accepted too): the presented
   * certificate is then verified here against these CAs before it may name the caller.
   */
  clientCas?: X509Certificate[];
}

const ANONYMOUS: CallerIdentity = { kind: "anonymous", id: "anonymous", subject: "anonymous" };

function isLoopbackPeer(peer: string): boolean {
  const host = peer.replace(/:\d+$/, "").replace(/^\[|\]$/g, "").replace(/^::ffff:/, "");
  return host === "::1" || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/** The server edge's view of identity and policy: from a gRPC call to a caller and a decision. */
export class AccessControl {
  constructor(private readonly o: AccessControlOptions) {}

  async authenticate(call: grpc.ServerUnaryCall<unknown, unknown>, loopbackListener: boolean): Promise<CallerIdentity> {
    const peerCertificate = call.getAuthContext().sslPeerCertificate;
    if (peerCertificate && this.o.clientCas) {
      const problem = checkPeerChain(new X509Certificate(peerCertificate.raw), [], this.o.clientCas, "client");
      if (problem) throw new SignerError("UNAUTHENTICATED", problem);
    }
    const authorization = call.metadata.get("authorization")[0];
    const caller = await this.o.authenticator.authenticate({ peerCertificate, authorization: typeof authorization === "string" ? authorization : undefined });
    if (caller) return caller;
    if (this.o.policy.current.allowAnonymousOnLoopback && loopbackListener && isLoopbackPeer(call.getPeer())) return ANONYMOUS;
    throw new SignerError("UNAUTHENTICATED", "no client certificate or bearer token: present a client certificate or an Authorization: Bearer token");
  }

  /** Checks the policy (deny by default) and the rate limits; records the decision. */
  authorize(ctx: CallContext, method: string, keyId: string | undefined): PolicyDecision {
    const policy = this.o.policy.current;
    const d = policy.decide(ctx.caller, method, keyId);
    ctx.record.decision = d.allow ? "allow" : "deny";
    if (d.rule) ctx.record.rule = d.rule;
    if (!d.allow) {
      const what = keyId === undefined ? method : `${method} with key "${keyId}"`;
      throw new SignerError("PERMISSION_DENIED", `${ctx.caller.id} may not call ${what}: ${d.reason}`);
    }
    const r = this.o.limiter.take(policy.rateLimitsFor(ctx.caller, keyId, d.rule));
    if (!r.ok) {
      ctx.record.decision = "deny";
      throw new SignerError("RATE_LIMITED", `${ctx.caller.id} is over its rate limit${keyId ? ` for key "${keyId}"` : ""}; retry in ${r.retryAfterMs} ms`, { retryAfterMs: r.retryAfterMs });
    }
    return d;
  }

  /** KeyAdmin: only a custodian of the policy, identified by its client certificate (never a token). */
  authorizeCustodian(ctx: CallContext, method: string): void {
    const allowed = ctx.caller.kind === "mtls" && this.o.policy.current.isCustodian(ctx.caller);
    ctx.record.decision = allowed ? "allow" : "deny";
    if (!allowed) throw new SignerError("PERMISSION_DENIED", `${ctx.caller.id} may not call KeyAdmin.${method}: only custodians named in the policy, identified by their client certificate, may administer keys`);
  }

  mayUseKey(caller: CallerIdentity, keyId: string): boolean {
    const p = this.o.policy.current;
    return p.keysPublic || p.mayUseKey(caller, keyId);
  }
}
