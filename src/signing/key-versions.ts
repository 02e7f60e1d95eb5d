import { SignerError } from "../errors/index.js";
import { buildChain, issuersValidity, keySpecOfCertificate, spkiOfCertificate } from "./certificates.js";
import { isKeySpec, keySpecInfo, type KeySpec } from "./key-spec.js";
import type { CertificateSummary, KeyRecord } from "./ports.js";

/*
 * The rules that turn what a key store found on its token into key versions: which objects make
 * a version, which version is current, why a version cannot sign or is disabled. Pure: the store
 * (hsm/pkcs11-key-store.ts, over hsm/token-scan.ts) reads the objects, these rules decide.
 */

/** A custodian's disable: when, and why. */
export interface Disabled {
  at: string;
  reason: string;
}

/** One version in a key's state (the state object on the token, hsm/key-state.ts). */
export interface VersionState {
  version: number;
  /** CKA_ID of the version's key pair and certificate, lowercase hex. */
  id: string;
  /** Kept so that a destroyed version whose certificate is gone still shows its key spec. */
  spec?: KeySpec;
  created?: string;
  disabled?: Disabled;
  /** Set when the key pair was destroyed (certificates may remain). */
  destroyed?: string;
}

/** A key's versions and custodian state, as stored on the token (one generation of it). */
export interface KeyState {
  schema: 1;
  keyId: string;
  generation: number;
  disabled?: Disabled;
  versions: VersionState[];
}

const isRecord = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);
const optionalString = (v: unknown): boolean => v === undefined || typeof v === "string";
const isDisabled = (v: unknown): boolean => v === undefined || (isRecord(v) && optionalString(v.at) && optionalString(v.reason));

/**
 * Whether a state object's parsed JSON has the shape the rules read (schema 1): another writer's
 * object in another shape is left out rather than failing the whole scan, which every key, the
 * start and each rescan after an HSM recovery depend on.
 */
export function isKeyState(s: unknown): s is KeyState {
  if (!isRecord(s) || s.schema !== 1 || typeof s.keyId !== "string" || !Number.isSafeInteger(s.generation) || !Array.isArray(s.versions) || !isDisabled(s.disabled)) return false;
  return s.versions.every(
    (v: unknown) =>
      isRecord(v) &&
      Number.isSafeInteger(v.version) &&
      (v.version as number) >= 1 &&
      typeof v.id === "string" &&
      /^(?:[0-9a-f]{2})*$/.test(v.id) &&
      (v.spec === undefined || (typeof v.spec === "string" && isKeySpec(v.spec))) &&
      optionalString(v.created) &&
      optionalString(v.destroyed) &&
      isDisabled(v.disabled),
  );
}

/**
 * Whether `state` replaces `had` as a key's state: the higher generation wins, and among equal
 * generations (two replicas wrote at once) the larger JSON text, so that every reader agrees.
 */
export function supersedes(state: KeyState, had: KeyState | undefined): boolean {
  return !had || state.generation > had.generation || (state.generation === had.generation && JSON.stringify(state) > JSON.stringify(had));
}

/** A certificate object the scan found (X.509 only, and only one that parses). */
export interface ScannedCertificate {
  /** CKA_ID; empty when the object has none. */
  id: Buffer;
  label: string;
  der: Buffer;
  summary: CertificateSummary;
}

/** A private key object the scan found. */
export interface ScannedPrivateKey {
  /** The store's handle of the object (a PKCS#11 object handle). */
  handle: Buffer;
  /** CKA_ID; empty when the object has none. */
  id: Buffer;
  /** Undefined when Notation does not allow the key (algorithm, size or curve). */
  spec: KeySpec | undefined;
  /** Why the key may have existed outside the HSM (see exposureOf), if it may have. */
  exposed: string | undefined;
  /** DER SubjectPublicKeyInfo from the private key's own attributes (RSA: modulus and public exponent); undefined when it has none (EC). */
  spki?: Buffer | undefined;
  /** CKA_SIGN; undefined when the module does not report it. */
  sign?: boolean | undefined;
}

/** Everything a scan of the token found that the rules need. */
export interface TokenScan {
  /** The newest state of each key id that has one. */
  states: Map<string, KeyState>;
  /** CKA_IDs (hex) of versions that have signed. */
  signed: Set<string>;
  certificates: ScannedCertificate[];
  /** DER SubjectPublicKeyInfo of each public key object, by CKA_ID hex. */
  publicKeys: Map<string, Buffer>;
  /** Private keys by CKA_LABEL (the key id). */
  privateKeys: Map<string, ScannedPrivateKey[]>;
}

/** One version of a key as the token holds it. */
export interface VersionView {
  record: KeyRecord;
  /** The store's handle of the private key; undefined once the version's key pair is destroyed. */
  handle: Buffer | undefined;
  /** DER SubjectPublicKeyInfo from the token's public key object, when there is one. */
  spki: Buffer | undefined;
  /** CKA_ID, lowercase hex. */
  idHex: string;
  state: "enabled" | "disabled" | "destroyed";
  /** Why the version's key pair cannot sign whatever its certificate (destroyed, exposed, ambiguous); undefined when none. */
  problem: string | undefined;
  created: string | undefined;
  disabled: Disabled | undefined;
  hasSigned: boolean;
}

/** A key id with all its versions (ascending), its custodian state and its current version. */
export interface KeyView {
  keyId: string;
  /** The state object on the token; undefined for keys hsm-signer has not managed yet. */
  state: KeyState | undefined;
  versions: VersionView[];
  current: VersionView | undefined;
}

/** The private key attributes exposureOf judges; one a module does not report is undefined. */
export interface KeyExposureAttributes {
  alwaysSensitive?: boolean | undefined;
  neverExtractable?: boolean | undefined;
  sensitive?: boolean | undefined;
  extractable?: boolean | undefined;
}

/**
 * Why a private key may have existed outside the HSM, from CKA_ALWAYS_SENSITIVE and
 * CKA_NEVER_EXTRACTABLE: a key made in the HSM as sensitive and not extractable has both set
 * (hsm-signer's keys and pkcs11-tool --keypairgen's alike); a key that was imported, or could be
 * exported at some time, has not. CKA_EXTRACTABLE and CKA_SENSITIVE, the key's present state,
 * are judged too, for a module that reports those but not the history. An attribute the module
 * does not report is trusted.
 */
export function exposureOf(a: KeyExposureAttributes): string | undefined {
  if (a.extractable === true) return "is extractable (CKA_EXTRACTABLE is true)";
  if (a.neverExtractable === false) return "was extractable at some time (CKA_NEVER_EXTRACTABLE is false)";
  if (a.sensitive === false) return "is not sensitive (CKA_SENSITIVE is false)";
  if (a.alwaysSensitive === false) return "was not sensitive at some time (CKA_ALWAYS_SENSITIVE is false)";
  return undefined;
}

/** Every key id the scan found (by private key label or state object) that has at least one version. */
export function keyViews(scan: TokenScan): Map<string, KeyView> {
  const views = new Map<string, KeyView>();
  const sharedIds = privateKeysById(scan);
  for (const keyId of new Set([...scan.privateKeys.keys(), ...scan.states.keys()])) {
    const view = keyView(keyId, scan.states.get(keyId), scan.privateKeys.get(keyId) ?? [], scan, sharedIds);
    if (view.versions.length > 0) views.set(keyId, view);
  }
  return views;
}

/**
 * The labels of the private keys of each CKA_ID (hex) that more than one private key carries
 * (pkcs11-tool --id 01 for two keys). The CKA_ID links a private key to its public key object and
 * its certificate: shared, the certificate or public key of one key pair is taken for the other's,
 * and its signatures would not verify against the chain it is served with.
 */
function privateKeysById(scan: Pick<TokenScan, "privateKeys">): Map<string, string[]> {
  const labels = new Map<string, string[]>();
  for (const [label, privs] of scan.privateKeys) {
    for (const p of privs) {
      if (p.id.length === 0) continue;
      const hex = p.id.toString("hex");
      labels.set(hex, [...(labels.get(hex) ?? []), label]);
    }
  }
  for (const [hex, l] of labels) if (l.length < 2) labels.delete(hex);
  return labels;
}

/**
 * A key's versions: key pairs with the key id as label and different CKA_IDs, in the order kept by
 * the key's state object. Without a state object a single key pair is version 1 (several make
 * every one unusable: which one signs would be a guess). The current version is the newest one
 * that is usable and enabled.
 */
function keyView(
  keyId: string,
  state: KeyState | undefined,
  privs: ScannedPrivateKey[],
  scan: Pick<TokenScan, "publicKeys" | "certificates" | "signed">,
  sharedIds = new Map<string, string[]>(),
): KeyView {
  const slots: { version: number; id: Buffer; priv: ScannedPrivateKey | undefined; vs: VersionState | undefined; problem?: string }[] = [];
  if (state) {
    for (const vs of state.versions) slots.push({ version: vs.version, id: Buffer.from(vs.id, "hex"), priv: privs.find((p) => p.id.toString("hex") === vs.id), vs });
    let n = Math.max(0, ...state.versions.map((v) => v.version));
    for (const p of privs.filter((p) => !state.versions.some((v) => v.id === p.id.toString("hex")))) {
      slots.push({
        version: ++n,
        id: p.id,
        priv: p,
        vs: undefined,
        problem: `a private key labelled "${keyId}" (CKA_ID ${p.id.toString("hex")}) is not a version hsm-signer made; remove it or give it another label`,
      });
    }
  } else {
    const dup = privs.length > 1 ? `${privs.length} private keys on the token carry the label "${keyId}"; give each key a unique label` : undefined;
    privs.forEach((p, i) => slots.push({ version: i + 1, id: p.id, priv: p, vs: undefined, problem: dup }));
  }
  const versions: VersionView[] = [];
  for (const s of slots) {
    const idHex = s.id.toString("hex");
    const objectSpki = scan.publicKeys.get(idHex);
    const spki = objectSpki ?? s.priv?.spki;
    const ownCert = scan.certificates.find((c) => c.id.equals(s.id));
    const spec = s.priv?.spec ?? s.vs?.spec ?? (ownCert ? keySpecOfCertificate(ownCert.der) : undefined);
    if (!spec) continue; // not a Notation key spec: not offered at all
    const record = recordFor(keyId, s.version, spec, s.id, spki, scan.certificates);
    const destroyed = !s.priv || s.vs?.destroyed !== undefined;
    const sharing = s.priv ? sharedIds.get(idHex) : undefined;
    let problem: string | undefined;
    if (destroyed) problem = `version ${s.version} of key "${keyId}" was destroyed`;
    else if (s.priv?.exposed)
      problem = `the private key of key "${keyId}" ${s.priv.exposed}, so copies of it may exist outside the HSM; hsm-signer signs only with keys that never left it: generate a new key in the HSM`;
    else if (s.priv?.sign === false) problem = `the private key of key "${keyId}" may not sign (CKA_SIGN is false); generate a key pair for signing`;
    else if (sharing)
      problem = `${sharing.length} private keys on the token carry the CKA_ID ${idHex} (labels ${[...new Set(sharing)].map((l) => `"${l}"`).join(", ")}), which links a key to its public key and certificate; give each key pair its own CKA_ID`;
    else if (s.priv && !spki)
      problem = `key "${keyId}" has no public key object on the token (a CKO_PUBLIC_KEY with its CKA_ID ${idHex || "(none)"}), so no certificate can be checked against its private key; keep the public key of every key pair on the token`;
    else if (objectSpki && s.priv?.spki && !objectSpki.equals(s.priv.spki))
      problem = `the public key object with the CKA_ID ${idHex} of key "${keyId}" does not hold the public key of its private key; give each key pair its own CKA_ID`;
    else problem = s.problem;
    if (problem) record.unusableReason = problem;
    const disabled = s.vs?.disabled;
    if (state?.disabled) record.disabledReason = disabledMessage(`key "${keyId}"`, state.disabled);
    else if (disabled) record.disabledReason = disabledMessage(`version ${s.version} of key "${keyId}"`, disabled);
    versions.push({
      record,
      handle: destroyed ? undefined : s.priv?.handle,
      spki,
      idHex,
      state: destroyed ? "destroyed" : disabled ? "disabled" : "enabled",
      problem,
      created: s.vs?.created,
      disabled,
      hasSigned: scan.signed.has(idHex),
    });
  }
  versions.sort((a, b) => a.record.version - b.record.version);
  const current = [...versions].reverse().find((v) => !v.record.unusableReason && !v.record.disabledReason);
  if (current) current.record.current = true;
  return { keyId, state, versions, current };
}

/**
 * A version's record: its certificate is the one with the version's CKA_ID that holds its public
 * key (a non-CA one with the latest notAfter, when several do), its chain is completed from the
 * other certificates, and whatever is missing or wrong makes it unusable.
 */
function recordFor(keyId: string, version: number, spec: KeySpec, id: Buffer, spki: Buffer | undefined, certs: ScannedCertificate[]): KeyRecord {
  const record: KeyRecord = { keyId, version, spec, info: keySpecInfo(spec), chain: [], certificate: undefined, unusableReason: undefined, disabledReason: undefined, current: false };
  const own = id.length > 0 ? certs.filter((c) => c.id.equals(id)) : [];
  // Prefer a non-CA certificate with the latest notAfter when a key has several.
  const candidates = own
    .map((c) => ({ c, s: c.summary }))
    .filter(({ c }) => !spki || spkiOfCertificate(c.der).equals(spki))
    .sort((x, y) => Number(x.s.isCa) - Number(y.s.isCa) || y.s.notAfter.getTime() - x.s.notAfter.getTime());
  const leaf = candidates[0];
  if (!leaf) {
    record.unusableReason =
      own.length > 0
        ? `the certificate with the CKA_ID of key "${keyId}" does not hold the key's public key`
        : `key "${keyId}" has no certificate on the token (a CKO_CERTIFICATE with the same CKA_ID)`;
    return record;
  }
  record.certificate = leaf.s;
  const certSpec = keySpecOfCertificate(leaf.c.der);
  if (certSpec !== spec) {
    record.unusableReason = `the certificate of key "${keyId}" holds a ${certSpec ?? "unsupported"} key but the HSM key is ${spec}`;
    return record;
  }
  const { chain, problem } = buildChain(
    leaf.c.der,
    certs.map((c) => c.der),
  );
  record.chain = chain;
  record.issuersValidity = issuersValidity(chain);
  if (leaf.s.isCa) record.unusableReason = `key "${keyId}" is a CA key; CA keys do not sign artifacts`;
  else if (problem) record.unusableReason = `the certificate chain of key "${keyId}" is incomplete: ${problem}`;
  return record;
}

function disabledMessage(what: string, d: Disabled): string {
  return `${what} is disabled by a custodian${d.reason ? `: ${d.reason}` : ""}`;
}

/** A named version, or by default the current one (the newest when none can sign). */
export function selectVersion(view: KeyView | undefined, version?: number): VersionView | undefined {
  if (!view) return undefined;
  return version ? view.versions.find((x) => x.record.version === version) : (view.current ?? view.versions[view.versions.length - 1]);
}

/** The version that signs for `key` (a record the store handed out earlier): KEY_NOT_FOUND when it has left the token since. */
export function signableVersion(view: KeyView | undefined, key: KeyRecord): VersionView & { handle: Buffer } {
  const v = selectVersion(view, key.version);
  if (!v || !v.handle || v.record.spec !== key.spec) throw new SignerError("KEY_NOT_FOUND", `key "${key.keyId}" version ${key.version} is no longer on the token`);
  return v as VersionView & { handle: Buffer };
}

/** A version's public key as DER SubjectPublicKeyInfo: from the token's public key object, else from its certificate. */
export function publicKeyOf(v: VersionView | undefined): Buffer | undefined {
  return v?.spki ?? (v?.record.chain[0] ? spkiOfCertificate(v.record.chain[0]) : undefined);
}
