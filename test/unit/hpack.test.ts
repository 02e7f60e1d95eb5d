import assert from "node:assert/strict";
import { encodeHeaders, HpackDecoder, HpackError, huffmanCodes, huffmanDecode, type HeaderList } from "../../src/client/hpack.js";

/** Hex as RFC 7541 prints it: groups of 4 digits, spaces and newlines ignored. */
const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ""), "hex");

const isHpackError = (e: unknown): boolean => e instanceof HpackError;

/**
 * The dynamic table as the indexed representation (§6.1) sees it, first entry (index 62) first.
 * Indexed fields never change the table, so looking does not disturb it.
 */
function dynamicTable(d: HpackDecoder): HeaderList {
  const out: HeaderList = [];
  for (let index = 62; ; index++) {
    try {
      out.push(...d.decode(indexed(index)));
    } catch (e) {
      assert.ok(isHpackError(e), String(e));
      return out;
    }
  }
}

/** RFC 7541 §5.1 integer representation, written here independently of the code under test. */
function int(value: number, prefixBits: number, flags: number): number[] {
  const max = (1 << prefixBits) - 1;
  if (value < max) return [flags | value];
  const out = [flags | max];
  let v = value - max;
  while (v >= 128) {
    out.push((v % 128) | 0x80);
    v = Math.floor(v / 128);
  }
  out.push(v);
  return out;
}

const indexed = (index: number): Buffer => Buffer.from(int(index, 7, 0x80));
const raw = (s: string): number[] => [...int(s.length, 7, 0), ...Buffer.from(s, "latin1")];
/** Literal with incremental indexing, new name, plain strings (§6.2.1). */
const addLiteral = (name: string, value: string): number[] => [0x40, ...raw(name), ...raw(value)];

/** Bits ("0101...") to bytes, the last byte filled with `pad` bits (§5.2). */
function huffmanBytes(bits: string, pad = "1"): Buffer {
  const padded = bits + pad.repeat((8 - (bits.length % 8)) % 8);
  const bytes: number[] = [];
  for (let i = 0; i < padded.length; i += 8) bytes.push(parseInt(padded.slice(i, i + 8), 2));
  return Buffer.from(bytes);
}

/** A Huffman string literal: H bit, length, the padded code bits. */
const huffmanLiteral = (bits: string, pad = "1"): number[] => {
  const bytes = huffmanBytes(bits, pad);
  return [...int(bytes.length, 7, 0x80), ...bytes];
};

const bitsOf = (sym: number): string => {
  const c = huffmanCodes()[sym]!;
  return c.code.toString(2).padStart(c.bits, "0");
};

describe("HPACK (src/client/hpack.ts)", () => {
  describe("RFC 7541 Appendix C examples", () => {
    const request1: HeaderList = [
      [":method", "GET"],
      [":scheme", "http"],
      [":path", "/"],
      [":authority", "www.example.com"],
    ];
    const request2: HeaderList = [...request1, ["cache-control", "no-cache"]];
    const request3: HeaderList = [
      [":method", "GET"],
      [":scheme", "https"],
      [":path", "/index.html"],
      [":authority", "www.example.com"],
      ["custom-key", "custom-value"],
    ];

    const requestRun = (blocks: [string, string, string]): void => {
      const d = new HpackDecoder();
      assert.deepEqual(d.decode(hex(blocks[0])), request1);
      assert.deepEqual(dynamicTable(d), [[":authority", "www.example.com"]]);
      assert.deepEqual(d.decode(hex(blocks[1])), request2);
      assert.deepEqual(dynamicTable(d), [
        ["cache-control", "no-cache"],
        [":authority", "www.example.com"],
      ]);
      assert.deepEqual(d.decode(hex(blocks[2])), request3);
      assert.deepEqual(dynamicTable(d), [
        ["custom-key", "custom-value"],
        ["cache-control", "no-cache"],
        [":authority", "www.example.com"],
      ]);
    };

    it("C.2.1-C.2.4: the four field representations", () => {
      const d = new HpackDecoder();
      assert.deepEqual(d.decode(hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572")), [["custom-key", "custom-header"]]);
      assert.deepEqual(dynamicTable(d), [["custom-key", "custom-header"]]);
      const d2 = new HpackDecoder();
      assert.deepEqual(d2.decode(hex("040c 2f73 616d 706c 652f 7061 7468")), [[":path", "/sample/path"]]);
      assert.deepEqual(d2.decode(hex("1008 7061 7373 776f 7264 0673 6563 7265 74")), [["password", "secret"]]);
      assert.deepEqual(d2.decode(hex("82")), [[":method", "GET"]]);
      assert.deepEqual(dynamicTable(d2), [], "neither 'without indexing' nor 'never indexed' adds to the table");
    });

    it("C.3: requests without Huffman coding, one decoder", () => {
      requestRun(["8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d", "8286 84be 5808 6e6f 2d63 6163 6865", "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65"]);
    });

    it("C.4: requests with Huffman coding, one decoder", () => {
      requestRun(["8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff", "8286 84be 5886 a8eb 1064 9cbf", "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"]);
    });

    it("C.6: responses with Huffman coding and a 256-byte table (HpackDecoder(256), no size update needed) evict as the RFC shows", () => {
      const d = new HpackDecoder(256);
      const date1 = "Mon, 21 Oct 2013 20:13:21 GMT";
      const date2 = "Mon, 21 Oct 2013 20:13:22 GMT";
      const location = "https://www.example.com";
      const cookie = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";

      assert.deepEqual(d.decode(hex("4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3")), [
        [":status", "302"],
        ["cache-control", "private"],
        ["date", date1],
        ["location", location],
      ]);
      assert.deepEqual(dynamicTable(d), [
        ["location", location],
        ["date", date1],
        ["cache-control", "private"],
        [":status", "302"],
      ]);

      assert.deepEqual(d.decode(hex("4883 640e ffc1 c0bf")), [
        [":status", "307"],
        ["cache-control", "private"],
        ["date", date1],
        ["location", location],
      ]);
      assert.deepEqual(dynamicTable(d), [
        [":status", "307"],
        ["location", location],
        ["date", date1],
        ["cache-control", "private"],
      ]);

      assert.deepEqual(
        d.decode(
          hex(
            "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
          ),
        ),
        [
          [":status", "200"],
          ["cache-control", "private"],
          ["date", date2],
          ["location", location],
          ["content-encoding", "gzip"],
          ["set-cookie", cookie],
        ],
      );
      assert.deepEqual(dynamicTable(d), [
        ["set-cookie", cookie],
        ["content-encoding", "gzip"],
        ["date", date2],
      ]);
    });
  });

  describe("Huffman code", () => {
    it("has the RFC 7541 Appendix B codes for a sample of symbols", () => {
      const codes = huffmanCodes();
      assert.equal(codes.length, 257);
      const expect: [number, number, number][] = [
        [0, 0x1ff8, 13],
        [32, 0x14, 6],
        [48, 0x0, 5],
        [97, 0x3, 5],
        [101, 0x5, 5],
        [116, 0x9, 5],
        [255, 0x3ffffee, 26],
        [256, 0x3fffffff, 30],
      ];
      for (const [sym, code, bits] of expect) assert.deepEqual(codes[sym], { code, bits }, `symbol ${sym}`);
    });

    it("decodes every byte value 0-255 from its code", () => {
      const all = Array.from({ length: 256 }, (_, i) => i);
      assert.deepEqual([...huffmanDecode(huffmanBytes(all.map(bitsOf).join("")))], all);
      assert.deepEqual([...huffmanDecode(huffmanBytes(all.reverse().map(bitsOf).join("")))], all);
    });

    it("accepts up to 7 one-bits of padding, and an empty string", () => {
      assert.equal(huffmanDecode(Buffer.from([0x1f])).toString("latin1"), "a"); // 00011 + 111
      assert.equal(huffmanDecode(Buffer.alloc(0)).toString("latin1"), "");
      // "0a" = 00000 00011, then 6 one-bits
      assert.equal(huffmanDecode(Buffer.from([0b00000000, 0b11111111])).toString("latin1"), "0a");
    });

    it("rejects padding longer than 7 bits", () => {
      assert.throws(() => huffmanDecode(Buffer.from([0x1f, 0xff])), isHpackError); // "a", then 3 + 8 one-bits
      assert.throws(() => huffmanDecode(Buffer.from([0xff])), isHpackError); // 8 one-bits and no symbol
    });

    it("rejects padding that is not all ones", () => {
      assert.throws(() => huffmanDecode(Buffer.from([0x18])), isHpackError); // 00011 000
      assert.throws(() => huffmanDecode(Buffer.from([0x1e])), isHpackError); // 00011 110
      assert.throws(() => huffmanDecode(Buffer.from([0x1d])), isHpackError); // 00011 101
    });

    it("rejects EOS inside a string", () => {
      assert.throws(() => huffmanDecode(Buffer.from([0xff, 0xff, 0xff, 0xff])), isHpackError); // EOS (30 ones) + 2
      const eosThenA = huffmanLiteral(bitsOf(256) + bitsOf(97));
      assert.throws(() => new HpackDecoder().decode(Buffer.from([0x00, ...raw("x"), ...eosThenA])), isHpackError);
    });

    it("a Huffman name and value inside a header block", () => {
      const name = huffmanLiteral([..."custom-key"].map((c) => bitsOf(c.charCodeAt(0))).join(""));
      const value = huffmanLiteral([..."custom-value"].map((c) => bitsOf(c.charCodeAt(0))).join(""));
      assert.deepEqual(new HpackDecoder().decode(Buffer.from([0x00, ...name, ...value])), [["custom-key", "custom-value"]]);
      const badPad = huffmanLiteral(bitsOf(97), "0");
      assert.throws(() => new HpackDecoder().decode(Buffer.from([0x00, ...raw("x"), ...badPad])), isHpackError);
    });
  });

  describe("integers (§5.1)", () => {
    /** A decoder whose dynamic table holds `n` entries: index 62 is "h{n-1}", index 61+n is "h0". */
    function filled(n: number): HpackDecoder {
      const d = new HpackDecoder(64 * 1024);
      const block: number[] = [];
      for (let i = 0; i < n; i++) block.push(...addLiteral(`h${i}`, `v${i}`));
      d.decode(Buffer.from(block));
      return d;
    }

    it("C.1.2: 1337 in a 5-bit prefix (a table size update: accepted at a limit of 1337, not at 1336)", () => {
      const update = hex("3f9a0a");
      assert.deepEqual(new HpackDecoder(1337).decode(update), []);
      assert.throws(() => new HpackDecoder(1336).decode(update), isHpackError);
    });

    it("7-bit prefix: indices 126, 127 (0xff 0x00), 128 (0xff 0x01) and 300 (0xff 0xad 0x01)", () => {
      const d = filled(300);
      // Index 61+k is entry h(300-k).
      assert.deepEqual(d.decode(hex("fe")), [["h235", "v235"]]);
      assert.deepEqual(d.decode(hex("ff00")), [["h234", "v234"]]);
      assert.deepEqual(d.decode(hex("ff01")), [["h233", "v233"]]);
      assert.deepEqual(d.decode(hex("ffad01")), [["h61", "v61"]]);
      assert.deepEqual(d.decode(Buffer.from(int(361, 7, 0x80))), [["h0", "v0"]]);
      assert.throws(() => d.decode(Buffer.from(int(362, 7, 0x80))), isHpackError);
    });

    it("6-bit prefix (indexed name, incremental indexing) and 4-bit prefix (indexed name, without indexing)", () => {
      const d = filled(10);
      assert.deepEqual(d.decode(Buffer.from([0x7f, 0x00, ...raw("x")])), [["h8", "x"]]); // name index 63
      assert.deepEqual(d.decode(Buffer.from([0x0f, 0x00, ...raw("y")])), [["accept-charset", "y"]]); // static 15
      assert.deepEqual(d.decode(Buffer.from([0x0f, 0x01, ...raw("z")])), [["accept-encoding", "z"]]); // static 16
      // Never indexed, name index 62: the entry just added.
      assert.deepEqual(d.decode(Buffer.from([0x1f, 0x2f, ...raw("w")])), [["h8", "w"]]);
      assert.deepEqual(dynamicTable(d)[0], ["h8", "x"]);
    });

    it("string lengths of 127 (0x7f 0x00), 200 and 20000 bytes (three-byte length)", () => {
      for (const n of [126, 127, 128, 200, 20_000]) {
        const name = "n".repeat(n);
        const value = "v".repeat(n);
        assert.deepEqual(new HpackDecoder().decode(Buffer.from([0x00, ...raw(name), ...raw(value)])), [[name, value]], `length ${n}`);
      }
      assert.deepEqual(raw("x".repeat(20_000)).slice(0, 4), [0x7f, 0xa1, 0x9b, 0x01]);
    });

    it("an integer above 2^32 is an error", () => {
      assert.throws(() => new HpackDecoder().decode(hex("ff ffffffff7f")), isHpackError);
    });

    it("an overlong integer (many zero continuation bytes) is an error, not a NaN", () => {
      // 0x3f then 200 continuation bytes of 0x80 then 0x00: the value is 31, written very long.
      const update = Buffer.from([0x3f, ...new Array<number>(200).fill(0x80), 0x00]);
      const d = new HpackDecoder(64);
      let threw = false;
      try {
        d.decode(update);
      } catch (e) {
        assert.ok(isHpackError(e), String(e));
        threw = true;
      }
      if (!threw) {
        // If it is accepted, it must at least have meant 31: a 64-byte table still evicts.
        const block: number[] = [];
        for (let i = 0; i < 20; i++) block.push(...addLiteral(`h${i}`, "v"));
        d.decode(Buffer.from(block));
        assert.ok(dynamicTable(d).length <= 1, `the table holds ${dynamicTable(d).length} entries after a size update to 31`);
      }
    });

    it("an overlong string length (many zero continuation bytes) is an error", () => {
      // A literal whose name length is 127, written with 200 continuation bytes, then a real field.
      const block = Buffer.from([0x00, 0x7f, ...new Array<number>(200).fill(0x80), 0x00, ...Buffer.from("n".repeat(127)), ...raw("v"), 0x82]);
      assert.throws(() => new HpackDecoder().decode(block), isHpackError);
    });
  });

  describe("dynamic table", () => {
    // Each entry "kN"/"vN" (N one digit) has size 2 + 2 + 32 = 36.
    it("evicts the oldest entries to make room", () => {
      const d = new HpackDecoder(100);
      d.decode(Buffer.from([...addLiteral("k1", "v1"), ...addLiteral("k2", "v2")]));
      assert.deepEqual(dynamicTable(d), [
        ["k2", "v2"],
        ["k1", "v1"],
      ]);
      d.decode(Buffer.from(addLiteral("k3", "v3")));
      assert.deepEqual(dynamicTable(d), [
        ["k3", "v3"],
        ["k2", "v2"],
      ]);
      // 36 + 64 = 100 fits exactly: nothing else goes.
      d.decode(Buffer.from(addLiteral("k4", "v".repeat(30))));
      assert.deepEqual(dynamicTable(d), [
        ["k4", "v".repeat(30)],
        ["k3", "v3"],
      ]);
    });

    it("an entry can use an indexed name that eviction removes in the same step (§4.4)", () => {
      const d = new HpackDecoder(72);
      d.decode(Buffer.from([...addLiteral("k1", "v1"), ...addLiteral("k2", "v2")]));
      // Name from index 63 (k1, the oldest), which must be evicted to make room.
      assert.deepEqual(d.decode(Buffer.from([...int(63, 6, 0x40), ...raw("v9")])), [["k1", "v9"]]);
      assert.deepEqual(dynamicTable(d), [
        ["k1", "v9"],
        ["k2", "v2"],
      ]);
    });

    it("an entry larger than the table empties it and is not added", () => {
      const d = new HpackDecoder(100);
      d.decode(Buffer.from([...addLiteral("k1", "v1"), ...addLiteral("k2", "v2")]));
      assert.deepEqual(d.decode(Buffer.from(addLiteral("big", "x".repeat(70)))), [["big", "x".repeat(70)]]);
      assert.deepEqual(dynamicTable(d), []);
    });

    it("a size update to 0 empties the table; a later one makes room again", () => {
      const d = new HpackDecoder(4096);
      d.decode(Buffer.from([...addLiteral("k1", "v1"), ...addLiteral("k2", "v2")]));
      assert.deepEqual(d.decode(hex("20")), []);
      assert.deepEqual(dynamicTable(d), []);
      d.decode(Buffer.from(addLiteral("k3", "v3")));
      assert.deepEqual(dynamicTable(d), [], "nothing fits a 0-byte table");
      d.decode(Buffer.from([...int(80, 5, 0x20), ...addLiteral("k4", "v4"), ...addLiteral("k5", "v5"), ...addLiteral("k6", "v6")]));
      assert.deepEqual(dynamicTable(d), [
        ["k6", "v6"],
        ["k5", "v5"],
      ]);
    });

    it("a smaller size update evicts down to it", () => {
      const d = new HpackDecoder(4096);
      d.decode(Buffer.from([...addLiteral("k1", "v1"), ...addLiteral("k2", "v2"), ...addLiteral("k3", "v3")]));
      d.decode(Buffer.from(int(72, 5, 0x20)));
      assert.deepEqual(dynamicTable(d), [
        ["k3", "v3"],
        ["k2", "v2"],
      ]);
    });
  });

  describe("table size updates (§4.2, §6.3)", () => {
    it("up to the announced limit is accepted, above it is an error", () => {
      assert.deepEqual(new HpackDecoder(4096).decode(Buffer.from(int(4096, 5, 0x20))), []);
      assert.throws(() => new HpackDecoder(4096).decode(Buffer.from(int(4097, 5, 0x20))), isHpackError);
      assert.throws(() => new HpackDecoder(256).decode(Buffer.from(int(257, 5, 0x20))), isHpackError);
    });

    it("two updates at the start of a block are allowed", () => {
      assert.deepEqual(new HpackDecoder().decode(Buffer.from([0x20, ...int(4096, 5, 0x20), 0x82])), [[":method", "GET"]]);
    });

    it("an update after a header field is an error", () => {
      assert.throws(() => new HpackDecoder().decode(hex("82 20")), isHpackError);
      assert.throws(() => new HpackDecoder().decode(Buffer.from([...addLiteral("a", "b"), 0x3f, 0xe1, 0x1f])), isHpackError);
    });
  });

  describe("malformed blocks", () => {
    it("index 0 is an error", () => {
      assert.throws(() => new HpackDecoder().decode(hex("80")), isHpackError);
    });

    it("an index beyond both tables is an error", () => {
      assert.throws(() => new HpackDecoder().decode(hex("be")), isHpackError); // 62, empty dynamic table
      assert.throws(() => new HpackDecoder().decode(Buffer.from([0x40 | 62, ...raw("v")])), isHpackError); // indexed name
      assert.throws(() => new HpackDecoder().decode(Buffer.from([0x0f, 0x2f, ...raw("v")])), isHpackError); // 4-bit prefix, 62
      assert.throws(() => new HpackDecoder().decode(hex("ff ffff7f")), isHpackError);
      const d = new HpackDecoder();
      d.decode(Buffer.from(addLiteral("a", "b")));
      assert.deepEqual(d.decode(hex("be")), [["a", "b"]]);
      assert.throws(() => d.decode(hex("bf")), isHpackError);
    });

    it("truncated input is an error", () => {
      const whole = Buffer.from([...addLiteral("custom-key", "custom-value")]);
      for (let n = 1; n < whole.length; n++) assert.throws(() => new HpackDecoder().decode(whole.subarray(0, n)), isHpackError, `first ${n} bytes`);
      assert.throws(() => new HpackDecoder().decode(hex("ff")), isHpackError); // integer continues past the end
      assert.throws(() => new HpackDecoder().decode(hex("ff80")), isHpackError);
      assert.throws(() => new HpackDecoder().decode(hex("3f")), isHpackError); // size update
      assert.throws(() => new HpackDecoder().decode(hex("00 7f")), isHpackError); // name length
      const huffman = hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff");
      assert.throws(() => new HpackDecoder().decode(huffman.subarray(0, huffman.length - 1)), isHpackError);
    });

    it("a header list above maxListBytes is an error", () => {
      const block = Buffer.from([0x00, ...raw("a"), ...raw("x".repeat(100))]);
      assert.deepEqual(new HpackDecoder().decode(block, 133), [["a", "x".repeat(100)]]);
      assert.throws(() => new HpackDecoder().decode(block, 132), isHpackError);
    });
  });

  describe("encodeHeaders", () => {
    const list: HeaderList = [
      [":method", "POST"],
      [":scheme", "https"],
      [":path", "/hsm_signer.v1.Signer/Sign"],
      [":authority", "127.0.0.1:8443"],
      ["content-type", "application/grpc"],
      ["te", "trailers"],
      ["grpc-timeout", "9999m"],
      ["authorization", "Bearer abc.def.ghi"],
      ["x-empty", ""],
      ["x-long", "z".repeat(5000)],
      ["x-tab", "a\tb ~!"],
      ["x-latin1", "caf\xe9 \x80\xff"],
      ["x-repeated", "1"],
      ["x-repeated", "2"],
    ];

    it("decodes back to the same list, in order, with one decoder for several blocks", () => {
      const d = new HpackDecoder();
      for (let i = 0; i < 3; i++) assert.deepEqual(d.decode(encodeHeaders(list)), list);
      assert.deepEqual(dynamicTable(d), [], "literal-only: the peer's table stays empty");
    });

    it("decodes back with a sensitive set, and sensitive names are never indexed (first byte 0x10)", () => {
      const sensitive = new Set(["authorization", "x-secret"]);
      const block = encodeHeaders(
        [
          ["authorization", "Bearer t"],
          ["x-secret", "s"],
          ["x-plain", "p"],
        ],
        sensitive,
      );
      // Each field: flag byte, name length, name, value length, value.
      let pos = 0;
      const firstBytes: number[] = [];
      for (const [n, v] of [
        ["authorization", "Bearer t"],
        ["x-secret", "s"],
        ["x-plain", "p"],
      ] as const) {
        firstBytes.push(block[pos]!);
        pos += 1 + 1 + n.length + 1 + v.length;
      }
      assert.equal(pos, block.length);
      assert.deepEqual(firstBytes, [0x10, 0x10, 0x00]);
      assert.deepEqual(new HpackDecoder().decode(block), [
        ["authorization", "Bearer t"],
        ["x-secret", "s"],
        ["x-plain", "p"],
      ]);
      assert.deepEqual(encodeHeaders([["authorization", "Bearer t"]]).subarray(0, 1), Buffer.from([0x00]));
    });

    it("writes plain literals with new names, no Huffman (C.2.2 shape)", () => {
      assert.deepEqual(encodeHeaders([["custom-key", "custom-header"]]), hex("000a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572"));
      assert.deepEqual(encodeHeaders([["password", "secret"]], new Set(["password"])), hex("1008 7061 7373 776f 7264 0673 6563 7265 74"));
    });

    it("rejects invalid names", () => {
      for (const name of ["Content-Type", "X-UPPER", "", ":", "a b", "a:b", "a\r\nb", "a\n", "caf\xe9", "a\0b", "a\tb"]) {
        assert.throws(() => encodeHeaders([[name, "v"]]), isHpackError, JSON.stringify(name));
      }
    });

    it("rejects invalid values (CR, LF, NUL, other controls, code points above 0xff)", () => {
      for (const value of ["a\r\nb", "a\rb", "a\nb", "\r\n", "a\0b", "a\x7fb", "a\x1bb", "\u20ac", "\u{1f600}"]) {
        assert.throws(() => encodeHeaders([["x-h", value]]), isHpackError, JSON.stringify(value));
      }
    });
  });
});
