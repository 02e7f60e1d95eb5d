/**
 * The one catalog of error codes. Every error a caller can see is a SignerError with one of
 * these codes; edges (gRPC server, plugin, CLI) map codes to their wire form in one place each.
 * Messages are safe to show a caller; the original error rides along as `cause` for logs only.
 */
export const ERROR_CODES = [
  "INVALID_ARGUMENT",
  "PAYLOAD_TOO_LARGE",
  "KEY_NOT_FOUND",
  "KEY_UNUSABLE",
  "KEY_DISABLED",
  "ALREADY_EXISTS",
  "FAILED_PRECONDITION",
  "CHAIN_INVALID",
  "UNIMPLEMENTED",
  "UNAUTHENTICATED",
  "PERMISSION_DENIED",
  "RATE_LIMITED",
  "DEADLINE_EXCEEDED",
  "POOL_EXHAUSTED",
  "HSM_UNAVAILABLE",
  "HSM_PIN_INCORRECT",
  "AUDIT_UNAVAILABLE",
  "CONFIG_INVALID",
  "INTERNAL",
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

/** The gRPC trailer in which the service sends a failed call's code; clients read it back. */
export const ERROR_CODE_TRAILER = "hsm-signer-error-code";

export interface SignerErrorOptions {
  cause?: unknown;
  /** Milliseconds after which a retry may succeed (RATE_LIMITED, POOL_EXHAUSTED). */
  retryAfterMs?: number;
}

export class SignerError extends Error {
  readonly code: ErrorCode;
  readonly retryAfterMs: number | undefined;

  constructor(code: ErrorCode, message: string, options: SignerErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = "SignerError";
    this.code = code;
    this.retryAfterMs = options.retryAfterMs;
  }
}

export function isSignerError(e: unknown): e is SignerError {
  return e instanceof SignerError;
}

/** Wraps anything that is not already a SignerError as INTERNAL, keeping it as the cause. */
export function toSignerError(e: unknown, message = "internal error"): SignerError {
  return isSignerError(e) ? e : new SignerError("INTERNAL", message, { cause: e });
}

export function assertNever(x: never): never {
  throw new Error(`unhandled value: ${String(x)}`);
}
