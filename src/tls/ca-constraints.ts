// What a CA certificate allows below it that node:crypto's X509Certificate does not show: the
// path length of basicConstraints (RFC 5280 4.2.1.9) and the DNS and IP name constraints
// (4.2.1.10), read from the certificate's DER. OpenSSL applies both when it verifies a chain;
// peer-certificate.ts verifies chains itself and applies them here.
import { isIPv4, isIPv6 } from "node:net";
import { children, tlv, type Tlv } from "./der.js";

/** A permitted or excluded subtree this code evaluates; the other name forms do not constrain DNS names or IP addresses. */
type Subtree = { kind: "dns"; name: string } | { kind: "ip"; address: Buffer; mask: Buffer };

export interface CaConstraints {
  /** basicConstraints pathLenConstraint: how many CA certificates may follow this one below it. */
  pathLength?: number;
  permitted: Subtree[];
  excluded: Subtree[];
}

const BASIC_CONSTRAINTS = Buffer.from([0x55, 0x1d, 0x13]);
const NAME_CONSTRAINTS = Buffer.from([0x55, 0x1d, 0x1e]);
const DNS_NAME = 0x82;
const IP_ADDRESS = 0x87;

function subtrees(der: Buffer, list: Tlv): Subtree[] {
  const out: Subtree[] = [];
  for (const subtree of children(der, list)) {
    const base = children(der, subtree)[0];
    if (base?.tag === DNS_NAME) out.push({ kind: "dns", name: der.toString("latin1", base.start, base.end).toLowerCase() });
    else if (base?.tag === IP_ADDRESS && (base.end - base.start === 8 || base.end - base.start === 32)) {
      const half = (base.end - base.start) / 2;
      out.push({ kind: "ip", address: der.subarray(base.start, base.start + half), mask: der.subarray(base.start + half, base.end) });
    }
  }
  return out;
}

/** The path length and DNS/IP name constraints of a certificate; throws when its DER is malformed. */
export function caConstraints(der: Buffer): CaConstraints {
  const out: CaConstraints = { permitted: [], excluded: [] };
  const cert = tlv(der, 0, der.length);
  const tbs = children(der, cert)[0];
  if (!tbs) throw new Error("malformed DER");
  const extensions = children(der, tbs).find((t) => t.tag === 0xa3);
  const list = extensions ? children(der, extensions)[0] : undefined;
  for (const ext of list ? children(der, list) : []) {
    const parts = children(der, ext);
    const oid = parts[0];
    const value = parts[parts.length - 1];
    if (!oid || !value || value.tag !== 0x04) continue;
    const id = der.subarray(oid.start, oid.end);
    const inner = tlv(der, value.start, value.end);
    if (id.equals(BASIC_CONSTRAINTS)) {
      const n = children(der, inner).find((t) => t.tag === 0x02);
      if (n) out.pathLength = der.subarray(n.start, n.end).reduce((a, b) => a * 256 + b, 0);
    } else if (id.equals(NAME_CONSTRAINTS)) {
      for (const t of children(der, inner)) {
        if (t.tag === 0xa0) out.permitted.push(...subtrees(der, t));
        else if (t.tag === 0xa1) out.excluded.push(...subtrees(der, t));
      }
    }
  }
  return out;
}

function ipBytes(ip: string): Buffer | undefined {
  if (isIPv4(ip)) return Buffer.from(ip.split(".").map(Number));
  if (!isIPv6(ip)) return undefined;
  const v4 = /(\d+\.\d+\.\d+\.\d+)$/.exec(ip)?.[1];
  const text = v4 ? ip.slice(0, -v4.length) + "0:0" : ip;
  const [head = "", tail] = text.split("::");
  const groups = (s: string): string[] => (s === "" ? [] : s.split(":"));
  const h = groups(head);
  const t = tail === undefined ? [] : groups(tail);
  const all = [...h, ...Array<string>(8 - h.length - t.length).fill("0"), ...t];
  const out = Buffer.alloc(16);
  all.forEach((g, i) => out.writeUInt16BE(parseInt(g, 16), i * 2));
  if (v4) Buffer.from(v4.split(".").map(Number)).copy(out, 12);
  return out;
}

function within(name: string, ip: Buffer | undefined, s: Subtree): boolean {
  if (s.kind === "ip") return ip !== undefined && ip.length === s.address.length && ip.every((b, i) => (b & (s.mask[i] ?? 0)) === ((s.address[i] ?? 0) & (s.mask[i] ?? 0)));
  if (ip !== undefined) return false;
  const n = name.toLowerCase().replace(/\.$/, "");
  if (s.name === "") return true;
  // ".example.com": its subdomains only (as OpenSSL reads it); "example.com": it and its subdomains.
  if (s.name.startsWith(".")) return n.endsWith(s.name);
  return n === s.name || n.endsWith(`.${s.name}`);
}

/**
 * Whether `name` (the host name or IP address a client checked the certificate against) is
 * outside a CA's name constraints: excluded, or not within its permitted subtrees of that kind.
 */
export function outsideNameConstraints(c: CaConstraints, name: string): boolean {
  const ip = ipBytes(name);
  const kind = ip ? "ip" : "dns";
  const permitted = c.permitted.filter((s) => s.kind === kind);
  if (permitted.length > 0 && !permitted.some((s) => within(name, ip, s))) return true;
  return c.excluded.some((s) => s.kind === kind && within(name, ip, s));
}
