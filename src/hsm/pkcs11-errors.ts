import { SignerError } from "../errors/index.js";

/** CKR_* values this service reacts to (PKCS#11 v2.40 §11.1). Read here and nowhere else. */
export const CKR = {
  OK: 0x0,
  GENERAL_ERROR: 0x5,
  ARGUMENTS_BAD: 0x7,
  DEVICE_ERROR: 0x30,
  DEVICE_MEMORY: 0x31,
  DEVICE_REMOVED: 0x32,
  KEY_HANDLE_INVALID: 0x60,
  MECHANISM_INVALID: 0x70,
  OBJECT_HANDLE_INVALID: 0x82,
  OPERATION_ACTIVE: 0x90,
  PIN_INCORRECT: 0xa0,
  PIN_LOCKED: 0xa4,
  SESSION_CLOSED: 0xb0,
  SESSION_HANDLE_INVALID: 0xb3,
  TOKEN_NOT_PRESENT: 0xe0,
  TOKEN_NOT_RECOGNIZED: 0xe1,
  USER_ALREADY_LOGGED_IN: 0x100,
  USER_NOT_LOGGED_IN: 0x101,
  CRYPTOKI_NOT_INITIALIZED: 0x190,
  CRYPTOKI_ALREADY_INITIALIZED: 0x191,
} as const;

/** A PKCS#11 error as it came out of another thread: same message and CKR_ code, so translation is unchanged. */
export class ThreadPkcs11Error extends Error {
  constructor(
    message: string,
    readonly code: number | undefined,
  ) {
    super(message);
    this.name = "Pkcs11Error";
  }
}

/** Return values after which a session (or the whole login) must be replaced. */
const SESSION_LOST = new Set<number>([
  CKR.SESSION_CLOSED,
  CKR.SESSION_HANDLE_INVALID,
  CKR.USER_NOT_LOGGED_IN,
  CKR.DEVICE_ERROR,
  CKR.DEVICE_REMOVED,
  CKR.TOKEN_NOT_PRESENT,
  CKR.TOKEN_NOT_RECOGNIZED,
  CKR.CRYPTOKI_NOT_INITIALIZED,
]);

/**
 * Return values that can also mean the token, the login or the session is gone, not the request:
 * SoftHSM 2.6 answers CKR_OBJECT_HANDLE_INVALID for a key once its token directory was moved
 * away or the user was logged out, and CKR_GENERAL_ERROR from C_GetTokenInfo for that token.
 * After one of these the session pool checks the token and its sessions before blaming the key.
 */
const SUSPECT = new Set<number>([...SESSION_LOST, CKR.GENERAL_ERROR, CKR.DEVICE_MEMORY, CKR.KEY_HANDLE_INVALID, CKR.OBJECT_HANDLE_INVALID]);

/** The CKR_ value carried by a pkcs11js/graphene error, if any. */
export function ckrOf(e: unknown): number | undefined {
  if (e && typeof e === "object" && "code" in e && typeof (e as { code: unknown }).code === "number") {
    return (e as { code: number }).code;
  }
  const m = e instanceof Error ? /CKR_\w+:(\d+)/.exec(e.message) : null;
  return m?.[1] ? Number(m[1]) : undefined;
}

export function isSessionLost(e: unknown): boolean {
  const c = ckrOf(e);
  return c !== undefined && SESSION_LOST.has(c);
}

/** True for a failure after which the token, the login and the sessions are worth checking. */
export function isSuspectFailure(e: unknown): boolean {
  const c = ckrOf(e);
  return c !== undefined && SUSPECT.has(c);
}

export function isCkr(e: unknown, ckr: number): boolean {
  return ckrOf(e) === ckr;
}

/** "CKR_..." from a PKCS#11 error's message, for logs and safe messages. */
export function ckrName(e: unknown): string {
  const m = e instanceof Error ? /CKR_\w+/.exec(e.message) : null;
  return m?.[0] ?? "unknown PKCS#11 error";
}

/** Translates a PKCS#11 failure into the catalog; `what` says what the service was doing. */
export function translatePkcs11Error(e: unknown, what: string): SignerError {
  if (e instanceof SignerError) return e;
  const c = ckrOf(e);
  if (c === CKR.PIN_INCORRECT) {
    return new SignerError("HSM_PIN_INCORRECT", `${what}: the HSM rejected the user PIN (CKR_PIN_INCORRECT); not retrying, to avoid locking the token`, { cause: e });
  }
  if (c === CKR.PIN_LOCKED) {
    return new SignerError("HSM_PIN_INCORRECT", `${what}: the user PIN is locked on the token (CKR_PIN_LOCKED)`, { cause: e });
  }
  if (c !== undefined && SESSION_LOST.has(c)) {
    return new SignerError("HSM_UNAVAILABLE", `${what}: the HSM is unavailable (${ckrName(e)})`, { cause: e });
  }
  if (c === CKR.KEY_HANDLE_INVALID || c === CKR.OBJECT_HANDLE_INVALID) {
    return new SignerError("KEY_NOT_FOUND", `${what}: the key is no longer on the token (${ckrName(e)})`, { cause: e });
  }
  return new SignerError("INTERNAL", `${what}: HSM operation failed (${ckrName(e)})`, { cause: e });
}
