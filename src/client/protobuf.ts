/**
 * A minimal protobuf (proto3) codec for the few hsm_signer.v1 messages the plugin and CLI send.
 * It keeps protobufjs and proto-loader out of the plugin's start-up (see the bench); a unit test
 * checks it against proto/hsm_signer/v1/signer.proto with protobufjs.
 */
export class ProtoWriter {
  private readonly parts: Buffer[] = [];

  private varint(v: number | bigint): void {
    let n = BigInt(v);
    const bytes: number[] = [];
    do {
      let b = Number(n & 0x7fn);
      n >>= 7n;
      if (n > 0n) b |= 0x80;
      bytes.push(b);
    } while (n > 0n);
    this.parts.push(Buffer.from(bytes));
  }

  uint(field: number, v: number | bigint | undefined): this {
    if (v === undefined || v === 0 || v === 0n) return this;
    this.varint((field << 3) | 0);
    this.varint(v);
    return this;
  }

  bytes(field: number, v: Uint8Array | undefined): this {
    if (v === undefined) return this;
    this.varint((field << 3) | 2);
    this.varint(v.length);
    this.parts.push(Buffer.from(v.buffer, v.byteOffset, v.byteLength));
    return this;
  }

  string(field: number, v: string | undefined): this {
    if (!v) return this;
    return this.bytes(field, Buffer.from(v, "utf8"));
  }

  finish(): Buffer {
    return Buffer.concat(this.parts);
  }
}

export type FieldValue = bigint | Buffer;

/** Reads a message into field number → values (repeated fields keep every occurrence, in order). */
export function readFields(buf: Buffer): Map<number, FieldValue[]> {
  const out = new Map<number, FieldValue[]>();
  let pos = 0;
  const varint = (): bigint => {
    let result = 0n;
    let shift = 0n;
    for (;;) {
      if (pos >= buf.length) throw new Error("truncated protobuf varint");
      const b = buf[pos++] as number;
      result |= BigInt(b & 0x7f) << shift;
      if (!(b & 0x80)) return result;
      shift += 7n;
      if (shift > 63n) throw new Error("protobuf varint too long");
    }
  };
  while (pos < buf.length) {
    const key = varint();
    const field = Number(key >> 3n);
    const wire = Number(key & 7n);
    let value: FieldValue;
    if (wire === 0) value = varint();
    else if (wire === 2) {
      const len = Number(varint());
      if (pos + len > buf.length) throw new Error("truncated protobuf field");
      value = buf.subarray(pos, pos + len);
      pos += len;
    } else if (wire === 1 || wire === 5) {
      const len = wire === 1 ? 8 : 4;
      if (pos + len > buf.length) throw new Error("truncated protobuf field");
      value = buf.subarray(pos, pos + len);
      pos += len;
    } else throw new Error(`unsupported protobuf wire type ${wire}`);
    const list = out.get(field) ?? [];
    list.push(value);
    out.set(field, list);
  }
  return out;
}

export class ProtoMessage {
  private readonly f: Map<number, FieldValue[]>;
  constructor(buf: Buffer) {
    this.f = readFields(buf);
  }
  private last(n: number): FieldValue | undefined {
    const l = this.f.get(n);
    return l?.[l.length - 1];
  }
  string(n: number): string {
    const v = this.last(n);
    return Buffer.isBuffer(v) ? v.toString("utf8") : "";
  }
  bytes(n: number): Buffer {
    const v = this.last(n);
    return Buffer.isBuffer(v) ? Buffer.from(v) : Buffer.alloc(0);
  }
  repeatedBytes(n: number): Buffer[] {
    return (this.f.get(n) ?? []).filter(Buffer.isBuffer).map((b) => Buffer.from(b));
  }
  uint(n: number): number {
    const v = this.last(n);
    return typeof v === "bigint" ? Number(v) : 0;
  }
  message(n: number): ProtoMessage | undefined {
    const v = this.last(n);
    return Buffer.isBuffer(v) ? new ProtoMessage(v) : undefined;
  }
  messages(n: number): ProtoMessage[] {
    return (this.f.get(n) ?? []).filter(Buffer.isBuffer).map((b) => new ProtoMessage(b));
  }
}
