import { SignerError } from "../errors/index.js";
import type { KeySpec } from "../signing/key-spec.js";
import { publicKeyOf, selectVersion, type VersionView } from "../signing/key-versions.js";
import type { KeyRecord } from "../signing/ports.js";
import { disabledRefusal, MAX_KEY_ID_LENGTH, validateKeyId } from "../signing/signing-service.js";
import { checkEncodableSubject, createLeafCertificate, createRootCertificate, type DigestSigningKey } from "../signing/x509-builder.js";
import { generateKeyPair, privateKeyExists, storeCertificate } from "./key-factory.js";
import type { Pkcs11KeyStore } from "./pkcs11-key-store.js";
import type { SessionPool } from "./session-pool.js";
import type { TestChainParams, TestChainResult } from "../signing/custody.js";

export type { TestChainParams, TestChainResult };

export const TEST_CHAIN_DEFAULTS = { rootKeySpec: "EC-384" as KeySpec, organization: "hsm-signer test", state: "WA", country: "US", validityDays: 365 };

/** What the default root key id adds to the key id. */
const ROOT_KEY_SUFFIX = "-root-ca";

/** RFC 4514 attribute value escaping for the characters that matter in a DN string. */
function rdn(v: string): string {
  return v
    .replace(/([,+"\\<>;=])/g, "\\$1")
    .replace(/^([ #])/, "\\$1")
    .replace(/ $/, "\\ ");
}

/**
 * The HSM equivalent of `notation cert generate-test`: a root CA key and a signing key in the
 * HSM, a self-signed root and a code-signing leaf whose signatures the HSM makes, both stored on
 * the token. Safe to run again: what already exists is kept, only what is missing is made.
 * Everything that can refuse is checked against the token before anything is written: a refusal
 * that came after the root was made (a key of another spec) left a CA key and certificate behind.
 */
export async function createTestChain(pool: SessionPool, keys: Pkcs11KeyStore, p: TestChainParams): Promise<TestChainResult> {
  const rootKeyId = p.rootKeyId ?? `${p.keyId}${ROOT_KEY_SUFFIX}`;
  if (p.rootKeyId === undefined) checkDefaultRootKeyId(rootKeyId);
  // Else the key became its own root: a key pair and a CA certificate under the key id, then a refusal.
  if (rootKeyId === p.keyId) throw new SignerError("INVALID_ARGUMENT", `the root key id must differ from the key id ("${p.keyId}"): the root is a CA key, which never signs artifacts`);
  const d = { ...TEST_CHAIN_DEFAULTS, ...stripUndefined(p) };
  // Encoded C, ST, O, CN: the conventional order, so tools print it as notation users expect.
  const subjectOf = (cn: string): string => `C=${rdn(d.country)}, ST=${rdn(d.state)}, O=${rdn(d.organization)}, CN=${cn}`;
  const subjects = { root: subjectOf(`${rdn(p.keyId)} Root CA`), leaf: subjectOf(rdn(p.keyId)) };
  checkEncodableSubject(subjects.root, "the root certificate's subject (from the organization, state and country)");
  checkEncodableSubject(subjects.leaf, "the leaf certificate's subject (from the organization, state and country)");
  await keys.refresh();
  const existingRoot = await versionOnToken(pool, keys, rootKeyId);
  const existingKey = await versionOnToken(pool, keys, p.keyId);
  checkExistingKey(existingKey, p.keyId, p.keySpec, existingRoot);
  checkExistingRoot(existingRoot, rootKeyId, !existingKey || existingKey.record.chain.length === 0);

  const created = { rootKey: false, rootCertificate: false, key: false, leafCertificate: false };
  await pool.use(async (s) => {
    if (!existingRoot) {
      await generateKeyPair(s, rootKeyId, d.rootKeySpec);
      created.rootKey = true;
    }
    if (!existingKey) {
      await generateKeyPair(s, p.keyId, p.keySpec);
      created.key = true;
    }
  });
  await keys.refresh();
  let root = await keys.getKey(rootKeyId);
  const rootSigner = asDigestSigner(keys, root);
  if (root.chain.length === 0) {
    const rootId = await certifiableId(keys, rootKeyId);
    const der = await createRootCertificate({ subject: subjects.root, key: rootSigner, validityDays: d.validityDays * 2 });
    await pool.use((s) => storeCertificate(s, rootKeyId, rootId, der));
    created.rootCertificate = true;
    await keys.refresh();
    root = await keys.getKey(rootKeyId);
  }
  const rootDer = root.chain[root.chain.length - 1];
  if (!rootDer || !root.certificate?.isCa) throw new SignerError("KEY_UNUSABLE", `key "${rootKeyId}" exists but its certificate is not a CA certificate`);
  let key = await keys.getKey(p.keyId);
  if (key.chain.length === 0) {
    const id = await certifiableId(keys, p.keyId);
    const spki = keys.publicKeySpki(p.keyId);
    if (!spki) throw new SignerError("KEY_UNUSABLE", `key "${p.keyId}" has no public key object on the token to certify`);
    const der = await createLeafCertificate({ subject: subjects.leaf, spki, issuerCertificate: rootDer, issuerKey: rootSigner, validityDays: d.validityDays });
    await pool.use((s) => storeCertificate(s, p.keyId, id, der));
    created.leafCertificate = true;
    await keys.refresh();
    key = await keys.getKey(p.keyId);
  }
  if (key.unusableReason) throw new SignerError("KEY_UNUSABLE", key.unusableReason);
  return { chain: key.chain, root: key.chain[key.chain.length - 1] as Buffer, created };
}

/**
 * The root is a key like any other: custodians look it up, disable and destroy it by its id
 * through KeyAdmin, which refuses an id longer than MAX_KEY_ID_LENGTH. The key id with
 * ROOT_KEY_SUFFIX is, for a key id of more than 120 characters: refused before anything is made.
 */
function checkDefaultRootKeyId(rootKeyId: string): void {
  if (rootKeyId.length > MAX_KEY_ID_LENGTH) {
    throw new SignerError(
      "INVALID_ARGUMENT",
      `the root key id would be "${rootKeyId}" (the key id and "${ROOT_KEY_SUFFIX}"), ${rootKeyId.length} characters: longer than the ${MAX_KEY_ID_LENGTH} characters a key id may have, so custodians could not manage the root; name the root with root_key_id (--root-key-id), or use a key id of at most ${MAX_KEY_ID_LENGTH - ROOT_KEY_SUFFIX.length} characters`,
    );
  }
  validateKeyId(rootKeyId);
}

/**
 * The version of a key id that the test chain would certify or sign with (the one getKey()
 * names), or undefined when the token has no key under that id and one is to be made. A key id
 * with a state but no key pair left (every version destroyed), or a private key of a kind
 * notation does not sign with, cannot be made again under that id: a key pair made there would
 * never sign.
 */
async function versionOnToken(pool: SessionPool, keys: Pkcs11KeyStore, keyId: string): Promise<VersionView | undefined> {
  const hasPrivateKey = await pool.use((s) => privateKeyExists(s, keyId));
  const view = await keys.view(keyId).catch((e: unknown) => {
    if ((e as SignerError).code === "KEY_NOT_FOUND") return undefined;
    throw e;
  });
  if (!view && !hasPrivateKey) return undefined;
  if (!view) throw new SignerError("KEY_UNUSABLE", `a private key labelled "${keyId}" is on the token, but not of a key spec notation signs with; choose another key id`);
  if (!hasPrivateKey)
    throw new SignerError("FAILED_PRECONDITION", `key "${keyId}" has no key pair left on the token (its versions were destroyed); rotate it to make a new version, or choose another key id`);
  return selectVersion(view);
}

/**
 * An existing signing key is certified (when it has no certificate yet) or kept: it must be of the
 * asked spec and able to sign. One that has a certificate but cannot sign is refused unless the
 * root certificate this call makes for an existing root key may be the issuer its chain lacks.
 */
function checkExistingKey(v: VersionView | undefined, keyId: string, spec: KeySpec, root: VersionView | undefined): void {
  if (!v) return;
  if (v.record.spec !== spec) throw new SignerError("INVALID_ARGUMENT", `key "${keyId}" already exists as ${v.record.spec}, not ${spec}`);
  if (v.problem) throw new SignerError("KEY_UNUSABLE", v.problem);
  if (v.record.chain.length === 0) {
    if (!v.idHex) throw new SignerError("KEY_UNUSABLE", `key "${keyId}" has no CKA_ID, so no certificate can be linked to it`);
    if (!publicKeyOf(v)) throw new SignerError("KEY_UNUSABLE", `key "${keyId}" has no public key object on the token to certify`);
  } else if (v.record.unusableReason && !(root && root.record.chain.length === 0)) {
    throw new SignerError("KEY_UNUSABLE", v.record.unusableReason);
  }
}

/**
 * An existing root is kept: with a certificate, a CA one; when it is to sign (its own
 * certificate, the leaf), a key pair that can and that a custodian has not disabled (a root
 * disabled as compromised certified new leaves: KEY_DISABLED, as Sign answers).
 */
function checkExistingRoot(v: VersionView | undefined, rootKeyId: string, signsLeaf: boolean): void {
  if (!v) return;
  const hasCertificate = v.record.chain.length > 0;
  if (hasCertificate && !v.record.certificate?.isCa) throw new SignerError("KEY_UNUSABLE", `key "${rootKeyId}" exists but its certificate is not a CA certificate`);
  if (hasCertificate && !signsLeaf) return;
  const disabled = disabledRefusal(v.record);
  if (disabled) throw disabled;
  if (v.problem) throw new SignerError("KEY_UNUSABLE", v.problem);
  if (!hasCertificate && !v.idHex) throw new SignerError("KEY_UNUSABLE", `key "${rootKeyId}" has no CKA_ID, so no certificate can be linked to it`);
  if (!publicKeyOf(v)) throw new SignerError("KEY_UNUSABLE", `key "${rootKeyId}" has no public key on the token`);
}

/**
 * The CKA_ID to store a certificate under: that of the version getKey() and publicKeySpki() name
 * (of a rotated key, the newest; not whichever private key with the label the token finds first).
 * A key pair that could not sign whatever its certificate (a CKA_ID another key carries too, a key
 * that may exist outside the HSM) gets none.
 */
async function certifiableId(keys: Pkcs11KeyStore, keyId: string): Promise<Buffer> {
  const v = selectVersion(await keys.view(keyId));
  if (v?.problem) throw new SignerError("KEY_UNUSABLE", v.problem);
  if (!v?.idHex) throw new SignerError("KEY_UNUSABLE", `key "${keyId}" has no CKA_ID, so no certificate can be linked to it`);
  return Buffer.from(v.idHex, "hex");
}

function asDigestSigner(keys: Pkcs11KeyStore, key: KeyRecord): DigestSigningKey {
  const spki = keys.publicKeySpki(key.keyId);
  if (!spki) throw new SignerError("KEY_UNUSABLE", `key "${key.keyId}" has no public key on the token`);
  return { spec: key.spec, spki, signDigest: (hash, digest) => keys.signDigest(key, hash, digest) };
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}
