// The schema of the Authenticator's options, and the one rule for JWT issuers that the service
// configuration (bin/config.ts, auth.jwt) shares, so that a file `config check` accepts is never
// refused by Authenticator.create, nor the other way round.
import * as v from "valibot";
import { at, isMapping, mapping, nonEmptyString, validate } from "../schema/index.js";
import type { MtlsIdentitySource } from "./caller-identity.js";
import type { AuthenticatorOptions } from "./identity.js";

/**
 * Asymmetric JWS algorithms only. "none" would accept unsigned tokens; an HMAC (HS*) key would be
 * the issuer's JWKS, which is public, so anyone could sign. The stricter of the two rules this
 * project had (bin/config.ts refused only "none" and HS*, passing any typo to jose): an allow-list
 * also refuses names jose does not know, at start-up instead of at the first token.
 */
export const SUPPORTED_JWT_ALGORITHMS: readonly string[] = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA", "Ed25519"];
/** Skews above this are a configuration mistake: tokens would live minutes past their expiry. */
export const MAX_CLOCK_SKEW_SECONDS = 300;
const MTLS_SOURCES: readonly MtlsIdentitySource[] = ["uri", "dns", "cn"];

/** Quotes a configured value for a problem, bounded. */
function shown(x: unknown): string {
  const s = JSON.stringify(x) ?? String(x);
  return s.length > 120 ? `${s.slice(0, 117)}...` : s;
}

function algorithmProblem(alg: unknown): string {
  if (typeof alg === "string" && alg.toLowerCase() === "none") return '"none" is never allowed (unsigned tokens)';
  if (typeof alg === "string" && /^HS/i.test(alg)) return `${alg} is not allowed (HMAC with a public key lets anyone sign)`;
  return `${shown(alg)} is not one of ${SUPPORTED_JWT_ALGORITHMS.join(", ")}`;
}

const ALGORITHMS_REQUIRED = 'required (e.g. ["RS256"])';
const algorithms = v.pipe(
  v.array(
    v.custom<string>(
      (a) => typeof a === "string" && SUPPORTED_JWT_ALGORITHMS.includes(a),
      (issue) => algorithmProblem(issue.input),
    ),
    ALGORITHMS_REQUIRED,
  ),
  v.minLength(1, ALGORITHMS_REQUIRED),
);

function httpsProblem(u: string): string | undefined {
  let url: URL;
  try {
    url = new URL(u);
  } catch {
    return `${shown(u)} is not a URL`;
  }
  return url.protocol === "https:" ? undefined : "must be https (keys fetched in the clear could be replaced)";
}

const SKEW = `must be a number from 0 to ${MAX_CLOCK_SKEW_SECONDS}`;

export interface JwtIssuerSchemaOptions {
  /** Resolves jwksFile and jwksCaFile (the configuration file's folder); as given when unset. */
  path?: (p: string) => string;
  /** The algorithms of an issuer that names none; unset: `algorithms` is required. */
  defaultAlgorithms?: readonly string[];
}

/** One JWT issuer: issuer, audience, exactly one of jwksFile or jwksUrl (https), asymmetric algorithms, a bounded skew. */
export function jwtIssuerSchema(o: JwtIssuerSchemaOptions = {}) {
  const file = v.pipe(nonEmptyString(), v.transform(o.path ?? ((p: string) => p)));
  const entries = {
    issuer: nonEmptyString("required"),
    audience: nonEmptyString("required"),
    jwksFile: v.optional(file),
    jwksUrl: v.optional(
      v.pipe(
        nonEmptyString(),
        v.check(
          (u) => httpsProblem(u) === undefined,
          (issue) => httpsProblem(issue.input as string) ?? "invalid",
        ),
      ),
    ),
    jwksCaFile: v.optional(file),
    algorithms: o.defaultAlgorithms ? v.optional(algorithms, () => [...(o.defaultAlgorithms ?? [])]) : algorithms,
    clockSkewSeconds: v.optional(v.pipe(v.number(SKEW), v.finite(SKEW), v.minValue(0, SKEW), v.maxValue(MAX_CLOCK_SKEW_SECONDS, SKEW))),
  };
  return v.pipe(
    mapping(entries, { algorithms: ALGORITHMS_REQUIRED }),
    v.rawCheck(({ dataset, addIssue }) => {
      const j = dataset.value;
      if (!isMapping(j)) return;
      if ((j.jwksFile === undefined) === (j.jwksUrl === undefined)) addIssue({ message: "exactly one of jwksFile and jwksUrl is required" });
      if (j.jwksCaFile !== undefined && j.jwksUrl === undefined) addIssue({ message: "only applies with jwksUrl", path: [at(j, "jwksCaFile")] });
    }),
  );
}

/** A list of issuers, each issuer configured once. */
export function jwtIssuersSchema(o: JwtIssuerSchemaOptions = {}) {
  return v.pipe(
    v.array(jwtIssuerSchema(o), "must be a list of issuers"),
    v.rawCheck(({ dataset, addIssue }) => {
      const list = dataset.value;
      if (!Array.isArray(list)) return;
      const seen = new Set<unknown>();
      list.forEach((j: unknown, i) => {
        const issuer = isMapping(j) ? j.issuer : undefined;
        if (typeof issuer !== "string" || issuer === "") return;
        if (seen.has(issuer)) addIssue({ message: "configured twice", path: [at(list, i), at(j, "issuer")] });
        seen.add(issuer);
      });
    }),
  );
}

const MTLS_FROM = "must be a non-empty list of uri, dns, cn";
/** auth.mtlsIdentityFrom: which certificate fields name a caller, in order, each once. */
export const mtlsIdentityFromSchema = v.pipe(
  v.array(
    v.custom<MtlsIdentitySource>(
      (s) => (MTLS_SOURCES as readonly unknown[]).includes(s),
      (issue) => `${shown(issue.input)} is not uri, dns or cn`,
    ),
    MTLS_FROM,
  ),
  v.minLength(1, MTLS_FROM),
  v.check((from) => new Set(from).size === from.length, "lists a source twice"),
);

const authenticatorOptionsSchema = mapping({
  mtlsIdentityFrom: v.optional(mtlsIdentityFromSchema),
  jwt: v.optional(jwtIssuersSchema()),
  jwksTiming: v.optional(v.unknown()),
});

/** Every problem of the Authenticator's options ("jwt[0] (issuer).audience: required"); none: []. */
export function authenticatorOptionsProblems(o: AuthenticatorOptions): string[] {
  const r = validate(authenticatorOptionsSchema, o, { jwt: "issuer" });
  return r.ok ? [] : r.problems;
}
