/**
 * Recognises Notary Project signing inputs so that an audit record can name the artifact that was
 * signed. Two shapes reach a RAW signing plugin (notation-plugin-protocol.md §2-§3):
 * - JWS: the ASCII signing input BASE64URL(protected header) "." BASE64URL(payload);
 * - COSE: the CBOR Sig_structure ["Signature1", protected, external_aad, payload] (RFC 9052 §4.4).
 * The bytes come from the caller, so nothing here trusts them: anything unexpected is "other".
 */

/** The artifact a Notary payload names, plus what its protected header says about the signature. */
export interface NotaryArtifact {
  digest: string;
  mediaType: string;
  size: number;
  /** RFC 3339, as the header gives it (JWS) or from the CBOR epoch time (COSE). */
  signingTime?: string;
  /** JWS/JOSE name, e.g. PS256 or ES384. */
  signingAlgorithm?: string;
  expiry?: string;
}

export type NotaryPayloadKind = "notary-jws" | "notary-cose" | "other";

export interface ParsedNotaryPayload {
  kind: NotaryPayloadKind;
  artifact?: NotaryArtifact;
}

/** The content type of a Notary Project payload (the `cty` header, COSE label 3). */
export const NOTARY_PAYLOAD_CONTENT_TYPE = "application/vnd.cncf.notary.payload.v1+json";

const SIGNING_TIME = "io.cncf.notary.signingTime";
const EXPIRY = "io.cncf.notary.expiry";
const COSE_ALG = 1;
const COSE_CONTENT_TYPE = 3;
const CBOR_EPOCH_TIME_TAG = 1;
/** RFC 9053 §2.1 and RFC 8230 §2: the only algorithms Notary uses. */
const COSE_ALGORITHMS: ReadonlyMap<number, string> = new Map([
  [-37, "PS256"],
  [-38, "PS384"],
  [-39, "PS512"],
  [-7, "ES256"],
  [-35, "ES384"],
  [-36, "ES512"],
]);
/** OCI image-spec descriptor digest grammar: algorithm ":" encoded. */
// What the audit copies from a payload stays small whatever the caller sends: longer values are
// no Notary payload notation makes (an OCI media type has at most 255 characters, RFC 6838).
const MAX_DIGEST_LENGTH = 200;
const MAX_MEDIA_TYPE_LENGTH = 255;
const MAX_ALG_LENGTH = 32;
/**
 * A JWS header time as the Notary signature spec writes it: RFC 3339 (section 5.6), as notation's
 * Go encoder emits it (at most nanoseconds). Date.parse alone would take "Jan 1 2026 (" plus any
 * number of characters plus ")"; this grammar is at most 35 characters long.
 */
const RFC3339_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:Z|[+-]\d{2}:\d{2})$/i;
const OCI_DIGEST = /^[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$/;
const JWS_SIGNING_INPUT = /^([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)$/;
/** Deeper nesting than this is not a Notary header; the bound keeps hostile input off the stack. */
const MAX_CBOR_DEPTH = 16;
const UTF8 = new TextDecoder("utf-8", { fatal: true });

/** What the payload is and, for a Notary payload, the artifact it names. Never throws. */
export function parseNotaryPayload(payload: Buffer): ParsedNotaryPayload {
  try {
    // 0x84 = a CBOR array of 4; a JWS signing input is ASCII and starts with "ey" ('{"').
    const parsed = payload[0] === 0x84 ? parseCose(payload) : parseJws(payload);
    return parsed ?? { kind: "other" };
  } catch {
    return { kind: "other" };
  }
}

function parseJws(payload: Buffer): ParsedNotaryPayload | undefined {
  const m = JWS_SIGNING_INPUT.exec(payload.toString("latin1"));
  if (!m || !isBase64Url(m[1]!) || !isBase64Url(m[2]!)) return undefined;
  const header: unknown = JSON.parse(Buffer.from(m[1]!, "base64url").toString("utf8"));
  if (!isRecord(header) || header.cty !== NOTARY_PAYLOAD_CONTENT_TYPE) return undefined;
  const target = parseTargetArtifact(Buffer.from(m[2]!, "base64url"));
  if (!target) return undefined;
  const artifact: NotaryArtifact = { ...target };
  if (typeof header.alg === "string" && header.alg !== "" && header.alg.length <= MAX_ALG_LENGTH) artifact.signingAlgorithm = header.alg;
  const signingTime = jwsTime(header[SIGNING_TIME]);
  if (signingTime !== undefined) artifact.signingTime = signingTime;
  const expiry = jwsTime(header[EXPIRY]);
  if (expiry !== undefined) artifact.expiry = expiry;
  return { kind: "notary-jws", artifact };
}

/** An RFC 3339 header time, kept as the caller signed it (offset, fraction); anything else is left out. */
function jwsTime(v: unknown): string | undefined {
  if (typeof v !== "string" || !RFC3339_TIME.test(v) || Number.isNaN(Date.parse(v))) return undefined;
  return v;
}

function parseCose(payload: Buffer): ParsedNotaryPayload | undefined {
  const sig = decodeCbor(payload);
  if (!Array.isArray(sig) || sig.length !== 4) return undefined;
  const [context, protectedBytes, externalAad, content] = sig;
  if (context !== "Signature1" || !Buffer.isBuffer(protectedBytes) || !Buffer.isBuffer(externalAad) || !Buffer.isBuffer(content)) return undefined;
  const header = decodeCbor(protectedBytes);
  if (!(header instanceof Map) || header.get(COSE_CONTENT_TYPE) !== NOTARY_PAYLOAD_CONTENT_TYPE) return undefined;
  const target = parseTargetArtifact(content);
  if (!target) return undefined;
  const artifact: NotaryArtifact = { ...target };
  const alg = header.get(COSE_ALG);
  if (typeof alg === "number" && COSE_ALGORITHMS.has(alg)) artifact.signingAlgorithm = COSE_ALGORITHMS.get(alg)!;
  const signingTime = epochTime(header.get(SIGNING_TIME));
  if (signingTime !== undefined) artifact.signingTime = signingTime;
  const expiry = epochTime(header.get(EXPIRY));
  if (expiry !== undefined) artifact.expiry = expiry;
  return { kind: "notary-cose", artifact };
}

/** The Notary payload JSON: {"targetArtifact": an OCI descriptor}. */
function parseTargetArtifact(json: Buffer): Pick<NotaryArtifact, "digest" | "mediaType" | "size"> | undefined {
  const doc: unknown = JSON.parse(json.toString("utf8"));
  if (!isRecord(doc) || !isRecord(doc.targetArtifact)) return undefined;
  const { digest, mediaType, size } = doc.targetArtifact;
  if (typeof digest !== "string" || digest.length > MAX_DIGEST_LENGTH || !OCI_DIGEST.test(digest)) return undefined;
  if (typeof mediaType !== "string" || mediaType === "" || mediaType.length > MAX_MEDIA_TYPE_LENGTH) return undefined;
  if (typeof size !== "number" || !Number.isSafeInteger(size) || size < 0) return undefined;
  return { digest, mediaType, size };
}

/** CBOR tag 1 (RFC 8949 §3.4.2) as RFC 3339, without fractional seconds when there are none. */
function epochTime(v: CborValue | undefined): string | undefined {
  if (!(v instanceof CborTag) || v.tag !== CBOR_EPOCH_TIME_TAG || typeof v.value !== "number") return undefined;
  const d = new Date(v.value * 1000);
  if (Number.isNaN(d.getTime())) return undefined;
  return d.toISOString().replace(".000Z", "Z");
}

/** Buffer.from(s, "base64url") skips bad characters silently; this refuses what it would guess at. */
function isBase64Url(s: string): boolean {
  return s.length % 4 !== 1;
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

// --- a minimal CBOR decoder (RFC 8949), definite lengths only ---

export type CborValue = number | string | Buffer | boolean | null | undefined | CborValue[] | Map<number | string, CborValue> | CborTag;

export class CborTag {
  constructor(
    readonly tag: number,
    readonly value: CborValue,
  ) {}
}

/**
 * Decodes exactly one CBOR data item that fills the whole buffer. Throws on indefinite lengths,
 * reserved values, non-integer/text map keys, duplicate keys, integers beyond 2^53 and trailing
 * bytes: none of these appear in a Notary COSE header, so they mean "not a Notary payload".
 */
export function decodeCbor(bytes: Buffer): CborValue {
  const reader = new CborReader(bytes);
  const value = reader.item(0);
  if (!reader.atEnd) throw new Error("trailing bytes after the CBOR item");
  return value;
}

class CborReader {
  private pos = 0;

  constructor(private readonly buf: Buffer) {}

  get atEnd(): boolean {
    return this.pos === this.buf.length;
  }

  item(depth: number): CborValue {
    if (depth > MAX_CBOR_DEPTH) throw new Error("CBOR nested too deeply");
    const initial = this.byte();
    const major = initial >> 5;
    const info = initial & 0x1f;
    if (major === 7) return this.simple(info);
    const n = this.argument(info);
    switch (major) {
      case 0:
        return n;
      case 1:
        return -1 - n;
      case 2:
        return Buffer.from(this.take(n));
      case 3:
        return UTF8.decode(this.take(n));
      case 4:
        return this.array(n, depth);
      case 5:
        return this.map(n, depth);
      default: // 6: a tag
        return new CborTag(n, this.item(depth + 1));
    }
  }

  private array(n: number, depth: number): CborValue[] {
    this.checkCount(n);
    const out: CborValue[] = [];
    for (let i = 0; i < n; i++) out.push(this.item(depth + 1));
    return out;
  }

  private map(n: number, depth: number): Map<number | string, CborValue> {
    this.checkCount(n * 2);
    const out = new Map<number | string, CborValue>();
    for (let i = 0; i < n; i++) {
      const key = this.item(depth + 1);
      if (typeof key !== "number" && typeof key !== "string") throw new Error("CBOR map key is not an integer or text");
      if (out.has(key)) throw new Error("duplicate CBOR map key");
      out.set(key, this.item(depth + 1));
    }
    return out;
  }

  /** Major type 7: simple values and floats. */
  private simple(info: number): CborValue {
    switch (info) {
      case 20:
        return false;
      case 21:
        return true;
      case 22:
        return null;
      case 23:
        return undefined;
      case 25:
        return decodeHalf(this.take(2).readUInt16BE(0));
      case 26:
        return this.take(4).readFloatBE(0);
      case 27:
        return this.take(8).readDoubleBE(0);
      default:
        throw new Error(`unsupported CBOR simple value ${info}`);
    }
  }

  /** The argument of major types 0-6; 28-31 (reserved, indefinite) are refused. */
  private argument(info: number): number {
    if (info < 24) return info;
    switch (info) {
      case 24:
        return this.byte();
      case 25:
        return this.take(2).readUInt16BE(0);
      case 26:
        return this.take(4).readUInt32BE(0);
      case 27: {
        const n = this.take(8).readBigUInt64BE(0);
        if (n > BigInt(Number.MAX_SAFE_INTEGER)) throw new Error("CBOR integer too large");
        return Number(n);
      }
      default:
        throw new Error("indefinite-length or reserved CBOR item");
    }
  }

  /** Each item takes at least one byte: a count beyond what is left cannot be honest. */
  private checkCount(items: number): void {
    if (items > this.buf.length - this.pos) throw new Error("CBOR count beyond the end of the input");
  }

  private byte(): number {
    return this.take(1)[0]!;
  }

  private take(n: number): Buffer {
    if (n > this.buf.length - this.pos) throw new Error("truncated CBOR");
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }
}

/** IEEE 754 half precision (RFC 8949 Appendix D). */
function decodeHalf(h: number): number {
  const exp = (h >> 10) & 0x1f;
  const mant = h & 0x3ff;
  const sign = h & 0x8000 ? -1 : 1;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 31) return mant === 0 ? sign * Infinity : NaN;
  return sign * (mant + 1024) * 2 ** (exp - 25);
}
