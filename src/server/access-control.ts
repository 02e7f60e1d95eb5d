import type * as grpc from "@grpc/grpc-js";
import type { Authenticator, CallerIdentity, PolicyStore, RateLimiter } from "../auth/index.js";
import { SignerError } from "../errors/index.js";
import type { Authorization, Authorizer, SignerMethod } from "../signing/ports.js";
import type { CallContext } from "./grpc-common.js";

export interface AccessControlOptions {
  authenticator: Authenticator;
  policy: PolicyStore;
  limiter: RateLimiter;
}

const ANONYMOUS: CallerIdentity = { kind: "anonymous", id: "anonymous", subject: "anonymous" };

function isLoopbackPeer(peer: string): boolean {
  const host = peer
    .replace(/:\d+$/, "")
    .replace(/^\[|\]$/g, "")
    .replace(/^::ffff:/, "");
  return host === "::1" || /^127\.\d+\.\d+\.\d+$/.test(host);
}

/** The server edge's view of identity and policy: from a gRPC call to a caller, and the core's Authorizer. */
export class AccessControl implements Authorizer<CallerIdentity> {
  constructor(private readonly o: AccessControlOptions) {}

  async authenticate(call: Pick<grpc.ServerUnaryCall<unknown, unknown>, "getAuthContext" | "metadata" | "getPeer">, loopbackListener: boolean): Promise<CallerIdentity> {
    // A certificate here was verified in the TLS handshake, with the intermediates the client
    // sent, by the service's own listener (server/tls-listener.ts), which closes a connection
    // whose presented certificate does not verify even when certificates are optional; grpc-js
    // shows only the leaf, so a second check here could not follow an intermediate.
    const peerCertificate = call.getAuthContext().sslPeerCertificate;
    const authorization = call.metadata.get("authorization")[0];
    const caller = await this.o.authenticator.authenticate({ peerCertificate, authorization: typeof authorization === "string" ? authorization : undefined });
    if (caller) return caller;
    if (this.o.policy.current.allowAnonymousOnLoopback && loopbackListener && isLoopbackPeer(call.getPeer())) return ANONYMOUS;
    throw new SignerError("UNAUTHENTICATED", "no client certificate or bearer token: present a client certificate or an Authorization: Bearer token");
  }

  /**
   * The signing core's Authorizer: the policy (deny by default), then the rate limits. A refusal
   * comes back as the error to answer with, beside the decision and rule the audit records.
   */
  authorize(caller: CallerIdentity, method: SignerMethod, keyId: string | undefined): Authorization {
    const policy = this.o.policy.current;
    const d = policy.decide(caller, method, keyId);
    if (!d.allow) {
      const what = keyId === undefined ? method : `${method} with key "${keyId}"`;
      return { decision: "deny", rule: d.rule, allowOldVersions: false, refusal: new SignerError("PERMISSION_DENIED", `${caller.id} may not call ${what}: ${d.reason}`) };
    }
    const r = this.o.limiter.take(policy.rateLimitsFor(caller, keyId, d.rule));
    if (!r.ok) {
      const refusal = new SignerError("RATE_LIMITED", `${caller.id} is over its rate limit${keyId ? ` for key "${keyId}"` : ""}; retry in ${r.retryAfterMs} ms`, { retryAfterMs: r.retryAfterMs });
      return { decision: "deny", rule: d.rule, allowOldVersions: false, refusal };
    }
    return { decision: "allow", rule: d.rule, allowOldVersions: d.allowOldVersions === true };
  }

  /** KeyAdmin: only a custodian of the policy, identified by its client certificate (never a token). */
  authorizeCustodian(ctx: CallContext, method: string): void {
    const allowed = ctx.caller.kind === "mtls" && this.o.policy.current.isCustodian(ctx.caller);
    ctx.record.decision = allowed ? "allow" : "deny";
    if (!allowed)
      throw new SignerError("PERMISSION_DENIED", `${ctx.caller.id} may not call KeyAdmin.${method}: only custodians named in the policy, identified by their client certificate, may administer keys`);
  }

  mayUseKey(caller: CallerIdentity, keyId: string): boolean {
    const p = this.o.policy.current;
    return p.keysPublic || p.mayUseKey(caller, keyId);
  }
}
