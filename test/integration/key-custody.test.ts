import "reflect-metadata";
import assert from "node:assert/strict";
import { createHash, randomBytes, X509Certificate } from "node:crypto";
import * as x509 from "@peculiar/x509";
import { KeyGenMechanism, ObjectClass } from "graphene-pk11";
import type { SignerError } from "../../src/errors/index.js";
import { KeyCustody } from "../../src/hsm/index.js";
import { generateKeyPair, storeCertificate } from "../../src/hsm/key-factory.js";
import { writeKeyState } from "../../src/hsm/key-state.js";
import { EC_PARAMS } from "../../src/hsm/mechanisms.js";
import { getFixture, keyIdOf, type Fixture } from "../helpers/fixture.js";

/**
 * Custody changes against the real SoftHSM token when another replica changes the same key, or
 * when a change stopped half-way. The fixture's key store does not refresh by itself, so its view
 * stays as stale as that of a replica between two polls.
 */
describe("key custody: concurrent replicas and interrupted changes (SoftHSM)", function () {
  this.timeout(60_000);
  const keyId = "custody-race";
  let f: Fixture;
  let custody: KeyCustody;

  const privateKeys = (): Promise<number> => f.hsm.pool.use((s) => s.find({ class: ObjectClass.PRIVATE_KEY, label: keyId }).length);

  before(async () => {
    f = await getFixture();
    custody = new KeyCustody(f.hsm.pool, f.hsm.keys);
    await custody.generateKey(keyId, "EC-256");
  });

  it("a change made from a stale view is refused instead of undoing another replica's; retried, it keeps both", async () => {
    const seen = await f.hsm.keys.view(keyId);
    const generation = seen.state?.generation ?? 0;
    // Another replica disables the key; this one has not rescanned yet.
    await f.hsm.pool.use((s) => writeKeyState(s, { keyId, disabled: { at: new Date().toISOString(), reason: "other replica" }, versions: seen.state?.versions ?? [] }, generation));
    await assert.rejects(custody.rotateKey(keyId), (e: SignerError) => e.code === "FAILED_PRECONDITION" && /was changed on the token meanwhile/.test(e.message));
    assert.equal(await privateKeys(), 1, "no key pair is left for the refused version");
    const r = await custody.rotateKey(keyId);
    assert.equal(r.version, 2);
    assert.equal(r.view.state?.disabled?.reason, "other replica", "the other replica's change is kept");
    assert.equal(await privateKeys(), 2);
  });

  it("a destroy that stopped between its record and the objects can be finished", async () => {
    await custody.setState(keyId, 1, false, "retired");
    const view = await f.hsm.keys.view(keyId);
    const state = structuredClone(view.state!);
    const v1 = state.versions.find((v) => v.version === 1)!;
    v1.destroyed = new Date().toISOString();
    // What destroyVersion writes first; the process stops before C_DestroyObject.
    await f.hsm.pool.use((s) => writeKeyState(s, { keyId, disabled: state.disabled, versions: state.versions }, state.generation));
    await f.hsm.keys.refresh();
    assert.equal(await privateKeys(), 2, "the key pair of version 1 is still on the token");
    const r = await custody.destroyVersion(keyId, 1, { confirm: `${keyId}@v1`, destroyCertificate: false, acknowledgeSigned: false });
    assert.deepEqual(r.destroyed, ["private key", "public key"]);
    assert.equal(await privateKeys(), 1);
    await assert.rejects(
      custody.destroyVersion(keyId, 1, { confirm: `${keyId}@v1`, destroyCertificate: false, acknowledgeSigned: false }),
      (e: SignerError) => e.code === "FAILED_PRECONDITION" && /already destroyed/.test(e.message),
    );
  });

  it("a test chain for a rotated key certifies the newest version under its own CKA_ID", async () => {
    const rotated = "custody-test-chain";
    await custody.generateKey(rotated, "EC-256");
    await custody.rotateKey(rotated);
    const r = await custody.createTestChain({ keyId: rotated, keySpec: "EC-256" });
    const view = await f.hsm.keys.view(rotated);
    const v2 = view.versions.find((v) => v.record.version === 2);
    assert.equal(v2?.record.unusableReason, undefined, "version 2 got its chain");
    assert.equal(view.current?.record.version, 2);
    assert.deepEqual(v2?.record.chain, r.chain);
    const v1 = view.versions.find((v) => v.record.version === 1);
    const v1Certificates = await f.hsm.pool.use((s) => s.find({ class: ObjectClass.CERTIFICATE, id: Buffer.from(v1?.idHex ?? "", "hex") }).length);
    assert.equal(v1Certificates, 0, "nothing was stored under version 1's CKA_ID");
  });

  it("a rotation that stopped between the key pair and its record: the stray key pair is listed as unusable and a custodian can destroy it", async () => {
    const stopped = "custody-stopped-rotation";
    await custody.generateKey(stopped, "EC-256");
    // What rotateKey does before it records the version; the process stops there.
    await f.hsm.pool.use((s) => generateKeyPair(s, stopped, "EC-256", { allowExistingLabel: true }));
    await f.hsm.keys.refresh();
    const view = await f.hsm.keys.view(stopped);
    const stray = view.versions.find((v) => v.record.version === 2);
    assert.match(stray?.record.unusableReason ?? "", /is not a version hsm-signer made/);
    assert.equal(view.versions.find((v) => v.record.version === 1)?.problem, undefined, "version 1 is unaffected");
    const labelled = (): Promise<number> => f.hsm.pool.use((s) => s.find({ class: ObjectClass.PRIVATE_KEY, label: stopped }).length);
    assert.equal(await labelled(), 2);
    const r = await custody.destroyVersion(stopped, 2, { confirm: `${stopped}@v2`, destroyCertificate: false, acknowledgeSigned: false });
    assert.deepEqual(r.destroyed, ["private key", "public key"]);
    assert.equal(await labelled(), 1);
    assert.equal(r.view.versions.find((v) => v.record.version === 2)?.state, "destroyed", "recorded as destroyed: its number is not given again");
    assert.equal(r.view.versions.find((v) => v.record.version === 1)?.state, "enabled");
    assert.equal((await custody.rotateKey(stopped)).version, 3);
  });

  it("destroying a stray key pair of a disabled key is no internal error either", async () => {
    const stopped = "custody-stopped-disabled";
    await custody.generateKey(stopped, "EC-256");
    await custody.setState(stopped, 0, false, "retired");
    await f.hsm.pool.use((s) => generateKeyPair(s, stopped, "EC-256", { allowExistingLabel: true }));
    await f.hsm.keys.refresh();
    const r = await custody.destroyVersion(stopped, 2, { confirm: `${stopped}@v2`, destroyCertificate: false, acknowledgeSigned: false });
    assert.deepEqual(r.destroyed, ["private key", "public key"]);
    assert.equal(r.view.state?.disabled?.reason, "retired");
  });

  it("importing a chain whose leaf is on the token without the key's CKA_ID (pkcs11-tool --write-object without --id) links the leaf to the key", async () => {
    const keyId2 = "custody-unlinked-leaf";
    const made = await custody.createTestChain({ keyId: keyId2, keySpec: "EC-256" });
    const leaf = made.chain[0] as Buffer;
    await f.hsm.pool.use((s) => {
      const found = s.find({ class: ObjectClass.CERTIFICATE, label: keyId2 });
      for (let i = 0; i < found.length; i++) found.items(i).destroy();
      storeCertificate(s, keyId2, Buffer.alloc(0), leaf);
    });
    await f.hsm.keys.refresh();
    assert.match((await f.hsm.keys.getKey(keyId2)).unusableReason ?? "", /has no certificate/);
    const r = await custody.importChain(keyId2, 0, made.chain, false);
    assert.equal(r.stored, 1, "the leaf is stored under the key's CKA_ID; the CA certificates were there");
    assert.equal((await f.hsm.keys.getKey(keyId2)).unusableReason, undefined);
  });

  it("a test chain whose root key id is the key id itself is refused before anything is made", async () => {
    const same = "custody-own-root";
    await assert.rejects(custody.createTestChain({ keyId: same, keySpec: "EC-256", rootKeyId: same }), (e: SignerError) => {
      assert.equal(e.code, "INVALID_ARGUMENT");
      assert.match(e.message, /root key id must differ from the key id/);
      return true;
    });
    const objects = await f.hsm.pool.use((s) => s.find({ label: same }).length);
    assert.equal(objects, 0, "no key pair and no CA certificate were left under the key id");
  });

  describe("a refused test chain leaves the token as it was", () => {
    const labelled = (label: string): Promise<number> => f.hsm.pool.use((s) => s.find({ label }).length);

    it("an existing key of another spec: INVALID_ARGUMENT, and no root CA key or certificate is made", async () => {
      const rel = "custody-spec-mismatch";
      await custody.generateKey(rel, "EC-256");
      await assert.rejects(custody.createTestChain({ keyId: rel, keySpec: "EC-384" }), (e: SignerError) => {
        assert.equal(e.code, "INVALID_ARGUMENT");
        assert.equal(e.message, `key "${rel}" already exists as EC-256, not EC-384`);
        return true;
      });
      assert.equal(await labelled(`${rel}-root-ca`), 0, "no root CA key pair or certificate");
    });

    it("an organization that cannot be encoded in a subject (a lone surrogate): INVALID_ARGUMENT, and no key pair is made", async () => {
      const odd = "custody-odd-organization";
      await assert.rejects(custody.createTestChain({ keyId: odd, keySpec: "EC-256", organization: "Example \uD800" }), (e: SignerError) => {
        assert.equal(e.code, "INVALID_ARGUMENT");
        assert.match(e.message, /^the root certificate's subject \(from the organization, state and country\) ".*" cannot be encoded in a certificate: it holds text that is not valid Unicode$/);
        return true;
      });
      assert.equal(await labelled(odd), 0);
      assert.equal(await labelled(`${odd}-root-ca`), 0);
    });

    it("a key id of 128 characters, whose default root key id would be 136: INVALID_ARGUMENT naming the limit, and nothing is made; with a root key id of its own it is made", async () => {
      const long = `custody-long-${"k".repeat(115)}`;
      assert.equal(long.length, 128);
      await assert.rejects(custody.createTestChain({ keyId: long, keySpec: "EC-256" }), (e: SignerError) => {
        assert.equal(e.code, "INVALID_ARGUMENT");
        assert.match(e.message, /^the root key id would be "custody-long-k+-root-ca" \(the key id and "-root-ca"\), 136 characters: longer than the 128 characters a key id may have/);
        assert.match(e.message, /name the root with root_key_id \(--root-key-id\), or use a key id of at most 120 characters$/);
        return true;
      });
      assert.equal(await labelled(long), 0);
      assert.equal(await labelled(`${long}-root-ca`), 0);
      const r = await custody.createTestChain({ keyId: long, keySpec: "EC-256", rootKeyId: "custody-long-root" });
      assert.equal(r.chain.length, 2);
    });

    it("a key id whose every version was destroyed: FAILED_PRECONDITION, and no key pair that could never sign is made under it", async () => {
      const gone = "custody-all-destroyed";
      await custody.generateKey(gone, "EC-256");
      await custody.setState(gone, 1, false, "retired");
      await custody.destroyVersion(gone, 1, { confirm: `${gone}@v1`, destroyCertificate: false, acknowledgeSigned: false });
      await assert.rejects(custody.createTestChain({ keyId: gone, keySpec: "EC-256" }), (e: SignerError) => {
        assert.equal(e.code, "FAILED_PRECONDITION");
        assert.match(e.message, /has no key pair left on the token \(its versions were destroyed\); rotate it/);
        return true;
      });
      const privateKeys = await f.hsm.pool.use((s) => s.find({ class: ObjectClass.PRIVATE_KEY, label: gone }).length);
      assert.equal(privateKeys, 0);
      assert.equal(await labelled(`${gone}-root-ca`), 0);
    });

    it("a key whose chain lacks its issuer: KEY_UNUSABLE before a root that could not complete it is made; a root key without its certificate gets it again", async () => {
      const leafKey = "custody-incomplete-chain";
      const otherRoot = `${leafKey}-other-root`;
      await custody.createTestChain({ keyId: leafKey, keySpec: "EC-256", rootKeyId: otherRoot });
      await f.hsm.pool.use((s) => s.find({ class: ObjectClass.CERTIFICATE, label: otherRoot }).items(0).destroy());
      await f.hsm.keys.refresh();
      assert.match((await f.hsm.keys.getKey(leafKey)).unusableReason ?? "", /chain of key "custody-incomplete-chain" is incomplete/);
      // The default root (<key id>-root-ca) would be a new key: it cannot have issued the leaf.
      await assert.rejects(custody.createTestChain({ keyId: leafKey, keySpec: "EC-256" }), (e: SignerError) => {
        assert.equal(e.code, "KEY_UNUSABLE");
        assert.match(e.message, /is incomplete/);
        return true;
      });
      assert.equal(await labelled(`${leafKey}-root-ca`), 0);
      // The root key that issued it is still there: its certificate is made again, and completes the chain.
      const r = await custody.createTestChain({ keyId: leafKey, keySpec: "EC-256", rootKeyId: otherRoot });
      assert.deepEqual(r.created, { rootKey: false, rootCertificate: true, key: false, leafCertificate: false });
      assert.equal((await f.hsm.keys.getKey(leafKey)).unusableReason, undefined);
    });
  });

  it("a CSR for a key pair that cannot sign (CKA_SIGN false) is refused with the reason, not an internal error", async () => {
    const noSign = "custody-no-sign";
    await f.hsm.pool.use((s) => {
      const common = { token: true, label: noSign, id: randomBytes(16) };
      s.generateKeyPair(
        KeyGenMechanism.EC,
        { ...common, class: ObjectClass.PUBLIC_KEY, verify: true, paramsEC: EC_PARAMS["P-256"] },
        { ...common, class: ObjectClass.PRIVATE_KEY, private: true, sensitive: true, extractable: false, sign: false, derive: true },
      );
    });
    await f.hsm.keys.refresh();
    await assert.rejects(custody.createCsr(noSign, 0, "CN=x, O=Example, ST=WA, C=US"), (e: SignerError) => {
      assert.equal(e.code, "FAILED_PRECONDITION");
      assert.match(e.message, /may not sign \(CKA_SIGN is false\)/);
      return true;
    });
    await f.hsm.pool.use((s) => {
      for (const cls of [ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY]) {
        const found = s.find({ class: cls, label: noSign });
        for (let i = 0; i < found.length; i++) found.items(i).destroy();
      }
    });
    await f.hsm.keys.refresh();
  });

  describe("bad custodian input is INVALID_ARGUMENT naming the problem, not an internal error", () => {
    const keyId3 = "custody-bad-input";
    before(() => custody.generateKey(keyId3, "EC-256"));

    it("a CSR subject with an attribute type notation cannot match (@peculiar/x509 has no OID for FOO)", async () => {
      await assert.rejects(custody.createCsr(keyId3, 0, "C=US, ST=WA, O=x, FOO=bar"), (e: SignerError) => {
        assert.equal(e.code, "INVALID_ARGUMENT");
        assert.match(
          e.message,
          /^subject "C=US, ST=WA, O=x, FOO=bar" cannot name a notation identity: it has FOO, which notation cannot match in a trust policy; use only C, O, OU, CN, L, ST, SERIALNUMBER, STREET, POSTALCODE/,
        );
        return true;
      });
    });

    it("a CSR subject with SERIALNUMBER, STREET and POSTALCODE (which notation names) is made, with those attributes", async () => {
      const { pem } = await custody.createCsr(keyId3, 0, "CN=bad-input, SERIALNUMBER=42, STREET=1 Main St, POSTALCODE=98101, O=Example, ST=WA, C=US");
      const csr = new x509.Pkcs10CertificateRequest(pem);
      const types = csr.subjectName.toJSON().flatMap((rdn) => Object.keys(rdn));
      assert.deepEqual(
        types,
        ["C", "ST", "STREET", "POSTALCODE", "O", "CN", "SERIALNUMBER"].map((t) => ({ STREET: "2.5.4.9", POSTALCODE: "2.5.4.17", SERIALNUMBER: "2.5.4.5" })[t] ?? t),
      );
    });

    it("a certificate whose public key algorithm Node cannot decode (an unknown OID), given to import", async () => {
      const leaf = (await f.hsm.keys.getKey(keyIdOf("EC-256"))).chain[0] as Buffer;
      // id-ecPublicKey (1.2.840.10045.2.1) becomes 1.2.840.10045.2.9, which OpenSSL does not know.
      const oid = Buffer.from("06072a8648ce3d0201", "hex");
      const at = leaf.indexOf(oid);
      assert.ok(at > 0);
      const odd = Buffer.from(leaf);
      odd[at + oid.length - 1] = 0x09;
      assert.throws(() => new X509Certificate(odd).publicKey, /decode error/, "Node parses the certificate but cannot read its key");
      await assert.rejects(custody.importChain(keyId3, 0, [odd], false), (e: SignerError) => {
        assert.equal(e.code, "INVALID_ARGUMENT");
        assert.match(e.message, /^input 1 of 1 \(not PEM, so read as DER\) has a public key that cannot be read \(algorithm 1\.2\.840\.10045\.2\.9\): .*decode error/);
        return true;
      });
      const certificates = await f.hsm.pool.use((s) => s.find({ class: ObjectClass.CERTIFICATE, label: keyId3 }).length);
      assert.equal(certificates, 0);
    });
  });

  describe("a disabled key or version signs nothing for custodians either (KEY_DISABLED, as Sign answers)", () => {
    it("CreateCsr for a disabled key, or a disabled version, is refused with the custodian's reason", async () => {
      const compromised = "custody-disabled-csr";
      await custody.generateKey(compromised, "EC-256");
      await custody.setState(compromised, 0, false, "compromised");
      await assert.rejects(custody.createCsr(compromised, 0, "CN=x, O=Example, ST=WA, C=US"), (e: SignerError) => {
        assert.equal(e.code, "KEY_DISABLED");
        assert.equal(e.message, `key "${compromised}" is disabled by a custodian: compromised`);
        return true;
      });
      await custody.setState(compromised, 0, true, "");
      await custody.setState(compromised, 1, false, "superseded");
      await assert.rejects(custody.createCsr(compromised, 1, "CN=x, O=Example, ST=WA, C=US"), (e: SignerError) => {
        assert.equal(e.code, "KEY_DISABLED");
        assert.equal(e.message, `version 1 of key "${compromised}" is disabled by a custodian: superseded`);
        return true;
      });
    });

    it("a test chain under a disabled root CA key is refused before anything is made: the root certifies no new leaf", async () => {
      const root = "custody-disabled-root";
      await custody.createTestChain({ keyId: "custody-disabled-root-leaf-1", keySpec: "EC-256", rootKeyId: root });
      await custody.setState(root, 0, false, "compromised");
      const leaf2 = "custody-disabled-root-leaf-2";
      await assert.rejects(custody.createTestChain({ keyId: leaf2, keySpec: "EC-256", rootKeyId: root }), (e: SignerError) => {
        assert.equal(e.code, "KEY_DISABLED");
        assert.equal(e.message, `key "${root}" is disabled by a custodian: compromised`);
        return true;
      });
      assert.equal(await f.hsm.pool.use((s) => s.find({ label: leaf2 }).length), 0, "no key pair and no certificate for the new leaf");
    });

    it("a key record read before its key was disabled does not sign through the key store", async () => {
      const keyId4 = "custody-disabled-after-read";
      await custody.createTestChain({ keyId: keyId4, keySpec: "EC-256" });
      const record = await f.hsm.keys.getKey(keyId4);
      await custody.setState(keyId4, 0, false, "compromised");
      const digest = createHash("sha256").update("x").digest();
      for (const sign of [() => f.hsm.keys.signDigest(record, "SHA-256", digest), () => f.hsm.keys.signInternal(record, "SHA-256", digest)]) {
        await assert.rejects(sign(), (e: SignerError) => {
          assert.equal(e.code, "KEY_DISABLED");
          assert.equal(e.message, `key "${keyId4}" is disabled by a custodian: compromised`);
          return true;
        });
      }
    });
  });

  // Two key pairs with one label and no state object are both unusable: which one signs would be a
  // guess. A custodian's disable of one of them wrote a state that adopted both as versions, and
  // the other one then signed: a disable made a key usable.
  it("changes to a key id whose label two key pairs of another tool carry are refused; neither key becomes usable", async () => {
    const dup = "custody-dup-label";
    for (const tmp of [`${dup}-a`, `${dup}-b`]) {
      await f.hsm.pool.use((s) => {
        const common = { token: true, label: tmp, id: randomBytes(16) };
        s.generateKeyPair(
          KeyGenMechanism.EC,
          { ...common, class: ObjectClass.PUBLIC_KEY, verify: true, paramsEC: EC_PARAMS["P-256"] },
          { ...common, class: ObjectClass.PRIVATE_KEY, private: true, sensitive: true, extractable: false, sign: true },
        );
      });
      await custody.createTestChain({ keyId: tmp, keySpec: "EC-256", rootKeyId: `${dup}-root` });
      await f.hsm.pool.use((s) => s.find({ class: ObjectClass.PRIVATE_KEY, label: tmp }).items(0).setAttribute({ label: dup }));
    }
    await f.hsm.keys.refresh();
    const usable = async (): Promise<number[]> => (await f.hsm.keys.view(dup)).versions.filter((v) => !v.record.unusableReason).map((v) => v.record.version);
    assert.deepEqual(await usable(), [], "both unusable to begin with");
    const refused = (e: SignerError): boolean => e.code === "FAILED_PRECONDITION" && /2 private keys on the token carry the label "custody-dup-label"/.test(e.message);
    await assert.rejects(custody.setState(dup, 1, false, "the other one is ours"), refused);
    await assert.rejects(custody.setState(dup, 0, true, ""), refused);
    await assert.rejects(custody.rotateKey(dup), refused);
    await f.hsm.keys.refresh();
    assert.equal((await f.hsm.keys.view(dup)).state, undefined, "no state object was written");
    assert.deepEqual(await usable(), []);
  });
});
