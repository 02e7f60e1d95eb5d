import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import * as grpc from "@grpc/grpc-js";
import { ObjectClass } from "graphene-pk11";
import { generateKeyPair, storeCertificate } from "../../src/hsm/index.js";
import { keyIdBytes } from "../../src/hsm/key-factory.js";
import { buildChain } from "../../src/signing/certificates.js";
import { createLeafCertificate, createRootCertificate, type DigestSigningKey } from "../../src/signing/x509-builder.js";
import { getFixture, keyIdOf, startTestServer, type Fixture, type TestServer } from "../helpers/fixture.js";
import { callSigner, signerClient, type KeyInfo } from "../helpers/signer-client.js";
import { auditRecordsIn } from "../helpers/audit-records.js";

const DAY = 86400_000;
/** The fixture's EC-256 key was certified by this HSM root key (createTestChain's naming). */
const ROOT_KEY_ID = `${keyIdOf("EC-256")}-root-ca`;
const EXPIRED = "validity-expired";
const NOT_YET = "validity-not-yet";
/** A CA renewed with the same name and key, both copies on the token, and a key it certified. */
const RENEWED_CA = "validity-renewed-ca";
const RENEWED = "validity-renewed";
/** A CA whose only copy on the token has expired, and a key whose own certificate is still valid. */
const EXPIRED_CA = "validity-expired-ca";
const UNDER_EXPIRED_CA = "validity-under-expired-ca";

/**
 * A verifier checks the signing certificate at signing time (notation refuses the whole signature
 * otherwise), so the service refuses to sign with a key whose certificate has expired or is not
 * yet valid, and does not offer it in ListKeys. Keys made in SoftHSM with the service's own key
 * factory, their certificates issued by the fixture's HSM root, served by the real gRPC server.
 */
describe("keys whose certificate is outside its validity (SoftHSM, gRPC)", function () {
  this.timeout(60_000);
  let f: Fixture;
  let server: TestServer;
  let client: grpc.Client;

  /** A new EC-256 key on the token and a code-signing leaf for it, issued as if `now` were `issuedAt`. */
  async function keyWithCertificate(keyId: string, issuedAt: Date, validityDays: number): Promise<void> {
    await f.hsm.pool.use((s) => generateKeyPair(s, keyId, "EC-256"));
    await f.hsm.keys.refresh();
    const root = await f.hsm.keys.getKey(ROOT_KEY_ID);
    const rootSpki = f.hsm.keys.publicKeySpki(ROOT_KEY_ID);
    const spki = f.hsm.keys.publicKeySpki(keyId);
    assert.ok(rootSpki && spki);
    const der = await createLeafCertificate({
      subject: `CN=${keyId}, O=hsm-signer test`,
      spki,
      issuerCertificate: root.chain[root.chain.length - 1] as Buffer,
      issuerKey: { spec: root.spec, spki: rootSpki, signDigest: (hash, digest) => f.hsm.keys.signDigest(root, hash, digest) },
      validityDays,
      now: issuedAt,
    });
    await f.hsm.pool.use((s) => storeCertificate(s, keyId, keyIdBytes(s, keyId), der));
    await f.hsm.keys.refresh();
  }

  /** A new EC-256 key on the token, as the issuer of certificates made here. */
  async function caKey(keyId: string): Promise<DigestSigningKey> {
    await f.hsm.pool.use((s) => generateKeyPair(s, keyId, "EC-256"));
    await f.hsm.keys.refresh();
    const record = await f.hsm.keys.getKey(keyId);
    const spki = f.hsm.keys.publicKeySpki(keyId);
    assert.ok(spki);
    return { spec: record.spec, spki, signDigest: (hash, digest) => f.hsm.keys.signDigest(record, hash, digest) };
  }
  const store = (label: string, ...ders: Buffer[]): Promise<void> =>
    f.hsm.pool.use((s) => {
      for (const der of ders) storeCertificate(s, label, keyIdBytes(s, label), der);
    });
  /** A new EC-256 key and its leaf, issued by `issuer` (certificate and key); stored on the token. */
  async function leafUnder(keyId: string, issuerCertificate: Buffer, issuerKey: DigestSigningKey): Promise<Buffer> {
    await f.hsm.pool.use((s) => generateKeyPair(s, keyId, "EC-256"));
    await f.hsm.keys.refresh();
    const spki = f.hsm.keys.publicKeySpki(keyId);
    assert.ok(spki);
    const der = await createLeafCertificate({ subject: `CN=${keyId}, O=hsm-signer test, ST=WA, C=US`, spki, issuerCertificate, issuerKey, validityDays: 30 });
    await store(keyId, der);
    return der;
  }
  let renewed: { oldCa: Buffer; newCa: Buffer; leaf: Buffer };

  before(async () => {
    f = await getFixture();
    // Issued 60 days ago for 30 days; and issued (notBefore) 10 days from now.
    await keyWithCertificate(EXPIRED, new Date(Date.now() - 60 * DAY), 30);
    await keyWithCertificate(NOT_YET, new Date(Date.now() + 10 * DAY), 30);
    // The renewed CA: its expired copy first on the token, then the renewal (same name, same key).
    const ca = await caKey(RENEWED_CA);
    const subject = "CN=validity renewed CA, O=hsm-signer test";
    const oldCa = await createRootCertificate({ subject, key: ca, validityDays: 30, now: new Date(Date.now() - 60 * DAY) });
    const newCa = await createRootCertificate({ subject, key: ca, validityDays: 365 });
    await store(RENEWED_CA, oldCa, newCa);
    renewed = { oldCa, newCa, leaf: await leafUnder(RENEWED, newCa, ca) };
    // The expired CA: its leaf made under a valid copy that never reaches the token.
    const ca2 = await caKey(EXPIRED_CA);
    const subject2 = "CN=validity expired CA, O=hsm-signer test";
    await store(EXPIRED_CA, await createRootCertificate({ subject: subject2, key: ca2, validityDays: 30, now: new Date(Date.now() - 60 * DAY) }));
    await leafUnder(UNDER_EXPIRED_CA, await createRootCertificate({ subject: subject2, key: ca2, validityDays: 365 }), ca2);
    await f.hsm.keys.refresh();
    server = await startTestServer(f);
    client = signerClient(f.tls.ca, server.port);
  });

  after(async () => {
    client?.close();
    await server?.close();
    await f.hsm.pool.use((s) => {
      for (const label of [EXPIRED, NOT_YET, RENEWED_CA, RENEWED, EXPIRED_CA, UNDER_EXPIRED_CA])
        for (const cls of [ObjectClass.CERTIFICATE, ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY]) {
          const found = s.find({ class: cls, label });
          for (let i = 0; i < found.length; i++) found.items(i).destroy();
        }
    });
    await f.hsm.keys.refresh();
  });

  async function refused(keyId: string): Promise<grpc.ServiceError> {
    return callSigner(client, "Sign", { keyId, payload: randomBytes(32) }).then(
      () => assert.fail(`${keyId} signed`),
      (e: grpc.ServiceError) => e,
    );
  }

  it("Sign with a key whose certificate expired: FAILED_PRECONDITION naming the date, and the refusal is audited", async () => {
    const key = await f.hsm.keys.getKey(EXPIRED);
    assert.equal(key.unusableReason, undefined, "the chain itself is complete");
    const e = await refused(EXPIRED);
    assert.equal(e.code, grpc.status.FAILED_PRECONDITION);
    assert.match(e.details, new RegExp(`certificate of key "${EXPIRED}" version 1 expired at ${key.certificate?.notAfter.toISOString().slice(0, 10)}`));
    const lines = auditRecordsIn(server.auditDir);
    const line = lines.find((l) => l.method === "Sign" && l.keyId === EXPIRED);
    assert.ok(line, "the refused Sign has its audit line");
    assert.notEqual(line.result, "ok");
  });

  it("Sign with a key whose certificate is not valid yet: FAILED_PRECONDITION", async () => {
    const e = await refused(NOT_YET);
    assert.equal(e.code, grpc.status.FAILED_PRECONDITION);
    assert.match(e.details, new RegExp(`certificate of key "${NOT_YET}" version 1 is not valid before`));
  });

  it("a CA renewed with the same name and key, both copies on the token: the chain holds the valid copy, whatever their order", async () => {
    const key = await f.hsm.keys.getKey(RENEWED);
    assert.equal(key.unusableReason, undefined);
    assert.deepEqual(key.chain, [renewed.leaf, renewed.newCa]);
    for (const pool of [
      [renewed.oldCa, renewed.newCa],
      [renewed.newCa, renewed.oldCa],
    ]) {
      assert.deepEqual(buildChain(renewed.leaf, pool).chain, [renewed.leaf, renewed.newCa]);
    }
    const ok = await callSigner<{ signature: Buffer; certificateChain: Buffer[] }>(client, "Sign", { keyId: RENEWED, payload: randomBytes(32) });
    assert.deepEqual(ok.certificateChain, [renewed.leaf, renewed.newCa]);
  });

  it("Sign with a key whose chain holds an expired CA certificate: FAILED_PRECONDITION naming that certificate, before any signature", async () => {
    const key = await f.hsm.keys.getKey(UNDER_EXPIRED_CA);
    assert.equal(key.unusableReason, undefined, "the chain itself is complete");
    assert.ok(key.certificate && key.certificate.notAfter.getTime() > Date.now(), "the key's own certificate is valid");
    const e = await refused(UNDER_EXPIRED_CA);
    assert.equal(e.code, grpc.status.FAILED_PRECONDITION);
    assert.match(e.details, new RegExp(`the CA certificate "CN=validity expired CA, O=hsm-signer test" in the chain of key "${UNDER_EXPIRED_CA}" version 1 expired at `));
    const { keys } = await callSigner<{ keys: KeyInfo[] }>(client, "ListKeys", {});
    assert.ok(!keys.some((k) => k.keyId === UNDER_EXPIRED_CA));
  });

  it("ListKeys offers neither; DescribeKey still describes them, and the fixture's keys still sign", async () => {
    const { keys } = await callSigner<{ keys: KeyInfo[] }>(client, "ListKeys", {});
    const ids = keys.map((k) => k.keyId);
    assert.ok(!ids.includes(EXPIRED) && !ids.includes(NOT_YET), ids.join(", "));
    assert.ok(ids.includes(keyIdOf("EC-256")));
    const { key } = await callSigner<{ key: KeyInfo }>(client, "DescribeKey", { keyId: EXPIRED });
    assert.equal(key.keyId, EXPIRED);
    assert.ok(new Date(key.notAfter).getTime() < Date.now(), key.notAfter);
    const ok = await callSigner<{ signature: Buffer }>(client, "Sign", { keyId: keyIdOf("EC-256"), payload: randomBytes(32) });
    assert.equal(ok.signature.length, 64);
  });
});
