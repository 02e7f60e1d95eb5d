/**
 * HPACK (RFC 7541) for the plugin's HTTP/2 client (h2-session.ts): a complete decoder (static and
 * dynamic tables, Huffman strings, table size updates), since any HTTP/2 server or proxy may use
 * all of it, and an encoder that only writes literals, which every decoder must accept.
 */

export type HeaderList = [name: string, value: string][];

export class HpackError extends Error {
  constructor(message: string) {
    super(`HPACK: ${message}`);
    this.name = "HpackError";
  }
}

/** RFC 7541 Appendix A. Index 1 is the first entry. */
const STATIC_TABLE: readonly (readonly [string, string])[] = [
  [":authority", ""], [":method", "GET"], [":method", "POST"], [":path", "/"], [":path", "/index.html"],
  [":scheme", "http"], [":scheme", "https"], [":status", "200"], [":status", "204"], [":status", "206"],
  [":status", "304"], [":status", "400"], [":status", "404"], [":status", "500"], ["accept-charset", ""],
  ["accept-encoding", "gzip, deflate"], ["accept-language", ""], ["accept-ranges", ""], ["accept", ""],
  ["access-control-allow-origin", ""], ["age", ""], ["allow", ""], ["authorization", ""], ["cache-control", ""],
  ["content-disposition", ""], ["content-encoding", ""], ["content-language", ""], ["content-length", ""],
  ["content-location", ""], ["content-range", ""], ["content-type", ""], ["cookie", ""], ["date", ""], ["etag", ""],
  ["expect", ""], ["expires", ""], ["from", ""], ["host", ""], ["if-match", ""], ["if-modified-since", ""],
  ["if-none-match", ""], ["if-range", ""], ["if-unmodified-since", ""], ["last-modified", ""], ["link", ""],
  ["location", ""], ["max-forwards", ""], ["proxy-authenticate", ""], ["proxy-authorization", ""], ["range", ""],
  ["referer", ""], ["refresh", ""], ["retry-after", ""], ["server", ""], ["set-cookie", ""],
  ["strict-transport-security", ""], ["transfer-encoding", ""], ["user-agent", ""], ["vary", ""], ["via", ""],
  ["www-authenticate", ""],
];

/**
 * The bit length of each symbol's Huffman code (RFC 7541 Appendix B; 256 is EOS). The code is
 * canonical, so the codes themselves follow from the lengths (canonicalTable below); the unit test
 * checks the result against the RFC's examples and against what nghttp2 encodes.
 */
const HUFFMAN_LENGTHS = [
  13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 28,
  6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5, 5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10,
  13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6,
  15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6, 6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28,
  20, 22, 20, 20, 22, 22, 22, 23, 22, 23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24,
  22, 21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20, 22, 22, 22, 23, 22, 22, 23,
  26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19, 21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27,
  20, 24, 20, 21, 22, 21, 21, 23, 22, 22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
  30,
] as const;

const EOS = 256;

/**
 * Canonical decoding without a tree: for each code length, the first code of that length and where
 * its symbols start in the symbols sorted by (length, symbol).
 */
interface Canonical {
  /** first[len]: the first code of that length; count[len]: how many; offset[len]: index in `symbols`. */
  first: number[];
  count: number[];
  offset: number[];
  symbols: number[];
}

let canonical: Canonical | undefined;

function canonicalTable(): Canonical {
  if (canonical) return canonical;
  const buckets: number[][] = Array.from({ length: 31 }, () => []);
  HUFFMAN_LENGTHS.forEach((bits, sym) => buckets[bits]!.push(sym));
  const first: number[] = [];
  const count: number[] = [];
  const offset: number[] = [];
  const symbols: number[] = [];
  let code = 0;
  for (let len = 0; len <= 30; len++) {
    first[len] = code;
    count[len] = buckets[len]!.length;
    offset[len] = symbols.length;
    symbols.push(...buckets[len]!);
    code = (code + count[len]!) * 2;
  }
  canonical = { first, count, offset, symbols };
  return canonical;
}

/** Each symbol's code and length, as RFC 7541 Appendix B lists them (for the tests). */
export function huffmanCodes(): { code: number; bits: number }[] {
  const { first, count, offset, symbols } = canonicalTable();
  const out: { code: number; bits: number }[] = [];
  for (let bits = 0; bits < first.length; bits++) {
    for (let i = 0; i < count[bits]!; i++) out[symbols[offset[bits]! + i]!] = { code: first[bits]! + i, bits };
  }
  return out;
}

/** RFC 7541 §5.2: a Huffman string ends with at most 7 one-bits of EOS prefix, and never holds EOS. */
export function huffmanDecode(data: Uint8Array): Buffer {
  const { first, count, offset, symbols } = canonicalTable();
  const out: number[] = [];
  let code = 0;
  let len = 0;
  let pendingAllOnes = true;
  for (const byte of data) {
    for (let b = 7; b >= 0; b--) {
      const bit = (byte >> b) & 1;
      code = code * 2 + bit;
      len++;
      pendingAllOnes &&= bit === 1;
      const i = code - first[len]!;
      if (i < count[len]!) {
        const sym = symbols[offset[len]! + i]!;
        if (sym === EOS) throw new HpackError("EOS inside a Huffman string");
        out.push(sym);
        code = 0;
        len = 0;
        pendingAllOnes = true;
      } else if (len >= 30) {
        throw new HpackError("invalid Huffman code");
      }
    }
  }
  const pendingBits = len;
  if (pendingBits > 7 || !pendingAllOnes) throw new HpackError("invalid Huffman padding");
  return Buffer.from(out);
}

/** Stateful decoder of one connection's header blocks (they share the dynamic table). */
export class HpackDecoder {
  private readonly dynamic: [string, string][] = [];
  private size = 0;
  private maxSize: number;

  /** `limit`: the SETTINGS_HEADER_TABLE_SIZE this side announced (the default is 4096). */
  constructor(private readonly limit = 4096) {
    this.maxSize = limit;
  }

  decode(block: Uint8Array, maxListBytes = 256 * 1024): HeaderList {
    const out: HeaderList = [];
    let pos = 0;
    let listBytes = 0;
    const int = (prefixBits: number): number => {
      const mask = (1 << prefixBits) - 1;
      if (pos >= block.length) throw new HpackError("truncated integer");
      let v = block[pos++]! & mask;
      if (v < mask) return v;
      let m = 0;
      for (;;) {
        if (pos >= block.length) throw new HpackError("truncated integer");
        const b = block[pos++]!;
        v += (b & 0x7f) * 2 ** m;
        m += 7;
        // Also bounds the number of continuation bytes (zero ones add nothing): at most 5.
        if (v > 0xffffffff || m > 35) throw new HpackError("integer too large");
        if ((b & 0x80) === 0) return v;
      }
    };
    const str = (): string => {
      if (pos >= block.length) throw new HpackError("truncated string");
      const huffman = (block[pos]! & 0x80) !== 0;
      const len = int(7);
      if (pos + len > block.length) throw new HpackError("truncated string");
      const raw = block.subarray(pos, pos + len);
      pos += len;
      return (huffman ? huffmanDecode(raw) : Buffer.from(raw)).toString("latin1");
    };
    const entry = (index: number): readonly [string, string] => {
      if (index === 0) throw new HpackError("index 0");
      if (index <= STATIC_TABLE.length) return STATIC_TABLE[index - 1]!;
      const e = this.dynamic[index - STATIC_TABLE.length - 1];
      if (!e) throw new HpackError(`index ${index} is beyond the dynamic table`);
      return e;
    };
    let sawField = false;
    while (pos < block.length) {
      const b = block[pos]!;
      let name: string;
      let value: string;
      if (b & 0x80) {
        [name, value] = entry(int(7));
      } else if ((b & 0xc0) === 0x40) {
        const index = int(6);
        name = index === 0 ? str() : entry(index)[0];
        value = str();
        this.add(name, value);
      } else if ((b & 0xe0) === 0x20) {
        // A table size update is only allowed at the start of a block (§4.2).
        if (sawField) throw new HpackError("table size update after a header field");
        const size = int(5);
        if (size > this.limit) throw new HpackError(`table size ${size} above the announced ${this.limit}`);
        this.maxSize = size;
        this.evict(0);
        continue;
      } else {
        const index = int(4);
        name = index === 0 ? str() : entry(index)[0];
        value = str();
      }
      sawField = true;
      listBytes += name.length + value.length + 32;
      if (listBytes > maxListBytes) throw new HpackError(`header list larger than ${maxListBytes} bytes`);
      out.push([name, value]);
    }
    return out;
  }

  private add(name: string, value: string): void {
    const size = name.length + value.length + 32;
    this.evict(size);
    // An entry larger than the whole table empties it and is not added (§4.4).
    if (size > this.maxSize) return;
    this.dynamic.unshift([name, value]);
    this.size += size;
  }

  private evict(room: number): void {
    while (this.dynamic.length > 0 && this.size + room > this.maxSize) {
      const [n, v] = this.dynamic.pop()!;
      this.size -= n.length + v.length + 32;
    }
  }
}

function encodeInt(out: number[], value: number, prefixBits: number, flags: number): void {
  const max = (1 << prefixBits) - 1;
  if (value < max) {
    out.push(flags | value);
    return;
  }
  out.push(flags | max);
  let v = value - max;
  while (v >= 128) {
    out.push((v % 128) | 0x80);
    v = Math.floor(v / 128);
  }
  out.push(v);
}

const FIELD_NAME = /^:?[a-z0-9!#$%&'*+\-.^_`|~]+$/;
const FIELD_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;

/**
 * Literal fields with new names, never Huffman: no state, so the block is valid for any decoder.
 * `sensitive` names (credentials) are sent "never indexed" (§6.2.3), which tells proxies on the
 * way not to keep them in a compression table.
 */
export function encodeHeaders(headers: HeaderList, sensitive: ReadonlySet<string> = new Set()): Buffer {
  const out: number[] = [];
  for (const [name, value] of headers) {
    if (!FIELD_NAME.test(name)) throw new HpackError(`invalid header name "${name}"`);
    if (!FIELD_VALUE.test(value)) throw new HpackError(`invalid value for header "${name}"`);
    out.push(sensitive.has(name) ? 0x10 : 0x00);
    const n = Buffer.from(name, "latin1");
    encodeInt(out, n.length, 7, 0);
    for (const c of n) out.push(c);
    const v = Buffer.from(value, "latin1");
    encodeInt(out, v.length, 7, 0);
    for (const c of v) out.push(c);
  }
  return Buffer.from(out);
}
