/** Caller identity (mTLS, bearer JWT), the access policy and rate limits of the Signer service. */
export { identityKind, mtlsIdentity, type CallerIdentity, type MtlsIdentitySource } from "./caller-identity.js";
export { parseSubjectAltName } from "./certificate-identity.js";
export { Authenticator, DEFAULT_CLOCK_SKEW_SECONDS, DEFAULT_MTLS_IDENTITY_FROM, type AuthenticatorOptions, type JwtIssuerOptions } from "./identity.js";
export { MAX_CLOCK_SKEW_SECONDS, SUPPORTED_JWT_ALGORITHMS, jwtIssuersSchema, mtlsIdentityFromSchema } from "./identity-options.js";
export { JWKS_FETCH_TIMEOUT_MS, JWKS_REFRESH_INTERVAL_MS, JWKS_UNKNOWN_KID_COOLDOWN_MS, type JwksTiming } from "./jwks.js";
export { POLICY_RELOAD_DEBOUNCE_MS, Policy, PolicyInvalidError, PolicyStore, SIGNER_METHODS, type PolicyDecision, type RateLimitSpec, type SignerMethod } from "./policy.js";
export { DEFAULT_MAX_BUCKETS, RateLimiter, type RateLimiterOptions, type TakeResult, type TokenBucketSpec } from "./rate-limiter.js";
