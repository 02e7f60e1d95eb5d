import assert from "node:assert/strict";
import { randomBytes, X509Certificate } from "node:crypto";
import { CertificateType, KeyGenMechanism, ObjectClass, type ITemplate } from "graphene-pk11";
import type { SignerError } from "../../src/errors/index.js";
import { EC_PARAMS } from "../../src/hsm/mechanisms.js";
import { digest } from "../../src/signing/key-spec.js";
import { SigningService } from "../../src/signing/signing-service.js";
import { allowEverything } from "../helpers/memory-key-store.js";
import { createTestChain, storeCertificate } from "../../src/hsm/index.js";
import { getFixture, keyIdOf, type Fixture } from "../helpers/fixture.js";
import { verifyNotarySignature } from "../helpers/notation.js";

/**
 * Other tools share the token: what they store there that hsm-signer cannot read must not stop
 * the keys it can. One unparseable certificate object used to fail every scan: the service did not
 * start, every rescan failed, and after an HSM recovery the rescan failed for ever.
 */
describe("objects other tools leave on the token (SoftHSM)", function () {
  this.timeout(60_000);
  let f: Fixture;
  const id = randomBytes(8);
  const sharedId = randomBytes(8);
  const noPublicId = randomBytes(8);
  const rsaNoPublicId = randomBytes(8);
  const noSignId = randomBytes(8);

  before(async () => {
    f = await getFixture();
  });

  after(async () => {
    await f.hsm.pool.use((s) => {
      for (const cls of [ObjectClass.CERTIFICATE, ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY]) {
        for (const objectId of [id, sharedId, noPublicId, rsaNoPublicId, noSignId]) {
          const found = s.find({ class: cls, id: objectId });
          for (let i = 0; i < found.length; i++) found.items(i).destroy();
        }
      }
    });
    await f.hsm.keys.refresh();
  });

  it("certificate objects that are not usable X.509 certificates (not DER; DER of something else; an unknown key algorithm): skipped, every key still signs", async () => {
    await f.hsm.pool.use((s) => {
      const common = { class: ObjectClass.CERTIFICATE, token: true, private: false, id, subject: Buffer.from([0x30, 0x00]) };
      s.create({ ...common, certType: CertificateType.X_509, label: "not-a-certificate", value: Buffer.from("this is not DER at all") } as ITemplate);
      s.create({ ...common, certType: CertificateType.X_509, label: "der-but-no-certificate", value: Buffer.from([0x30, 0x03, 0x02, 0x01, 0x01]) } as ITemplate);
      // A copy of a root with its key algorithm changed to one OpenSSL does not know: it parses,
      // its subject is the issuer of a leaf, and reading its public key throws.
      const root = Buffer.from(f.roots.get("EC-256") as Buffer);
      const ecPublicKey = Buffer.from([0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01]);
      const at = root.indexOf(ecPublicKey);
      assert.ok(at > 0);
      root[at + ecPublicKey.length - 1] = 0x7f;
      assert.throws(() => new X509Certificate(root).publicKey);
      s.create({ ...common, certType: CertificateType.X_509, label: "unknown-key-algorithm", value: root } as ITemplate);
    });
    await f.hsm.keys.refresh();
    for (const spec of ["EC-256", "RSA-2048"] as const) {
      const key = await f.hsm.keys.getKey(keyIdOf(spec));
      assert.ok(key.chain.length >= 2, `${spec}: the chain is still found`);
      const payload = randomBytes(100);
      const signature = await f.hsm.keys.signDigest(key, key.info.hash, digest(key.info.hash, payload));
      assert.ok(verifyNotarySignature(payload, signature, key.chain[0] as Buffer, spec), `${spec}: the signature verifies`);
    }
    assert.ok(!f.hsm.keys.inventory().some((v) => v.keyId === "not-a-certificate" || v.keyId === "der-but-no-certificate"));
  });

  // Private keys never leave the HSM: a key that could have (imported, or extractable once) is not used.
  it("a key pair another tool made extractable: listed as unusable, with the reason; it never signs", async () => {
    await f.hsm.pool.use((s) => {
      const common = { token: true, label: "exportable-key", id };
      s.generateKeyPair(
        KeyGenMechanism.EC,
        { ...common, class: ObjectClass.PUBLIC_KEY, verify: true, paramsEC: EC_PARAMS["P-256"] },
        { ...common, class: ObjectClass.PRIVATE_KEY, private: true, sensitive: true, extractable: true, sign: true },
      );
    });
    await f.hsm.keys.refresh();
    const key = await f.hsm.keys.getKey("exportable-key");
    assert.match(key.unusableReason ?? "", /extractable/);
    await assert.rejects(new SigningService({ keys: f.hsm.keys, authorizer: allowEverything }).sign({ keyId: "exportable-key", payload: randomBytes(10) }, { id: "test" }), (e: SignerError) => {
      assert.equal(e.code, "KEY_UNUSABLE");
      assert.match(e.message, /is extractable \(CKA_EXTRACTABLE is true\).*signs only with keys that never left it/);
      return true;
    });
    // The keys hsm-signer made (sensitive, never extractable) are unaffected.
    assert.equal((await f.hsm.keys.getKey(keyIdOf("EC-256"))).unusableReason, undefined);
  });

  // pkcs11-tool --id 01 twice (other labels): two key pairs share one CKA_ID, the link between a
  // key, its public key object and its certificate. The certificate of one was taken for the
  // other, and a leaf could certify the other key's public key: signatures that do not verify.
  it("two key pairs another tool gave the same CKA_ID: both unusable, saying why; no certificate is made for either", async () => {
    await f.hsm.pool.use((s) => {
      for (const label of ["shared-id-a", "shared-id-b"]) {
        const common = { token: true, label, id: sharedId };
        s.generateKeyPair(
          KeyGenMechanism.EC,
          { ...common, class: ObjectClass.PUBLIC_KEY, verify: true, paramsEC: EC_PARAMS["P-256"] },
          { ...common, class: ObjectClass.PRIVATE_KEY, private: true, sensitive: true, extractable: false, sign: true },
        );
      }
    });
    const certificates = (): Promise<number> => f.hsm.pool.use((s) => s.find({ class: ObjectClass.CERTIFICATE, id: sharedId }).length);
    const before = await certificates();
    await assert.rejects(createTestChain(f.hsm.pool, f.hsm.keys, { keyId: "shared-id-a", keySpec: "EC-256", rootKeyId: keyIdOf("EC-384") + "-root-ca" }), (e: SignerError) => {
      assert.equal(e.code, "KEY_UNUSABLE");
      assert.match(e.message, /2 private keys on the token carry the CKA_ID/);
      return true;
    });
    assert.equal(await certificates(), before, "no certificate was stored under the shared CKA_ID");
    await f.hsm.keys.refresh();
    for (const label of ["shared-id-a", "shared-id-b"]) {
      const key = await f.hsm.keys.getKey(label);
      assert.match(key.unusableReason ?? "", /2 private keys on the token carry the CKA_ID [0-9a-f]+ .*give each key pair its own CKA_ID/, label);
    }
  });

  // The public key object is what a certificate is checked against: without it, any certificate
  // with the key's CKA_ID was taken (here one for another EC-256 key), and the key signed with a
  // chain its signatures never verify against.
  it("a key pair whose public key object is gone and whose CKA_ID has a certificate for another key: unusable, saying why", async () => {
    const otherLeaf = (await f.hsm.keys.getKey(keyIdOf("EC-256"))).chain[0] as Buffer;
    await f.hsm.pool.use((s) => {
      const common = { token: true, label: "no-public-key", id: noPublicId };
      s.generateKeyPair(
        KeyGenMechanism.EC,
        { ...common, class: ObjectClass.PUBLIC_KEY, verify: true, paramsEC: EC_PARAMS["P-256"] },
        { ...common, class: ObjectClass.PRIVATE_KEY, private: true, sensitive: true, extractable: false, sign: true },
      );
      const pub = s.find({ class: ObjectClass.PUBLIC_KEY, id: noPublicId });
      for (let i = 0; i < pub.length; i++) pub.items(i).destroy();
      storeCertificate(s, "no-public-key", noPublicId, otherLeaf);
    });
    await f.hsm.keys.refresh();
    const key = await f.hsm.keys.getKey("no-public-key");
    assert.match(key.unusableReason ?? "", /no public key object on the token/);
    await assert.rejects(new SigningService({ keys: f.hsm.keys, authorizer: allowEverything }).sign({ keyId: "no-public-key", payload: randomBytes(10) }, { id: "test" }), (e: SignerError) => {
      assert.equal(e.code, "KEY_UNUSABLE");
      return true;
    });
  });

  it("an RSA key pair whose public key object is gone: its private key's modulus is the public key; certified, it signs and verifies", async () => {
    await f.hsm.pool.use(async (s) => {
      const common = { token: true, label: "rsa-no-public-key", id: rsaNoPublicId };
      s.generateKeyPair(
        KeyGenMechanism.RSA,
        { ...common, class: ObjectClass.PUBLIC_KEY, verify: true, modulusBits: 2048, publicExponent: Buffer.from([1, 0, 1]) },
        { ...common, class: ObjectClass.PRIVATE_KEY, private: true, sensitive: true, extractable: false, sign: true },
      );
      const pub = s.find({ class: ObjectClass.PUBLIC_KEY, id: rsaNoPublicId });
      for (let i = 0; i < pub.length; i++) pub.items(i).destroy();
      return Promise.resolve();
    });
    await createTestChain(f.hsm.pool, f.hsm.keys, { keyId: "rsa-no-public-key", keySpec: "RSA-2048", rootKeyId: `${keyIdOf("EC-384")}-root-ca` });
    const key = await f.hsm.keys.getKey("rsa-no-public-key");
    assert.equal(key.unusableReason, undefined);
    const payload = randomBytes(100);
    const signature = await f.hsm.keys.signDigest(key, key.info.hash, digest(key.info.hash, payload));
    assert.ok(verifyNotarySignature(payload, signature, key.chain[0] as Buffer, "RSA-2048"));
  });

  // pkcs11-tool --usage-derive, or a key meant for decryption: C_SignInit answers
  // CKR_KEY_FUNCTION_NOT_PERMITTED, which reached callers as INTERNAL while ListKeys offered the key.
  it("a key pair whose private key may not sign (CKA_SIGN false): unusable, saying why, and not offered; no signature is attempted", async () => {
    await f.hsm.pool.use((s) => {
      const common = { token: true, label: "no-sign-key", id: noSignId };
      s.generateKeyPair(
        KeyGenMechanism.EC,
        { ...common, class: ObjectClass.PUBLIC_KEY, verify: true, paramsEC: EC_PARAMS["P-256"] },
        { ...common, class: ObjectClass.PRIVATE_KEY, private: true, sensitive: true, extractable: false, sign: false, derive: true },
      );
    });
    await createTestChain(f.hsm.pool, f.hsm.keys, { keyId: "no-sign-key", keySpec: "EC-256", rootKeyId: `${keyIdOf("EC-384")}-root-ca` }).catch(() => undefined);
    await f.hsm.keys.refresh();
    const key = await f.hsm.keys.getKey("no-sign-key");
    assert.match(key.unusableReason ?? "", /may not sign \(CKA_SIGN is false\)/);
    await assert.rejects(new SigningService({ keys: f.hsm.keys, authorizer: allowEverything }).sign({ keyId: "no-sign-key", payload: randomBytes(10) }, { id: "test" }), (e: SignerError) => {
      assert.equal(e.code, "KEY_UNUSABLE");
      return true;
    });
  });

  // A state object is JSON on the token: one that another writer (an older or newer hsm-signer, a
  // script) left in another shape must not stop the scan, which every key, the start and each
  // rescan after an HSM recovery depend on.
  it("a key state object whose versions are not in the expected shape is ignored; every other key still signs", async () => {
    const broken = [
      { label: "hsm-signer:key:state-no-id", value: { schema: 1, keyId: "state-no-id", generation: 1, versions: [{ version: 1 }] } },
      { label: "hsm-signer:key:state-null", value: { schema: 1, keyId: "state-null", generation: 1, versions: [null] } },
      { label: "hsm-signer:key:state-odd-id", value: { schema: 1, keyId: "state-odd-id", generation: 1, versions: [{ version: 1, id: 7 }] } },
    ];
    try {
      await f.hsm.pool.use((s) => {
        for (const b of broken) {
          s.create({ class: ObjectClass.DATA, token: true, private: true, application: "hsm-signer", label: b.label, value: Buffer.from(JSON.stringify(b.value)) } as ITemplate);
        }
      });
      await f.hsm.keys.refresh();
      const key = await f.hsm.keys.getKey(keyIdOf("EC-256"));
      const payload = randomBytes(100);
      const signature = await f.hsm.keys.signDigest(key, key.info.hash, digest(key.info.hash, payload));
      assert.ok(verifyNotarySignature(payload, signature, key.chain[0] as Buffer, "EC-256"));
    } finally {
      await f.hsm.pool.use((s) => {
        for (const b of broken) {
          const found = s.find({ class: ObjectClass.DATA, label: b.label });
          for (let i = 0; i < found.length; i++) found.items(i).destroy();
        }
      });
      await f.hsm.keys.refresh();
    }
  });
});
