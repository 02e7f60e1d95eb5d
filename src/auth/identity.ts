import type { PeerCertificate } from "node:tls";
import { SignerError } from "../errors/index.js";
import { silentLogger, type Logger } from "../log/index.js";
import type { CallerIdentity, MtlsIdentitySource } from "./caller-identity.js";
import { certificateIdentity, hasCertificate } from "./certificate-identity.js";
// The options' schema, shared with the service configuration's auth section (one rule for JWT algorithms).
import { authenticatorOptionsProblems as checkOptions } from "./identity-options.js";
import { FileJwks, jwksTiming, RemoteJwks, type Jwks, type JwksTiming } from "./jwks.js";
import { withSystemRoots } from "./jwks-source.js";
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

function configInvalid(problems: string[]): SignerError {
  return new SignerError("CONFIG_INVALID", `authentication settings have ${problems.length} problem(s):\n  - ${problems.join("\n  - ")}`);
}

/**
 * Turns a call's credentials into a CallerIdentity. A bearer token, when present, decides (an
 * invalid one is refused even next to a valid client certificate, so a caller never silently
 * runs as someone other than they asked to be); otherwise the TLS-verified client certificate.
 */
export class Authenticator {
  private readonly onSighup = (): void => {
    this.reload().then(
      () => this.logger.info("JWKS reloaded", { issuers: this.issuers.size }),
      (e: unknown) => this.logger.error("JWKS reload failed; the keys in use stay", { error: (e as Error).message }),
    );
  };

  private constructor(
    private readonly mtlsFrom: readonly MtlsIdentitySource[],
    private readonly issuers: ReadonlyMap<string, IssuerVerifier>,
    private readonly abort: AbortController,
    private readonly logger: Logger,
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
              problems.push(`jwt (${j.issuer}).jwksCaFile: ${(e as Error).message}`);
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
    return new Authenticator(o.mtlsIdentityFrom ?? DEFAULT_MTLS_IDENTITY_FROM, issuers, abort, logger);
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

  /**
   * Reloads on SIGHUP, as the policy does: a key the operator took out of a jwksFile (or that an
   * issuer dropped from its JWKS) is no longer trusted, without a restart. A source that fails
   * keeps its keys; the failure is logged.
   */
  watch(): void {
    if (this.issuers.size > 0) process.on("SIGHUP", this.onSighup);
  }

  close(): void {
    process.off("SIGHUP", this.onSighup);
    this.abort.abort();
    for (const v of this.issuers.values()) v.keys.stop();
  }
}
