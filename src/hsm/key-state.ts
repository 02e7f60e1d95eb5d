import { createHash } from "node:crypto";
import { ObjectClass, type Session } from "graphene-pk11";
import { checkBasedOn } from "../signing/custody-rules.js";
import { isKeyState, supersedes, type KeyState } from "../signing/key-versions.js";
import { translatePkcs11Error } from "./pkcs11-errors.js";

/**
 * Key versions and custodian state live on the token, beside the keys, so that every replica on
 * the same token (and every restart) sees the same thing. Each key that hsm-signer manages has
 * one private CKO_DATA object (CKA_APPLICATION "hsm-signer", CKA_LABEL "hsm-signer:key:<key id>")
 * whose CKA_VALUE is a KeyState as JSON. An update creates the next generation and then destroys
 * the older ones, so a reader always finds a complete state (the highest generation wins).
 *
 * "This version has signed" is a separate marker object per version (label
 * "hsm-signer:signed:<CKA_ID hex>"), written once before the version's first signature, so that
 * signers never rewrite the state object a custodian may be changing at the same moment.
 */
export const STATE_APPLICATION = "hsm-signer";
const STATE_PREFIX = "hsm-signer:key:";
const SIGNED_PREFIX = "hsm-signer:signed:";

/** The state's shape (and the rules that read it) belong to the signing core. */
export type { Disabled, KeyState, VersionState } from "../signing/key-versions.js";

export interface TokenState {
  keys: Map<string, KeyState>;
  /** CKA_IDs (hex) of versions that have signed. */
  signed: Set<string>;
  /** Changes whenever any state or marker object changes (for change detection). */
  fingerprint: string;
}

function dataObjects(session: Session): { handle: Buffer; label: string; value: Buffer }[] {
  const found = session.find({ class: ObjectClass.DATA, application: STATE_APPLICATION });
  const out: { handle: Buffer; label: string; value: Buffer }[] = [];
  for (let i = 0; i < found.length; i++) {
    const o = found.items(i);
    const a = o.getAttribute({ label: null, value: null }) as { label?: string; value?: Buffer };
    out.push({ handle: o.handle, label: a.label ?? "", value: a.value ?? Buffer.alloc(0) });
  }
  return out;
}

function parseState(value: Buffer): KeyState | undefined {
  try {
    const s: unknown = JSON.parse(value.toString("utf8"));
    return isKeyState(s) ? s : undefined;
  } catch {
    return undefined;
  }
}

/** The newest state of each key; among equal generations the larger value wins, so every reader agrees. */
export function readTokenState(session: Session): TokenState {
  const keys = new Map<string, KeyState>();
  const signed = new Set<string>();
  const h = createHash("sha256");
  for (const o of dataObjects(session)) {
    h.update(o.label).update(o.value);
    if (o.label.startsWith(SIGNED_PREFIX)) signed.add(o.label.slice(SIGNED_PREFIX.length));
    if (!o.label.startsWith(STATE_PREFIX)) continue;
    const s = parseState(o.value);
    if (!s) continue;
    if (supersedes(s, keys.get(s.keyId))) keys.set(s.keyId, s);
  }
  return { keys, signed, fingerprint: h.digest("hex") };
}

/**
 * Writes the next generation of a key's state, then removes the older generations. `basedOn` is
 * the generation the change was made from (0: no state yet). When the token holds another one,
 * another replica changed the key meanwhile, and writing would silently undo its change (a new
 * version dropped, a disable lost): the write is refused, to be retried on the fresh state.
 */
export function writeKeyState(session: Session, next: Omit<KeyState, "generation" | "schema">, basedOn: number): KeyState {
  const label = STATE_PREFIX + next.keyId;
  const old = dataObjects(session).filter((o) => o.label === label);
  const generation = checkGeneration(next.keyId, old, basedOn) + 1;
  const state: KeyState = { schema: 1, keyId: next.keyId, generation, ...(next.disabled ? { disabled: next.disabled } : {}), versions: next.versions };
  try {
    session.create({ class: ObjectClass.DATA, token: true, private: true, modifiable: false, application: STATE_APPLICATION, label, value: Buffer.from(JSON.stringify(state)) });
    for (const o of old) session.getObject(o.handle)?.destroy();
  } catch (e) {
    throw translatePkcs11Error(e, `saving the state of key "${next.keyId}" on the token`);
  }
  return state;
}

/** Refuses a change made from another generation than the token's (see writeKeyState); call it before costly work too. */
export function assertKeyStateGeneration(session: Session, keyId: string, basedOn: number): void {
  checkGeneration(
    keyId,
    dataObjects(session).filter((o) => o.label === STATE_PREFIX + keyId),
    basedOn,
  );
}

function checkGeneration(keyId: string, objects: { value: Buffer }[], basedOn: number): number {
  const current = Math.max(0, ...objects.map((o) => parseState(o.value)?.generation ?? 0));
  checkBasedOn(keyId, current, basedOn);
  return current;
}

/** Records on the token that a version (by CKA_ID) has signed; idempotent. */
export function markSigned(session: Session, idHex: string, keyId: string, version: number): void {
  const label = SIGNED_PREFIX + idHex;
  if (session.find({ class: ObjectClass.DATA, application: STATE_APPLICATION, label }).length > 0) return;
  try {
    const value = Buffer.from(JSON.stringify({ keyId, version, first: new Date().toISOString() }));
    session.create({ class: ObjectClass.DATA, token: true, private: true, modifiable: false, application: STATE_APPLICATION, label, value });
  } catch (e) {
    throw translatePkcs11Error(e, `recording the first signature of key "${keyId}" version ${version}`);
  }
}
