/**
 * An independent checker of the certificate-chain rules notation enforces on a RAW plugin's
 * output (the Notary Project plugin protocol, §5.2 and §5.3, plus the §5.4 subject
 * advice and the backdating advice). Written from the spec, with its own DER reader, so that it
 * shares no code (and no bugs) with src/. Node's X509Certificate is used only for signature
 * verification and public key details.
 *
 * checkCodeSigningChain(chain, at) returns one string per violation, each naming the certificate
 * index and the rule; an empty list means the chain conforms.
 */
import { X509Certificate } from "node:crypto";

// ---------------------------------------------------------------------------------------------
// A minimal, strict DER reader.

export interface Tlv {
  /** The identifier octet (class, constructed bit and tag number < 31). */
  tag: number;
  /** Offset of the identifier octet in `buf`. */
  start: number;
  /** Offset of the first content octet. */
  contentStart: number;
  /** Offset just after the last content octet. */
  end: number;
  buf: Buffer;
}

export function tlvContent(t: Tlv): Buffer {
  return t.buf.subarray(t.contentStart, t.end);
}

export function tlvRaw(t: Tlv): Buffer {
  return t.buf.subarray(t.start, t.end);
}

/** Reads one DER TLV at `offset`; throws on truncation, indefinite or non-minimal lengths. */
export function readTlv(buf: Buffer, offset = 0, limit = buf.length): Tlv {
  if (offset + 2 > limit) throw new Error(`DER truncated at offset ${offset}`);
  const tag = buf[offset] as number;
  if ((tag & 0x1f) === 0x1f) throw new Error(`DER high tag number form at offset ${offset}`);
  let p = offset + 1;
  const first = buf[p++] as number;
  let length: number;
  if (first < 0x80) {
    length = first;
  } else {
    const n = first & 0x7f;
    if (n === 0) throw new Error(`DER indefinite length at offset ${offset}`);
    if (n > 4) throw new Error(`DER length too large at offset ${offset}`);
    if (p + n > limit) throw new Error(`DER truncated length at offset ${offset}`);
    length = 0;
    for (let i = 0; i < n; i++) length = length * 256 + (buf[p + i] as number);
    if ((buf[p] as number) === 0 || length < 0x80) throw new Error(`DER non-minimal length at offset ${offset}`);
    p += n;
  }
  if (p + length > limit) throw new Error(`DER truncated content at offset ${offset}`);
  return { tag, start: offset, contentStart: p, end: p + length, buf };
}

/** The TLVs inside a constructed TLV. */
export function tlvChildren(t: Tlv): Tlv[] {
  const out: Tlv[] = [];
  let p = t.contentStart;
  while (p < t.end) {
    const c = readTlv(t.buf, p, t.end);
    out.push(c);
    p = c.end;
  }
  return out;
}

export function decodeOid(content: Buffer): string {
  if (content.length === 0) throw new Error("empty OID");
  const parts: number[] = [];
  let v = 0;
  for (const b of content) {
    v = v * 128 + (b & 0x7f);
    if (!(b & 0x80)) {
      parts.push(v);
      v = 0;
    }
  }
  const firstArc = parts[0] as number;
  const head = firstArc < 40 ? [0, firstArc] : firstArc < 80 ? [1, firstArc - 40] : [2, firstArc - 80];
  return [...head, ...parts.slice(1)].join(".");
}

function expectTag(t: Tlv | undefined, tag: number, what: string): Tlv {
  if (!t) throw new Error(`${what} is missing`);
  if (t.tag !== tag) throw new Error(`${what} has tag 0x${t.tag.toString(16)}, expected 0x${tag.toString(16)}`);
  return t;
}

function parseTime(t: Tlv): Date {
  const s = tlvContent(t).toString("latin1");
  const m = t.tag === 0x17 ? /^(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(s) : t.tag === 0x18 ? /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(?:\.\d+)?Z$/.exec(s) : null;
  if (!m) throw new Error(`bad time "${s}"`);
  let year = Number(m[1]);
  if (t.tag === 0x17) year += year < 50 ? 2000 : 1900;
  return new Date(Date.UTC(year, Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]), Number(m[6])));
}

// ---------------------------------------------------------------------------------------------
// Certificate structure.

export interface Extension {
  oid: string;
  critical: boolean;
  value: Buffer;
}

export interface NameAttribute {
  oid: string;
  /** Number of attributes in the RDN (SET) this one sits in; > 1 means a multi-valued RDN. */
  rdnSize: number;
}

export interface ParsedCertificate {
  der: Buffer;
  version: number;
  /** Content octets of the serialNumber INTEGER. */
  serial: Buffer;
  /** Raw AlgorithmIdentifier TLVs: inside the TBS and outside it. */
  tbsSignatureAlgorithm: Buffer;
  signatureAlgorithm: Buffer;
  signatureAlgorithmOid: string;
  signatureAlgorithmParams: Tlv | undefined;
  issuerRaw: Buffer;
  subjectRaw: Buffer;
  subjectAttributes: NameAttribute[];
  notBefore: Date;
  notAfter: Date;
  extensions: Extension[];
}

function parseName(t: Tlv): NameAttribute[] {
  const out: NameAttribute[] = [];
  for (const rdn of tlvChildren(expectTag(t, 0x30, "Name"))) {
    const atvs = tlvChildren(expectTag(rdn, 0x31, "RelativeDistinguishedName"));
    for (const atv of atvs) {
      const [type] = tlvChildren(expectTag(atv, 0x30, "AttributeTypeAndValue"));
      out.push({ oid: decodeOid(tlvContent(expectTag(type, 0x06, "attribute type"))), rdnSize: atvs.length });
    }
  }
  return out;
}

export function parseCertificateDer(der: Buffer): ParsedCertificate {
  const outer = expectTag(readTlv(der), 0x30, "Certificate");
  if (outer.end !== der.length) throw new Error("trailing bytes after the Certificate");
  const [tbs, sigAlg, sigValue] = tlvChildren(outer);
  expectTag(tbs, 0x30, "tbsCertificate");
  expectTag(sigAlg, 0x30, "signatureAlgorithm");
  expectTag(sigValue, 0x03, "signatureValue");
  const f = tlvChildren(tbs as Tlv);
  let i = 0;
  let version = 1;
  if (f[0]?.tag === 0xa0) {
    const [v] = tlvChildren(f[0]);
    const vc = tlvContent(expectTag(v, 0x02, "version"));
    version = (vc[vc.length - 1] as number) + 1;
    i++;
  }
  const serial = tlvContent(expectTag(f[i++], 0x02, "serialNumber"));
  const tbsSigAlg = expectTag(f[i++], 0x30, "signature");
  const issuer = expectTag(f[i++], 0x30, "issuer");
  const validity = tlvChildren(expectTag(f[i++], 0x30, "validity"));
  const subject = expectTag(f[i++], 0x30, "subject");
  expectTag(f[i++], 0x30, "subjectPublicKeyInfo");
  const extensions: Extension[] = [];
  for (; i < f.length; i++) {
    const t = f[i] as Tlv;
    if (t.tag !== 0xa3) continue; // issuerUniqueID / subjectUniqueID
    const [seq] = tlvChildren(t);
    for (const ext of tlvChildren(expectTag(seq, 0x30, "extensions"))) {
      const parts = tlvChildren(expectTag(ext, 0x30, "Extension"));
      const oid = decodeOid(tlvContent(expectTag(parts[0], 0x06, "extnID")));
      let critical = false;
      let valueTlv = parts[1];
      if (parts[1]?.tag === 0x01) {
        critical = (tlvContent(parts[1])[0] ?? 0) !== 0;
        valueTlv = parts[2];
      }
      extensions.push({ oid, critical, value: Buffer.from(tlvContent(expectTag(valueTlv, 0x04, "extnValue"))) });
    }
  }
  const algParts = tlvChildren(sigAlg as Tlv);
  return {
    der,
    version,
    serial: Buffer.from(serial),
    tbsSignatureAlgorithm: Buffer.from(tlvRaw(tbsSigAlg)),
    signatureAlgorithm: Buffer.from(tlvRaw(sigAlg as Tlv)),
    signatureAlgorithmOid: decodeOid(tlvContent(expectTag(algParts[0], 0x06, "signature algorithm OID"))),
    signatureAlgorithmParams: algParts[1],
    issuerRaw: Buffer.from(tlvRaw(issuer)),
    subjectRaw: Buffer.from(tlvRaw(subject)),
    subjectAttributes: parseName(subject),
    notBefore: parseTime(expectTag(validity[0], validity[0]?.tag === 0x18 ? 0x18 : 0x17, "notBefore")),
    notAfter: parseTime(expectTag(validity[1], validity[1]?.tag === 0x18 ? 0x18 : 0x17, "notAfter")),
    extensions,
  };
}

// ---------------------------------------------------------------------------------------------
// Extension decoding.

export const OID = {
  keyUsage: "2.5.29.15",
  basicConstraints: "2.5.29.19",
  extKeyUsage: "2.5.29.37",
  countryName: "2.5.4.6",
  stateOrProvinceName: "2.5.4.8",
  organizationName: "2.5.4.10",
  emailAddress: "1.2.840.113549.1.9.1",
  rsassaPss: "1.2.840.113549.1.1.10",
  mgf1: "1.2.840.113549.1.1.8",
} as const;

/** KeyUsage bit numbers (RFC 5280 §4.2.1.3). */
export const KEY_USAGE_BITS = ["digitalSignature", "contentCommitment", "keyEncipherment", "dataEncipherment", "keyAgreement", "keyCertSign", "cRLSign", "encipherOnly", "decipherOnly"] as const;
export type KeyUsageName = (typeof KEY_USAGE_BITS)[number];

const FORBIDDEN_LEAF_KEY_USAGES: KeyUsageName[] = ["keyEncipherment", "dataEncipherment", "keyAgreement", "keyCertSign", "cRLSign", "encipherOnly", "decipherOnly"];

const FORBIDDEN_LEAF_EKUS: Record<string, string> = {
  "1.3.6.1.5.5.7.3.1": "serverAuth",
  "1.3.6.1.5.5.7.3.2": "clientAuth",
  "1.3.6.1.5.5.7.3.4": "emailProtection",
  "1.3.6.1.5.5.7.3.8": "timeStamping",
  "1.3.6.1.5.5.7.3.9": "OCSPSigning",
};

/** Attributes Go's pkix.Name.String() names; any other renders as OID=#hex, which notation rejects. */
const STANDARD_NAME_ATTRIBUTES: Record<string, string> = {
  "2.5.4.6": "C",
  "2.5.4.10": "O",
  "2.5.4.11": "OU",
  "2.5.4.3": "CN",
  "2.5.4.5": "SERIALNUMBER",
  "2.5.4.7": "L",
  "2.5.4.8": "ST",
  "2.5.4.9": "STREET",
  "2.5.4.17": "POSTALCODE",
};

export function decodeKeyUsage(value: Buffer): Set<KeyUsageName> {
  const bits = tlvContent(expectTag(readTlv(value), 0x03, "KeyUsage BIT STRING"));
  const set = new Set<KeyUsageName>();
  KEY_USAGE_BITS.forEach((name, n) => {
    const byte = bits[1 + (n >> 3)];
    if (byte !== undefined && (byte >> (7 - (n & 7))) & 1) set.add(name);
  });
  return set;
}

export function decodeBasicConstraints(value: Buffer): { ca: boolean; pathLen: number | undefined } {
  const parts = tlvChildren(expectTag(readTlv(value), 0x30, "BasicConstraints"));
  let ca = false;
  let pathLen: number | undefined;
  for (const p of parts) {
    if (p.tag === 0x01) ca = (tlvContent(p)[0] ?? 0) !== 0;
    else if (p.tag === 0x02) pathLen = tlvContent(p).reduce((a, b) => a * 256 + b, 0);
  }
  return { ca, pathLen };
}

export function decodeExtKeyUsage(value: Buffer): string[] {
  return tlvChildren(expectTag(readTlv(value), 0x30, "ExtKeyUsage")).map((t) => decodeOid(tlvContent(expectTag(t, 0x06, "KeyPurposeId"))));
}

// ---------------------------------------------------------------------------------------------
// Signature algorithms (notation-plugin-protocol.md §5.3: Go's CheckSignatureFrom refuses SHA-1 and MD5).

const HASH_OIDS: Record<string, { name: string; length: number }> = {
  "2.16.840.1.101.3.4.2.1": { name: "SHA-256", length: 32 },
  "2.16.840.1.101.3.4.2.2": { name: "SHA-384", length: 48 },
  "2.16.840.1.101.3.4.2.3": { name: "SHA-512", length: 64 },
};

const GOOD_SIGNATURE_ALGORITHMS: Record<string, string> = {
  "1.2.840.113549.1.1.11": "sha256WithRSAEncryption",
  "1.2.840.113549.1.1.12": "sha384WithRSAEncryption",
  "1.2.840.113549.1.1.13": "sha512WithRSAEncryption",
  "1.2.840.10045.4.3.2": "ecdsa-with-SHA256",
  "1.2.840.10045.4.3.3": "ecdsa-with-SHA384",
  "1.2.840.10045.4.3.4": "ecdsa-with-SHA512",
};

const WEAK_SIGNATURE_ALGORITHMS: Record<string, string> = {
  "1.2.840.113549.1.1.2": "md2WithRSAEncryption (MD2)",
  "1.2.840.113549.1.1.4": "md5WithRSAEncryption (MD5)",
  "1.2.840.113549.1.1.5": "sha1WithRSAEncryption (SHA-1)",
  "1.2.840.10045.4.1": "ecdsa-with-SHA1 (SHA-1)",
  "1.2.840.10040.4.3": "dsa-with-sha1 (SHA-1)",
  "1.3.14.3.2.29": "sha1WithRSASignature (SHA-1)",
  "1.2.840.113549.1.1.14": "sha224WithRSAEncryption (SHA-224)",
  "1.2.840.10045.4.3.1": "ecdsa-with-SHA224 (SHA-224)",
};

/** Problems with a certificate's signature algorithm, as Go's x509 would see them. */
function signatureAlgorithmProblems(c: ParsedCertificate): string[] {
  const oid = c.signatureAlgorithmOid;
  if (GOOD_SIGNATURE_ALGORITHMS[oid]) return [];
  if (WEAK_SIGNATURE_ALGORITHMS[oid]) return [`is signed with ${WEAK_SIGNATURE_ALGORITHMS[oid]}; SHA-256 or stronger is required`];
  if (oid !== OID.rsassaPss) return [`is signed with an unsupported algorithm ${oid}; use RSA PKCS#1 v1.5, RSA-PSS or ECDSA with SHA-256/384/512`];
  // RSASSA-PSS-params: [0] hashAlgorithm DEFAULT sha1, [1] maskGenAlgorithm DEFAULT mgf1SHA1, [2] saltLength DEFAULT 20, [3] trailerField DEFAULT 1.
  const p = c.signatureAlgorithmParams;
  if (!p || p.tag !== 0x30) return ["is signed with RSASSA-PSS without parameters, which means SHA-1; SHA-256 or stronger is required"];
  let hashOid = "1.3.14.3.2.26";
  let mgfHashOid = "1.3.14.3.2.26";
  let mgfOid: string = OID.mgf1;
  let saltLength = 20;
  for (const f of tlvChildren(p)) {
    const [inner] = tlvChildren(f);
    if (!inner) continue;
    if (f.tag === 0xa0) hashOid = decodeOid(tlvContent(tlvChildren(inner)[0] as Tlv));
    else if (f.tag === 0xa1) {
      const [alg, params] = tlvChildren(inner);
      mgfOid = decodeOid(tlvContent(alg as Tlv));
      if (params) mgfHashOid = decodeOid(tlvContent(tlvChildren(params)[0] as Tlv));
    } else if (f.tag === 0xa2) saltLength = tlvContent(inner).reduce((a, b) => a * 256 + b, 0);
  }
  const hash = HASH_OIDS[hashOid];
  if (!hash) return [`is signed with RSASSA-PSS using hash ${hashOid === "1.3.14.3.2.26" ? "SHA-1" : hashOid}; SHA-256 or stronger is required`];
  const out: string[] = [];
  if (mgfOid !== OID.mgf1 || mgfHashOid !== hashOid) out.push(`is signed with RSASSA-PSS whose MGF is not MGF1 with ${hash.name}`);
  if (saltLength !== hash.length) out.push(`is signed with RSASSA-PSS with salt length ${saltLength}, not ${hash.length} (the ${hash.name} length Go requires)`);
  return out;
}

// ---------------------------------------------------------------------------------------------
// The chain rules.

export interface CheckOptions {
  /**
   * When the chain was issued (default: now). Every notBefore must be strictly before it
   * (certificates are backdated against verifier clock skew).
   */
  issuedAt?: Date;
}

function keyDescription(x: X509Certificate): { type: string; bits?: number; curve?: string } {
  const k = x.publicKey;
  const d = k.asymmetricKeyDetails ?? {};
  return { type: k.asymmetricKeyType ?? "unknown", bits: d.modulusLength, curve: d.namedCurve };
}

function verifiesUnder(child: X509Certificate, parent: X509Certificate): boolean {
  try {
    return child.verify(parent.publicKey);
  } catch {
    return false;
  }
}

/**
 * Checks a DER chain (leaf first, root last) against notation's code-signing chain rules at
 * time `at` (notation's signing time). Returns the violations; empty when the chain conforms.
 */
export function checkCodeSigningChain(chain: readonly Uint8Array[], at: Date, options: CheckOptions = {}): string[] {
  const issuedAt = options.issuedAt ?? new Date();
  const v: string[] = [];
  if (chain.length === 0) return ["chain: the certificate chain is empty (§5.2: at least the leaf and a self-signed root)"];
  const last = chain.length - 1;
  const role = (i: number): string => (i === 0 ? "leaf" : i === last ? "root" : "intermediate");
  const at_ = (i: number, rule: string, msg: string): void => {
    v.push(`cert[${i}] (${role(i)}): [${rule}] ${msg}`);
  };

  // Parse everything first; a certificate that does not parse gets only that one violation.
  const parsed: (ParsedCertificate | undefined)[] = [];
  const nodes: (X509Certificate | undefined)[] = [];
  chain.forEach((der, i) => {
    const buf = Buffer.from(der);
    try {
      parsed.push(parseCertificateDer(buf));
    } catch (e) {
      parsed.push(undefined);
      at_(i, "DER", `is not a well-formed DER X.509 certificate: ${(e as Error).message}`);
    }
    try {
      nodes.push(new X509Certificate(buf));
    } catch (e) {
      nodes.push(undefined);
      if (parsed[i]) at_(i, "DER", `cannot be parsed as an X.509 certificate: ${(e as Error).message}`);
    }
  });

  // §5.2: no duplicates.
  for (let i = 0; i < chain.length; i++) {
    for (let j = i + 1; j < chain.length; j++) {
      if (Buffer.from(chain[i] as Uint8Array).equals(Buffer.from(chain[j] as Uint8Array))) at_(j, "§5.2 no duplicates", `is a duplicate of cert[${i}]`);
    }
  }

  for (let i = 0; i < chain.length; i++) {
    const c = parsed[i];
    const x = nodes[i];
    if (!c || !x) continue;

    // General (§5.3 "General").
    if (c.version !== 3) at_(i, "§5.3 version", `is X.509 v${c.version}; v3 is required for the extensions notation evaluates`);
    if (c.serial.length === 0 || ((c.serial[0] as number) & 0x80) !== 0) at_(i, "§5.3 serial", "serial number is negative (Go rejects negative serials)");
    else if (c.serial.every((b) => b === 0)) at_(i, "§5.3 serial", "serial number is zero; it must be positive");
    if (c.serial.length > 20) at_(i, "§5.3 serial", `serial number is ${c.serial.length} bytes; at most 20 are allowed`);
    if (c.serial.length > 1 && c.serial[0] === 0 && ((c.serial[1] as number) & 0x80) === 0) at_(i, "§5.3 serial", "serial number INTEGER is not minimally encoded (DER)");
    if (!c.tbsSignatureAlgorithm.equals(c.signatureAlgorithm)) at_(i, "§5.3 signature algorithm", "the signature algorithm inside the TBS differs from the outer one");
    for (const p of signatureAlgorithmProblems(c)) at_(i, "§5.3 signature algorithm", p);
    const seen = new Set<string>();
    for (const e of c.extensions) {
      if (seen.has(e.oid)) at_(i, "§5.3 extensions", `has the extension ${e.oid} more than once`);
      seen.add(e.oid);
    }

    // Validity at signing time, inclusive.
    if (at.getTime() < c.notBefore.getTime()) at_(i, "§5.3 validity", `is not yet valid at ${at.toISOString()} (notBefore ${c.notBefore.toISOString()})`);
    if (at.getTime() > c.notAfter.getTime()) at_(i, "§5.3 validity", `has expired at ${at.toISOString()} (notAfter ${c.notAfter.toISOString()})`);
    if (c.notBefore.getTime() >= issuedAt.getTime())
      at_(i, "backdating", `notBefore ${c.notBefore.toISOString()} is not before the issuance time ${issuedAt.toISOString()}; backdate it against clock skew`);

    // Structure: issued by the next, root self-signed, nothing else self-signed.
    const selfIssued = c.subjectRaw.equals(c.issuerRaw);
    const selfSigned = selfIssued && verifiesUnder(x, x);
    if (i < last) {
      if (selfSigned) at_(i, "§5.3 chain order", `is self-signed but is not the last certificate`);
      const parent = parsed[i + 1];
      const px = nodes[i + 1];
      if (parent && px) {
        if (!c.issuerRaw.equals(parent.subjectRaw)) at_(i, "§5.3 chain order", `issuer DN bytes differ from the subject DN bytes of cert[${i + 1}]`);
        if (!verifiesUnder(x, px)) at_(i, "§5.3 chain order", `signature does not verify under the public key of cert[${i + 1}]`);
      }
    } else {
      if (!selfIssued) at_(i, "§5.2 root", "is the last certificate but is not self-issued (subject DN bytes differ from issuer DN bytes); the root must be included");
      if (!verifiesUnder(x, x)) at_(i, "§5.2 root", "is the last certificate but its signature does not verify under its own key");
    }

    const ext = (oid: string): Extension | undefined => c.extensions.find((e) => e.oid === oid);
    const ku = ext(OID.keyUsage);
    const bc = ext(OID.basicConstraints);
    const eku = ext(OID.extKeyUsage);
    let usages: Set<KeyUsageName> | undefined;
    let basic: { ca: boolean; pathLen: number | undefined } | undefined;
    try {
      usages = ku ? decodeKeyUsage(ku.value) : undefined;
    } catch (e) {
      at_(i, "§5.3 keyUsage", `keyUsage cannot be decoded: ${(e as Error).message}`);
    }
    try {
      basic = bc ? decodeBasicConstraints(bc.value) : undefined;
    } catch (e) {
      at_(i, "§5.3 basicConstraints", `basicConstraints cannot be decoded: ${(e as Error).message}`);
    }
    const key = keyDescription(x);

    if (i === 0) {
      // Leaf (code signing).
      if (basic?.ca) at_(i, "§5.3 leaf basicConstraints", "basicConstraints has cA=true; a signing leaf must not be a CA");
      if (!ku) at_(i, "§5.3 leaf keyUsage", "keyUsage extension is missing");
      else {
        if (!ku.critical) at_(i, "§5.3 leaf keyUsage", "keyUsage extension is not critical");
        if (usages && !usages.has("digitalSignature")) at_(i, "§5.3 leaf keyUsage", "keyUsage lacks digitalSignature");
        for (const bad of FORBIDDEN_LEAF_KEY_USAGES) if (usages?.has(bad)) at_(i, "§5.3 leaf keyUsage", `keyUsage has the forbidden ${bad}`);
      }
      if (eku) {
        try {
          for (const oid of decodeExtKeyUsage(eku.value)) {
            const name = FORBIDDEN_LEAF_EKUS[oid];
            if (name) at_(i, "§5.3 leaf extendedKeyUsage", `extendedKeyUsage has the forbidden ${name} (${oid})`);
          }
        } catch (e) {
          at_(i, "§5.3 leaf extendedKeyUsage", `extendedKeyUsage cannot be decoded: ${(e as Error).message}`);
        }
      }
      const okKey = (key.type === "rsa" && [2048, 3072, 4096].includes(key.bits ?? 0)) || (key.type === "ec" && ["prime256v1", "secp384r1", "secp521r1"].includes(key.curve ?? ""));
      if (!okKey) at_(i, "§5.3 leaf key", `public key ${key.type} ${key.bits ?? key.curve ?? ""} is not RSA 2048/3072/4096 or EC P-256/P-384/P-521`);

      // §5.4 subject advice.
      const attrs = c.subjectAttributes;
      for (const [oid, short] of [
        [OID.countryName, "C"],
        [OID.stateOrProvinceName, "ST"],
        [OID.organizationName, "O"],
      ] as const) {
        if (!attrs.some((a) => a.oid === oid)) at_(i, "§5.4 leaf subject", `subject has no ${short} attribute`);
      }
      const counts = new Map<string, number>();
      for (const a of attrs) counts.set(a.oid, (counts.get(a.oid) ?? 0) + 1);
      for (const [oid, n] of counts) if (n > 1) at_(i, "§5.4 leaf subject", `subject has ${n} ${STANDARD_NAME_ATTRIBUTES[oid] ?? oid} attributes; duplicates are not allowed`);
      if (attrs.some((a) => a.rdnSize > 1)) at_(i, "§5.4 leaf subject", "subject has a multi-valued RDN");
      for (const a of attrs) {
        if (!STANDARD_NAME_ATTRIBUTES[a.oid]) at_(i, "§5.4 leaf subject", `subject has the non-standard attribute ${a.oid === OID.emailAddress ? "emailAddress" : a.oid} (Go renders it as OID=#hex)`);
      }
    } else {
      // Intermediate or root (CA).
      if (!bc) at_(i, "§5.3 CA basicConstraints", "basicConstraints extension is missing");
      else {
        if (!bc.critical) at_(i, "§5.3 CA basicConstraints", "basicConstraints extension is not critical");
        if (basic && !basic.ca) at_(i, "§5.3 CA basicConstraints", "basicConstraints has cA=false");
        if (basic?.pathLen !== undefined && basic.pathLen < i - 1) at_(i, "§5.3 CA pathLen", `pathLenConstraint ${basic.pathLen} is less than the ${i - 1} CA certificate(s) below it`);
      }
      if (!ku) at_(i, "§5.3 CA keyUsage", "keyUsage extension is missing");
      else {
        if (!ku.critical) at_(i, "§5.3 CA keyUsage", "keyUsage extension is not critical");
        if (usages && !usages.has("keyCertSign")) at_(i, "§5.3 CA keyUsage", "keyUsage lacks keyCertSign");
      }
      const strongEnough = (key.type === "rsa" && (key.bits ?? 0) >= 2048) || (key.type === "ec" && ["prime256v1", "secp384r1", "secp521r1"].includes(key.curve ?? ""));
      if (!strongEnough) at_(i, "§5.3 CA key", `public key ${key.type} ${key.bits ?? key.curve ?? ""} is weaker than RSA 2048 / EC P-256`);
    }
  }
  return v;
}
