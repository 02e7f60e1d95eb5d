import { X509Certificate } from "node:crypto";
import { toPem } from "../signing/pem.js";
import type { InventoryKey, KeyVersionInfo, SlotInfo } from "../client/index.js";

/** Expiry warning window the server applies when the request says 0 (key_admin.proto). */
export const DEFAULT_WARN_DAYS = 30;

/** Left-aligned columns two spaces apart; the header row first. Trailing blanks are trimmed. */
export function renderTable(header: string[], rows: string[][]): string {
  const all = [header, ...rows];
  const widths = header.map((_, i) => Math.max(...all.map((r) => (r[i] ?? "").length)));
  return all
    .map((r) =>
      r
        .map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i] ?? 0)))
        .join("  ")
        .trimEnd(),
    )
    .join("\n");
}

/** 1536 → "1.5 KiB"; -1 (the token does not say) → "unknown". */
export function formatBytes(n: number): string {
  if (n < 0) return "unknown";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${v} B` : `${v.toFixed(v < 10 ? 1 : 0)} ${units[u]}`;
}

function memory(free: number, total: number): string {
  if (free < 0) return "unknown";
  return total < 0 ? formatBytes(free) : `${formatBytes(free)} of ${formatBytes(total)}`;
}

export function formatSlots(slots: SlotInfo[]): string {
  if (slots.length === 0) return "no slots";
  const rows = slots.map((s) => {
    const t = s.tokenPresent ? s.token : null;
    if (!t) return [String(s.slotId), "(no token)", "-", "-", "-", "-", ""];
    return [
      String(s.slotId),
      t.label || "-",
      t.serialNumber || "-",
      [t.manufacturer, t.model].filter(Boolean).join(" / ") || "-",
      memory(t.freePublicMemory, t.totalPublicMemory),
      memory(t.freePrivateMemory, t.totalPrivateMemory),
      t.managed ? "yes" : "",
    ];
  });
  const lines = [renderTable(["SLOT", "TOKEN", "SERIAL", "MANUFACTURER / MODEL", "FREE PUBLIC", "FREE PRIVATE", "MANAGED"], rows)];
  for (const s of slots) {
    const t = s.tokenPresent ? s.token : null;
    lines.push("", `slot ${s.slotId}${t ? ` (${t.label || "unlabelled"})` : ""}: ${s.description || "-"}${s.manufacturer ? `, ${s.manufacturer}` : ""}`);
    if (!t) continue;
    lines.push(`  flags:      ${t.flags.join(" ") || "-"}`, `  mechanisms: ${t.mechanisms.join(" ") || "-"}`);
  }
  return lines.join("\n");
}

/** "2027-03-01 (365d)", "EXPIRES IN 12d (2026-12-05)", "EXPIRED 3d ago (2026-11-20)", or "-" without a certificate. */
export function formatExpiry(v: Pick<KeyVersionInfo, "notAfter" | "daysUntilExpiry" | "expiringSoon" | "expired">): string {
  if (!v.notAfter) return "-";
  const date = v.notAfter.slice(0, 10);
  if (v.expired || v.daysUntilExpiry < 0) return `EXPIRED ${Math.abs(v.daysUntilExpiry)}d ago (${date})`;
  if (v.expiringSoon) return `EXPIRES IN ${v.daysUntilExpiry}d (${date})`;
  return `${date} (${v.daysUntilExpiry}d)`;
}

function versionState(k: InventoryKey, v: KeyVersionInfo): string {
  // A disabled key disables every version, whatever the version's own state says.
  return k.state === "disabled" && v.state === "enabled" ? "enabled (key disabled)" : v.state;
}

export interface InventorySummary {
  keys: number;
  versions: number;
  expiringSoon: number;
  expired: number;
  problems: number;
}

export function summarizeInventory(keys: InventoryKey[]): InventorySummary {
  const versions = keys.flatMap((k) => k.versions);
  return {
    keys: keys.length,
    versions: versions.length,
    expiringSoon: versions.filter((v) => v.expiringSoon && !v.expired).length,
    expired: versions.filter((v) => v.expired).length,
    problems: versions.filter((v) => v.problem).length,
  };
}

/** The inventory table, then problems and disabled reasons, then a one-line summary. */
export function formatInventory(keys: InventoryKey[], warnDays: number = DEFAULT_WARN_DAYS): string {
  if (keys.length === 0) return "no keys";
  const rows: string[][] = [];
  const notes: string[] = [];
  for (const k of keys) {
    if (k.state === "disabled") notes.push(`${k.keyId}: key disabled${k.disabledReason ? `: ${k.disabledReason}` : ""}`);
    if (k.versions.length === 0) rows.push([k.keyId, "-", k.state, "", "-", "-", "-", "-", "-"]);
    for (const v of k.versions) {
      rows.push([k.keyId, String(v.version), versionState(k, v), v.current ? "*" : "", v.keySpec || "-", v.role || "-", v.certificateSubject || "-", v.certificateIssuer || "-", formatExpiry(v)]);
      if (v.problem) notes.push(`${k.keyId}@v${v.version}: ${v.problem}`);
      if (v.state === "disabled" && v.disabledReason) notes.push(`${k.keyId}@v${v.version}: disabled: ${v.disabledReason}`);
    }
    // A CA key never signs artifacts: that it cannot is no problem.
    const live = k.versions.filter((v) => v.state !== "destroyed");
    if (k.currentVersion === 0 && live.length > 0 && !live.every((v) => v.role === "ca" && !v.problem)) notes.push(`${k.keyId}: no version can sign`);
  }
  const out = [renderTable(["KEY", "VER", "STATE", "CUR", "SPEC", "ROLE", "SUBJECT", "ISSUER", "EXPIRES"], rows)];
  if (notes.length) out.push("", "problems:", ...notes.map((n) => `  ${n}`));
  const s = summarizeInventory(keys);
  const parts = [`${s.keys} key(s), ${s.versions} version(s)`];
  if (s.expiringSoon) parts.push(`${s.expiringSoon} expiring within ${warnDays} days`);
  if (s.expired) parts.push(`${s.expired} expired`);
  if (s.problems) parts.push(`${s.problems} with problems`);
  out.push("", parts.join("; "));
  return out.join("\n");
}

/** One line per certificate: position, subject, issuer, expiry; "(unparsable)" when Node cannot read it. */
export function describeChain(chain: Buffer[]): string[] {
  return chain.map((der, i) => {
    const role = i === 0 ? "leaf" : i === chain.length - 1 ? "root" : "intermediate";
    try {
      const c = new X509Certificate(der);
      const dn = (s: string): string => s.split("\n").join(", ");
      return `  ${i + 1}. ${role}: ${dn(c.subject)} (issuer ${dn(c.issuer)}; until ${new Date(c.validTo).toISOString().slice(0, 10)})`;
    } catch {
      return `  ${i + 1}. ${role}: (unparsable, ${der.length} bytes)`;
    }
  });
}

export function chainToPem(chain: Buffer[]): string {
  return chain.map((c) => toPem(c)).join("");
}

/** Fields whose bytes are certificates: shown as PEM in --json output; other bytes as base64. */
const CERTIFICATE_FIELDS = new Set(["certificateChain", "certificates"]);

/** A response as plain JSON: certificate bytes as PEM strings, other bytes as base64, an unset message as null. */
export function toJsonValue(value: unknown, key = ""): unknown {
  if (value === undefined) return null;
  if (Buffer.isBuffer(value)) return CERTIFICATE_FIELDS.has(key) ? toPem(value) : value.toString("base64");
  if (Array.isArray(value)) return value.map((v) => toJsonValue(v, key));
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, toJsonValue(v, k)]));
  }
  return value;
}

export function formatJson(value: unknown): string {
  return JSON.stringify(toJsonValue(value), null, 2);
}
