// A minimal DER reader for the few fields node:crypto does not show (CA constraints, CRLs).

export interface Tlv {
  tag: number;
  /** First byte of the element (its tag). */
  pos: number;
  /** First byte of the content. */
  start: number;
  /** One past its last byte. */
  end: number;
}

/** One DER element at `pos`, within `end`; throws on anything malformed. */
export function tlv(der: Buffer, pos: number, end: number): Tlv {
  const tag = der[pos];
  let len = der[pos + 1];
  if (tag === undefined || len === undefined || (tag & 0x1f) === 0x1f) throw new Error("malformed DER");
  let p = pos + 2;
  if (len & 0x80) {
    const n = len & 0x7f;
    if (n === 0 || n > 4) throw new Error("malformed DER");
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + (der[p++] ?? NaN);
  }
  if (!Number.isInteger(len) || p + len > end) throw new Error("malformed DER");
  return { tag, pos, start: p, end: p + len };
}

export function children(der: Buffer, parent: Tlv): Tlv[] {
  const out: Tlv[] = [];
  for (let p = parent.start; p < parent.end;) {
    const c = tlv(der, p, parent.end);
    out.push(c);
    p = c.end;
  }
  return out;
}

/** The whole element (tag, length and content). */
export function raw(der: Buffer, t: Tlv): Buffer {
  return der.subarray(t.pos, t.end);
}

/** A UTCTime (tag 0x17) or GeneralizedTime (0x18) in Z form, as RFC 5280 requires; throws on another form. */
export function time(der: Buffer, t: Tlv): Date {
  const s = der.toString("latin1", t.start, t.end);
  const m = t.tag === 0x17 ? /^(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(s) : t.tag === 0x18 ? /^(\d{4})(\d{2})(\d{2})(\d{2})(\d{2})(\d{2})Z$/.exec(s) : null;
  if (!m) throw new Error(`malformed time "${s}"`);
  const n = m.slice(1).map(Number) as [number, number, number, number, number, number];
  // RFC 5280 4.1.2.5.1: a UTCTime year below 50 is 20YY.
  const year = t.tag === 0x17 ? (n[0] < 50 ? 2000 + n[0] : 1900 + n[0]) : n[0];
  return new Date(Date.UTC(year, n[1] - 1, n[2], n[3], n[4], n[5]));
}
