import { SignerError } from "../errors/index.js";
import { spkiOfCertificate } from "./certificates.js";
import { checkCodeSigningChain, formatChainProblems, leafKeyMismatch, orderChain, parseCertificateBundle } from "./chain-rules.js";
import { GO_NAME_ATTRIBUTES, parseDn, subjectIdentityProblems } from "./distinguished-name.js";
import type { KeySpec } from "./key-spec.js";
import { checkEncodableSubject } from "./x509-builder.js";
import { disabledRefusal } from "./signing-service.js";
import { publicKeyOf, type KeyState, type KeyView, type VersionState, type VersionView } from "./key-versions.js";

/*
 * Whether a custodian's change is allowed, and what it writes: the preconditions of generating,
 * rotating, disabling, enabling and destroying key versions, of a CSR and of a chain import.
 * Pure: hsm/key-custody.ts reads the token, asks these rules, then writes what they allowed.
 */

/** A key's state as a change edits it (the token's state object, less its schema and generation). */
export type EditableKeyState = Omit<KeyState, "generation" | "schema">;

/** The service manages the one token it is logged in to: a key for another token is refused (read `managed` only when asked). */
export function checkManagedToken(requested: string | undefined, managed: () => string): void {
  if (requested && requested !== managed()) {
    throw new SignerError("FAILED_PRECONDITION", `this service is logged in to token "${managed()}" only; run a service for token "${requested}" to manage its keys`);
  }
}

/** GenerateKey makes a new key id only; an existing one gets new versions by rotation. */
export function checkNewKeyId(keyId: string, existing: KeyView | undefined): void {
  if (existing) throw new SignerError("ALREADY_EXISTS", `key "${keyId}" already exists on the token; rotate it to make a new version, or choose another key id`);
}

/** The generation of the state a change is made from (0: the key has none yet). */
export function generationOf(view: KeyView): number {
  return view.state?.generation ?? 0;
}

/**
 * A change is made from the state generation it read (`basedOn`, 0: none yet). When the token
 * holds another one, another replica changed the key meanwhile, and writing would silently undo
 * its change (a new version dropped, a disable lost): FAILED_PRECONDITION, to be retried on the
 * fresh state.
 */
export function checkBasedOn(keyId: string, tokenGeneration: number, basedOn: number): void {
  if (tokenGeneration !== basedOn) {
    throw new SignerError(
      "FAILED_PRECONDITION",
      `key "${keyId}" was changed on the token meanwhile (by another replica?): its state is at generation ${tokenGeneration}, this change was made from ${basedOn}; nothing was changed, try again`,
    );
  }
}

/**
 * The key's state object, or the state it implicitly has (version 1 = its key pair) before
 * hsm-signer managed it; a copy to edit. Several key pairs under one label without a state object
 * are each unusable (which one signs would be a guess): a state written for them would adopt them
 * all as versions and make them usable, even by a disable, so any change is refused.
 */
export function stateOf(view: KeyView): EditableKeyState {
  if (view.state) return structuredClone({ keyId: view.keyId, disabled: view.state.disabled, versions: view.state.versions });
  if (view.versions.length > 1) {
    throw new SignerError(
      "FAILED_PRECONDITION",
      `${view.versions.length} private keys on the token carry the label "${view.keyId}" and hsm-signer has no record of which is which; give each key a unique label before changing the key`,
    );
  }
  return { keyId: view.keyId, versions: view.versions.map((v) => ({ version: v.record.version, id: v.idHex, spec: v.record.spec })) };
}

/** The number of the version a new key pair becomes: one past the highest ever recorded (destroyed ones included). */
export function nextVersion(state: EditableKeyState): number {
  return Math.max(0, ...state.versions.map((v) => v.version)) + 1;
}

/** The state with a new version appended (a key pair just generated, CKA_ID `idHex`). */
export function withNewVersion(state: EditableKeyState, version: number, idHex: string, spec: KeySpec, created: string): EditableKeyState {
  const entry: VersionState = { version, id: idHex, spec, created };
  return { ...state, versions: [...state.versions, entry] };
}

/** A rotation without a key spec keeps the newest version's. */
export function rotationSpec(view: KeyView, spec: KeySpec | undefined): KeySpec {
  return spec ?? (view.versions[view.versions.length - 1]?.record.spec as KeySpec);
}

/**
 * The state after disabling or enabling the whole key (version 0) or one version: KEY_NOT_FOUND
 * for a version the state does not record, FAILED_PRECONDITION for a destroyed one.
 */
export function withEnabled(view: KeyView, version: number, enabled: boolean, reason: string, at: string): EditableKeyState {
  const state = stateOf(view);
  const disabled = enabled ? undefined : { at, reason };
  if (version === 0) {
    state.disabled = disabled;
    return state;
  }
  const v = state.versions.find((x) => x.version === version);
  if (!v) throw new SignerError("KEY_NOT_FOUND", `key "${view.keyId}" has no version ${version}`);
  if (v.destroyed) throw new SignerError("FAILED_PRECONDITION", `version ${version} of key "${view.keyId}" was destroyed`);
  v.disabled = disabled;
  return state;
}

/** Destroying cannot be undone: the custodian types "<key id>@v<version>". */
export function checkDestroyConfirmation(keyId: string, version: number, confirm: string): void {
  const expected = `${keyId}@v${version}`;
  if (confirm !== expected) throw new SignerError("INVALID_ARGUMENT", `destroying a key version cannot be undone: confirm with exactly "${expected}"`);
}

export interface DestroyOptions {
  destroyCertificate: boolean;
  acknowledgeSigned: boolean;
}

/**
 * Whether a version is a key pair under a managed key id that its state does not record (a
 * rotation that stopped between the key pair and its record, or another tool): it never signs,
 * and it cannot be disabled, since the state has no entry to disable.
 */
function unrecorded(view: KeyView, v: VersionView): boolean {
  return view.state !== undefined && !view.state.versions.some((x) => x.id === v.idHex);
}

/**
 * The version a destroy may act on: it exists, it (or the key) is disabled or it is a key pair the
 * state does not record (unrecorded), it is not destroyed already (unless its key pair is still
 * there, from a destroy that failed half-way, or its certificate goes now), and a certificate that
 * verifies past signatures goes only when the custodian acknowledged that. `keyPairLeft` asks the
 * token, only when the answer matters.
 */
export async function versionToDestroy(view: KeyView, version: number, o: DestroyOptions, keyPairLeft: (v: VersionView) => Promise<boolean>): Promise<VersionView> {
  const keyId = view.keyId;
  const v = view.versions.find((x) => x.record.version === version);
  if (!v) throw new SignerError("KEY_NOT_FOUND", `key "${keyId}" has no version ${version}`);
  if (v.state === "enabled" && !view.state?.disabled && !unrecorded(view, v)) throw new SignerError("FAILED_PRECONDITION", `version ${version} of key "${keyId}" is enabled; disable it first`);
  if (v.state === "destroyed" && !o.destroyCertificate && !(await keyPairLeft(v))) {
    throw new SignerError("FAILED_PRECONDITION", `version ${version} of key "${keyId}" is already destroyed`);
  }
  if (o.destroyCertificate && v.hasSigned && !o.acknowledgeSigned) {
    throw new SignerError(
      "FAILED_PRECONDITION",
      `version ${version} of key "${keyId}" has signed; its certificate is the last record on the token that verifies those signatures. Keep the certificate (leave out --destroy-certificate), or confirm with --acknowledge-signed (destroy_certificate and acknowledge_signed in the KeyAdmin API)`,
    );
  }
  return v;
}

/**
 * The state with the version recorded as destroyed (the first time of a retried destroy is kept);
 * a key pair the state did not record gets its entry, so that its number is not given again.
 */
export function withDestroyed(view: KeyView, version: number, at: string): EditableKeyState {
  const state = stateOf(view);
  const entry = state.versions.find((x) => x.version === version);
  if (entry) {
    entry.destroyed ??= at;
    return state;
  }
  const v = view.versions.find((x) => x.record.version === version);
  if (!v) throw new SignerError("KEY_NOT_FOUND", `key "${view.keyId}" has no version ${version}`);
  state.versions.push({ version, id: v.idHex, spec: v.record.spec, destroyed: at });
  return state;
}

/** A named version, or by default the newest (whether or not it can sign); KEY_NOT_FOUND otherwise. */
export function pickVersion(view: KeyView, version: number): VersionView {
  const v = version ? view.versions.find((x) => x.record.version === version) : view.versions[view.versions.length - 1];
  if (!v) throw new SignerError("KEY_NOT_FOUND", `key "${view.keyId}" has no version ${version}`);
  return v;
}

/**
 * A CSR's subject must be one notation trust policies can name (protocol §5.4): C, ST and O, and
 * only attribute types Go names (a leaf with another is refused by the chain import anyway; one
 * @peculiar/x509 has no OID for failed the CSR as an internal error). It must also encode.
 */
export function checkCsrSubject(subject: string): void {
  const problems = subjectIdentityProblems(subject);
  const types = attributeTypes(subject);
  const odd = [...new Set(types.filter((t) => !GO_NAME_ATTRIBUTES.has(t)))];
  if (odd.length > 0) problems.push(`it has ${odd.join(", ")}, which notation cannot match in a trust policy; use only ${[...GO_NAME_ATTRIBUTES].join(", ")} (in capitals)`);
  if (problems.length > 0) throw new SignerError("INVALID_ARGUMENT", `subject "${subject}" cannot name a notation identity: ${problems.join("; ")}`);
  checkEncodableSubject(subject, "subject");
}

/** The attribute types of a DN as typed; none when it does not parse (subjectIdentityProblems says why). */
function attributeTypes(subject: string): string[] {
  try {
    return parseDn(subject).flatMap((rdn) => rdn.map((a) => a.type));
  } catch {
    return [];
  }
}

/**
 * The version a CSR is made for (default: the newest): its key pair must still be there, not be
 * disabled (the request is signed by that key, and a disabled key signs nothing: KEY_DISABLED, as
 * Sign answers), and be one that can sign with a certificate (not exposed, CKA_SIGN set, its own
 * CKA_ID, made by hsm-signer under a managed key id): a CA would certify a key that never signs,
 * or the HSM would refuse the request's own signature.
 */
export function versionForCsr(view: KeyView, version: number): VersionView & { handle: Buffer } {
  const v = pickVersion(view, version);
  if (!v.handle) throw new SignerError("FAILED_PRECONDITION", `version ${v.record.version} of key "${view.keyId}" was destroyed`);
  const disabled = disabledRefusal(v.record);
  if (disabled) throw disabled;
  if (v.problem) throw new SignerError("FAILED_PRECONDITION", `no CSR for version ${v.record.version} of key "${view.keyId}": ${v.problem}`);
  return v as VersionView & { handle: Buffer };
}

/**
 * Judges a chain a custodian imports: the version it is for (the named one, or any version whose
 * key pair is there) must hold the leaf's public key, and the chain must pass every rule of
 * notation-plugin-protocol.md §5. Without `strictOrder` the certificates are put in order first.
 * Returns the version and the chain to store, leaf first; CHAIN_INVALID with every problem otherwise.
 */
export function chainToImport(view: KeyView, version: number, inputs: Buffer[], strictOrder: boolean): { target: VersionView; chain: Buffer[] } {
  const keyId = view.keyId;
  const certs = parseCertificateBundle(inputs);
  const candidates = version ? [pickVersion(view, version)] : view.versions.filter((v) => v.handle);
  const target = candidates.find((v) => {
    const spki = publicKeyOf(v);
    return spki !== undefined && certs.some((c) => spkiOfCertificate(c).equals(spki));
  });
  const which = version ? `key "${keyId}" version ${version}` : `any version of key "${keyId}"`;
  if (version && target && !target.handle)
    throw new SignerError("FAILED_PRECONDITION", `version ${version} of key "${keyId}" was destroyed; a chain is imported for a version whose key pair is on the token`);
  if (!target?.handle) throw new SignerError("CHAIN_INVALID", `the chain for key "${keyId}" was rejected:\n${formatChainProblems(leafKeyMismatch(certs, which))}`);
  const spki = publicKeyOf(target) as Buffer;
  const ordered = strictOrder ? { chain: certs, problems: [] } : orderChain(certs, spki);
  const problems = ordered.problems.length > 0 ? ordered.problems : checkCodeSigningChain(ordered.chain);
  if (strictOrder && !spkiOfCertificate(certs[0] as Buffer).equals(spki)) {
    problems.unshift(...leafKeyMismatch([certs[0] as Buffer], which, "with strict order the leaf comes first"));
  }
  if (problems.length > 0) throw new SignerError("CHAIN_INVALID", `the chain for key "${keyId}" was rejected:\n${formatChainProblems(problems)}`);
  return { target, chain: ordered.chain };
}
