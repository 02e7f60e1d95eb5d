import { readFile } from "node:fs/promises";
import { get as httpsGet } from "node:https";
import { rootCertificates, type PeerCertificate } from "node:tls";
import { createLocalJWKSet, decodeJwt, decodeProtectedHeader, jwtVerify, type JSONWebKeySet, type JWTPayload, type JWTVerifyGetKey } from "jose";
import { SignerError } from "../errors/index.js";
import { silentLogger, type Logger } from "../log/index.js";
import { unauthenticated, type CallerIdentity, type MtlsIdentitySource } from "./caller-identity.js";
import { certificateIdentity, hasCertificate } from "./certificate-identity.js";

export { identityKind, mtlsIdentity, type CallerIdentity, type MtlsIdentitySource } from "./caller-identity.js";
export { parseSubjectAltName } from "./certificate-identity.js";

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

/** How often and how patiently JWKS URLs are fetched; the defaults suit production. */
export interface JwksTiming {
  refreshIntervalMs?: number;
  /** Least time between two fetches caused by a token whose key is unknown. */
  unknownKidCooldownMs?: number;
  fetchTimeoutMs?: number;
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
export const JWKS_REFRESH_INTERVAL_MS = 5 * 60_000;
export const JWKS_UNKNOWN_KID_COOLDOWN_MS = 30_000;
export const JWKS_FETCH_TIMEOUT_MS = 5_000;
/** A JWKS is a few kilobytes; refusing more bounds what a misbehaving issuer can make us hold. */
const JWKS_MAX_BYTES = 1024 * 1024;
/** Asymmetric JWS algorithms only: a symmetric one would verify with a key the whole world can read. */
export const SUPPORTED_JWT_ALGORITHMS: readonly string[] = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA", "Ed25519"];

/** Quotes a value taken from an unverified token for a message: bounded, and never the token itself. */
function shown(v: unknown): string {
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 120 ? `${s.slice(0, 117)}...` : s;
}

/** Where a JWKS comes from: a file (re-read on reload) or an https URL. */
interface JwksLoader {
  readonly remote: boolean;
  readonly where: string;
  load(signal: AbortSignal): Promise<unknown>;
}

class FileJwksLoader implements JwksLoader {
  readonly remote = false;
  constructor(readonly where: string) {}

  async load(): Promise<unknown> {
    const text = await readFile(this.where, "utf8");
    try {
      return JSON.parse(text);
    } catch {
      throw new Error("not valid JSON");
    }
  }
}

/** node:https rather than fetch so that an extra CA can be passed as `ca`. No redirects are followed. */
class HttpsJwksLoader implements JwksLoader {
  readonly remote = true;
  constructor(
    readonly where: string,
    private readonly ca: string[] | undefined,
    private readonly timeoutMs: number,
  ) {}

  load(signal: AbortSignal): Promise<unknown> {
    const timeout = AbortSignal.timeout(this.timeoutMs);
    const both = AbortSignal.any([signal, timeout]);
    return new Promise((resolve, reject) => {
      const fail = (e: Error): void => reject(timeout.aborted ? new Error(`no answer within ${this.timeoutMs} ms`) : e);
      const req = httpsGet(this.where, { ca: this.ca, signal: both, headers: { accept: "application/json" } }, (res) => {
        if (res.statusCode !== 200) {
          res.resume();
          reject(new Error(`HTTP status ${res.statusCode ?? "unknown"}`));
          return;
        }
        const chunks: Buffer[] = [];
        let size = 0;
        res.on("data", (c: Buffer) => {
          size += c.length;
          if (size > JWKS_MAX_BYTES) req.destroy(new Error(`larger than ${JWKS_MAX_BYTES} bytes`));
          else chunks.push(c);
        });
        res.on("error", fail);
        res.on("end", () => {
          try {
            resolve(JSON.parse(Buffer.concat(chunks).toString("utf8")));
          } catch {
            reject(new Error("not valid JSON"));
          }
        });
      });
      req.on("error", fail);
    });
  }
}

function asJwks(v: unknown): JSONWebKeySet {
  const keys = (v as { keys?: unknown } | null)?.keys;
  if (!Array.isArray(keys)) throw new Error('not a JWKS (no "keys" list)');
  if (keys.length === 0) throw new Error("the JWKS has no keys");
  if (!keys.every((k) => typeof k === "object" && k !== null && !Array.isArray(k))) throw new Error("a JWKS key is not an object");
  return v as JSONWebKeySet;
}

/**
 * The cached keys of one issuer. A failed refresh keeps the previous keys, so a briefly
 * unreachable issuer does not lock its callers out.
 */
class KeySet {
  private getKey: JWTVerifyGetKey | undefined;
  private lastAttempt = 0;
  private inflight: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly loader: JwksLoader,
    private readonly timing: Required<JwksTiming>,
    private readonly abort: AbortSignal,
    private readonly logger: Logger,
  ) {}

  /** For jwtVerify; always the latest keys. */
  readonly key: JWTVerifyGetKey = (header, token) => {
    if (!this.getKey) throw unauthenticated("the issuer's keys are not loaded");
    return this.getKey(header, token);
  };

  /** Loads the keys now (one fetch at a time); throws, keeping the old keys, when that fails. */
  refresh(): Promise<void> {
    this.inflight ??= this.fetch().finally(() => (this.inflight = undefined));
    return this.inflight;
  }

  /** Periodic refresh, for URLs only: files change when the operator says so (reload). */
  start(): void {
    if (!this.loader.remote) return;
    this.timer = setInterval(() => {
      this.refresh().catch((e: unknown) => this.logger.warn("JWKS refresh failed; the cached keys stay in use", { jwks: this.loader.where, error: (e as Error).message }));
    }, this.timing.refreshIntervalMs);
    this.timer.unref();
  }

  /**
   * A token names a key we do not have: the issuer may have rotated. Fetch again, but at most
   * once per cooldown so that tokens with made-up kids cannot make us hammer the issuer.
   * true: the keys were refreshed and verification may be retried.
   */
  async refreshForUnknownKey(): Promise<boolean> {
    if (!this.loader.remote) return false;
    if (!this.inflight && Date.now() - this.lastAttempt < this.timing.unknownKidCooldownMs) return false;
    try {
      await this.refresh();
      return true;
    } catch (e) {
      this.logger.warn("JWKS refresh for an unknown key failed; the cached keys stay in use", { jwks: this.loader.where, error: (e as Error).message });
      return false;
    }
  }

  stop(): void {
    clearInterval(this.timer);
  }

  private async fetch(): Promise<void> {
    this.lastAttempt = Date.now();
    let jwks: JSONWebKeySet;
    try {
      jwks = asJwks(await this.loader.load(this.abort));
      this.getKey = createLocalJWKSet(jwks);
    } catch (e) {
      throw new Error(`JWKS ${this.loader.where}: ${(e as Error).message}`, { cause: e });
    }
    this.logger.debug("JWKS loaded", { jwks: this.loader.where, keys: jwks.keys.length });
  }
}

/** Verifies the tokens of one issuer. */
class IssuerVerifier {
  constructor(
    readonly options: JwtIssuerOptions,
    readonly keys: KeySet,
  ) {}

  async verify(token: string): Promise<CallerIdentity> {
    const o = this.options;
    const verifyOptions = {
      issuer: o.issuer,
      audience: o.audience,
      algorithms: o.algorithms,
      clockTolerance: o.clockSkewSeconds ?? DEFAULT_CLOCK_SKEW_SECONDS,
      // A token without an expiry would be valid forever; without a subject it names nobody.
      requiredClaims: ["exp", "sub"],
    };
    let payload: JWTPayload;
    try {
      payload = (await jwtVerify(token, this.keys.key, verifyOptions)).payload;
    } catch (e) {
      if (!(isJoseCode(e, "ERR_JWKS_NO_MATCHING_KEY") && (await this.keys.refreshForUnknownKey()))) throw this.rejection(token, e);
      try {
        payload = (await jwtVerify(token, this.keys.key, verifyOptions)).payload;
      } catch (e2) {
        throw this.rejection(token, e2);
      }
    }
    if (typeof payload.sub !== "string" || payload.sub === "") throw unauthenticated('bearer token rejected: the "sub" claim must be a non-empty string');
    return { kind: "jwt", id: `${o.issuer}#${payload.sub}`, subject: payload.sub, issuer: o.issuer, claims: Object.freeze({ ...payload }) };
  }

  /** UNAUTHENTICATED naming why; jose's error rides along as the cause, for the service log. */
  private rejection(token: string, e: unknown): SignerError {
    if (e instanceof SignerError) return e;
    const o = this.options;
    const header = safeHeader(token);
    const claim = (e as { claim?: string }).claim;
    const code = (e as { code?: string }).code;
    let why: string;
    switch (code) {
      case "ERR_JWT_EXPIRED":
        why = claim === "iat" ? "the token is too old" : "the token has expired";
        break;
      case "ERR_JWT_CLAIM_VALIDATION_FAILED":
        if ((e as { reason?: string }).reason === "missing") why = `the token has no "${claim}" claim`;
        else if (claim === "nbf") why = "the token is not yet valid";
        else if (claim === "aud") why = `the token's audience is not ${shown(o.audience)}`;
        else if (claim === "iss") why = `the token's issuer is not ${shown(o.issuer)}`;
        else why = `the token's "${claim}" claim is invalid`;
        break;
      case "ERR_JOSE_ALG_NOT_ALLOWED":
        why = `algorithm ${shown(header?.alg)} is not allowed for issuer ${shown(o.issuer)} (allowed: ${o.algorithms.join(", ")})`;
        break;
      case "ERR_JWS_SIGNATURE_VERIFICATION_FAILED":
        why = "the signature does not verify";
        break;
      case "ERR_JWKS_NO_MATCHING_KEY":
        why = `no key of issuer ${shown(o.issuer)} matches the token (kid ${shown(header?.kid ?? null)}, alg ${shown(header?.alg)})`;
        break;
      case "ERR_JWKS_MULTIPLE_MATCHING_KEYS":
        why = "several of the issuer's keys match a token that names no kid";
        break;
      case "ERR_JOSE_NOT_SUPPORTED":
        why = "the token's algorithm or key type is not supported";
        break;
      case "ERR_JWS_INVALID":
      case "ERR_JWT_INVALID":
        why = "the token is malformed";
        break;
      default:
        why = e instanceof TypeError ? "the token is malformed" : "the token could not be verified";
    }
    return unauthenticated(`bearer token rejected: ${why}`, e);
  }
}

function isJoseCode(e: unknown, code: string): boolean {
  return (e as { code?: unknown } | null)?.code === code;
}

function safeHeader(token: string): { alg?: unknown; kid?: unknown } | undefined {
  try {
    return decodeProtectedHeader(token);
  } catch {
    return undefined;
  }
}

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
    const timing: Required<JwksTiming> = {
      refreshIntervalMs: o.jwksTiming?.refreshIntervalMs ?? JWKS_REFRESH_INTERVAL_MS,
      unknownKidCooldownMs: o.jwksTiming?.unknownKidCooldownMs ?? JWKS_UNKNOWN_KID_COOLDOWN_MS,
      fetchTimeoutMs: o.jwksTiming?.fetchTimeoutMs ?? JWKS_FETCH_TIMEOUT_MS,
    };
    const abort = new AbortController();
    const issuers = new Map<string, IssuerVerifier>();
    await Promise.all(
      (o.jwt ?? []).map(async (j) => {
        let loader: JwksLoader;
        if (j.jwksUrl !== undefined) {
          let ca: string[] | undefined;
          if (j.jwksCaFile !== undefined) {
            try {
              // Node's `ca` replaces the system roots; keep them so that the extra CA only adds.
              ca = [...rootCertificates, await readFile(j.jwksCaFile, "utf8")];
            } catch (e) {
              problems.push(`jwt (${j.issuer}).jwksCaFile: cannot read ${j.jwksCaFile} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
              return;
            }
          }
          loader = new HttpsJwksLoader(j.jwksUrl, ca, timing.fetchTimeoutMs);
        } else loader = new FileJwksLoader(j.jwksFile as string);
        const keys = new KeySet(loader, timing, abort.signal, logger);
        try {
          await keys.refresh();
        } catch (e) {
          problems.push(`jwt (${j.issuer}): ${(e as Error).message}`);
          return;
        }
        issuers.set(j.issuer, new IssuerVerifier({ ...j, algorithms: [...j.algorithms] }, keys));
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
    if (input.authorization !== undefined) return this.fromBearer(input.authorization);
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

  private async fromBearer(authorization: string): Promise<CallerIdentity> {
    const m = /^Bearer +([^\s]+) *$/i.exec(authorization);
    if (!m?.[1]) throw unauthenticated("the authorization metadata is not a bearer token");
    const token = m[1];
    if (this.issuers.size === 0) throw unauthenticated("bearer tokens are not accepted: no token issuer is configured");
    let iss: unknown;
    try {
      // Unverified: only to choose the issuer whose keys then verify everything, iss included.
      iss = decodeJwt(token).iss;
    } catch (e) {
      throw unauthenticated("bearer token rejected: the token is malformed", e);
    }
    if (typeof iss !== "string") throw unauthenticated('bearer token rejected: the token has no "iss" claim');
    const verifier = this.issuers.get(iss);
    if (!verifier) throw unauthenticated(`bearer token rejected: issuer ${shown(iss)} is not trusted`);
    return verifier.verify(token);
  }
}
