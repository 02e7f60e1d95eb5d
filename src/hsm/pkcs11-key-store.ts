import { createPublicKey } from "node:crypto";
import { performance } from "node:perf_hooks";
import { ObjectClass, KeyType, type Session } from "graphene-pk11";
import { SignerError } from "../errors/index.js";
import { keySpecFor, keySpecInfo, type HashAlgorithm, type KeySpec } from "../signing/key-spec.js";
import type { KeyRecord, KeyStore } from "../signing/ports.js";
import { buildChain, keySpecOfCertificate, spkiOfCertificate, summarize } from "../signing/certificates.js";
import { curveOfEcParams, digestSigningMechanism } from "./mechanisms.js";
import { translatePkcs11Error } from "./pkcs11-errors.js";
import type { SessionPool } from "./session-pool.js";
import type { SignThreads } from "./sign-threads.js";

export const DEFAULT_KEY_REFRESH_MS = 30_000;
/** A lookup of an unknown key rescans the token at most this often. */
const MISS_RESCAN_MS = 1_000;

export interface Pkcs11KeyStoreOptions {
  refreshIntervalMs?: number;
  /** Called after each HSM signature with its duration (metrics). */
  onSign?: (keySpec: string, seconds: number) => void;
}

interface Entry {
  record: KeyRecord;
  handle: Buffer;
  /** DER SubjectPublicKeyInfo from the token's public key object, when there is one. */
  spki: Buffer | undefined;
}

interface RawCert {
  id: Buffer;
  label: string;
  der: Buffer;
}

function spkiFromPublicObject(keyType: number, a: Record<string, unknown>): Buffer | undefined {
  try {
    if (keyType === KeyType.RSA && a.modulus instanceof Buffer && a.publicExponent instanceof Buffer) {
      return createPublicKey({ key: { kty: "RSA", n: a.modulus.toString("base64url"), e: a.publicExponent.toString("base64url") }, format: "jwk" }).export({ type: "spki", format: "der" });
    }
    if (keyType === KeyType.EC && a.paramsECDSA instanceof Buffer && a.pointEC instanceof Buffer) {
      const curve = curveOfEcParams(a.paramsECDSA);
      if (!curve) return undefined;
      const point = unwrapEcPoint(a.pointEC);
      const n = (point.length - 1) / 2;
      return createPublicKey({ key: { kty: "EC", crv: curve, x: point.subarray(1, 1 + n).toString("base64url"), y: point.subarray(1 + n).toString("base64url") }, format: "jwk" }).export({ type: "spki", format: "der" });
    }
  } catch {
    return undefined;
  }
  return undefined;
}

/** CKA_EC_POINT is a DER OCTET STRING around the uncompressed point on most tokens, raw on a few. */
function unwrapEcPoint(p: Buffer): Buffer {
  if (p[0] === 0x04 && p[1] === p.length - 2) return p.subarray(2);
  if (p[0] === 0x04 && p[1] === 0x81 && p[2] === p.length - 3) return p.subarray(3);
  return p; // raw 04||X||Y
}

/**
 * A KeyStore over one PKCS#11 token. Keys are private key objects found by CKA_LABEL (the key
 * id); each key's certificate is the CKO_CERTIFICATE with the same CKA_ID, and its chain is
 * completed from the other certificates on the token. Keys made by other tools work the same.
 */
export class Pkcs11KeyStore implements KeyStore {
  private entries = new Map<string, Entry>();
  private lastScan = 0;
  private scanning: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly pool: SessionPool,
    private readonly threads: SignThreads,
    private readonly options: Pkcs11KeyStoreOptions = {},
  ) {}

  async start(): Promise<void> {
    await this.refresh();
    const every = this.options.refreshIntervalMs ?? DEFAULT_KEY_REFRESH_MS;
    if (every > 0) {
      this.timer = setInterval(() => {
        this.refresh().catch(() => undefined); // a failed background rescan keeps the last view
      }, every);
      this.timer.unref();
    }
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }

  /** Rescans the token for keys and certificates; concurrent callers share one scan. */
  refresh(): Promise<void> {
    this.scanning ??= this.pool
      .use((s) => this.scan(s))
      .then((entries) => {
        this.entries = entries;
        this.lastScan = Date.now();
      })
      .finally(() => {
        this.scanning = undefined;
      });
    return this.scanning;
  }

  async getKey(keyId: string, version?: number): Promise<KeyRecord> {
    let e = this.entries.get(keyId);
    if (!e && Date.now() - this.lastScan > MISS_RESCAN_MS) {
      await this.refresh();
      e = this.entries.get(keyId);
    }
    if (!e) throw new SignerError("KEY_NOT_FOUND", `key "${keyId}" was not found on the token`);
    if (version !== undefined && version !== 0 && version !== e.record.version) {
      throw new SignerError("KEY_NOT_FOUND", `key "${keyId}" has no version ${version}`);
    }
    return e.record;
  }

  listKeys(): Promise<KeyRecord[]> {
    return Promise.resolve([...this.entries.values()].map((e) => e.record).sort((a, b) => a.keyId.localeCompare(b.keyId)));
  }

  /** The token's public key of a key, as DER SubjectPublicKeyInfo (from its public key object or certificate). */
  publicKeySpki(keyId: string): Buffer | undefined {
    const e = this.entries.get(keyId);
    return e?.spki ?? (e?.record.chain[0] ? spkiOfCertificate(e.record.chain[0]) : undefined);
  }

  async signDigest(key: KeyRecord, hash: HashAlgorithm, digest: Buffer, deadline?: number): Promise<Buffer> {
    const e = this.entries.get(key.keyId);
    if (!e || e.record.spec !== key.spec || e.record.version !== key.version) throw new SignerError("KEY_NOT_FOUND", `key "${key.keyId}" is no longer on the token`);
    const mech = digestSigningMechanism(key.info, hash, digest.length);
    const session = await this.pool.acquire(deadline);
    let failed = false;
    const started = performance.now();
    try {
      const signature = await this.threads.sign(session.handle, e.handle, mech, digest, key.info.signatureLength + 16);
      this.options.onSign?.(key.spec, (performance.now() - started) / 1000);
      return signature;
    } catch (err) {
      failed = true;
      throw translatePkcs11Error(err, `signing with key "${key.keyId}"`);
    } finally {
      // After a failure the session may hold an unfinished operation: replace it rather than reuse it.
      this.pool.release(session, failed);
    }
  }

  private scan(session: Session): Map<string, Entry> {
    const certs: RawCert[] = [];
    const certObjs = session.find({ class: ObjectClass.CERTIFICATE });
    for (let i = 0; i < certObjs.length; i++) {
      const a = certObjs.items(i).getAttribute({ id: null, label: null, value: null }) as { id?: Buffer; label?: string; value?: Buffer };
      if (a.value && a.value.length > 0) certs.push({ id: a.id ?? Buffer.alloc(0), label: a.label ?? "", der: a.value });
    }
    const publics = new Map<string, Buffer>();
    const pubObjs = session.find({ class: ObjectClass.PUBLIC_KEY });
    for (let i = 0; i < pubObjs.length; i++) {
      const o = pubObjs.items(i);
      const t = o.getAttribute({ id: null, keyType: null }) as { id?: Buffer; keyType?: number };
      if (!t.id || t.keyType === undefined) continue;
      const more = t.keyType === KeyType.RSA ? o.getAttribute({ modulus: null, publicExponent: null }) : t.keyType === KeyType.EC ? o.getAttribute({ paramsECDSA: null, pointEC: null }) : {};
      const spki = spkiFromPublicObject(t.keyType, more as Record<string, unknown>);
      if (spki) publics.set(t.id.toString("hex"), spki);
    }
    const byLabel = new Map<string, { handle: Buffer; id: Buffer; spec: KeySpec | undefined; detail: string }[]>();
    const privs = session.find({ class: ObjectClass.PRIVATE_KEY });
    for (let i = 0; i < privs.length; i++) {
      const o = privs.items(i);
      const a = o.getAttribute({ label: null, id: null, keyType: null }) as { label?: string; id?: Buffer; keyType?: number };
      if (!a.label) continue;
      let spec: KeySpec | undefined;
      let detail = "unsupported key type";
      if (a.keyType === KeyType.RSA) {
        const { modulus } = o.getAttribute({ modulus: null }) as { modulus?: Buffer };
        const bits = modulus ? bitLength(modulus) : 0;
        spec = keySpecFor("RSA", bits);
        detail = `RSA ${bits} bits`;
      } else if (a.keyType === KeyType.EC) {
        // graphene reads CKA_EC_PARAMS back under the name paramsECDSA.
        const { paramsECDSA } = o.getAttribute({ paramsECDSA: null }) as { paramsECDSA?: Buffer };
        const curve = paramsECDSA ? curveOfEcParams(paramsECDSA) : undefined;
        spec = curve ? keySpecFor("EC", curve) : undefined;
        detail = curve ? `EC ${curve}` : "EC on an unsupported curve";
      }
      const list = byLabel.get(a.label) ?? [];
      list.push({ handle: o.handle, id: a.id ?? Buffer.alloc(0), spec, detail });
      byLabel.set(a.label, list);
    }
    const entries = new Map<string, Entry>();
    for (const [label, list] of byLabel) {
      const k = list[0];
      if (!k || !k.spec) continue; // not a Notation key spec: not offered at all
      const spki = publics.get(k.id.toString("hex"));
      const record = this.recordFor(label, k.spec, k.id, spki, certs);
      if (list.length > 1) record.unusableReason = `${list.length} private keys on the token carry the label "${label}"; give each key a unique label`;
      entries.set(label, { record, handle: k.handle, spki });
    }
    return entries;
  }

  private recordFor(keyId: string, spec: KeySpec, id: Buffer, spki: Buffer | undefined, certs: RawCert[]): KeyRecord {
    const record: KeyRecord = { keyId, version: 1, spec, info: keySpecInfo(spec), chain: [], certificate: undefined, unusableReason: undefined };
    const own = id.length > 0 ? certs.filter((c) => c.id.equals(id)) : [];
    // Prefer a non-CA certificate with the latest notAfter when a key has several.
    const candidates = own
      .map((c) => ({ c, s: summarize(c.der) }))
      .filter(({ c }) => !spki || spkiOfCertificate(c.der).equals(spki))
      .sort((x, y) => Number(x.s.isCa) - Number(y.s.isCa) || y.s.notAfter.getTime() - x.s.notAfter.getTime());
    const leaf = candidates[0];
    if (!leaf) {
      record.unusableReason = own.length > 0
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
    const { chain, problem } = buildChain(leaf.c.der, certs.map((c) => c.der));
    record.chain = chain;
    if (leaf.s.isCa) record.unusableReason = `key "${keyId}" is a CA key; CA keys do not sign artifacts`;
    else if (problem) record.unusableReason = `the certificate chain of key "${keyId}" is incomplete: ${problem}`;
    return record;
  }
}

function bitLength(n: Buffer): number {
  let i = 0;
  while (i < n.length && n[i] === 0) i++;
  if (i === n.length) return 0;
  return (n.length - i - 1) * 8 + (32 - Math.clz32(n[i] as number));
}
