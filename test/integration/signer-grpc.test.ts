import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash, randomBytes, X509Certificate } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import type { RunningServer } from "../../src/server/signer-server.js";
import { checkCodeSigningChain } from "../helpers/chain-checker.js";
import { getFixture, keyIdOf, startTestServer, type Fixture } from "../helpers/fixture.js";
import { requestFor, verifyNotarySignature, NOTARY_KEY_SPECS, type NotarySpec } from "../helpers/notation.js";
import { callSigner, loadSignerClientClass, signerClient, type KeyInfo, type SignResponse } from "../helpers/signer-client.js";

// --- What the spec (notation-plugin-protocol.md §3) says each key spec means; not taken from src/. ---
type Spec = NotarySpec;
const SPECS = NOTARY_KEY_SPECS;
const ALL_SPECS = Object.keys(SPECS) as Spec[];

const nodeHash = (h: string): string => h.replace("-", "").toLowerCase();

// --- A plain grpc-js client built from the .proto (test/helpers/signer-client.ts). ---

const call = callSigner;

async function expectStatus(p: Promise<unknown>, code: grpc.status, message?: RegExp): Promise<grpc.ServiceError> {
  try {
    await p;
  } catch (e) {
    const err = e as grpc.ServiceError;
    assert.equal(err.code, code, `expected ${grpc.status[code]}, got ${grpc.status[err.code] ?? err.code}: ${err.details ?? err.message}`);
    if (message) assert.match(err.details, message);
    return err;
  }
  assert.fail(`expected ${grpc.status[code]}, but the call succeeded`);
}

function tlsClient(f: Fixture, port: number, clientCert?: { key: Buffer; cert: Buffer }): grpc.Client {
  return signerClient(f.tls.ca, port, clientCert);
}

function notationPayload(kind: "jws" | "cose", spec: Spec): Buffer {
  const r = requestFor(`generate-signature-${kind}`, keyIdOf(spec), spec, {});
  return Buffer.from(r.payload as string, "base64");
}

/** notation checks the chain at its signing time, truncated to seconds (§5.1). */
const signingTime = (): Date => new Date(Math.floor(Date.now() / 1000) * 1000);

function assertConformingChain(chain: Buffer[], spec: Spec): void {
  assert.deepEqual(checkCodeSigningChain(chain, signingTime()), [], "chain violates notation's rules");
  // §5.1 step 5: the algorithm derived from the leaf key must be the key spec's.
  const key = new X509Certificate(chain[0] as Buffer).publicKey;
  assert.equal(key.asymmetricKeyType, SPECS[spec].kty);
  const d = key.asymmetricKeyDetails ?? {};
  assert.equal(SPECS[spec].kty === "rsa" ? d.modulusLength : d.namedCurve, SPECS[spec].size);
}

describe("gRPC Signer API against the real server (TLS, SoftHSM)", function () {
  this.timeout(120_000);

  let f: Fixture;
  let server: RunningServer;
  let client: grpc.Client;

  before(async () => {
    f = await getFixture();
    server = await startTestServer(f);
    client = tlsClient(f, server.port);
  });

  after(async () => {
    client?.close();
    await server?.close(1000);
  });

  describe("Sign, for every key spec", () => {
    for (const spec of ALL_SPECS) {
      const keyId = keyIdOf(spec);
      const s = SPECS[spec];

      it(`${spec}: signs notation's JWS signing input and COSE Sig_structure; both verify against the returned leaf`, async () => {
        for (const kind of ["jws", "cose"] as const) {
          const payload = notationPayload(kind, spec);
          if (kind === "jws") assert.match(payload.toString("latin1"), /^eyJ[\w-]+\.[\w-]+$/, "JWS signing input is header.payload");
          else assert.ok(payload[0] === 0x84 && payload.includes(Buffer.from("Signature1")), "COSE Sig_structure is a 4-array with context Signature1");

          const r = await call<SignResponse>(client, "Sign", { keyId, payload, hashAlgorithm: s.hash, keySpec: spec });
          assert.equal(r.keyId, keyId);
          assert.equal(r.keySpec, spec);
          assert.equal(r.signingAlgorithm, s.signingAlgorithm);
          assert.equal(r.keyVersion, 1);
          assert.match(r.requestId, /^[0-9a-f]{16}$/);
          assert.equal(r.certificateChain.length, 2);
          assert.ok(r.certificateChain[1]?.equals(f.roots.get(spec) as Buffer), "chain ends with the key's root");
          assert.equal(r.signature.length, s.sigLen, `${kind}: raw signature length (ECDSA r||s, RSA k bytes)`);
          assert.ok(verifyNotarySignature(payload, r.signature, r.certificateChain[0] as Buffer, spec), `${kind} signature verifies`);
          const tampered = Buffer.from(payload);
          tampered[tampered.length - 1] = (tampered[tampered.length - 1] as number) ^ 1;
          assert.equal(verifyNotarySignature(tampered, r.signature, r.certificateChain[0] as Buffer, spec), false, "a tampered payload does not verify");
          assertConformingChain(r.certificateChain, spec);
        }
      });

      it(`${spec}: signs a precomputed ${s.hash} digest, and a bare payload (no hash_algorithm, no key_spec)`, async () => {
        const payload = notationPayload("cose", spec);
        const digest = createHash(nodeHash(s.hash)).update(payload).digest();
        const r = await call<SignResponse>(client, "Sign", { keyId, digest, hashAlgorithm: s.hash });
        assert.equal(r.signingAlgorithm, s.signingAlgorithm);
        assert.equal(r.keySpec, spec);
        assert.equal(r.certificateChain.length, 2);
        assert.ok(verifyNotarySignature(payload, r.signature, r.certificateChain[0] as Buffer, spec), "digest signature verifies over the payload");
        assertConformingChain(r.certificateChain, spec);
        // Payload with neither hash_algorithm nor key_spec: both are optional.
        const r2 = await call<SignResponse>(client, "Sign", { keyId, payload });
        assert.ok(verifyNotarySignature(payload, r2.signature, r2.certificateChain[0] as Buffer, spec));
      });
    }

    it("a CA (root) key is refused with FAILED_PRECONDITION", async () => {
      await expectStatus(call(client, "Sign", { keyId: `${keyIdOf("EC-256")}-root-ca`, payload: Buffer.from("x") }), grpc.status.FAILED_PRECONDITION, /CA key/);
    });
  });

  describe("GetCertificateChain, DescribeKey, ListKeys", () => {
    it("GetCertificateChain returns the chain Sign returns, and it conforms, for every key", async () => {
      for (const spec of ALL_SPECS) {
        const keyId = keyIdOf(spec);
        const c = await call<{ keyId: string; certificateChain: Buffer[]; keyVersion: number }>(client, "GetCertificateChain", { keyId });
        assert.equal(c.keyId, keyId);
        assert.equal(c.keyVersion, 1);
        assert.equal(c.certificateChain.length, 2);
        const s = await call<SignResponse>(client, "Sign", { keyId, payload: Buffer.from("chain") });
        assert.deepEqual(c.certificateChain, s.certificateChain);
        assertConformingChain(c.certificateChain, spec);
      }
    });

    it("DescribeKey gives spec, algorithms, subject with C/ST/O, issuer, validity and fingerprint of the leaf", async () => {
      for (const spec of ALL_SPECS) {
        const keyId = keyIdOf(spec);
        const { key } = await call<{ key: KeyInfo }>(client, "DescribeKey", { keyId });
        const chain = (await call<{ certificateChain: Buffer[] }>(client, "GetCertificateChain", { keyId })).certificateChain;
        const leaf = new X509Certificate(chain[0] as Buffer);
        assert.equal(key.keyId, keyId);
        assert.equal(key.keySpec, spec);
        assert.equal(key.signingAlgorithm, SPECS[spec].signingAlgorithm);
        assert.equal(key.hashAlgorithm, SPECS[spec].hash);
        assert.equal(key.keyVersion, 1);
        for (const part of ["C=US", "ST=WA", "O=hsm-signer test", `CN=${keyId}`]) assert.ok(key.certificateSubject.includes(part), `subject "${key.certificateSubject}" has ${part}`);
        assert.ok(key.certificateIssuer.includes(`CN=${keyId} Root CA`), `issuer "${key.certificateIssuer}"`);
        assert.match(key.notBefore, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/, "RFC 3339");
        assert.match(key.notAfter, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/, "RFC 3339");
        assert.equal(new Date(key.notBefore).getTime(), new Date(leaf.validFrom).getTime());
        assert.equal(new Date(key.notAfter).getTime(), new Date(leaf.validTo).getTime());
        assert.ok(new Date(key.notBefore).getTime() < Date.now() - 60_000, "notBefore is backdated");
        assert.ok(new Date(key.notAfter).getTime() > Date.now() + 30 * 86400_000, "notAfter is well in the future");
        assert.equal(
          key.certificateSha256,
          createHash("sha256")
            .update(chain[0] as Buffer)
            .digest("hex"),
        );
      }
    });

    it("ListKeys lists all six test keys with their details and no CA root key", async () => {
      const { keys } = await call<{ keys: KeyInfo[] }>(client, "ListKeys", {});
      const byId = new Map(keys.map((k) => [k.keyId, k]));
      assert.equal(byId.size, keys.length, "no key listed twice");
      for (const spec of ALL_SPECS) {
        const k = byId.get(keyIdOf(spec));
        assert.ok(k, `${keyIdOf(spec)} is listed`);
        assert.equal(k.keySpec, spec);
        assert.equal(k.signingAlgorithm, SPECS[spec].signingAlgorithm);
        const { key } = await call<{ key: KeyInfo }>(client, "DescribeKey", { keyId: k.keyId });
        assert.deepEqual(k, key);
      }
      const rootSubjects = new Set([...f.roots.values()].map((der) => createHash("sha256").update(der).digest("hex")));
      for (const k of keys) {
        assert.ok(!k.keyId.endsWith("-root-ca"), `CA key ${k.keyId} must not be listed`);
        assert.ok(!rootSubjects.has(k.certificateSha256), `${k.keyId} has a root certificate`);
      }
    });
  });

  describe("errors: exact status codes and messages that name the problem", () => {
    const ec = keyIdOf("EC-256");
    const payload = Buffer.from("hello");

    it("unknown key → NOT_FOUND (Sign, DescribeKey, GetCertificateChain)", async () => {
      await expectStatus(call(client, "Sign", { keyId: "no-such-key", payload }), grpc.status.NOT_FOUND, /"no-such-key".*not found/);
      await expectStatus(call(client, "DescribeKey", { keyId: "no-such-key" }), grpc.status.NOT_FOUND, /"no-such-key".*not found/);
      await expectStatus(call(client, "GetCertificateChain", { keyId: "no-such-key" }), grpc.status.NOT_FOUND, /"no-such-key".*not found/);
    });

    it("unknown key version → NOT_FOUND", async () => {
      await expectStatus(call(client, "Sign", { keyId: ec, payload, keyVersion: 2 }), grpc.status.NOT_FOUND, /version 2/);
    });

    it("missing key_id → INVALID_ARGUMENT", async () => {
      await expectStatus(call(client, "Sign", { payload }), grpc.status.INVALID_ARGUMENT, /key_id is required/);
      await expectStatus(call(client, "DescribeKey", {}), grpc.status.INVALID_ARGUMENT, /key_id is required/);
    });

    it("neither payload nor digest → INVALID_ARGUMENT", async () => {
      await expectStatus(call(client, "Sign", { keyId: ec, hashAlgorithm: "SHA-256" }), grpc.status.INVALID_ARGUMENT, /payload or digest/);
    });

    it("digest without hash_algorithm → INVALID_ARGUMENT", async () => {
      await expectStatus(call(client, "Sign", { keyId: ec, digest: randomBytes(32) }), grpc.status.INVALID_ARGUMENT, /hash_algorithm is required/);
    });

    it("digest length wrong for its hash → INVALID_ARGUMENT", async () => {
      await expectStatus(call(client, "Sign", { keyId: ec, digest: randomBytes(31), hashAlgorithm: "SHA-256" }), grpc.status.INVALID_ARGUMENT, /digest is 31 bytes but a SHA-256 digest is 32 bytes/);
      await expectStatus(
        call(client, "Sign", { keyId: keyIdOf("EC-384"), digest: randomBytes(32), hashAlgorithm: "SHA-384" }),
        grpc.status.INVALID_ARGUMENT,
        /digest is 32 bytes but a SHA-384 digest is 48 bytes/,
      );
    });

    it("hash_algorithm that does not fit the key spec → INVALID_ARGUMENT", async () => {
      await expectStatus(call(client, "Sign", { keyId: ec, payload, hashAlgorithm: "SHA-512" }), grpc.status.INVALID_ARGUMENT, /SHA-512 does not fit key "test-ec-256".*SHA-256/);
      await expectStatus(
        call(client, "Sign", { keyId: keyIdOf("RSA-4096"), digest: randomBytes(32), hashAlgorithm: "SHA-256" }),
        grpc.status.INVALID_ARGUMENT,
        /SHA-256 does not fit key "test-rsa-4096"/,
      );
    });

    it("unknown hash_algorithm → INVALID_ARGUMENT", async () => {
      await expectStatus(call(client, "Sign", { keyId: ec, payload, hashAlgorithm: "MD5" }), grpc.status.INVALID_ARGUMENT, /hash_algorithm "MD5" is not one of/);
      await expectStatus(call(client, "Sign", { keyId: ec, digest: randomBytes(20), hashAlgorithm: "SHA-1" }), grpc.status.INVALID_ARGUMENT, /hash_algorithm "SHA-1" is not one of/);
    });

    it("payload over 1 MiB (1048577 bytes) → INVALID_ARGUMENT; exactly 1 MiB is signed", async () => {
      const big = randomBytes(1024 * 1024 + 1);
      await expectStatus(call(client, "Sign", { keyId: ec, payload: big }), grpc.status.INVALID_ARGUMENT, /1048577 bytes.*limit is 1048576/);
      const max = big.subarray(0, 1024 * 1024);
      const r = await call<SignResponse>(client, "Sign", { keyId: ec, payload: max });
      assert.ok(verifyNotarySignature(max, r.signature, r.certificateChain[0] as Buffer, "EC-256"));
    });

    it("key_spec mismatch or unknown key_spec → INVALID_ARGUMENT", async () => {
      await expectStatus(call(client, "Sign", { keyId: ec, payload, keySpec: "RSA-2048" }), grpc.status.INVALID_ARGUMENT, /is EC-256, not RSA-2048/);
      await expectStatus(call(client, "Sign", { keyId: ec, payload, keySpec: "EC-999" }), grpc.status.INVALID_ARGUMENT, /key_spec "EC-999"/);
    });

    it("a 100,000-character hash_algorithm or key_spec → INVALID_ARGUMENT at once, the value cut in the message; the channel keeps serving", async () => {
      // Echoed whole, the value made a grpc-message trailer over the client's 64 KiB header list limit: the answer never arrived.
      const soon = (): number => Date.now() + 5_000;
      const huge = "x".repeat(100_000);
      const e1 = await expectStatus(
        call(client, "Sign", { keyId: ec, payload, hashAlgorithm: huge }, soon()),
        grpc.status.INVALID_ARGUMENT,
        /^hash_algorithm "x{64}\.\.\.\(99936 more characters\)" is not one of/,
      );
      const e2 = await expectStatus(
        call(client, "Sign", { keyId: ec, payload, keySpec: `é${huge}` }, soon()),
        grpc.status.INVALID_ARGUMENT,
        /^key_spec "éx{63}\.\.\.\(99937 more characters\)" is not one of/,
      );
      for (const e of [e1, e2]) assert.ok(e.details.length < 300, `${e.details.length} characters`);
      const r = await call<SignResponse>(client, "Sign", { keyId: ec, payload }, soon());
      assert.equal(r.signature.length, 64);
    });

    it("errors carry the request id in metadata and details", async () => {
      const err = await expectStatus(call(client, "Sign", { keyId: "no-such-key", payload }), grpc.status.NOT_FOUND);
      const id = err.metadata.get("request-id")[0];
      assert.match(String(id), /^[0-9a-f]{16}$/);
      assert.ok(err.details.includes(`[request ${String(id)}]`), err.details);
    });
  });

  describe("deadlines", () => {
    it("a Sign whose deadline is already (almost) over → DEADLINE_EXCEEDED", async () => {
      await expectStatus(call(client, "Sign", { keyId: keyIdOf("RSA-4096"), payload: Buffer.from("late") }, Date.now() + 1), grpc.status.DEADLINE_EXCEEDED);
      await expectStatus(call(client, "Sign", { keyId: keyIdOf("EC-256"), payload: Buffer.from("late") }, Date.now() - 1000), grpc.status.DEADLINE_EXCEEDED);
    });

    it("the server enforces its own deadline cap (maxDeadlineMs 0) → DEADLINE_EXCEEDED from the server", async () => {
      const capped = await startTestServer(f, { maxDeadlineMs: 0 });
      const c = tlsClient(f, capped.port);
      try {
        await expectStatus(call(c, "Sign", { keyId: keyIdOf("EC-256"), payload: Buffer.from("capped") }), grpc.status.DEADLINE_EXCEEDED, /deadline.*\[request [0-9a-f]{16}\]/);
      } finally {
        c.close();
        await capped.close(1000);
      }
    });

    it("after deadline failures, no HSM session is left in use and signing still works", async () => {
      await new Promise((r) => setTimeout(r, 200));
      assert.equal(f.hsm.pool.stats.inUse, 0);
      const payload = Buffer.from("after");
      const r = await call<SignResponse>(client, "Sign", { keyId: keyIdOf("EC-256"), payload });
      assert.ok(verifyNotarySignature(payload, r.signature, r.certificateChain[0] as Buffer, "EC-256"));
    });
  });

  describe("transport security", () => {
    it("mTLS: refuses a client without a certificate or with one from another CA; accepts the fixture's client certificate", async () => {
      const mtls = await startTestServer(f, { mtls: true });
      const dir = mkdtempSync(join(tmpdir(), "intruder-"));
      const clients: grpc.Client[] = [];
      try {
        const anonymous = tlsClient(f, mtls.port);
        clients.push(anonymous);
        await expectStatus(call(anonymous, "DescribeKey", { keyId: keyIdOf("EC-256") }, Date.now() + 10_000), grpc.status.UNAVAILABLE);

        execFileSync(
          "openssl",
          ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", join(dir, "k.pem"), "-out", join(dir, "c.pem"), "-days", "1", "-subj", "/CN=intruder"],
          { stdio: "ignore" },
        );
        const intruder = tlsClient(f, mtls.port, { key: readFileSync(join(dir, "k.pem")), cert: readFileSync(join(dir, "c.pem")) });
        clients.push(intruder);
        await expectStatus(call(intruder, "DescribeKey", { keyId: keyIdOf("EC-256") }, Date.now() + 10_000), grpc.status.UNAVAILABLE);

        const good = tlsClient(f, mtls.port, { key: f.tls.clientKey, cert: f.tls.clientCert });
        clients.push(good);
        const { key } = await call<{ key: KeyInfo }>(good, "DescribeKey", { keyId: keyIdOf("EC-256") });
        assert.equal(key.keySpec, "EC-256");
        const payload = Buffer.from("mtls");
        const r = await call<SignResponse>(good, "Sign", { keyId: keyIdOf("EC-256"), payload });
        assert.ok(verifyNotarySignature(payload, r.signature, r.certificateChain[0] as Buffer, "EC-256"));
      } finally {
        for (const c of clients) c.close();
        await mtls.close(1000);
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it("plaintext (tls.insecure) is refused on non-loopback addresses and allowed on 127.0.0.1", async () => {
      for (const listen of ["0.0.0.0:0", "[::]:0", "localhost.example.com:0"]) {
        await assert.rejects(startTestServer(f, { listen, insecure: true }), (e: Error & { code?: string }) => {
          assert.equal(e.code, "CONFIG_INVALID", listen);
          assert.match(e.message, /loopback/);
          return true;
        });
      }
      const plain = await startTestServer(f, { insecure: true });
      const c = new (loadSignerClientClass())(`127.0.0.1:${plain.port}`, grpc.credentials.createInsecure());
      try {
        const { key } = await call<{ key: KeyInfo }>(c, "DescribeKey", { keyId: keyIdOf("EC-384") });
        assert.equal(key.keySpec, "EC-384");
      } finally {
        c.close();
        await plain.close(1000);
      }
    });
  });

  describe("concurrency", () => {
    it("200 concurrent Sign calls over EC-256 and RSA-2048 (4 HSM sessions) all return valid signatures", async () => {
      assert.equal(f.hsm.pool.stats.size, 4);
      const jobs = Array.from({ length: 200 }, (_, i) => {
        const spec: Spec = i % 2 === 0 ? "EC-256" : "RSA-2048";
        const payload = randomBytes(64 + (i % 7) * 300);
        return { spec, payload, p: call<SignResponse>(client, "Sign", { keyId: keyIdOf(spec), payload, keySpec: spec }) };
      });
      const results = await Promise.all(jobs.map((j) => j.p));
      const ids = new Set<string>();
      results.forEach((r, i) => {
        const j = jobs[i] as (typeof jobs)[number];
        assert.equal(r.keySpec, j.spec);
        assert.equal(r.signature.length, SPECS[j.spec].sigLen);
        assert.ok(verifyNotarySignature(j.payload, r.signature, r.certificateChain[0] as Buffer, j.spec), `call ${i} (${j.spec}) verifies`);
        ids.add(r.requestId);
      });
      assert.equal(ids.size, 200, "every call has its own request id");
      assert.equal(f.hsm.pool.stats.inUse, 0);
      assert.equal(f.hsm.pool.stats.waiting, 0);
    });
  });
});
