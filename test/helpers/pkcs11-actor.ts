/**
 * A second process on the same token (SOFTHSM2_CONF from the environment), for fault tests:
 *   node pkcs11-actor.js '{"module":"...","label":"...","pin":"...","action":"close-all-and-logout"}'
 *   node pkcs11-actor.js '{"module":"...","label":"...","pin":"...","action":"set-pin","newPin":"..."}'
 * Prints one JSON line of what it did. PKCS#11 session handles and login state belong to the
 * process that made them, so what this process can do to another one's sessions is exactly what
 * the token implementation lets it do (SoftHSM: nothing; a network HSM may differ).
 */
import pkcs11js from "pkcs11js";

interface Args {
  module: string;
  label: string;
  pin: string;
  action: "close-all-and-logout" | "set-pin";
  newPin?: string;
}

const a = JSON.parse(process.argv[2] ?? "{}") as Args;
const lib = new pkcs11js.PKCS11();
lib.load(a.module);
lib.C_Initialize({ flags: 2 /* CKF_OS_LOCKING_OK */ });
try {
  const slot = lib.C_GetSlotList(true).find((s) => lib.C_GetTokenInfo(s).label.trim() === a.label);
  if (!slot) throw new Error(`no token "${a.label}"`);
  const session = lib.C_OpenSession(slot, pkcs11js.CKF_SERIAL_SESSION | pkcs11js.CKF_RW_SESSION);
  lib.C_Login(session, pkcs11js.CKU_USER, a.pin);
  const done: string[] = ["C_OpenSession", "C_Login"];
  if (a.action === "set-pin") {
    lib.C_SetPIN(session, a.pin, a.newPin ?? "");
    done.push("C_SetPIN");
    lib.C_Logout(session);
    done.push("C_Logout");
    lib.C_CloseSession(session);
  } else {
    lib.C_Logout(session);
    done.push("C_Logout");
    lib.C_CloseAllSessions(slot);
    done.push("C_CloseAllSessions");
  }
  process.stdout.write(`${JSON.stringify({ done })}\n`);
} finally {
  lib.C_Finalize();
}
