import { Module, Session, SessionFlag, Slot, UserType } from "graphene-pk11";
import { SignerError } from "../errors/index.js";
import { CKR, isCkr, translatePkcs11Error } from "./pkcs11-errors.js";

/** CKF_OS_LOCKING_OK: without it SoftHSM skips its own locking and concurrent C_Sign corrupts the heap. */
const CKF_OS_LOCKING_OK = 2;
const CKF_TOKEN_INITIALIZED = 0x400;

export interface TokenSelector {
  /** CKA token label, matched exactly (after trimming the 32-byte padding). */
  tokenLabel?: string;
  tokenSerial?: string;
}

export interface TokenInfo {
  slotId: string;
  label: string;
  serial: string;
  manufacturer: string;
  model: string;
  flags: number;
}

const modules = new Map<string, Module>();

/** One module per process and library path; C_Initialize once, CKR_CRYPTOKI_ALREADY_INITIALIZED is fine. */
export function loadModule(libraryPath: string): Module {
  let mod = modules.get(libraryPath);
  if (mod) return mod;
  try {
    mod = Module.load(libraryPath, "hsm");
  } catch (e) {
    throw new SignerError("HSM_UNAVAILABLE", `cannot load the PKCS#11 module ${libraryPath}: ${(e as Error).message}`, { cause: e });
  }
  try {
    mod.initialize({ flags: CKF_OS_LOCKING_OK });
  } catch (e) {
    if (!isCkr(e, CKR.CRYPTOKI_ALREADY_INITIALIZED)) throw translatePkcs11Error(e, `C_Initialize of ${libraryPath}`);
  }
  modules.set(libraryPath, mod);
  return mod;
}

/**
 * C_Finalize then C_Initialize of an already loaded module: the one remedy that works when a
 * token went away and came back (SoftHSM 2.6 keeps answering CKR_GENERAL_ERROR from
 * C_GetTokenInfo for a token whose directory was moved, until the library is re-initialized).
 * Every session and object handle of the whole process becomes invalid: call it only while no
 * session of the module is in use. Throws (translated) when C_Initialize fails; the module stays
 * loaded, so a later call can try again.
 */
export function reinitializeModule(libraryPath: string): Module {
  const mod = modules.get(libraryPath);
  if (!mod) return loadModule(libraryPath);
  try {
    mod.finalize();
  } catch {
    // CKR_CRYPTOKI_NOT_INITIALIZED after a failed attempt: nothing to finalize
  }
  try {
    mod.initialize({ flags: CKF_OS_LOCKING_OK });
  } catch (e) {
    if (!isCkr(e, CKR.CRYPTOKI_ALREADY_INITIALIZED)) throw translatePkcs11Error(e, `C_Initialize of ${libraryPath}`);
  }
  return mod;
}

/** C_Finalize; call only when nothing uses the module any more. */
export function finalizeModule(libraryPath: string): void {
  const mod = modules.get(libraryPath);
  if (!mod) return;
  modules.delete(libraryPath);
  try {
    mod.finalize();
  } catch {
    // already finalized: nothing to release
  }
}

function tokenInfoOf(slot: Slot): TokenInfo {
  const t = slot.getToken();
  return {
    slotId: slot.handle.readBigUInt64LE(0).toString(),
    label: t.label.trim(),
    serial: t.serialNumber.trim(),
    manufacturer: t.manufacturerID.trim(),
    model: t.model.trim(),
    flags: t.flags,
  };
}

export function listTokens(mod: Module): TokenInfo[] {
  const slots = mod.getSlots(true);
  const out: TokenInfo[] = [];
  for (let i = 0; i < slots.length; i++) out.push(tokenInfoOf(slots.items(i)));
  return out;
}

export function findSlot(mod: Module, sel: TokenSelector): Slot {
  const slots = mod.getSlots(true);
  const seen: string[] = [];
  for (let i = 0; i < slots.length; i++) {
    const slot = slots.items(i);
    const info = tokenInfoOf(slot);
    if (!(info.flags & CKF_TOKEN_INITIALIZED)) continue;
    seen.push(info.label);
    if (sel.tokenLabel !== undefined && info.label !== sel.tokenLabel) continue;
    if (sel.tokenSerial !== undefined && info.serial !== sel.tokenSerial) continue;
    return slot;
  }
  const wanted = sel.tokenLabel !== undefined ? `label "${sel.tokenLabel}"` : `serial "${sel.tokenSerial ?? ""}"`;
  throw new SignerError("HSM_UNAVAILABLE", `no initialized token with ${wanted} (tokens present: ${seen.map((s) => `"${s}"`).join(", ") || "none"})`);
}

/** C_GetTokenInfo as a liveness probe of the token (about 0.1 ms on SoftHSM); throws the raw PKCS#11 error. */
export function probeToken(slot: Slot): void {
  slot.lib.C_GetTokenInfo(slot.handle);
}

/** CKS_RO_USER_FUNCTIONS and CKS_RW_USER_FUNCTIONS (PKCS#11 v2.40 §5.6.1): the session sees private objects. */
const LOGGED_IN_STATES = new Set([1, 3]);

/** C_GetSessionInfo of a session handle: whether the user is logged in; throws the raw error when the handle is no longer valid. */
export function handleLoggedIn(lib: Session["lib"], handle: Buffer): boolean {
  return LOGGED_IN_STATES.has(lib.C_GetSessionInfo(handle).state);
}

/** C_GetSessionInfo: whether the user is logged in; throws the raw error when the handle is no longer valid. */
export function sessionLoggedIn(session: Session): boolean {
  return handleLoggedIn(session.lib, session.handle);
}

export function openSession(slot: Slot): Session {
  return slot.open(SessionFlag.SERIAL_SESSION | SessionFlag.RW_SESSION);
}

const CKF_USER_PIN_FINAL_TRY = 0x20000;
const CKF_USER_PIN_LOCKED = 0x40000;

/**
 * Why a login is not even tried, from the token's flags: its user PIN is locked, or one more wrong
 * PIN would lock it. A PIN that is wrong in a pod that Kubernetes restarts would otherwise be tried
 * once per restart until the HSM locks the token (SoftHSM does not count attempts; HSMs do).
 */
export function pinAttemptRefusal(flags: number): string | undefined {
  if (flags & CKF_USER_PIN_LOCKED) return "the user PIN is locked on the token (CKF_USER_PIN_LOCKED); a security officer must unlock it";
  if (flags & CKF_USER_PIN_FINAL_TRY) {
    return "the token has one user PIN attempt left (CKF_USER_PIN_FINAL_TRY) and a wrong PIN would lock it, so hsm-signer does not try: check the PIN, log in once with it by another tool (pkcs11-tool --login --test) to reset the count, then restart";
  }
  return undefined;
}

/**
 * C_Login as the user, unless the token's flags say it could lock the PIN (pinAttemptRefusal);
 * login state is per process and token, so CKR_USER_ALREADY_LOGGED_IN is fine.
 */
export function login(session: Session, pin: string): void {
  let flags: number | undefined;
  try {
    flags = session.slot.getToken().flags;
  } catch {
    // No token information: the login below says what is wrong.
  }
  const refusal = flags === undefined ? undefined : pinAttemptRefusal(flags);
  if (refusal) throw new SignerError("HSM_PIN_INCORRECT", `C_Login not tried: ${refusal}`);
  try {
    session.login(pin, UserType.USER);
  } catch (e) {
    if (isCkr(e, CKR.USER_ALREADY_LOGGED_IN)) return;
    throw translatePkcs11Error(e, "C_Login");
  }
}

/**
 * Initializes a token in the first free slot with C_InitToken and sets the user PIN (C_InitPIN),
 * so that PINs never go through a command line. Development and tests only (SoftHSM).
 */
export function initToken(libraryPath: string, label: string, soPin: string, userPin: string): TokenInfo {
  const mod = loadModule(libraryPath);
  const slots = mod.getSlots(true);
  for (let i = 0; i < slots.length; i++) {
    if (tokenInfoOf(slots.items(i)).label === label && tokenInfoOf(slots.items(i)).flags & CKF_TOKEN_INITIALIZED) {
      throw new SignerError("INVALID_ARGUMENT", `a token labelled "${label}" already exists`);
    }
  }
  let free: Slot | undefined;
  for (let i = 0; i < slots.length && !free; i++) {
    const s = slots.items(i);
    if (!(tokenInfoOf(s).flags & CKF_TOKEN_INITIALIZED)) free = s;
  }
  if (!free) throw new SignerError("HSM_UNAVAILABLE", "no slot with an uninitialized token");
  try {
    // graphene's Slot.initToken mis-reads pkcs11js 2's return value; call C_InitToken directly.
    mod.lib.C_InitToken(free.handle, soPin, label.padEnd(32, " "));
  } catch (e) {
    throw translatePkcs11Error(e, "C_InitToken");
  }
  const slot = findSlot(mod, { tokenLabel: label });
  const session = openSession(slot);
  try {
    session.login(soPin, UserType.SO);
    session.initPin(userPin);
    session.logout();
  } catch (e) {
    throw translatePkcs11Error(e, "C_InitPIN");
  } finally {
    session.close();
  }
  return tokenInfoOf(slot);
}
