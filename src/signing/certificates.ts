import "reflect-metadata";
import { createHash, X509Certificate as NodeX509 } from "node:crypto";
import * as x509 from "@peculiar/x509";
import type { CertificateSummary, IssuersValidity } from "./ports.js";
import { keySpecFor, type KeySpec } from "./key-spec.js";

export function sha256Hex(der: Uint8Array): string {
  return createHash("sha256").update(der).digest("hex");
}

export function parseCertificate(der: Uint8Array): x509.X509Certificate {
  return new x509.X509Certificate(der);
}

export function isCaCertificate(cert: x509.X509Certificate): boolean {
  const bc = cert.getExtension(x509.BasicConstraintsExtension);
  return bc?.ca === true;
}

export function summarize(der: Buffer): CertificateSummary {
  const c = parseCertificate(der);
  return {
    subject: c.subject,
    issuer: c.issuer,
    notBefore: c.notBefore,
    notAfter: c.notAfter,
    sha256: sha256Hex(der),
    isCa: isCaCertificate(c),
  };
}

/** The Notary key spec of a certificate's public key, or undefined when Notation does not allow it. */
export function keySpecOfCertificate(der: Buffer): KeySpec | undefined {
  const key = new NodeX509(der).publicKey;
  const d = key.asymmetricKeyDetails;
  if (key.asymmetricKeyType === "rsa" && d?.modulusLength) return keySpecFor("RSA", d.modulusLength);
  if (key.asymmetricKeyType === "ec" && d?.namedCurve) {
    const curve = ({ prime256v1: "P-256", secp384r1: "P-384", secp521r1: "P-521" } as Record<string, string>)[d.namedCurve];
    return curve ? keySpecFor("EC", curve) : undefined;
  }
  return undefined;
}

/** DER SubjectPublicKeyInfo of a certificate. */
export function spkiOfCertificate(der: Buffer): Buffer {
  return new NodeX509(der).publicKey.export({ type: "spki", format: "der" });
}

export function isSelfSigned(cert: NodeX509): boolean {
  return cert.subject === cert.issuer && cert.verify(cert.publicKey);
}

/**
 * Orders a leaf's chain from a pool of certificates: leaf, then each issuer (matching subject
 * and a verifying signature), up to a self-signed root. Returns the chain and, when it stops
 * short of a root, the reason.
 *
 * A CA renewed with the same name and key leaves two issuers that both verify (the token keeps
 * every certificate ever imported): the one valid at `at` is taken, and of several the one valid
 * longest, so that an expired copy never reaches a verifier while a valid one is on the token
 * (notation refuses a signature whose chain holds a certificate outside its validity).
 */
export function buildChain(leafDer: Buffer, pool: Buffer[], at: Date = new Date()): { chain: Buffer[]; problem: string | undefined } {
  const parsed = pool.map((der) => ({ der, cert: new NodeX509(der) }));
  const chain: Buffer[] = [leafDer];
  const validAt = (c: NodeX509): number => Number(new Date(c.validFrom) <= at && at <= new Date(c.validTo));
  let current = new NodeX509(leafDer);
  for (let depth = 0; depth < 10; depth++) {
    if (isSelfSigned(current)) return { chain, problem: undefined };
    const cur = current;
    const issuer = parsed
      .filter((p) => p.cert.subject === cur.issuer && !chain.some((c) => c.equals(p.der)) && cur.verify(p.cert.publicKey))
      .sort((x, y) => validAt(y.cert) - validAt(x.cert) || Date.parse(y.cert.validTo) - Date.parse(x.cert.validTo))[0];
    if (!issuer) {
      return { chain, problem: `the issuer of "${oneLine(cur.subject)}" ("${oneLine(cur.issuer)}") is not on the token` };
    }
    chain.push(issuer.der);
    current = issuer.cert;
  }
  return { chain, problem: "the certificate chain is longer than 10 certificates" };
}

/**
 * When the issuers of a chain (every certificate but the leaf) are all valid: from the latest
 * notBefore to the earliest notAfter, each with the certificate that sets it. Undefined for a
 * chain of the leaf alone.
 */
export function issuersValidity(chain: Buffer[]): IssuersValidity | undefined {
  let v: IssuersValidity | undefined;
  for (const der of chain.slice(1)) {
    const c = new NodeX509(der);
    const from = new Date(c.validFrom);
    const until = new Date(c.validTo);
    const subject = oneLine(c.subject);
    if (!v) v = { from, fromSubject: subject, until, untilSubject: subject };
    if (from > v.from) Object.assign(v, { from, fromSubject: subject });
    if (until < v.until) Object.assign(v, { until, untilSubject: subject });
  }
  return v;
}

/**
 * The leaf subject as Go's pkix.Name.String() prints it (RDNs in reverse order, RFC 2253
 * escaping): what notation compares with `x509.subject:` trusted identities.
 */
export function goSubjectString(der: Buffer): string {
  const escape = (v: string): string =>
    v
      .replace(/([,+"\\<>;])/g, "\\$1")
      .replace(/^([ #])/, "\\$1")
      .replace(/ $/, "\\ ");
  const rdns = parseCertificate(der).subjectName.toJSON();
  return rdns
    .reverse()
    .map((rdn) =>
      Object.entries(rdn)
        .flatMap(([type, values]) => values.map((v) => `${type}=${escape(v)}`))
        .join("+"),
    )
    .join(",");
}

function oneLine(dn: string): string {
  return dn.split("\n").join(", ");
}
