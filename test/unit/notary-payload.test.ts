import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { CborTag, decodeCbor, NOTARY_PAYLOAD_CONTENT_TYPE, parseNotaryPayload } from "../../src/signing/notary-payload.js";
import { notationRequest } from "../helpers/notation.js";

const DIGEST = "sha256:d7fe34585a19531bacc65a58cf4073b1488568cd2891304e56f035591c62b4bc";
const MANIFEST = "application/vnd.oci.image.manifest.v1+json";

function fixturePayload(name: "generate-signature-jws" | "generate-signature-cose"): Buffer {
  return Buffer.from(notationRequest(name).payload as string, "base64");
}

// --- a tiny CBOR encoder, to build Sig_structures the decoder must read (or refuse) ---

type Enc = number | string | Buffer | Enc[] | Map<number | string, Enc> | CborTag | boolean | null;

function head(major: number, n: number): Buffer {
  if (n < 24) return Buffer.from([(major << 5) | n]);
  if (n < 0x100) return Buffer.from([(major << 5) | 24, n]);
  if (n < 0x10000) return Buffer.from([(major << 5) | 25, n >> 8, n & 0xff]);
  const b = Buffer.alloc(5);
  b[0] = (major << 5) | 26;
  b.writeUInt32BE(n, 1);
  return b;
}

function cbor(v: Enc): Buffer {
  if (typeof v === "number") return v >= 0 ? head(0, v) : head(1, -1 - v);
  if (typeof v === "string") return Buffer.concat([head(3, Buffer.byteLength(v)), Buffer.from(v)]);
  if (Buffer.isBuffer(v)) return Buffer.concat([head(2, v.length), v]);
  if (Array.isArray(v)) return Buffer.concat([head(4, v.length), ...v.map(cbor)]);
  if (v instanceof Map) return Buffer.concat([head(5, v.size), ...[...v].flatMap(([k, x]) => [cbor(k), cbor(x)])]);
  if (v instanceof CborTag) return Buffer.concat([head(6, v.tag), cbor(v.value as Enc)]);
  return Buffer.from([v === false ? 0xf4 : v === true ? 0xf5 : 0xf6]);
}

const TARGET = Buffer.from(JSON.stringify({ targetArtifact: { mediaType: MANIFEST, digest: DIGEST, size: 400 } }));

function coseInput(header: Map<number | string, Enc>, payload: Buffer = TARGET, context = "Signature1"): Buffer {
  return cbor([context, cbor(header), Buffer.alloc(0), payload]);
}

function coseHeader(alg: number, extra: [string | number, Enc][] = []): Map<number | string, Enc> {
  return new Map<number | string, Enc>([[1, alg], [3, NOTARY_PAYLOAD_CONTENT_TYPE], ["io.cncf.notary.signingTime", new CborTag(1, 1795537583)], ...extra]);
}

function jwsInput(header: unknown, payload: unknown): Buffer {
  const part = (x: unknown): string => Buffer.from(typeof x === "string" ? x : JSON.stringify(x)).toString("base64url");
  return Buffer.from(`${part(header)}.${part(payload)}`);
}

const JWS_HEADER = { "alg": "ES384", "cty": NOTARY_PAYLOAD_CONTENT_TYPE, "io.cncf.notary.signingTime": "2026-01-02T03:04:05Z" };

describe("parseNotaryPayload: the artifact a Notary signing input names", () => {
  describe("the real requests of notation 1.3.2", () => {
    it("JWS signing input", () => {
      assert.deepEqual(parseNotaryPayload(fixturePayload("generate-signature-jws")), {
        kind: "notary-jws",
        artifact: { digest: DIGEST, mediaType: MANIFEST, size: 400, signingTime: "2026-11-24T16:26:23Z", signingAlgorithm: "PS256" },
      });
    });

    it("COSE Sig_structure, with the expiry of -e 24h", () => {
      assert.deepEqual(parseNotaryPayload(fixturePayload("generate-signature-cose")), {
        kind: "notary-cose",
        artifact: {
          digest: DIGEST,
          mediaType: MANIFEST,
          size: 400,
          signingTime: "2026-11-24T16:26:23Z",
          signingAlgorithm: "PS256",
          expiry: "2026-11-25T16:26:23Z",
        },
      });
    });

    it("every truncation of either is 'other'", () => {
      for (const name of ["generate-signature-jws", "generate-signature-cose"] as const) {
        const full = fixturePayload(name);
        for (let n = 0; n < full.length; n++) assert.deepEqual(parseNotaryPayload(full.subarray(0, n)), { kind: "other" }, `${name} cut at ${n}`);
      }
    });

    it("trailing bytes after the Sig_structure make it 'other'", () => {
      assert.equal(parseNotaryPayload(Buffer.concat([fixturePayload("generate-signature-cose"), Buffer.from([0])])).kind, "other");
    });
  });

  describe("JWS", () => {
    it("takes alg as it is and the signing time and expiry from the header", () => {
      const r = parseNotaryPayload(jwsInput({ ...JWS_HEADER, "io.cncf.notary.expiry": "2026-02-02T00:00:00Z" }, JSON.parse(TARGET.toString()) as unknown));
      assert.deepEqual(r, {
        kind: "notary-jws",
        artifact: { digest: DIGEST, mediaType: MANIFEST, size: 400, signingTime: "2026-01-02T03:04:05Z", signingAlgorithm: "ES384", expiry: "2026-02-02T00:00:00Z" },
      });
    });

    it("malformed or not Notary: 'other'", () => {
      const target = JSON.parse(TARGET.toString()) as { targetArtifact: Record<string, unknown> };
      const withTarget = (over: Record<string, unknown>): unknown => ({ targetArtifact: { ...target.targetArtifact, ...over } });
      const cases: [string, Buffer][] = [
        ["bad JSON payload", jwsInput(JWS_HEADER, "{not json")],
        ["bad JSON header", jwsInput("{alg:PS256", target)],
        ["wrong cty", jwsInput({ ...JWS_HEADER, cty: "application/json" }, target)],
        ["no cty", jwsInput({ alg: "PS256" }, target)],
        ["no targetArtifact", jwsInput(JWS_HEADER, { subject: target.targetArtifact })],
        ["targetArtifact not an object", jwsInput(JWS_HEADER, { targetArtifact: "sha256:abc" })],
        ["size a string", jwsInput(JWS_HEADER, withTarget({ size: "400" }))],
        ["negative size", jwsInput(JWS_HEADER, withTarget({ size: -1 }))],
        ["digest not an OCI digest", jwsInput(JWS_HEADER, withTarget({ digest: "d7fe34585a19" }))],
        ["no mediaType", jwsInput(JWS_HEADER, withTarget({ mediaType: undefined }))],
        ["header is an array", jwsInput([JWS_HEADER], target)],
        ["bad base64url character", Buffer.from(`${jwsInput(JWS_HEADER, target).toString()}*`)],
        ["base64url of impossible length", Buffer.from(`${jwsInput(JWS_HEADER, target).toString()}A`)],
        ["three parts (a compact JWS, not a signing input)", Buffer.from(`${jwsInput(JWS_HEADER, target).toString()}.c2ln`)],
        ["one part", Buffer.from(jwsInput(JWS_HEADER, target).toString().split(".")[0]!)],
        ["empty", Buffer.alloc(0)],
      ];
      for (const [what, input] of cases) assert.deepEqual(parseNotaryPayload(input), { kind: "other" }, what);
      // The checks above are not vacuous: the same builders make a valid input.
      assert.equal(parseNotaryPayload(jwsInput(JWS_HEADER, withTarget({}))).kind, "notary-jws");
    });

    it("a header time that is not a time is left out, the artifact is still named", () => {
      const r = parseNotaryPayload(jwsInput({ ...JWS_HEADER, "io.cncf.notary.signingTime": "yesterday" }, JSON.parse(TARGET.toString()) as unknown));
      assert.equal(r.kind, "notary-jws");
      assert.equal(r.artifact?.signingTime, undefined);
      assert.equal(r.artifact?.digest, DIGEST);
    });

    it("a header time of any length Date.parse takes is not copied: the audit line stays small", () => {
      // V8 reads "Jan 1 2026 (...)" as a date whatever the parenthesis holds.
      const huge = `Jan 1 2026 (${"x".repeat(700_000)})`;
      assert.ok(!Number.isNaN(Date.parse(huge)), "the input is one Date.parse accepts");
      const header = { ...JWS_HEADER, "io.cncf.notary.signingTime": huge, "io.cncf.notary.expiry": huge };
      const r = parseNotaryPayload(jwsInput(header, JSON.parse(TARGET.toString()) as unknown));
      assert.equal(r.kind, "notary-jws");
      assert.equal(r.artifact?.digest, DIGEST);
      assert.equal(r.artifact?.signingTime, undefined);
      assert.equal(r.artifact?.expiry, undefined);
      assert.ok(JSON.stringify(r).length < 1000, `recorded ${JSON.stringify(r).length} characters`);
    });

    it("an RFC 3339 header time is recorded as signed, with its offset and fraction; other date forms are not", () => {
      const target = JSON.parse(TARGET.toString()) as unknown;
      const time = (t: string): string | undefined => parseNotaryPayload(jwsInput({ ...JWS_HEADER, "io.cncf.notary.signingTime": t }, target)).artifact?.signingTime;
      for (const t of ["2026-01-02T03:04:05Z", "2026-01-02T04:04:05.123456789+01:00", "2026-01-02t03:04:05z"]) assert.equal(time(t), t);
      for (const t of ["Jan 2 2026", "2026-01-02", "2026-01-02T03:04:05", "2026-13-02T03:04:05Z", "2026-01-02T03:04:05.1234567890Z"]) assert.equal(time(t), undefined, t);
    });
  });

  describe("COSE", () => {
    it("maps the COSE algorithm numbers to their JOSE names", () => {
      const names: [number, string][] = [
        [-37, "PS256"],
        [-38, "PS384"],
        [-39, "PS512"],
        [-7, "ES256"],
        [-35, "ES384"],
        [-36, "ES512"],
      ];
      for (const [alg, name] of names) {
        const r = parseNotaryPayload(coseInput(coseHeader(alg)));
        assert.equal(r.kind, "notary-cose");
        assert.equal(r.artifact?.signingAlgorithm, name, `alg ${alg}`);
        assert.equal(r.artifact?.signingTime, "2026-11-24T16:26:23Z");
      }
      // An algorithm Notary does not use: the artifact is named, the algorithm is not guessed.
      assert.equal(parseNotaryPayload(coseInput(coseHeader(-8))).artifact?.signingAlgorithm, undefined);
    });

    it("malformed or not Notary: 'other'", () => {
      const noCty = coseHeader(-37);
      noCty.delete(3);
      // A protected header that repeats label 1; decoders must refuse it (RFC 9052 §3).
      const entries = cbor(coseHeader(-37)).subarray(1);
      const duplicateAlg = Buffer.concat([Buffer.from([0xa4]), entries, cbor(1), cbor(-38)]);
      const cases: [string, Buffer][] = [
        ["wrong content type", coseInput(coseHeader(-37, [[3, "application/json"]]))],
        ["no content type", coseInput(noCty)],
        ["wrong context", coseInput(coseHeader(-37), TARGET, "Signature")],
        ["payload not JSON", coseInput(coseHeader(-37), Buffer.from("\x01\x02"))],
        ["payload without targetArtifact", coseInput(coseHeader(-37), Buffer.from("{}"))],
        ["protected header not a map", cbor(["Signature1", cbor([1, 2]), Buffer.alloc(0), TARGET])],
        ["protected header a text string", cbor(["Signature1", "a0", Buffer.alloc(0), TARGET])],
        ["array of 3", cbor(["Signature1", cbor(coseHeader(-37)), TARGET])],
        ["indefinite-length array", Buffer.concat([Buffer.from([0x9f]), coseInput(coseHeader(-37)).subarray(1), Buffer.from([0xff])])],
        ["reserved additional info", Buffer.from([0x84, 0x7c])],
        ["length beyond the end", Buffer.from([0x84, 0x7b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])],
        ["array count beyond the end", Buffer.from([0x84, 0x9a, 0xff, 0xff, 0xff, 0xff])],
        ["deep nesting", Buffer.concat([Buffer.from([0x84]), Buffer.alloc(10000, 0x81)])],
        ["invalid UTF-8 text", Buffer.from([0x84, 0x62, 0xff, 0xfe, 0x40, 0x40, 0x40])],
        ["duplicate map key", cbor(["Signature1", duplicateAlg, Buffer.alloc(0), TARGET])],
      ];
      for (const [what, input] of cases) assert.deepEqual(parseNotaryPayload(input), { kind: "other" }, what);
      assert.equal(parseNotaryPayload(coseInput(coseHeader(-37))).kind, "notary-cose", "the builders make a valid input");
    });

    it("random bytes never throw and are 'other'", () => {
      for (let i = 0; i < 2000; i++) {
        const bytes = randomBytes(1 + (i % 300));
        if (i % 2 === 0) bytes[0] = 0x84; // half of them look like a Sig_structure
        assert.deepEqual(parseNotaryPayload(bytes), { kind: "other" });
      }
    });
  });

  describe("the CBOR decoder (RFC 8949 Appendix A vectors)", () => {
    const vectors: [string, unknown][] = [
      ["00", 0],
      ["17", 23],
      ["1818", 24],
      ["1903e8", 1000],
      ["1b000000e8d4a51000", 1000000000000],
      ["20", -1],
      ["3903e7", -1000],
      ["f90000", 0],
      ["f93c00", 1],
      ["f97bff", 65504],
      ["f9c400", -4],
      ["fa47c35000", 100000],
      ["fb3ff199999999999a", 1.1],
      ["f4", false],
      ["f5", true],
      ["f6", null],
      ["f7", undefined],
      ["4401020304", Buffer.from([1, 2, 3, 4])],
      ["6449455446", "IETF"],
      ["83010203", [1, 2, 3]],
      ["8301820203820405", [1, [2, 3], [4, 5]]],
      [
        "a201020304",
        new Map([
          [1, 2],
          [3, 4],
        ]),
      ],
      ["c11a514b67b0", new CborTag(1, 1363896240)],
    ];
    for (const [hex, value] of vectors) {
      it(hex, () => assert.deepEqual(decodeCbor(Buffer.from(hex, "hex")), value));
    }

    it("refuses integers beyond 2^53, indefinite lengths and break", () => {
      for (const hex of ["1bffffffffffffffff", "5f42010243030405ff", "9fff", "ff", "1c"]) assert.throws(() => decodeCbor(Buffer.from(hex, "hex")), hex);
    });
  });
});
