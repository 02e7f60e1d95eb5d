import assert from "node:assert/strict";
import { join } from "node:path";
import protobuf from "protobufjs";
import { decodeCertificateChainResponse, decodeDescribeKeyResponse, decodeListKeysResponse, decodeSignResponse, encodeKeyRequest, encodeSignRequest, type KeyInfo } from "../../src/client/messages.js";
import { ProtoMessage, ProtoWriter, readFields } from "../../src/client/protobuf.js";
import { PROJECT_ROOT } from "../helpers/softhsm.js";

/**
 * The plugin's hand-written codec against the .proto as protobufjs reads it: what we encode,
 * protobufjs decodes to the same fields; what protobufjs encodes, we decode to the same values.
 */
describe("hand-written protobuf codec vs protobufjs and signer.proto", () => {
  const root = protobuf.loadSync(join(PROJECT_ROOT, "proto/hsm_signer/v1/signer.proto"));
  const type = (n: string): protobuf.Type => root.lookupType(`hsm_signer.v1.${n}`);
  const toObject = (t: protobuf.Type, b: Uint8Array): Record<string, unknown> => t.toObject(t.decode(b), { longs: Number, bytes: Buffer, defaults: true, oneofs: true }) as Record<string, unknown>;
  const encode = (t: protobuf.Type, v: Record<string, unknown>): Buffer => {
    assert.equal(t.verify(v), null);
    return Buffer.from(t.encode(t.fromObject(v)).finish());
  };
  const bytesEqual = (a: unknown, b: Uint8Array): void =>
    assert.ok(Buffer.from(a as Uint8Array).equals(Buffer.from(b)), `${Buffer.from(a as Uint8Array).toString("hex")} != ${Buffer.from(b).toString("hex")}`);

  const keyInfo = (i: number): KeyInfo => ({
    keyId: `release-${i}`,
    keySpec: i % 2 ? "EC-384" : "RSA-3072",
    signingAlgorithm: i % 2 ? "ECDSA-SHA-384" : "RSASSA-PSS-SHA-384",
    hashAlgorithm: "SHA-384",
    certificateSubject: `CN=Release ${i},O=Example Corp,ST=WA,C=US`,
    certificateIssuer: "CN=Example Root,O=Example Corp,C=US",
    notBefore: "2026-01-01T00:00:00.000Z",
    notAfter: "2027-01-01T00:00:00.000Z",
    keyVersion: i + 1,
    certificateSha256: "ab".repeat(32),
  });

  describe("SignRequest (ours → protobufjs)", () => {
    it("payload variant: every field, oneof input = payload", () => {
      const payload = Buffer.from("eyJhbGciOiJQUzI1NiJ9.eyJ0YXJnZXRBcnRpZmFjdCI6e319 ü", "utf8");
      const got = toObject(type("SignRequest"), encodeSignRequest({ keyId: "clé-ü/1", payload, hashAlgorithm: "SHA-256", keySpec: "RSA-2048", keyVersion: 3 }));
      assert.equal(got.input, "payload");
      assert.equal(got.keyId, "clé-ü/1");
      bytesEqual(got.payload, payload);
      assert.equal(got.digest, undefined);
      assert.equal(got.hashAlgorithm, "SHA-256");
      assert.equal(got.keySpec, "RSA-2048");
      assert.equal(got.keyVersion, 3);
    });

    it("digest variant with a large payload-free request and the maximal uint32 key_version", () => {
      const digest = Buffer.alloc(64, 0xa5);
      const got = toObject(type("SignRequest"), encodeSignRequest({ keyId: "k", digest, hashAlgorithm: "SHA-512", keyVersion: 0xffffffff }));
      assert.equal(got.input, "digest");
      bytesEqual(got.digest, digest);
      assert.equal(got.payload, undefined);
      assert.equal(got.hashAlgorithm, "SHA-512");
      assert.equal(got.keySpec, "");
      assert.equal(got.keyVersion, 0xffffffff);
    });

    it("a payload longer than 127 bytes (multi-byte length varint) and an empty payload keep the oneof set", () => {
      const payload = Buffer.alloc(70_000, 7);
      const got = toObject(type("SignRequest"), encodeSignRequest({ keyId: "k", payload }));
      bytesEqual(got.payload, payload);
      const empty = toObject(type("SignRequest"), encodeSignRequest({ keyId: "k", payload: Buffer.alloc(0) }));
      assert.equal(empty.input, "payload");
      assert.equal(empty.keyVersion, 0);
    });

    it("is byte-identical to protobufjs's encoding", () => {
      const r = { keyId: "test-ec-256", payload: Buffer.from([0, 1, 2, 255]), hashAlgorithm: "SHA-256", keySpec: "EC-256", keyVersion: 300 };
      assert.equal(encodeSignRequest(r).toString("hex"), encode(type("SignRequest"), r).toString("hex"));
    });

    it("DescribeKeyRequest / GetCertificateChainRequest", () => {
      for (const t of ["DescribeKeyRequest", "GetCertificateChainRequest"]) {
        assert.deepEqual(toObject(type(t), encodeKeyRequest("test-rsa-4096", 129)), { keyId: "test-rsa-4096", keyVersion: 129 });
        assert.deepEqual(toObject(type(t), encodeKeyRequest("x")), { keyId: "x", keyVersion: 0 });
      }
    });
  });

  describe("responses (protobufjs → ours)", () => {
    it("SignResponse with repeated certificate_chain and nested receipt", () => {
      const chain = [Buffer.alloc(600, 1), Buffer.alloc(10, 2), Buffer.from([3])];
      const sig = Buffer.alloc(132, 0x5c);
      const b = encode(type("SignResponse"), {
        keyId: "test-ec-521",
        signature: sig,
        signingAlgorithm: "ECDSA-SHA-512",
        keySpec: "EC-521",
        certificateChain: chain,
        keyVersion: 2,
        requestId: "0123456789abcdef",
        receipt: { sequence: Number.MAX_SAFE_INTEGER, lineHash: "cd".repeat(32) },
      });
      const r = decodeSignResponse(b);
      assert.equal(r.keyId, "test-ec-521");
      assert.ok(r.signature.equals(sig));
      assert.equal(r.signingAlgorithm, "ECDSA-SHA-512");
      assert.equal(r.keySpec, "EC-521");
      assert.equal(r.certificateChain.length, 3);
      chain.forEach((c, i) => assert.ok((r.certificateChain[i] as Buffer).equals(c), `chain[${i}]`));
      assert.equal(r.keyVersion, 2);
      assert.equal(r.requestId, "0123456789abcdef");
      assert.deepEqual(r.receipt, { sequence: Number.MAX_SAFE_INTEGER, lineHash: "cd".repeat(32) });
    });

    it("SignResponse without receipt and with defaults", () => {
      const r = decodeSignResponse(encode(type("SignResponse"), { keyId: "k", signature: Buffer.from([9]) }));
      assert.equal(r.receipt, undefined);
      assert.deepEqual(r.certificateChain, []);
      assert.equal(r.keyVersion, 0);
      assert.equal(r.signingAlgorithm, "");
    });

    it("DescribeKeyResponse: every KeyInfo field", () => {
      const k = keyInfo(7);
      assert.deepEqual(decodeDescribeKeyResponse(encode(type("DescribeKeyResponse"), { key: k })), k);
      assert.equal(decodeDescribeKeyResponse(Buffer.alloc(0)), undefined);
    });

    it("ListKeysResponse with several keys, in order", () => {
      const keys = [keyInfo(0), keyInfo(1), keyInfo(2)];
      assert.deepEqual(decodeListKeysResponse(encode(type("ListKeysResponse"), { keys })), keys);
      assert.deepEqual(decodeListKeysResponse(Buffer.alloc(0)), []);
    });

    it("GetCertificateChainResponse", () => {
      const chain = [Buffer.from("leaf"), Buffer.from("intermediate"), Buffer.from("root")];
      const r = decodeCertificateChainResponse(encode(type("GetCertificateChainResponse"), { keyId: "k1", certificateChain: chain, keyVersion: 5 }));
      assert.equal(r.keyId, "k1");
      assert.equal(r.keyVersion, 5);
      assert.deepEqual(
        r.certificateChain.map((c) => c.toString()),
        ["leaf", "intermediate", "root"],
      );
    });

    it("skips fields it does not know (a newer server), of every wire type", () => {
      const known = encode(type("DescribeKeyResponse"), { key: keyInfo(1) });
      const w = protobuf.Writer.create();
      w.uint32((20 << 3) | 0).uint64(12345);
      w.uint32((21 << 3) | 2).bytes(Buffer.from("future"));
      w.uint32((22 << 3) | 1).fixed64(1);
      w.uint32((23 << 3) | 5).fixed32(1);
      const extra = Buffer.from(w.finish());
      assert.deepEqual(decodeDescribeKeyResponse(Buffer.concat([extra, known, extra])), keyInfo(1));
    });
  });

  describe("malformed input", () => {
    const full = (): Buffer => encode(type("SignResponse"), { keyId: "test-rsa-2048", signature: Buffer.alloc(256, 1), certificateChain: [Buffer.alloc(300, 2)], keyVersion: 300 });

    it("a buffer truncated inside a length-delimited field throws", () => {
      const b = full();
      assert.throws(() => decodeSignResponse(b.subarray(0, b.length - 10)), /truncated/);
      assert.throws(() => decodeSignResponse(b.subarray(0, 20)), /truncated/);
    });

    it("a buffer truncated inside a varint throws", () => {
      const b = full();
      // key_version 300 is the last field: tag 0x30, then 0xac 0x02; cut after 0xac.
      assert.equal(b.subarray(-3).toString("hex"), "30ac02");
      assert.throws(() => decodeSignResponse(b.subarray(0, b.length - 1)), /truncated/);
      assert.throws(() => readFields(Buffer.from([0x80])), /truncated/);
    });

    it("a length that runs past the end throws", () => {
      assert.throws(() => new ProtoMessage(Buffer.from([0x0a, 0x05, 0x61])), /truncated/);
    });

    it("a buffer truncated inside a fixed64 or fixed32 field throws", () => {
      assert.throws(() => readFields(Buffer.from([(1 << 3) | 1, 1, 2, 3])), /truncated/);
      assert.throws(() => readFields(Buffer.from([(1 << 3) | 5, 1])), /truncated/);
    });

    it("an unsupported wire type (groups) throws", () => {
      assert.throws(() => readFields(Buffer.from([(1 << 3) | 3])), /wire type/);
    });
  });

  it("ProtoWriter writes nothing for proto3 defaults", () => {
    assert.equal(new ProtoWriter().string(1, "").uint(2, 0).uint(3, undefined).bytes(4, undefined).finish().length, 0);
  });
});
