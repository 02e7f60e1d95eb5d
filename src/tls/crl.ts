// Certificate revocation lists (RFC 5280 §5) as the TLS listeners load them: which CA issued each,
// whether that CA signed it, and until when it is current. OpenSSL does the revocation checks
// themselves in each handshake; this is what lets a bad CRL file be refused when it is loaded.
import { verify, type X509Certificate } from "node:crypto";
import { children, raw, time, tlv, type Tlv } from "./der.js";

const CRL_PEM = /-----BEGIN X509 CRL-----([\s\S]+?)-----END X509 CRL-----/g;

export interface Crl {
  /** The CRL as PEM, as node:tls takes it. */
  pem: Buffer;
  /** The issuer Name, DER (compared with a CA's subject). */
  issuer: Buffer;
  thisUpdate: Date;
  nextUpdate: Date | undefined;
  /** The to-be-signed part, the signature algorithm and the signature. */
  tbs: Buffer;
  algorithm: string;
  signature: Buffer;
  /** The serial numbers it revokes, as serialKey() writes them. */
  revoked: ReadonlySet<string>;
}

/** A serial number as one key: upper-case hex without leading zeros (X509Certificate.serialNumber's digits). */
export function serialKey(hex: string): string {
  return hex.toUpperCase().replace(/^0+(?=.)/, "");
}

/** The CRLs of a PEM file (one or more "X509 CRL" blocks) or of a DER file (one CRL). Throws naming the CRL that cannot be read. */
export function parseCrls(bytes: Buffer): Crl[] {
  const text = bytes.toString("latin1");
  const ders: Buffer[] = [...text.matchAll(CRL_PEM)].map((m) => Buffer.from(m[1] ?? "", "base64"));
  if (ders.length === 0 && bytes[0] === 0x30) ders.push(bytes);
  return ders.map((der, i) => {
    try {
      return parseCrl(der);
    } catch (e) {
      throw new Error(`CRL ${i + 1} cannot be read (${(e as Error).message})`, { cause: e });
    }
  });
}

function parseCrl(der: Buffer): Crl {
  const top = tlv(der, 0, der.length);
  if (top.tag !== 0x30 || top.end !== der.length) throw new Error("not a DER CertificateList");
  const [tbs, alg, sig] = children(der, top);
  if (!tbs || !alg || !sig || tbs.tag !== 0x30 || alg.tag !== 0x30 || sig.tag !== 0x03) throw new Error("not a DER CertificateList");
  const fields = children(der, tbs);
  // version INTEGER OPTIONAL, signature AlgorithmIdentifier, issuer Name, thisUpdate, nextUpdate OPTIONAL, ...
  if (fields[0]?.tag === 0x02) fields.shift();
  const [, issuer, thisUpdate, next] = fields;
  if (!issuer || issuer.tag !== 0x30 || !thisUpdate) throw new Error("not a DER TBSCertList");
  // revokedCertificates SEQUENCE OF SEQUENCE { userCertificate INTEGER, revocationDate, extensions } OPTIONAL: the only SEQUENCE after thisUpdate.
  const list = fields.slice(3).find((f) => f.tag === 0x30);
  const revoked = new Set<string>();
  for (const entry of list ? children(der, list) : []) {
    const serial = entry.tag === 0x30 ? children(der, entry)[0] : undefined;
    if (serial?.tag !== 0x02) throw new Error("not a DER revoked certificate entry");
    revoked.add(serialKey(der.toString("hex", serial.start, serial.end)));
  }
  const oid = children(der, alg)[0];
  if (oid?.tag !== 0x06) throw new Error("no signature algorithm");
  const bits = der.subarray(sig.start, sig.end);
  const lines = der.toString("base64").match(/.{1,64}/g) ?? [];
  return {
    pem: Buffer.from(`-----BEGIN X509 CRL-----\n${lines.join("\n")}\n-----END X509 CRL-----\n`, "latin1"),
    issuer: Buffer.from(raw(der, issuer)),
    thisUpdate: time(der, thisUpdate),
    nextUpdate: next && (next.tag === 0x17 || next.tag === 0x18) ? time(der, next) : undefined,
    tbs: Buffer.from(raw(der, tbs)),
    algorithm: der.toString("hex", oid.start, oid.end),
    signature: Buffer.from(bits.subarray(1)),
    revoked,
  };
}

/** Signature algorithm OIDs (content bytes, hex) and the digest node:crypto verifies them with (null: EdDSA). */
const ALGORITHMS: Record<string, string | null> = {
  "2a864886f70d010105": "sha1",
  "2a864886f70d01010e": "sha224",
  "2a864886f70d01010b": "sha256",
  "2a864886f70d01010c": "sha384",
  "2a864886f70d01010d": "sha512",
  "2a8648ce3d0401": "sha1",
  "2a8648ce3d040301": "sha224",
  "2a8648ce3d040302": "sha256",
  "2a8648ce3d040303": "sha384",
  "2a8648ce3d040304": "sha512",
  "2b6570": null,
  "2b6571": null,
};

/**
 * Whether `ca` signed the CRL: true, false, or undefined when the algorithm is not one this reads
 * (RSASSA-PSS): OpenSSL still checks it in each handshake.
 */
export function crlSignedBy(crl: Crl, ca: X509Certificate): boolean | undefined {
  const digest = ALGORITHMS[crl.algorithm];
  if (digest === undefined) return undefined;
  try {
    return verify(digest, crl.tbs, ca.publicKey, crl.signature);
  } catch {
    return false;
  }
}

/** A certificate's subject Name, DER (tbsCertificate: [0] version, serial, signature, issuer, validity, subject). */
export function subjectDer(cert: X509Certificate): Buffer {
  return nameDer(cert, 4);
}

/** A certificate's issuer Name, DER (compared with a CRL's issuer). */
export function issuerDer(cert: X509Certificate): Buffer {
  return nameDer(cert, 2);
}

function nameDer(cert: X509Certificate, field: 2 | 4): Buffer {
  const der = cert.raw;
  const tbs = children(der, tlv(der, 0, der.length))[0] as Tlv;
  const fields = children(der, tbs);
  if (fields[0]?.tag === 0xa0) fields.shift();
  const name = fields[field];
  if (!name) throw new Error("malformed certificate");
  return Buffer.from(raw(der, name));
}

/** Whether one of `crls` (of the certificate's issuer) lists the certificate as revoked. */
export function revokedBy(cert: X509Certificate, crls: readonly Crl[]): boolean {
  const issuer = issuerDer(cert);
  const serial = serialKey(cert.serialNumber);
  return crls.some((c) => c.issuer.equals(issuer) && c.revoked.has(serial));
}
