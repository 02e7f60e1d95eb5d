import type { PeerCertificate } from "node:tls";
import { SignerError } from "../errors/index.js";
import { silentLogger, type Logger } from "../log/index.js";
import type { CallerIdentity, MtlsIdentitySource } from "./caller-identity.js";
import { certificateIdentity, hasCertificate } from "./certificate-identity.js";
import { FileJwks, jwksTiming, RemoteJwks, type Jwks, type JwksTiming } from "./jwks.js";
import { withSystemRoots } from "./jwks-source.js";
import { shown } from "./jwt-errors.js";
import { IssuerVerifier, verifyBearer } from "./jwt-verifier.js";

// policy.ts and tests import these from here; the folder's surface is index.ts.
export { mtlsIdentity, type CallerIdentity, type MtlsIdentitySource } from "./caller-identity.js";

export interface JwtIssuerOptions {
  /** Exactly the token's `iss`. */
  issuer: string;
  audience: string;
  /** One of jwksFile or jwksUrl. */
  jwksFile?: string;
  /** https only. */
  jwksUrl?: string;
  /** Allow-list; "none" and HMAC (HS*) are refused at construction: the verification keys are public. */
  algorithms: string[];
  /** Tolerance for exp/nbf, default DEFAULT_CLOCK_SKEW_SECONDS. */
  clockSkewSeconds?: number;
  /** An extra CA (PEM file) trusted for jwksUrl, on top of the system roots; mainly for tests. */
  jwksCaFile?: string;
}

export interface AuthenticatorOptions {
  /** Which certificate field names an mTLS caller; the first one present wins. Default DEFAULT_MTLS_IDENTITY_FROM. */
  mtlsIdentityFrom?: MtlsIdentitySource[];
  jwt?: JwtIssuerOptions[];
  jwksTiming?: JwksTiming;
}

export const DEFAULT_MTLS_IDENTITY_FROM: readonly MtlsIdentitySource[] = ["uri", "dns", "cn"];
export const DEFAULT_CLOCK_SKEW_SECONDS = 30;
/** Skews above this are a configuration mistake: tokens would live minutes past their expiry. */
const MAX_CLOCK_SKEW_SECONDS = 300;
/** Asymmetric JWS algorithms only: a symmetric one would verify with a key the whole world can read. */
export const SUPPORTED_JWT_ALGORITHMS: readonly string[] = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA", "Ed25519"];

/** Validates the options, listing every problem at once. */
function checkOptions(o: AuthenticatorOptions): string[] {
  const problems: string[] = [];
  const from = o.mtlsIdentityFrom;
  if (from !== undefined) {
    if (!Array.isArray(from) || from.length === 0) problems.push("mtlsIdentityFrom: must be a non-empty list of uri, dns, cn");
    else {
      for (const s of from) if (!DEFAULT_MTLS_IDENTITY_FROM.includes(s)) problems.push(`mtlsIdentityFrom: ${shown(s)} is not uri, dns or cn`);
      if (new Set(from).size !== from.length) problems.push("mtlsIdentityFrom: lists a source twice");
    }
  }
  const seen = new Set<string>();
  (o.jwt ?? []).forEach((j, i) => {
    const where = `jwt[${i}]${typeof j.issuer === "string" && j.issuer ? ` (${j.issuer})` : ""}`;
    if (typeof j.issuer !== "string" || j.issuer === "") problems.push(`${where}.issuer: required`);
    else if (seen.has(j.issuer)) problems.push(`${where}.issuer: configured twice`);
    else seen.add(j.issuer);
    if (typeof j.audience !== "string" || j.audience === "") problems.push(`${where}.audience: required`);
    if ((j.jwksFile === undefined) === (j.jwksUrl === undefined)) problems.push(`${where}: exactly one of jwksFile and jwksUrl is required`);
    if (j.jwksUrl !== undefined) {
      let url: URL | undefined;
      try {
        url = new URL(j.jwksUrl);
      } catch {
        problems.push(`${where}.jwksUrl: ${shown(j.jwksUrl)} is not a URL`);
      }
      if (url && url.protocol !== "https:") problems.push(`${where}.jwksUrl: must be https (keys fetched in the clear could be replaced)`);
    }
    if (j.jwksCaFile !== undefined && j.jwksUrl === undefined) problems.push(`${where}.jwksCaFile: only applies with jwksUrl`);
    if (!Array.isArray(j.algorithms) || j.algorithms.length === 0) problems.push(`${where}.algorithms: required (e.g. ["RS256"])`);
    else {
      for (const alg of j.algorithms) {
        if (typeof alg === "string" && alg.toLowerCase() === "none") problems.push(`${where}.algorithms: "none" is never allowed (unsigned tokens)`);
        else if (typeof alg === "string" && /^HS/i.test(alg)) problems.push(`${where}.algorithms: ${alg} is not allowed (HMAC with a public key lets anyone sign)`);
        else if (!SUPPORTED_JWT_ALGORITHMS.includes(alg)) problems.push(`${where}.algorithms: ${shown(alg)} is not one of ${SUPPORTED_JWT_ALGORITHMS.join(", ")}`);
      }
    }
    const skew = j.clockSkewSeconds;
    if (skew !== undefined && !(typeof skew === "number" && Number.isFinite(skew) && skew >= 0 && skew <= MAX_CLOCK_SKEW_SECONDS)) {
      problems.push(`${where}.clockSkewSeconds: must be a number from 0 to ${MAX_CLOCK_SKEW_SECONDS}`);
    }
  });
  return problems;
}

function configInvalid(problems: string[]): SignerError {
  return new SignerError("CONFIG_INVALID", `authentication settings have ${problems.length} problem(s):\n  - ${problems.join("\n  - ")}`);
}

/**
 * Turns a call's credentials into a CallerIdentity. A bearer token, when present, decides (an
 * invalid one is refused even next to a valid client certificate, so a caller never silently
 * runs as someone other than they asked to be); otherwise the TLS-verified client certificate.
 */
export class Authenticator {
  private constructor(
    private readonly mtlsFrom: readonly MtlsIdentitySource[],
    private readonly issuers: ReadonlyMap<string, IssuerVerifier>,
    private readonly abort: AbortController,
  ) {}

  /**
   * Validates the options and loads every JWKS (files read, URLs fetched with a timeout); any
   * problem, including an unreachable JWKS URL, is CONFIG_INVALID listing all of them, so a
   * mistyped URL fails at start-up rather than at the first token.
   */
  static async create(o: AuthenticatorOptions, logger: Logger = silentLogger): Promise<Authenticator> {
    const problems = checkOptions(o);
    if (problems.length > 0) throw configInvalid(problems);
    const timing = jwksTiming(o.jwksTiming);
    const abort = new AbortController();
    const issuers = new Map<string, IssuerVerifier>();
    await Promise.all(
      (o.jwt ?? []).map(async (j) => {
        let keys: Jwks;
        if (j.jwksUrl !== undefined) {
          let ca: string[] | undefined;
          if (j.jwksCaFile !== undefined) {
            try {
              ca = await withSystemRoots(j.jwksCaFile);
            } catch (e) {
              problems.push(`jwt (${j.issuer}).jwksCaFile: cannot read ${j.jwksCaFile} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
              return;
            }
          }
          keys = new RemoteJwks(j.jwksUrl, ca, timing, abort.signal, logger);
        } else keys = new FileJwks(j.jwksFile as string, logger);
        try {
          await keys.refresh();
        } catch (e) {
          problems.push(`jwt (${j.issuer}): ${(e as Error).message}`);
          return;
        }
        issuers.set(j.issuer, new IssuerVerifier({ issuer: j.issuer, audience: j.audience, algorithms: [...j.algorithms], clockSkewSeconds: j.clockSkewSeconds ?? DEFAULT_CLOCK_SKEW_SECONDS }, keys));
      }),
    );
    if (problems.length > 0) {
      abort.abort();
      throw configInvalid(problems);
    }
    for (const v of issuers.values()) v.keys.start();
    return new Authenticator(o.mtlsIdentityFrom ?? DEFAULT_MTLS_IDENTITY_FROM, issuers, abort);
  }

  /** undefined: the call carries no credentials at all (the caller decides whether anonymous is allowed). */
  async authenticate(input: { peerCertificate?: PeerCertificate; authorization?: string }): Promise<CallerIdentity | undefined> {
    if (input.authorization !== undefined) return verifyBearer(input.authorization, this.issuers);
    if (hasCertificate(input.peerCertificate)) return certificateIdentity(input.peerCertificate, this.mtlsFrom);
    return undefined;
  }

  /** Re-reads JWKS files and re-fetches URLs; sources that fail keep their keys and are listed in one CONFIG_INVALID. */
  async reload(): Promise<void> {
    const problems: string[] = [];
    await Promise.all(
      [...this.issuers.values()].map((v) =>
        v.keys.refresh().catch((e: unknown) => {
          problems.push(`jwt (${v.options.issuer}): ${(e as Error).message}`);
        }),
      ),
    );
    if (problems.length > 0) throw configInvalid(problems);
  }

  close(): void {
    this.abort.abort();
    for (const v of this.issuers.values()) v.keys.stop();
  }
}
