import type { PeerCertificate } from "node:tls";
import { mtlsIdentity, unauthenticated, type CallerIdentity, type MtlsIdentitySource } from "./caller-identity.js";

/**
 * Parses Node's `subjectaltname` ("DNS:a, URI:spiffe://x/y, IP Address:127.0.0.1"). Since
 * CVE-2021-44532 Node writes a value that contains a separator or quote as a JSON string, so a
 * crafted SAN cannot pass for two entries.
 */
export function parseSubjectAltName(s: string | undefined): { type: string; value: string }[] {
  const out: { type: string; value: string }[] = [];
  if (!s) return out;
  let i = 0;
  while (i < s.length) {
    const colon = s.indexOf(":", i);
    if (colon < 0) break;
    const type = s.slice(i, colon).trim();
    let j = colon + 1;
    let value: string;
    if (s[j] === '"') {
      let k = j + 1;
      while (k < s.length && s[k] !== '"') k += s[k] === "\\" ? 2 : 1;
      const quoted = s.slice(j, k + 1);
      try {
        value = JSON.parse(quoted) as string;
      } catch {
        value = quoted.slice(1, -1);
      }
      j = k + 1;
    } else {
      const end = s.indexOf(", ", j);
      value = s.slice(j, end < 0 ? s.length : end);
      j = end < 0 ? s.length : end;
    }
    out.push({ type, value });
    const next = s.indexOf(", ", j);
    i = next < 0 ? s.length : next + 2;
  }
  return out;
}

/** Node gives `{}` for "no certificate"; anything with a subject, SAN or DER is one. */
export function hasCertificate(c: PeerCertificate | undefined): c is PeerCertificate {
  return c !== undefined && c !== null && (c.raw !== undefined || c.subject !== undefined || c.subjectaltname !== undefined);
}

function firstString(v: unknown): string | undefined {
  if (typeof v === "string" && v !== "") return v;
  if (Array.isArray(v)) return firstString(v[0]);
  return undefined;
}

const SAN_TYPE: Record<Exclude<MtlsIdentitySource, "cn">, string> = { uri: "URI", dns: "DNS" };

/** The caller a TLS-verified client certificate names: the first field of `from` that it has. */
export function certificateIdentity(cert: PeerCertificate, from: readonly MtlsIdentitySource[]): CallerIdentity {
  const sans = parseSubjectAltName(cert.subjectaltname);
  for (const source of from) {
    const id = source === "cn" ? firstString(cert.subject?.CN) : sans.find((s) => s.type === SAN_TYPE[source] && s.value !== "")?.value;
    if (id !== undefined) return mtlsIdentity(source, id);
  }
  throw unauthenticated(`the client certificate has no ${from.map((s) => (s === "cn" ? "CN" : `${SAN_TYPE[s]} SAN`)).join(", ")} to identify the caller`);
}
