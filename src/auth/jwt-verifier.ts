import { decodeJwt, jwtVerify, type JWTPayload } from "jose";
import { unauthenticated, type CallerIdentity } from "./caller-identity.js";
import type { Jwks } from "./jwks.js";
import { isJoseCode, jwtRejection, shown, type IssuerRules } from "./jwt-errors.js";

/** What a token of one issuer must satisfy. */
export interface IssuerVerifierOptions extends IssuerRules {
  /** Tolerance for exp/nbf. */
  clockSkewSeconds: number;
}

/** Verifies the tokens of one issuer. */
export class IssuerVerifier {
  constructor(
    readonly options: IssuerVerifierOptions,
    readonly keys: Jwks,
  ) {}

  async verify(token: string): Promise<CallerIdentity> {
    const o = this.options;
    const verifyOptions = {
      issuer: o.issuer,
      audience: o.audience,
      algorithms: o.algorithms,
      clockTolerance: o.clockSkewSeconds,
      // A token without an expiry would be valid forever; without a subject it names nobody.
      requiredClaims: ["exp", "sub"],
    };
    let payload: JWTPayload;
    try {
      payload = (await jwtVerify(token, this.keys.key, verifyOptions)).payload;
    } catch (e) {
      if (!(isJoseCode(e, "ERR_JWKS_NO_MATCHING_KEY") && (await this.keys.refreshForUnknownKey()))) throw jwtRejection(token, e, o);
      try {
        payload = (await jwtVerify(token, this.keys.key, verifyOptions)).payload;
      } catch (e2) {
        throw jwtRejection(token, e2, o);
      }
    }
    if (typeof payload.sub !== "string" || payload.sub === "") throw unauthenticated('bearer token rejected: the "sub" claim must be a non-empty string');
    // jose checks "iat" only against a maximum age; a token stamped later than now (beyond the
    // skew) comes from an issuer whose clock is wrong, or was made ahead of time to be used later.
    if (typeof payload.iat === "number" && payload.iat > Date.now() / 1000 + o.clockSkewSeconds)
      throw unauthenticated('bearer token rejected: the token was issued in the future (its "iat" is later than now plus the clock skew)');
    return { kind: "jwt", id: `${o.issuer}#${payload.sub}`, subject: payload.sub, issuer: o.issuer, claims: Object.freeze({ ...payload }) };
  }
}

/** The caller an `authorization` value ("Bearer <JWT>") names, verified by the verifier of the token's issuer. */
export async function verifyBearer(authorization: string, issuers: ReadonlyMap<string, IssuerVerifier>): Promise<CallerIdentity> {
  const m = /^Bearer +([^\s]+) *$/i.exec(authorization);
  if (!m?.[1]) throw unauthenticated("the authorization metadata is not a bearer token");
  const token = m[1];
  if (issuers.size === 0) throw unauthenticated("bearer tokens are not accepted: no token issuer is configured");
  let iss: unknown;
  try {
    // Unverified: only to choose the issuer whose keys then verify everything, iss included.
    iss = decodeJwt(token).iss;
  } catch (e) {
    throw unauthenticated("bearer token rejected: the token is malformed", e);
  }
  if (typeof iss !== "string") throw unauthenticated('bearer token rejected: the token has no "iss" claim');
  const verifier = issuers.get(iss);
  if (!verifier) throw unauthenticated(`bearer token rejected: issuer ${shown(iss)} is not trusted`);
  return verifier.verify(token);
}
