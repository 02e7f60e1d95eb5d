import assert from "node:assert/strict";
import { join } from "node:path";
import type * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";
import { KeyAdminDefinition } from "../../src/gen/hsm_signer/v1/key_admin.js";
import { DescribeKeyResponse, ListKeysResponse, SignerDefinition, SignRequest, SignResponse, type KeyInfo } from "../../src/gen/hsm_signer/v1/signer.js";
import { malformedReason, serviceDefinition } from "../../src/server/service-definitions.js";
import { SIGNER_METHODS } from "../../src/signing/ports.js";
import { PROJECT_ROOT } from "../helpers/softhsm.js";

/**
 * One wire contract, generated from proto/ into src/gen/ (lint fails when it is stale): the
 * plugin encodes with it, the server decodes with the grpc-js definitions built from it, and both
 * agree with the .proto as protobufjs and @grpc/proto-loader read it.
 */
describe("the wire contract (src/gen/): plugin, server and the .proto agree", () => {
  const root = protobuf.loadSync(join(PROJECT_ROOT, "proto/hsm_signer/v1/signer.proto"));
  const type = (n: string): protobuf.Type => root.lookupType(`hsm_signer.v1.${n}`);
  const toObject = (t: protobuf.Type, b: Uint8Array): Record<string, unknown> => t.toObject(t.decode(b), { longs: Number, bytes: Buffer, defaults: true, oneofs: true }) as Record<string, unknown>;
  const pbjs = (t: protobuf.Type, v: Record<string, unknown>): Buffer => {
    assert.equal(t.verify(v), null);
    return Buffer.from(t.encode(t.fromObject(v)).finish());
  };
  const signer = serviceDefinition(SignerDefinition);
  const method = (name: string): grpc.MethodDefinition<unknown, unknown> => {
    const m = signer[name];
    assert.ok(m, `no method ${name}`);
    return m;
  };
  /** What the server's handler gets for a body. */
  const serverReads = (name: string, body: Uint8Array): unknown => method(name).requestDeserialize(Buffer.from(body));
  /** What the plugin encodes. */
  const pluginSends = (r: Partial<SignRequest>): Buffer =>
    Buffer.from(SignRequest.encode({ keyId: "", payload: undefined, digest: undefined, hashAlgorithm: "", keySpec: "", keyVersion: 0, ...r }).finish());

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

  it("the grpc-js definitions have the paths and method names of the .proto, as @grpc/proto-loader reads it", () => {
    for (const [file, service, definition] of [
      ["signer.proto", "Signer", SignerDefinition],
      ["key_admin.proto", "KeyAdmin", KeyAdminDefinition],
    ] as const) {
      const pkg = protoLoader.loadSync(join(PROJECT_ROOT, "proto/hsm_signer/v1", file), {});
      const loaded = pkg[`hsm_signer.v1.${service}`] as protoLoader.ServiceDefinition;
      const ours = serviceDefinition(definition);
      assert.deepEqual(Object.keys(ours), Object.keys(loaded));
      for (const [name, m] of Object.entries(ours)) {
        const l = loaded[name] as protoLoader.MethodDefinition<object, object>;
        assert.deepEqual([m.path, m.originalName, m.requestStream, m.responseStream], [l.path, l.originalName, l.requestStream, l.responseStream], name);
      }
    }
  });

  describe("SignRequest: plugin → server", () => {
    it("payload: every field reaches the handler; byte-identical to protobufjs's encoding", () => {
      const r = { keyId: "clé-ü/1", payload: Buffer.from("eyJhbGciOiJQUzI1NiJ9.e30 ü"), hashAlgorithm: "SHA-256", keySpec: "RSA-2048", keyVersion: 300 };
      const body = pluginSends(r);
      assert.deepEqual(serverReads("Sign", body), { ...r, digest: undefined });
      assert.equal(body.toString("hex"), pbjs(type("SignRequest"), r).toString("hex"));
      assert.equal(toObject(type("SignRequest"), body).input, "payload");
    });

    it("digest, with the largest uint32 key_version", () => {
      const r = { keyId: "k", digest: Buffer.alloc(64, 0xa5), hashAlgorithm: "SHA-512", keyVersion: 0xffffffff };
      assert.deepEqual(serverReads("Sign", pluginSends(r)), { ...r, payload: undefined, keySpec: "" });
      assert.equal(toObject(type("SignRequest"), pluginSends(r)).input, "digest");
    });

    it("an empty payload is still the payload, and a long one (multi-byte length) arrives whole", () => {
      assert.deepEqual(serverReads("Sign", pluginSends({ keyId: "k", payload: Buffer.alloc(0) })), {
        keyId: "k",
        payload: Buffer.alloc(0),
        digest: undefined,
        hashAlgorithm: "",
        keySpec: "",
        keyVersion: 0,
      });
      const payload = Buffer.alloc(70_000, 7);
      assert.ok((serverReads("Sign", pluginSends({ keyId: "k", payload })) as SignRequest).payload?.equals(payload));
    });

    it("with both members of the oneof on the wire, the last one wins (as protobufjs and every parser)", () => {
      const payload = pluginSends({ payload: Buffer.from("P") });
      const digest = pluginSends({ digest: Buffer.from("D") });
      const key = pluginSends({ keyId: "k" });
      for (const [body, want] of [
        [Buffer.concat([key, payload, digest]), "digest"],
        [Buffer.concat([digest, key, payload]), "payload"],
        [Buffer.concat([payload, digest, key, payload]), "payload"],
      ] as const) {
        const got = serverReads("Sign", body) as SignRequest;
        const theirs = toObject(type("SignRequest"), body);
        assert.equal(theirs.input, want);
        assert.equal(got.keyId, "k");
        assert.deepEqual([got.payload, got.digest], want === "payload" ? [Buffer.from("P"), undefined] : [undefined, Buffer.from("D")]);
      }
    });

    it("DescribeKeyRequest / GetCertificateChainRequest", () => {
      for (const name of ["DescribeKey", "GetCertificateChain"] as const) {
        const encode = SignerDefinition.methods[name === "DescribeKey" ? "describeKey" : "getCertificateChain"].requestType.encode;
        assert.deepEqual(serverReads(name, encode({ keyId: "test-rsa-4096", keyVersion: 129 }).finish()), { keyId: "test-rsa-4096", keyVersion: 129 });
        assert.deepEqual(serverReads(name, encode({ keyId: "x", keyVersion: 0 }).finish()), { keyId: "x", keyVersion: 0 });
      }
      assert.deepEqual(serverReads("ListKeys", new Uint8Array(0)), {});
    });

    it("the core's SIGNER_METHODS (what a policy rule names) are the Signer service's methods", () => {
      assert.deepEqual(
        Object.values(SignerDefinition.methods)
          .map((m) => m.name)
          .sort(),
        [...SIGNER_METHODS].sort(),
      );
    });

    it("a body that does not decode reaches the handler as a marker that says why", () => {
      const bad = serverReads("Sign", Buffer.from([0x08]));
      assert.match(malformedReason(bad) ?? "", /^the request body is not a Sign request message: .+/);
      assert.match(malformedReason(serverReads("DescribeKey", Buffer.from([0x0a, 0x05, 0x61]))) ?? "", /not a DescribeKey request message/);
      assert.equal(malformedReason(serverReads("Sign", pluginSends({ keyId: "k" }))), undefined);
    });
  });

  describe("responses: server → plugin", () => {
    const serverSends = (name: string, res: unknown): Buffer => method(name).responseSerialize(res);

    it("SignResponse with repeated certificate_chain and the nested receipt; protobufjs reads the same", () => {
      const r: SignResponse = {
        keyId: "test-ec-521",
        signature: Buffer.alloc(132, 0x5c),
        signingAlgorithm: "ECDSA-SHA-512",
        keySpec: "EC-521",
        certificateChain: [Buffer.alloc(600, 1), Buffer.alloc(10, 2), Buffer.from([3])],
        keyVersion: 2,
        requestId: "0123456789abcdef",
        receipt: { sequence: Number.MAX_SAFE_INTEGER, lineHash: "cd".repeat(32) },
      };
      const body = serverSends("Sign", r);
      assert.ok(Buffer.isBuffer(body), "grpc-js frames a Buffer");
      assert.deepEqual(SignResponse.decode(body), r);
      assert.deepEqual(toObject(type("SignResponse"), body), r);
    });

    it("SignResponse without receipt: defaults", () => {
      const r = SignResponse.decode(pbjs(type("SignResponse"), { keyId: "k", signature: Buffer.from([9]) }));
      assert.equal(r.receipt, undefined);
      assert.deepEqual([r.certificateChain, r.keyVersion, r.signingAlgorithm], [[], 0, ""]);
    });

    it("DescribeKeyResponse and ListKeysResponse: every KeyInfo field, in order", () => {
      assert.deepEqual(DescribeKeyResponse.decode(serverSends("DescribeKey", { key: keyInfo(7) })), { key: keyInfo(7) });
      assert.equal(DescribeKeyResponse.decode(new Uint8Array(0)).key, undefined);
      const keys = [keyInfo(0), keyInfo(1), keyInfo(2)];
      assert.deepEqual(ListKeysResponse.decode(serverSends("ListKeys", { keys })), { keys });
      assert.deepEqual(toObject(type("ListKeysResponse"), serverSends("ListKeys", { keys })), { keys });
    });

    it("fields the plugin does not know (a newer server) are skipped, of every wire type", () => {
      const known = pbjs(type("DescribeKeyResponse"), { key: keyInfo(1) });
      const w = protobuf.Writer.create();
      w.uint32((20 << 3) | 0).uint64(12345);
      w.uint32((21 << 3) | 2).bytes(Buffer.from("future"));
      w.uint32((22 << 3) | 1).fixed64(1);
      w.uint32((23 << 3) | 5).fixed32(1);
      const extra = Buffer.from(w.finish());
      assert.deepEqual(DescribeKeyResponse.decode(Buffer.concat([extra, known, extra])).key, keyInfo(1));
    });

    it("a truncated answer throws (the plugin reports it as an error)", () => {
      const b = serverSends("Sign", { ...SignResponse.decode(new Uint8Array(0)), keyId: "test-rsa-2048", signature: Buffer.alloc(256, 1), certificateChain: [Buffer.alloc(300, 2)], keyVersion: 300 });
      assert.equal(b.subarray(-3).toString("hex"), "30ac02", "key_version 300 is the last field");
      for (const cut of [b.subarray(0, b.length - 1), b.subarray(0, b.length - 10), b.subarray(0, 20)]) assert.throws(() => SignResponse.decode(cut));
    });
  });
});
