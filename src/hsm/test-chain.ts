import { SignerError } from "../errors/index.js";
import type { KeySpec } from "../signing/key-spec.js";
import { selectVersion } from "../signing/key-versions.js";
import type { KeyRecord } from "../signing/ports.js";
import { createLeafCertificate, createRootCertificate, type DigestSigningKey } from "../signing/x509-builder.js";
import { generateKeyPair, privateKeyExists, storeCertificate } from "./key-factory.js";
import type { Pkcs11KeyStore } from "./pkcs11-key-store.js";
import type { SessionPool } from "./session-pool.js";
import type { TestChainParams, TestChainResult } from "../signing/custody.js";

export type { TestChainParams, TestChainResult };

export const TEST_CHAIN_DEFAULTS = { rootKeySpec: "EC-384" as KeySpec, organization: "hsm-signer test", state: "WA", country: "US", validityDays: 365 };

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
 */
export async function createTestChain(pool: SessionPool, keys: Pkcs11KeyStore, p: TestChainParams): Promise<TestChainResult> {
  const rootKeyId = p.rootKeyId ?? `${p.keyId}-root-ca`;
  // Else the key became its own root: a key pair and a CA certificate under the key id, then a refusal.
  if (rootKeyId === p.keyId) throw new SignerError("INVALID_ARGUMENT", `the root key id must differ from the key id ("${p.keyId}"): the root is a CA key, which never signs artifacts`);
  const d = { ...TEST_CHAIN_DEFAULTS, ...stripUndefined(p) };
  const created = { rootKey: false, rootCertificate: false, key: false, leafCertificate: false };
  await pool.use(async (s) => {
    if (!privateKeyExists(s, rootKeyId)) {
      await generateKeyPair(s, rootKeyId, d.rootKeySpec);
      created.rootKey = true;
    }
    if (!privateKeyExists(s, p.keyId)) {
      await generateKeyPair(s, p.keyId, p.keySpec);
      created.key = true;
    }
  });
  await keys.refresh();
  let root = await keys.getKey(rootKeyId);
  const rootSigner = asDigestSigner(keys, root);
  if (root.chain.length === 0) {
    const rootId = await certifiableId(keys, rootKeyId);
    const der = await createRootCertificate({
      subject: `C=${rdn(d.country)}, ST=${rdn(d.state)}, O=${rdn(d.organization)}, CN=${rdn(p.keyId)} Root CA`,
      key: rootSigner,
      validityDays: d.validityDays * 2,
    });
    await pool.use((s) => storeCertificate(s, rootKeyId, rootId, der));
    created.rootCertificate = true;
    await keys.refresh();
    root = await keys.getKey(rootKeyId);
  }
  const rootDer = root.chain[root.chain.length - 1];
  if (!rootDer || !root.certificate?.isCa) throw new SignerError("KEY_UNUSABLE", `key "${rootKeyId}" exists but its certificate is not a CA certificate`);
  let key = await keys.getKey(p.keyId);
  if (key.spec !== p.keySpec) throw new SignerError("INVALID_ARGUMENT", `key "${p.keyId}" already exists as ${key.spec}, not ${p.keySpec}`);
  if (key.chain.length === 0) {
    const id = await certifiableId(keys, p.keyId);
    const spki = keys.publicKeySpki(p.keyId);
    if (!spki) throw new SignerError("KEY_UNUSABLE", `key "${p.keyId}" has no public key object on the token to certify`);
    const der = await createLeafCertificate({
      // Encoded C, ST, O, CN: the conventional order, so tools print it as notation users expect.
      subject: `C=${rdn(d.country)}, ST=${rdn(d.state)}, O=${rdn(d.organization)}, CN=${rdn(p.keyId)}`,
      spki,
      issuerCertificate: rootDer,
      issuerKey: rootSigner,
      validityDays: d.validityDays,
    });
    await pool.use((s) => storeCertificate(s, p.keyId, id, der));
    created.leafCertificate = true;
    await keys.refresh();
    key = await keys.getKey(p.keyId);
  }
  if (key.unusableReason) throw new SignerError("KEY_UNUSABLE", key.unusableReason);
  return { chain: key.chain, root: key.chain[key.chain.length - 1] as Buffer, created };
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
