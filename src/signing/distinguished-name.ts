// Distinguished names as notation reads them in `x509.subject:` trusted identities
// (notation-plugin-protocol.md §5.4, §6.2): shared by the CSR check (custody-rules.ts) and
// the notation setup helper (admin/notation-setup.ts).

/**
 * Attribute names as @peculiar/x509 spells them, for the attributes Go's pkix.Name.String()
 * names (§5.4) that @peculiar/x509 does not know by name; any other renders as OID=#hex, which
 * notation rejects.
 */
export const GO_NAME_EXTRA = { SERIALNUMBER: "2.5.4.5", STREET: "2.5.4.9", POSTALCODE: "2.5.4.17" };
/** The attribute types notation can match in an `x509.subject:` trusted identity. */
export const GO_NAME_ATTRIBUTES = new Set(["C", "O", "OU", "CN", "L", "ST", ...Object.keys(GO_NAME_EXTRA)]);

export interface DnAttribute {
  type: string;
  value: string;
}

/** Splits an RFC 4514 DN into RDNs of attributes, honouring backslash escapes and quoted values. */
export function parseDn(dn: string): DnAttribute[][] {
  const rdns: DnAttribute[][] = [];
  let rdn: DnAttribute[] = [];
  let buf = "";
  let type: string | undefined;
  let quoted = false;
  const endAttribute = (): void => {
    if (type === undefined) throw new Error(`"${buf.trim()}" has no "="`);
    rdn.push({ type: type.trim(), value: buf.trim() });
    type = undefined;
    buf = "";
  };
  for (let i = 0; i < dn.length; i++) {
    const c = dn[i] as string;
    if (c === "\\") {
      const next = dn.slice(i + 1, i + 3);
      if (/^[0-9a-fA-F]{2}$/.test(next)) {
        buf += String.fromCharCode(parseInt(next, 16));
        i += 2;
      } else {
        buf += dn[i + 1] ?? "";
        i += 1;
      }
    } else if (c === '"') {
      quoted = !quoted;
    } else if (quoted) {
      buf += c;
    } else if (c === "=" && type === undefined) {
      type = buf;
      buf = "";
    } else if (c === "+") {
      endAttribute();
    } else if (c === "," || c === ";") {
      endAttribute();
      rdns.push(rdn);
      rdn = [];
    } else {
      buf += c;
    }
  }
  if (dn.trim() !== "") {
    endAttribute();
    rdns.push(rdn);
  }
  return rdns;
}

/**
 * Why notation would refuse this leaf subject in an `x509.subject:` identity (§5.4, §6.2), or
 * an empty list: C, ST (or S) and O present, no duplicate types, no multi-valued RDNs, no "=#".
 */
export function subjectIdentityProblems(subject: string): string[] {
  const problems: string[] = [];
  if (subject.includes("=#")) problems.push('it holds a non-standard attribute (Go prints it as "OID=#hex")');
  let rdns: DnAttribute[][];
  try {
    rdns = parseDn(subject);
  } catch (e) {
    return [...problems, `it is not a distinguished name: ${(e as Error).message}`];
  }
  if (rdns.some((r) => r.length > 1)) problems.push("it has a multi-valued RDN");
  const types = rdns.flat().map((a) => a.type.toUpperCase());
  const seen = new Set<string>();
  for (const t of types) {
    if (seen.has(t)) problems.push(`${t} appears more than once`);
    seen.add(t);
  }
  const missing = [["C"], ["ST", "S"], ["O"]].filter((alts) => !alts.some((a) => seen.has(a))).map((alts) => alts[0]);
  if (missing.length) problems.push(`it lacks ${missing.join(", ")} (notation needs C, ST and O)`);
  return problems;
}
