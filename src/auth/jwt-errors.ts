import { decodeProtectedHeader } from "jose";
import { SignerError } from "../errors/index.js";
import { unauthenticated } from "./caller-identity.js";

/** Quotes a value taken from an unverified token for a message: bounded, and never the token itself. */
export function shown(v: unknown): string {
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 120 ? `${s.slice(0, 117)}...` : s;
}

export function isJoseCode(e: unknown, code: string): boolean {
  return (e as { code?: unknown } | null)?.code === code;
}

function safeHeader(token: string): { alg?: unknown; kid?: unknown; crit?: unknown } | undefined {
  try {
    return decodeProtectedHeader(token);
  } catch {
    return undefined;
  }
}

/** What a refusal may name about the issuer whose rules the token broke. */
export interface IssuerRules {
  issuer: string;
  audience: string;
  algorithms: string[];
}

/** UNAUTHENTICATED naming why jose refused `token`; jose's error rides along as the cause, for the service log. */
export function jwtRejection(token: string, e: unknown, o: IssuerRules): SignerError {
  if (e instanceof SignerError) return e;
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
      // jose refuses a "crit" extension it does not process with the same code as an algorithm.
      why =
        Array.isArray(header?.crit) && header.crit.length > 0
          ? `the token's "crit" header names an extension this service does not process (${shown(header.crit.slice(0, 5).map(String).join(", "))})`
          : "the token's algorithm or key type is not supported";
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
