import { createHash, createPublicKey, X509Certificate } from "node:crypto";
import { CertificateType, ObjectClass, KeyType, type ITemplate, type Session } from "graphene-pk11";
import { summarize } from "../signing/certificates.js";
import { keySpecFor, type KeySpec } from "../signing/key-spec.js";
import { exposureOf, type KeyExposureAttributes, type ScannedCertificate, type ScannedPrivateKey, type TokenScan } from "../signing/key-versions.js";
import type { CertificateSummary } from "../signing/ports.js";
import { readTokenState, type TokenState } from "./key-state.js";
import { curveOfEcParams } from "./mechanisms.js";

/*
 * The PKCS#11 side of a key store's scan: the object reads. What the objects mean (versions,
 * the current one, why one cannot sign) is decided by signing/key-versions.ts.
 */

/** Reads every key, certificate and state object the rules need, and the token's fingerprint. */
export function scanToken(session: Session): { scan: TokenScan; fingerprint: string } {
  const tokenState = readTokenState(session);
  const scan: TokenScan = {
    states: tokenState.keys,
    signed: tokenState.signed,
    certificates: readCertificates(session),
    publicKeys: readPublicKeys(session),
    privateKeys: readPrivateKeys(session),
  };
  return { scan, fingerprint: tokenFingerprint(session, tokenState) };
}

/** Changes when any key, certificate or state object is added, removed or replaced. */
export function tokenFingerprint(session: Session, state: TokenState): string {
  const h = createHash("sha256").update(state.fingerprint);
  for (const cls of [ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY, ObjectClass.CERTIFICATE]) {
    const found = session.find({ class: cls });
    for (let i = 0; i < found.length; i++) h.update(found.items(i).handle);
    h.update("|");
  }
  return h.digest("hex");
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
      return createPublicKey({ key: { kty: "EC", crv: curve, x: point.subarray(1, 1 + n).toString("base64url"), y: point.subarray(1 + n).toString("base64url") }, format: "jwk" }).export({
        type: "spki",
        format: "der",
      });
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
 * The X.509 certificate objects that parse. Another tool may store attribute or WTLS certificates,
 * or bytes that are no certificate at all; one such object must not stop every key (the whole
 * scan, the service's start, or each rescan after an HSM recovery), so it is left out.
 */
function readCertificates(session: Session): ScannedCertificate[] {
  const certs: ScannedCertificate[] = [];
  const found = session.find({ class: ObjectClass.CERTIFICATE });
  for (let i = 0; i < found.length; i++) {
    const a = found.items(i).getAttribute({ id: null, label: null, value: null, certType: null } as unknown as ITemplate) as { id?: Buffer; label?: string; value?: Buffer; certType?: number };
    if (!a.value || a.value.length === 0 || (a.certType !== undefined && a.certType !== CertificateType.X_509)) continue;
    let summary: CertificateSummary;
    try {
      // Its public key too: a certificate for an algorithm OpenSSL does not know parses, but
      // reading its key throws, and chain building and key matching read it.
      void new X509Certificate(a.value).publicKey;
      summary = summarize(a.value);
    } catch {
      continue;
    }
    certs.push({ id: a.id ?? Buffer.alloc(0), label: a.label ?? "", der: a.value, summary });
  }
  return certs;
}

/** DER SubjectPublicKeyInfo of each public key object, by CKA_ID hex. */
function readPublicKeys(session: Session): Map<string, Buffer> {
  const publics = new Map<string, Buffer>();
  const found = session.find({ class: ObjectClass.PUBLIC_KEY });
  for (let i = 0; i < found.length; i++) {
    const o = found.items(i);
    const t = o.getAttribute({ id: null, keyType: null }) as { id?: Buffer; keyType?: number };
    if (!t.id || t.keyType === undefined) continue;
    const more = t.keyType === KeyType.RSA ? o.getAttribute({ modulus: null, publicExponent: null }) : t.keyType === KeyType.EC ? o.getAttribute({ paramsECDSA: null, pointEC: null }) : {};
    const spki = spkiFromPublicObject(t.keyType, more as Record<string, unknown>);
    if (spki) publics.set(t.id.toString("hex"), spki);
  }
  return publics;
}

/** Private keys by CKA_LABEL, with their key spec (undefined when Notation does not allow the key). */
function readPrivateKeys(session: Session): Map<string, ScannedPrivateKey[]> {
  const byLabel = new Map<string, ScannedPrivateKey[]>();
  const found = session.find({ class: ObjectClass.PRIVATE_KEY });
  for (let i = 0; i < found.length; i++) {
    const o = found.items(i);
    const a = o.getAttribute({ label: null, id: null, keyType: null }) as { label?: string; id?: Buffer; keyType?: number };
    if (!a.label) continue;
    let spec: KeySpec | undefined;
    let spki: Buffer | undefined;
    if (a.keyType === KeyType.RSA) {
      const { modulus } = o.getAttribute({ modulus: null }) as { modulus?: Buffer };
      spec = keySpecFor("RSA", modulus ? bitLength(modulus) : 0);
      spki = modulus ? spkiFromPublicObject(KeyType.RSA, { modulus, publicExponent: publicExponentOf(o) }) : undefined;
    } else if (a.keyType === KeyType.EC) {
      // graphene reads CKA_EC_PARAMS back under the name paramsECDSA.
      const { paramsECDSA } = o.getAttribute({ paramsECDSA: null }) as { paramsECDSA?: Buffer };
      const curve = paramsECDSA ? curveOfEcParams(paramsECDSA) : undefined;
      spec = curve ? keySpecFor("EC", curve) : undefined;
    }
    const list = byLabel.get(a.label) ?? [];
    list.push({ handle: o.handle, id: a.id ?? Buffer.alloc(0), spec, exposed: exposure(o), spki, sign: signAllowed(o) });
    byLabel.set(a.label, list);
  }
  return byLabel;
}

type AttributeReader = { getAttribute(t: ITemplate): ITemplate };

/**
 * One attribute, read on its own: a module that cannot report it (CKR_ATTRIBUTE_TYPE_INVALID,
 * CKR_ATTRIBUTE_SENSITIVE) still reports the others, which a read of several together would hide.
 * undefined when it is not reported.
 */
function optionalAttribute(o: AttributeReader, name: string): unknown {
  try {
    return (o.getAttribute({ [name]: null } as unknown as ITemplate) as Record<string, unknown>)[name];
  } catch {
    return undefined;
  }
}

/** CKA_SIGN; undefined when the module does not report it. */
function signAllowed(o: AttributeReader): boolean | undefined {
  const v = optionalAttribute(o, "sign");
  return typeof v === "boolean" ? v : undefined;
}

/** An RSA private key's CKA_PUBLIC_EXPONENT; undefined when the module does not report it. */
function publicExponentOf(o: AttributeReader): Buffer | undefined {
  const v = optionalAttribute(o, "publicExponent");
  return Buffer.isBuffer(v) && v.length > 0 ? v : undefined;
}

const EXPOSURE_ATTRIBUTES = ["extractable", "neverExtractable", "sensitive", "alwaysSensitive"] as const;

/**
 * CKA_EXTRACTABLE, CKA_NEVER_EXTRACTABLE, CKA_SENSITIVE and CKA_ALWAYS_SENSITIVE, judged by
 * exposureOf. Each is read on its own: a module that cannot report one still reports the others
 * (read together, one refusal would hide them all); one it cannot report is trusted.
 */
function exposure(o: AttributeReader): string | undefined {
  const a: KeyExposureAttributes = {};
  for (const name of EXPOSURE_ATTRIBUTES) {
    const v = optionalAttribute(o, name);
    if (typeof v === "boolean") a[name] = v;
  }
  return exposureOf(a);
}

function bitLength(n: Buffer): number {
  let i = 0;
  while (i < n.length && n[i] === 0) i++;
  if (i === n.length) return 0;
  return (n.length - i - 1) * 8 + (32 - Math.clz32(n[i] as number));
}
