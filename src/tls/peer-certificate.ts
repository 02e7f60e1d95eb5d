import { X509Certificate } from "node:crypto";
import { isIP } from "node:net";
import type { TLSSocket } from "node:tls";
import { caConstraints, outsideNameConstraints } from "./ca-constraints.js";

const SERVER_AUTH = "1.3.6.1.5.5.7.3.1";
const CLIENT_AUTH = "1.3.6.1.5.5.7.3.2";
const ANY_EKU = "2.5.29.37.0";
const MAX_DEPTH = 8;

/** Every certificate in a PEM bundle (or one DER certificate). */
export function parseCaBundle(bundle: Buffer): X509Certificate[] {
  const text = bundle.toString("latin1");
  const pems = text.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g);
  if (!pems) return [new X509Certificate(bundle)];
  return pems.map((p) => new X509Certificate(p));
}

/**
 * The CAs of a bundle whose issuer is not in it (a root is its own issuer): an intermediate CA
 * there alone is meant as a trust anchor, so that only its clients get in, not those of other
 * CAs under the same root.
 */
export function casWithoutIssuer(cas: X509Certificate[]): X509Certificate[] {
  return cas.filter((c) => !cas.some((o) => c.checkIssued(o)));
}

function validAt(c: X509Certificate, now: number): boolean {
  return Date.parse(c.validFrom) <= now && now <= Date.parse(c.validTo);
}

function issuedBy(child: X509Certificate, parent: X509Certificate): boolean {
  // checkIssued is OpenSSL's X509_check_issued: names, key identifiers and keyCertSign.
  return child.checkIssued(parent) && child.verify(parent.publicKey);
}

/**
 * Verifies a server's certificate chain against the CAs of ca_file: each certificate valid now,
 * each issued (name and signature) by the next, intermediates being CAs, ending at a CA from the
 * bundle (or the server certificate itself being in it), within each CA's path length and name
 * constraints; the server certificate names the host and, if it has an EKU, allows serverAuth.
 * Returns why it fails, or undefined.
 *
 * Why not OpenSSL's own verification: in Node 20 any `ca` option first loads Node's ~140
 * bundled roots (about 45 ms of OpenSSL 3 parsing, nodejs/node#56301), on every plugin start.
 * The TLS handshake still proves the server holds the certificate's private key.
 */
export function checkServerCertificate(leaf: X509Certificate, presented: X509Certificate[], anchors: X509Certificate[], host: string, now = Date.now()): string | undefined {
  const named = isIP(host) ? leaf.checkIP(host) : leaf.checkHost(host);
  if (validAt(leaf, now) && !named) return `the server certificate does not name ${host} (set server_name if the service has another name)`;
  return checkPeerChain(leaf, presented, anchors, "server", now, host);
}

/**
 * The chain checks shared by both ends: validity, EKU for the purpose, issuer name and
 * signature up to a CA among `anchors`, each CA's path length and, for `name` (the host name or
 * IP address checked), its DNS and IP name constraints, as OpenSSL applies them: a CA that may
 * issue only for its own domain, or only leaves, cannot vouch for anything else.
 */
export function checkPeerChain(leaf: X509Certificate, presented: X509Certificate[], anchors: X509Certificate[], purpose: "server" | "client", now = Date.now(), name?: string): string | undefined {
  if (!validAt(leaf, now)) return `the ${purpose} certificate "${leaf.subject.replace(/\n/g, ", ")}" is not valid now (${leaf.validFrom} to ${leaf.validTo})`;
  const eku = leaf.keyUsage;
  const wanted = purpose === "server" ? SERVER_AUTH : CLIENT_AUTH;
  if (eku && eku.length > 0 && !eku.includes(wanted) && !eku.includes(ANY_EKU)) return `the ${purpose} certificate is not for TLS ${purpose}s (no ${purpose}Auth extended key usage)`;
  let current = leaf;
  const path = [leaf];
  const used = new Set<string>([leaf.fingerprint256]);
  for (let depth = 0; depth < MAX_DEPTH; depth++) {
    if (anchors.some((a) => a.fingerprint256 === current.fingerprint256)) return pathConstraintsProblem(path, purpose, name);
    const cur = current;
    const anchor = anchors.find((a) => a.ca && validAt(a, now) && issuedBy(cur, a));
    if (anchor) return pathConstraintsProblem([...path, anchor], purpose, name);
    const next = presented.find((p) => !used.has(p.fingerprint256) && p.ca && validAt(p, now) && issuedBy(cur, p));
    if (!next) return `the ${purpose} certificate is not issued by a CA in ${purpose === "server" ? "ca_file" : "the client CA file"} (stopped at "${cur.issuer.replace(/\n/g, ", ")}")`;
    used.add(next.fingerprint256);
    path.push(next);
    current = next;
  }
  return `the ${purpose}'s certificate chain is too long`;
}

/** Why a verified path (leaf first, anchor last) breaks a CA's path length or name constraints, or undefined. */
function pathConstraintsProblem(path: X509Certificate[], purpose: "server" | "client", name: string | undefined): string | undefined {
  for (const [i, ca] of path.entries()) {
    if (i === 0) continue;
    const subject = `"${ca.subject.replace(/\n/g, ", ")}"`;
    let c: ReturnType<typeof caConstraints>;
    try {
      c = caConstraints(Buffer.from(ca.raw));
    } catch {
      return `the CA certificate ${subject} cannot be read`;
    }
    // The CA certificates between this one and the leaf.
    if (c.pathLength !== undefined && i - 1 > c.pathLength) return `the CA ${subject} allows a path length of ${c.pathLength} below it, and the ${purpose} certificate's chain has ${i - 1}`;
    if (name !== undefined && outsideNameConstraints(c, name)) return `${name} is outside the name constraints of ${subject}, which issued the ${purpose} certificate's chain`;
  }
  return undefined;
}

/**
 * The certificates a TLS peer presented, leaf first, from getPeerCertificate(true), which leaves
 * the socket as it was. Not getPeerX509Certificate(): in Node 20 it consumes the peer's chain, so
 * that a later getPeerCertificate(true) answers {} and a later getPeerX509Certificate()
 * undefined; called before this, the intermediates a server sends (every enterprise PKI's server
 * certificates come from one) were lost and the chain was refused.
 */
export function presentedChain(socket: TLSSocket): { leaf: X509Certificate | undefined; all: X509Certificate[] } {
  const all: X509Certificate[] = [];
  let c = socket.getPeerCertificate(true);
  const seen = new Set<string>();
  while (c && c.raw && !seen.has(c.fingerprint256)) {
    seen.add(c.fingerprint256);
    all.push(new X509Certificate(c.raw));
    c = c.issuerCertificate;
  }
  return { leaf: all[0], all };
}
