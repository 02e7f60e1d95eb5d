import { SignerError } from "../errors/index.js";

/** Who is calling, as the policy and the audit log see it. */
export interface CallerIdentity {
  kind: "mtls" | "jwt" | "anonymous";
  /**
   * mtls: which certificate field named the caller. A policy pattern matches one kind only, so a
   * CN or a DNS SAN that reads like a URI can never pass for a URI SAN (nor a CN for a DNS name).
   */
  source?: MtlsIdentitySource;
  /**
   * For display and audit. mtls: a URI SAN as it is, a DNS SAN as "dns:<name>", a CN as
   * "cn:<value>"; jwt: "<iss>#<sub>". The audit's identityKind field (identityKind()) says the
   * kind for certain, since a URI SAN could itself read "cn:...".
   */
  id: string;
  /** mtls: the certificate field's value as it is (what policy patterns match); jwt: the "sub" claim. */
  subject: string;
  issuer?: string;
  /** jwt: the verified claims (sub, repository, ref, workflow, ...), for the policy. */
  claims?: Record<string, unknown>;
}

export type MtlsIdentitySource = "uri" | "dns" | "cn";

/** The kind of a caller for the audit record: mtls-uri, mtls-dns, mtls-cn, jwt or anonymous. */
export function identityKind(c: CallerIdentity): string {
  return c.kind === "mtls" ? `mtls-${c.source ?? "uri"}` : c.kind;
}

/** An mTLS identity of the given kind. */
export function mtlsIdentity(source: MtlsIdentitySource, value: string): CallerIdentity {
  return { kind: "mtls", source, id: source === "uri" ? value : `${source}:${value}`, subject: value };
}

/** The refusal of credentials that name no one we trust; `cause` goes to the service log only. */
export function unauthenticated(reason: string, cause?: unknown): SignerError {
  return new SignerError("UNAUTHENTICATED", reason, { cause });
}
