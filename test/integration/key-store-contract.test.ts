import { KeyCustody, createTestChain } from "../../src/hsm/index.js";
import { createLeafCertificate, type DigestSigningKey } from "../../src/signing/x509-builder.js";
import { keyStoreContract } from "../helpers/key-store-contract.js";
import { getFixture, keyIdOf } from "../helpers/fixture.js";

/** The same contract suite as the in-memory double's (test/unit/signing-core.test.ts), on the PKCS#11 key store and SoftHSM. */
keyStoreContract("PKCS#11 key store on SoftHSM", async () => {
  const f = await getFixture();
  const keys = f.hsm.keys;
  const custody = new KeyCustody(f.hsm.pool, keys);
  // A key a custodian disabled, and one without a certificate (it cannot sign artifacts).
  await createTestChain(f.hsm.pool, keys, { keyId: "contract-disabled", keySpec: "EC-256" });
  await custody.setState("contract-disabled", 1, false, "contract: disabled by a custodian");
  await custody.generateKey("contract-unusable", "EC-256");
  // A rotated key: version 2, certified by the same HSM root, is current; version 1 is old but usable.
  const rotated = "contract-rotated";
  const { root } = await createTestChain(f.hsm.pool, keys, { keyId: rotated, keySpec: "EC-256" });
  const { version } = await custody.rotateKey(rotated);
  const rootRecord = await keys.getKey(`${rotated}-root-ca`);
  const issuerKey: DigestSigningKey = { spec: rootRecord.spec, spki: keys.publicKeySpki(rootRecord.keyId) as Buffer, signDigest: (h, d) => keys.signInternal(rootRecord, h, d) };
  const leaf = await createLeafCertificate({
    subject: `C=US, ST=WA, O=hsm-signer test, CN=${rotated} v${version}`,
    spki: keys.publicKeySpki(rotated, version) as Buffer,
    issuerCertificate: root,
    issuerKey,
    validityDays: 30,
  });
  await custody.importChain(rotated, version, [leaf, root], true);
  return { keys, ec256: keyIdOf("EC-256"), ec384: keyIdOf("EC-384"), disabled: "contract-disabled", unusable: "contract-unusable", rotated: { keyId: rotated, oldVersion: version - 1 } };
});
