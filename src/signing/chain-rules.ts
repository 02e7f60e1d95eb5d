/**
 * The certificate-chain rules notation enforces on a signature (notation-plugin-protocol.md §5.2,
 * §5.3) and the leaf-subject rules its trust policies need (§5.4), for judging a chain before a
 * custodian imports it. Every problem names the certificate and the rule, so it can be acted on.
 */
import "reflect-metadata";
import { X509Certificate as NodeX509 } from "node:crypto";
import * as x509 from "@peculiar/x509";
import { SignerError } from "../errors/index.js";
import { keySpecOfCertificate } from "./certificates.js";
import { GO_NAME_ATTRIBUTES, GO_NAME_EXTRA } from "./distinguished-name.js";

export interface ChainProblem {
  /** Index in the chain being judged (leaf = 0), or -1 for the chain as a whole. */
  index: number;
  /** The certificate's subject in one line ("C=US, ST=WA, O=Acme, CN=release"), "" for the chain as a whole. */
  subject: string;
  /** Short stable rule id, e.g. "leaf-key-usage-not-critical". */
  rule: string;
  /** A sentence a custodian can act on, naming the certificate and the rule. */
  message: string;
}

interface Cert {
  der: Buffer;
  node: NodeX509;
  x: x509.X509Certificate;
  /** DER of the subject and issuer Names, compared as Go compares RawSubject and RawIssuer. */
  subjectRaw: Buffer;
  issuerRaw: Buffer;
}

const KU = x509.KeyUsageFlags;
const FORBIDDEN_LEAF_KEY_USAGES: Record<string, number> = {
  keyEncipherment: KU.keyEncipherment,
  dataEncipherment: KU.dataEncipherment,
  keyAgreement: KU.keyAgreement,
  keyCertSign: KU.keyCertSign,
  cRLSign: KU.cRLSign,
  encipherOnly: KU.encipherOnly,
  decipherOnly: KU.decipherOnly,
};
const FORBIDDEN_LEAF_EKUS: Record<string, string> = {
  "1.3.6.1.5.5.7.3.1": "serverAuth",
  "1.3.6.1.5.5.7.3.2": "clientAuth",
  "1.3.6.1.5.5.7.3.4": "emailProtection",
  "1.3.6.1.5.5.7.3.8": "timeStamping",
  "1.3.6.1.5.5.7.3.9": "OCSPSigning",
};
const GOOD_SIGNATURE_HASHES = ["SHA-256", "SHA-384", "SHA-512"];
const CA_CURVES = ["prime256v1", "secp384r1", "secp521r1"];
const REQUIRED_LEAF_ATTRIBUTES = ["C", "ST", "O"];

const PEM_BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----([\s\S]*?)-----END \1-----/g;

/**
 * Splits inputs (each a Buffer holding one or more PEM certificates, or one DER certificate)
 * into DER certificates and drops exact duplicates. Throws INVALID_ARGUMENT naming the input
 * (and PEM block) that is not a certificate, or when there is no certificate at all.
 */
export function parseCertificateBundle(inputs: Buffer[]): Buffer[] {
  const out: Buffer[] = [];
  inputs.forEach((input, i) => {
    const where = `input ${i + 1} of ${inputs.length}`;
    const ders = input.includes("-----BEGIN") ? pemCertificates(input.toString("latin1"), where) : [checkedDer(input, `${where} (not PEM, so read as DER)`)];
    for (const der of ders) if (!out.some((d) => d.equals(der))) out.push(der);
  });
  if (out.length === 0) throw new SignerError("INVALID_ARGUMENT", "no certificate was given");
  return out;
}

function pemCertificates(text: string, where: string): Buffer[] {
  const blocks = [...text.matchAll(PEM_BLOCK)];
  if (blocks.length === 0) throw new SignerError("INVALID_ARGUMENT", `${where} has a PEM header but no complete PEM block`);
  return blocks.map(([, label, body], n) => {
    const what = `${where}, PEM block ${n + 1}`;
    if (label !== "CERTIFICATE") throw new SignerError("INVALID_ARGUMENT", `${what} is a ${label ?? ""}, not a CERTIFICATE`);
    return checkedDer(Buffer.from(body ?? "", "base64"), what);
  });
}

/**
 * The DER itself when it is exactly one X.509 certificate whose public key can be read,
 * otherwise INVALID_ARGUMENT. Node parses a certificate with a public key algorithm OpenSSL does
 * not know (an unknown OID) and throws only when the key is read, which every rule does.
 */
function checkedDer(der: Buffer, what: string): Buffer {
  let cert: NodeX509;
  try {
    cert = new NodeX509(der);
    if (!cert.raw.equals(der)) throw new Error("trailing bytes after the certificate");
    new x509.X509Certificate(der); // the rules read extensions with it, so it must parse too
  } catch (e) {
    throw new SignerError("INVALID_ARGUMENT", `${what} is not a valid X.509 certificate: ${(e as Error).message}`, { cause: e });
  }
  try {
    void cert.publicKey;
  } catch (e) {
    throw new SignerError("INVALID_ARGUMENT", `${what} has a public key that cannot be read (algorithm ${publicKeyAlgorithm(der)}): ${(e as Error).message}`, { cause: e });
  }
  return der;
}

/** A certificate's public key algorithm as its OID (or @peculiar/x509's name for it). */
function publicKeyAlgorithm(der: Buffer): string {
  try {
    return new x509.X509Certificate(der).publicKey.algorithm.name;
  } catch {
    return "unknown";
  }
}

function parseOrThrow(der: Buffer, what: string): Cert {
  try {
    return parse(der);
  } catch (e) {
    throw new SignerError("INVALID_ARGUMENT", `${what} is not a valid X.509 certificate`, { cause: e });
  }
}

function parse(der: Buffer): Cert {
  const x = new x509.X509Certificate(der);
  return {
    der,
    node: new NodeX509(der),
    x,
    subjectRaw: Buffer.from(x.subjectName.toArrayBuffer()),
    issuerRaw: Buffer.from(x.issuerName.toArrayBuffer()),
  };
}

/** §5.3 "issued": the parent's subject DN equals the child's issuer DN and the signature verifies. */
function issuedBy(child: Cert, parent: Cert): boolean {
  if (!child.issuerRaw.equals(parent.subjectRaw)) return false;
  try {
    return child.node.verify(parent.node.publicKey);
  } catch {
    return false;
  }
}

function isSelfSigned(c: Cert): boolean {
  return issuedBy(c, c);
}

/** "CN=release, O=Acme" when the subject has a CN, else the whole subject. */
function label(c: Cert): string {
  const part = (type: string): string[] => c.x.subjectName.getField(type).map((v) => `${type}=${v}`);
  if (part("CN").length > 0) return [...part("CN"), ...part("O")].join(", ");
  return c.x.subject || "empty subject";
}

function problem(index: number, c: Cert, rule: string, text: string): ChainProblem {
  return { index, subject: c.x.subject, rule, message: `certificate ${index} (${label(c)}): ${text}` };
}

function chainProblem(rule: string, message: string, c?: Cert): ChainProblem {
  return { index: -1, subject: c?.x.subject ?? "", rule, message };
}

/**
 * Orders certificates given in any order into leaf -> ... -> root (§5.2). The leaf is the
 * certificate holding `leafSpki` (DER SubjectPublicKeyInfo) when given, otherwise the single
 * certificate that issued none of the others. Throws INVALID_ARGUMENT for a certificate that
 * does not parse (use parseCertificateBundle first).
 */
export function orderChain(certs: Buffer[], leafSpki?: Buffer): { chain: Buffer[]; problems: ChainProblem[] } {
  const all: Cert[] = [];
  const duplicates: ChainProblem[] = [];
  certs.forEach((der, i) => {
    const earlier = all.find((c) => c.der.equals(der));
    if (earlier) duplicates.push(chainProblem("duplicate", `certificate (${label(earlier)}) was given more than once; remove the copies`, earlier));
    else all.push(parseOrThrow(der, `certificate ${i + 1} of ${certs.length}`));
  });
  const found = findLeaf(all, leafSpki);
  if ("problem" in found) return { chain: [], problems: [...duplicates, found.problem] };
  const { path, problems } = walkToRoot(found.leaf, all);
  for (const c of all.filter((c) => !path.includes(c))) {
    problems.push(chainProblem("unrelated-certificate", `certificate (${label(c)}) is not on the path from the leaf to its root; remove it`, c));
  }
  return { chain: path.map((c) => c.der), problems: [...duplicates, ...problems] };
}

function findLeaf(all: Cert[], leafSpki: Buffer | undefined): { leaf: Cert } | { problem: ChainProblem } {
  const leaves = leafSpki ? all.filter((c) => c.node.publicKey.export({ type: "spki", format: "der" }).equals(leafSpki)) : all.filter((c) => !all.some((other) => other !== c && issuedBy(other, c)));
  const [leaf, ...others] = leaves;
  if (leaf && others.length === 0) return { leaf };
  if (leaf) return { problem: chainProblem("leaf-ambiguous", `several certificates could be the leaf: ${leaves.map(label).join("; ")}; import one leaf with its issuers`) };
  if (leafSpki) return { problem: chainProblem("leaf-key-mismatch", "no certificate holds the public key of this key; the leaf certificate must be issued for this key") };
  return { problem: chainProblem("loop", "every certificate issued another one (a loop), so there is no leaf") };
}

/**
 * A chain none of whose certificates holds the key's public key: the would-be leaf (the
 * certificate that issued none of the others) named as the other rules name certificates.
 * `which` says whose key ('key "release" version 2'); `why` is added to the message.
 */
export function leafKeyMismatch(certs: Buffer[], which: string, why?: string): ChainProblem[] {
  const all = certs.map((der, i) => parseOrThrow(der, `certificate ${i + 1} of ${certs.length}`));
  const leaves = all.filter((c) => !all.some((other) => other !== c && issuedBy(other, c)));
  const text = (c: Cert): string => `its public key (${describeKey(c)}) is not the one of ${which}${why ? `: ${why}` : ""}; the leaf must be issued for this key (from hsm-signer certs csr)`;
  const [leaf, ...others] = leaves;
  if (leaf && others.length === 0) return [problem(0, leaf, "leaf-key-mismatch", text(leaf))];
  if (leaf) return leaves.map((c) => chainProblem("leaf-key-mismatch", `certificate (${label(c)}) ${text(c)}`, c));
  return [chainProblem("leaf-key-mismatch", `no certificate holds the public key of ${which}; the leaf must be issued for this key (from hsm-signer certs csr)`)];
}

function walkToRoot(leaf: Cert, all: Cert[]): { path: Cert[]; problems: ChainProblem[] } {
  const path = [leaf];
  const problems: ChainProblem[] = [];
  for (let cur = leaf; !isSelfSigned(cur);) {
    const i = path.length - 1;
    const parents = all.filter((p) => p !== cur && issuedBy(cur, p));
    const [parent, ...more] = parents;
    if (!parent) {
      problems.push(problem(i, cur, "root-missing", `its issuer "${cur.x.issuer}" is not among the certificates; include the issuers up to a self-signed root`));
      break;
    }
    if (more.length > 0) {
      problems.push(problem(i, cur, "several-parents", `${parents.length} certificates could have issued it (${parents.map(label).join("; ")}); keep one`));
      break;
    }
    if (path.includes(parent)) {
      problems.push(problem(i, cur, "loop", `its issuer (${label(parent)}) is already in the chain below it`));
      break;
    }
    path.push(parent);
    cur = parent;
  }
  return { path, problems };
}

/**
 * Every rule of §5.2/§5.3 on a chain in the given order (leaf first), at time `at`, plus the
 * §5.4 leaf subject rules and key sizes (CA: RSA >= 2048 or EC P-256/384/521; leaf: one of the
 * six Notation key specs). Returns all problems found; empty when notation would accept it.
 */
export function checkCodeSigningChain(chain: Buffer[], at: Date = new Date()): ChainProblem[] {
  if (chain.length === 0) return [chainProblem("empty-chain", "the chain is empty; give the leaf, its intermediates and the self-signed root")];
  const problems: ChainProblem[] = [];
  const certs: Cert[] = [];
  chain.forEach((der, i) => {
    try {
      certs.push(parse(der));
    } catch {
      problems.push({ index: i, subject: "", rule: "unparseable", message: `certificate ${i} is not a valid X.509 certificate` });
    }
  });
  if (problems.length > 0) return problems;
  problems.push(...orderProblems(certs));
  certs.forEach((c, i) => {
    problems.push(...generalProblems(c, i, at), ...structureProblems(certs, i));
    problems.push(...(i === 0 ? leafProblems(c) : caProblems(c, i)));
  });
  return problems;
}

/** A clear hint when the certificates form a valid path, only in another order. */
function orderProblems(certs: Cert[]): ChainProblem[] {
  const copies = certs.flatMap((c, i) => {
    const first = certs.findIndex((d) => d.der.equals(c.der));
    return first === i ? [] : [problem(i, c, "duplicate", `is a copy of certificate ${first}; remove the copy`)];
  });
  if (copies.length > 0) return copies;
  const { chain } = orderChain(certs.map((c) => c.der));
  const order = chain.map((der) => certs.findIndex((c) => c.der.equals(der)));
  if (order.length < certs.length || order.every((o, i) => o === i)) return [];
  return [
    chainProblem(
      "wrong-order",
      `the certificates are not in chain order: the chain must be ordered leaf first, root last, i.e. ${order.join(", ")} (${order.map((o) => label(certs[o] as Cert)).join(" -> ")})`,
    ),
  ];
}

function generalProblems(c: Cert, i: number, at: Date): ChainProblem[] {
  const out: ChainProblem[] = [];
  // Node keeps the INTEGER's sign ("-05"); @peculiar/x509 drops it, so it cannot tell.
  if (c.node.serialNumber.startsWith("-")) out.push(problem(i, c, "negative-serial", "the serial number is negative, which Go (and so notation) rejects; reissue it with a positive serial"));
  const hash = signatureHash(c);
  if (!hash) out.push(problem(i, c, "unsupported-signature-algorithm", "is signed with an algorithm notation does not support; use RSA, RSA-PSS or ECDSA with SHA-256/384/512"));
  else if (!GOOD_SIGNATURE_HASHES.includes(hash)) out.push(problem(i, c, "weak-signature-hash", `is signed with ${hash}, which notation rejects; reissue it signed with SHA-256, SHA-384 or SHA-512`));
  if (at < c.x.notBefore) out.push(problem(i, c, "not-yet-valid", `is not valid until ${c.x.notBefore.toISOString()} (checked at ${at.toISOString()})`));
  if (at > c.x.notAfter) out.push(problem(i, c, "expired", `expired at ${c.x.notAfter.toISOString()} (checked at ${at.toISOString()})`));
  return out;
}

function signatureHash(c: Cert): string | undefined {
  try {
    return c.x.signatureAlgorithm.hash.name.toUpperCase();
  } catch {
    return undefined;
  }
}

/** §5.2/§5.3 chain structure: each certificate issued by the next, only the last self-signed. */
function structureProblems(certs: Cert[], i: number): ChainProblem[] {
  const c = certs[i] as Cert;
  const parent = certs[i + 1];
  if (!parent) {
    if (isSelfSigned(c)) return [];
    if (!c.issuerRaw.equals(c.subjectRaw)) {
      return [problem(i, c, "root-missing", `is last but is not self-signed: its issuer "${c.x.issuer}" is missing; the chain must end with the self-signed root`)];
    }
    return [problem(i, c, "root-not-self-signed", "is last and names itself as issuer, but its signature does not verify under its own key")];
  }
  const out: ChainProblem[] = [];
  if (isSelfSigned(c)) out.push(problem(i, c, "self-signed-not-last", "is self-signed but is not last: the chain must be ordered leaf first, root last"));
  if (!issuedBy(c, parent))
    out.push(
      problem(
        i,
        c,
        "not-issued-by-next",
        `was not issued by certificate ${i + 1} (${label(parent)}): its issuer is "${c.x.issuer}"${c.issuerRaw.equals(parent.subjectRaw) ? " but the signature does not verify under that certificate's key" : ""}`,
      ),
    );
  return out;
}

/** §5.3 leaf rules and §5.4 subject rules. */
function leafProblems(c: Cert): ChainProblem[] {
  const out: ChainProblem[] = [];
  const bc = c.x.getExtension(x509.BasicConstraintsExtension);
  if (bc?.ca) out.push(problem(0, c, "leaf-is-ca", "basicConstraints has cA=true; a signing leaf must not be a CA"));
  out.push(...leafKeyUsageProblems(c));
  const eku = c.x.getExtension(x509.ExtendedKeyUsageExtension);
  const forbidden = (eku?.usages ?? []).map((u) => FORBIDDEN_LEAF_EKUS[String(u)]).filter((n) => n !== undefined);
  if (forbidden.length > 0)
    out.push(problem(0, c, "leaf-eku-forbidden", `extendedKeyUsage has ${forbidden.join(", ")}, which notation forbids on a signing leaf; use codeSigning only, or no extendedKeyUsage`));
  if (!keySpecOfCertificate(c.der)) out.push(problem(0, c, "unsupported-key", `has a ${describeKey(c)} key; notation signs only with RSA 2048/3072/4096 or EC P-256/P-384/P-521`));
  out.push(...subjectProblems(c));
  return out;
}

function leafKeyUsageProblems(c: Cert): ChainProblem[] {
  const ku = c.x.getExtension(x509.KeyUsagesExtension);
  if (!ku) return [problem(0, c, "leaf-key-usage-missing", "has no keyUsage; notation requires a critical keyUsage with digitalSignature")];
  const out: ChainProblem[] = [];
  if (!ku.critical) out.push(problem(0, c, "leaf-key-usage-not-critical", "keyUsage is not marked critical; notation requires a critical keyUsage with digitalSignature"));
  if (!(ku.usages & KU.digitalSignature)) out.push(problem(0, c, "leaf-key-usage-no-digital-signature", "keyUsage lacks digitalSignature, which notation requires"));
  const bad = Object.entries(FORBIDDEN_LEAF_KEY_USAGES)
    .filter(([, flag]) => ku.usages & flag)
    .map(([name]) => name);
  if (bad.length > 0) out.push(problem(0, c, "leaf-key-usage-forbidden", `keyUsage has ${bad.join(", ")}, which notation forbids on a signing leaf`));
  return out;
}

/** §5.4: C, ST and O present, no duplicate types, no multi-valued RDNs, only attributes Go names. */
function subjectProblems(c: Cert): ChainProblem[] {
  const rdns = new x509.Name(c.subjectRaw, GO_NAME_EXTRA).toJSON();
  const types = rdns.flatMap((rdn) => Object.entries(rdn).flatMap(([type, values]) => values.map(() => type)));
  const issues: string[] = [];
  const missing = REQUIRED_LEAF_ATTRIBUTES.filter((t) => !types.includes(t));
  if (missing.length > 0) issues.push(`has no ${missing.join(", ")}`);
  const dups = [...new Set(types.filter((t, n) => types.indexOf(t) !== n))];
  if (dups.length > 0) issues.push(`has ${dups.join(", ")} more than once`);
  if (rdns.some((rdn) => Object.values(rdn).flat().length > 1)) issues.push("has a multi-valued RDN (joined with +)");
  const odd = [...new Set(types.filter((t) => !GO_NAME_ATTRIBUTES.has(t)))].map((t) => (t === "E" ? "emailAddress" : t));
  if (odd.length > 0) issues.push(`has ${odd.join(", ")}, which notation cannot match in a trust policy`);
  return issues.map((text) => problem(0, c, "leaf-subject", `the subject ${text}; trust policies need C, ST and O, each attribute once, standard attributes only`));
}

/** §5.3 CA rules, and CA key sizes as good practice. */
function caProblems(c: Cert, i: number): ChainProblem[] {
  const out: ChainProblem[] = [];
  const bc = c.x.getExtension(x509.BasicConstraintsExtension);
  if (!bc) out.push(problem(i, c, "ca-basic-constraints-missing", "has no basicConstraints; a CA needs a critical basicConstraints with cA=true"));
  else {
    if (!bc.critical) out.push(problem(i, c, "ca-basic-constraints-not-critical", "basicConstraints is not marked critical, which the Notary Project spec requires of a CA"));
    if (!bc.ca) out.push(problem(i, c, "ca-not-ca", `basicConstraints has cA=false, yet it issues certificate ${i - 1}; a CA needs cA=true`));
    if (bc.pathLength !== undefined && bc.pathLength < i - 1) out.push(problem(i, c, "path-length", `pathLenConstraint ${bc.pathLength} allows fewer than the ${i - 1} CA certificate(s) below it`));
  }
  const ku = c.x.getExtension(x509.KeyUsagesExtension);
  if (!ku) out.push(problem(i, c, "ca-key-usage-missing", "has no keyUsage; a CA needs a critical keyUsage with keyCertSign"));
  else {
    if (!ku.critical) out.push(problem(i, c, "ca-key-usage-not-critical", "keyUsage is not marked critical; a CA needs a critical keyUsage with keyCertSign"));
    if (!(ku.usages & KU.keyCertSign)) out.push(problem(i, c, "ca-key-usage-no-cert-sign", "keyUsage lacks keyCertSign, which a CA needs"));
  }
  if (!isStrongCaKey(c)) out.push(problem(i, c, "weak-ca-key", `has a ${describeKey(c)} key; a CA needs RSA >= 2048 bits or EC P-256/P-384/P-521`));
  return out;
}

function isStrongCaKey(c: Cert): boolean {
  const key = c.node.publicKey;
  const d = key.asymmetricKeyDetails;
  if (key.asymmetricKeyType === "rsa") return (d?.modulusLength ?? 0) >= 2048;
  return key.asymmetricKeyType === "ec" && CA_CURVES.includes(d?.namedCurve ?? "");
}

function describeKey(c: Cert): string {
  const key = c.node.publicKey;
  const d = key.asymmetricKeyDetails;
  return [key.asymmetricKeyType?.toUpperCase() ?? "unknown", d?.modulusLength ?? d?.namedCurve].filter((p) => p !== undefined).join(" ");
}

/** One line per problem, for an error message. */
export function formatChainProblems(problems: ChainProblem[]): string {
  return problems.map((p) => `${p.message} [${p.rule}]`).join("\n");
}
