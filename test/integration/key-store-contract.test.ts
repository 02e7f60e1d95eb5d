import { KeyCustody, createTestChain } from "../../src/hsm/index.js";
import { keyStoreContract } from "../helpers/key-store-contract.js";
import { getFixture, keyIdOf } from "../helpers/fixture.js";

/** The same contract suite as the in-memory double's (test/unit/signing-core.test.ts), on the PKCS#11 key store and SoftHSM. */
keyStoreContract("PKCS#11 key store on SoftHSM", async () => {
  const f = await getFixture();
  const custody = new KeyCustody(f.hsm.pool, f.hsm.keys);
  // A key a custodian disabled, and one without a certificate (it cannot sign artifacts).
  await createTestChain(f.hsm.pool, f.hsm.keys, { keyId: "contract-disabled", keySpec: "EC-256" });
  await custody.setState("contract-disabled", 1, false, "contract: disabled by a custodian");
  await custody.generateKey("contract-unusable", "EC-256");
  return { keys: f.hsm.keys, ec256: keyIdOf("EC-256"), ec384: keyIdOf("EC-384"), disabled: "contract-disabled", unusable: "contract-unusable" };
});
