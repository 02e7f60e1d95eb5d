import { createECDH, generateKeyPairSync, randomBytes, type KeyObject } from "node:crypto";
import { SignerError } from "../../src/errors/index.js";
import { summarize } from "../../src/signing/certificates.js";
import { HASH_LENGTHS, keySpecInfo, type HashAlgorithm, type KeySpec } from "../../src/signing/key-spec.js";
import type { Authorization, Authorizer, Caller, KeyRecord, KeyStore, SignerMethod } from "../../src/signing/ports.js";
import { createLeafCertificate, createRootCertificate, type DigestSigningKey } from "../../src/signing/x509-builder.js";

/**
 * Test code only: an in-memory KeyStore whose keys are software keys it generated itself, so that
 * the signing core can be tested without SoftHSM. It keeps the KeyStore contract the PKCS#11 key
 * store keeps (test/integration/key-store-contract.test.ts runs one suite against both): raw
 * ECDSA r||s over a digest, a chain leaf first, KEY_NOT_FOUND for what it does not hold.
 */

const CURVES = {
  "P-256": { openssl: "prime256v1", bytes: 32, n: BigInt("0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551") },
  "P-384": { openssl: "secp384r1", bytes: 48, n: BigInt("0xffffffffffffffffffffffffffffffffffffffffffffffffc7634d81f4372ddf581a0db248b0a77aecec196accc52973") },
  "P-521": {
    openssl: "secp521r1",
    bytes: 66,
    n: BigInt("0x01fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffa51868783bf2f966b7fcc0148f709a5d03bb5c9b8899c47aebb6fb71e91386409"),
  },
} as const;

const toBig = (b: Buffer): bigint => BigInt(`0x${b.toString("hex") || "0"}`);
const toBuf = (n: bigint, bytes: number): Buffer => Buffer.from(n.toString(16).padStart(bytes * 2, "0"), "hex");
const mod = (a: bigint, n: bigint): bigint => ((a % n) + n) % n;

function modPow(base: bigint, exp: bigint, n: bigint): bigint {
  let r = 1n;
  let b = mod(base, n);
  for (let e = exp; e > 0n; e >>= 1n) {
    if (e & 1n) r = (r * b) % n;
    b = (b * b) % n;
  }
  return r;
}

/**
 * ECDSA over a digest the caller made (what CKM_ECDSA does in the HSM): Node's crypto signs only
 * data it hashes itself, so k·G comes from ECDH (public key of the private scalar k) and the rest
 * is FIPS 186-5 §6.4.1 arithmetic. The hash is never longer than the curve order here (Notary
 * pairs P-256/SHA-256, P-384/SHA-384, P-521/SHA-512), so no truncation of the digest is needed.
 */
function ecdsaSignDigest(curve: keyof typeof CURVES, d: bigint, digest: Buffer): Buffer {
  const { openssl, bytes, n } = CURVES[curve];
  const e = toBig(digest);
  for (;;) {
    const k = mod(toBig(randomBytes(bytes + 16)), n - 1n) + 1n;
    const ecdh = createECDH(openssl);
    ecdh.setPrivateKey(toBuf(k, bytes));
    const point = ecdh.getPublicKey(); // 04 || X || Y
    const r = mod(toBig(point.subarray(1, 1 + bytes)), n);
    if (r === 0n) continue;
    const s = mod(modPow(k, n - 2n, n) * (e + r * d), n);
    if (s === 0n) continue;
    return Buffer.concat([toBuf(r, bytes), toBuf(s, bytes)]);
  }
}

class SoftwareKey implements DigestSigningKey {
  readonly spki: Buffer;
  private readonly d: bigint;
  private readonly curve: keyof typeof CURVES;

  constructor(readonly spec: KeySpec) {
    const info = keySpecInfo(spec);
    if (info.kty !== "EC" || !info.curve) throw new Error(`the in-memory key store makes EC keys only, not ${spec}`);
    this.curve = info.curve;
    const { privateKey, publicKey } = generateKeyPairSync("ec", { namedCurve: CURVES[info.curve].openssl });
    this.spki = publicKey.export({ type: "spki", format: "der" });
    this.d = toBig(Buffer.from((privateKey as KeyObject).export({ format: "jwk" }).d as string, "base64url"));
  }

  signDigest(_hash: HashAlgorithm, digest: Buffer): Promise<Buffer> {
    return Promise.resolve(ecdsaSignDigest(this.curve, this.d, digest));
  }
}

export interface MemoryKeyOptions {
  /** A custodian disabled this version. */
  disabledReason?: string;
  /** No certificate: the version cannot sign artifacts (as a key pair without one on a token). */
  withoutCertificate?: boolean;
}

interface Version {
  record: KeyRecord;
  key: SoftwareKey;
}

/** What the store was asked to sign, in order. */
export interface SignCall {
  keyId: string;
  version: number;
  hash: HashAlgorithm;
  digest: Buffer;
}

export class MemoryKeyStore implements KeyStore {
  private readonly keys = new Map<string, Version[]>();
  readonly signed: SignCall[] = [];
  /** Calls of getKey and listKeys, so a test can show that a refused call never looked a key up. */
  lookups = 0;

  /** Adds a version (1, 2, ...) of a key with a root and a code-signing leaf made by software keys. */
  async add(keyId: string, spec: KeySpec, o: MemoryKeyOptions = {}): Promise<KeyRecord> {
    const key = new SoftwareKey(spec);
    const chain = o.withoutCertificate ? [] : await this.chainFor(keyId, key);
    const versions = this.keys.get(keyId) ?? [];
    const record: KeyRecord = {
      keyId,
      version: versions.length + 1,
      spec,
      info: keySpecInfo(spec),
      chain,
      certificate: chain[0] ? summarize(chain[0]) : undefined,
      unusableReason: chain.length === 0 ? `key "${keyId}" has no certificate` : undefined,
      disabledReason: o.disabledReason,
      current: false,
    };
    versions.push({ record, key });
    this.keys.set(keyId, versions);
    // As the PKCS#11 store derives it: the newest enabled, usable version is the current one.
    for (const v of versions) v.record.current = false;
    const current = [...versions].reverse().find((v) => !v.record.unusableReason && !v.record.disabledReason);
    if (current) current.record.current = true;
    return record;
  }

  /** A software root CA and a code-signing leaf for the key. */
  private async chainFor(keyId: string, key: SoftwareKey): Promise<Buffer[]> {
    const rootKey = new SoftwareKey("EC-384");
    const root = await createRootCertificate({ subject: `CN=${keyId} Root CA, O=hsm-signer test`, key: rootKey, validityDays: 30 });
    const leaf = await createLeafCertificate({ subject: `CN=${keyId}, O=hsm-signer test`, spki: key.spki, issuerCertificate: root, issuerKey: rootKey, validityDays: 10 });
    return [leaf, root];
  }

  getKey(keyId: string, version?: number): Promise<KeyRecord> {
    this.lookups++;
    const versions = this.keys.get(keyId);
    if (!versions) return Promise.reject(new SignerError("KEY_NOT_FOUND", `key "${keyId}" was not found`));
    const v = version ? versions.find((x) => x.record.version === version) : (versions.find((x) => x.record.current) ?? versions[versions.length - 1]);
    if (!v) return Promise.reject(new SignerError("KEY_NOT_FOUND", `key "${keyId}" has no version ${version}`));
    return Promise.resolve(v.record);
  }

  listKeys(): Promise<KeyRecord[]> {
    this.lookups++;
    const records = [...this.keys.values()].flatMap((vs) => (vs.find((x) => x.record.current) ?? vs[vs.length - 1])?.record ?? []);
    return Promise.resolve(records.sort((a, b) => a.keyId.localeCompare(b.keyId)));
  }

  async signDigest(key: KeyRecord, hash: HashAlgorithm, digest: Buffer, deadline?: number): Promise<Buffer> {
    const v = this.keys.get(key.keyId)?.find((x) => x.record.version === key.version);
    if (!v) throw new SignerError("KEY_NOT_FOUND", `key "${key.keyId}" version ${key.version} is not held`);
    if (deadline !== undefined && Date.now() >= deadline) throw new SignerError("DEADLINE_EXCEEDED", "the deadline passed before signing started");
    if (hash !== key.info.hash || digest.length !== HASH_LENGTHS[hash]) throw new SignerError("INTERNAL", `a ${key.spec} key signs ${key.info.hash} digests`);
    this.signed.push({ keyId: key.keyId, version: key.version, hash, digest: Buffer.from(digest) });
    return v.key.signDigest(hash, digest);
  }
}

/** An Authorizer that allows every call and every version (tests of what happens after the policy). */
export const allowEverything: Authorizer = {
  authorize: () => ({ decision: "allow", rule: "everything", allowOldVersions: true }),
  mayUseKey: () => true,
};

/**
 * A small Authorizer for tests of the core: a caller may use the keys listed for its id (deny by
 * default), with old versions only when `old` is set; `limited` callers are over their rate limit.
 */
export function tableAuthorizer(table: Record<string, { keys: string[]; old?: boolean; limited?: boolean }>): Authorizer & { asked: [string, SignerMethod, string | undefined][] } {
  const asked: [string, SignerMethod, string | undefined][] = [];
  return {
    asked,
    authorize(caller: Caller, method: SignerMethod, keyId: string | undefined): Authorization {
      asked.push([caller.id, method, keyId]);
      const row = table[caller.id];
      if (!row || (keyId !== undefined && !row.keys.includes(keyId))) {
        return { decision: "deny", allowOldVersions: false, refusal: new SignerError("PERMISSION_DENIED", `${caller.id} may not call ${method}`) };
      }
      const rule = `rule-${caller.id}`;
      if (row.limited) return { decision: "deny", rule, allowOldVersions: false, refusal: new SignerError("RATE_LIMITED", `${caller.id} is over its rate limit`, { retryAfterMs: 100 }) };
      return { decision: "allow", rule, allowOldVersions: row.old === true };
    },
    mayUseKey: (caller: Caller, keyId: string) => table[caller.id]?.keys.includes(keyId) === true,
  };
}
