import assert from "node:assert/strict";
import crypto, { randomBytes } from "node:crypto";
import { syncBuiltinESMExports } from "node:module";
import { SigningService } from "../../src/signing/signing-service.js";
import { keyStoreContract } from "../helpers/key-store-contract.js";
import { allowEverything, MemoryKeyStore } from "../helpers/memory-key-store.js";

/** The signing core without SoftHSM: the contract suite on the in-memory key store, then what only the double can show. */
keyStoreContract("in-memory double (software keys)", async () => {
  const keys = new MemoryKeyStore();
  await keys.add("mem-ec-256", "EC-256");
  await keys.add("mem-ec-384", "EC-384");
  await keys.add("mem-disabled", "EC-256", { disabledReason: "contract: disabled by a custodian" });
  await keys.add("mem-unusable", "EC-256", { withoutCertificate: true });
  await keys.add("mem-rotated", "EC-256");
  await keys.add("mem-rotated", "EC-256");
  return { keys, ec256: "mem-ec-256", ec384: "mem-ec-384", disabled: "mem-disabled", unusable: "mem-unusable", rotated: { keyId: "mem-rotated", oldVersion: 1 } };
});

/**
 * Counts the hashes made while `fn` runs: node:crypto's createHash is swapped on the module
 * object and pushed to the ES module bindings (syncBuiltinESMExports), then put back.
 */
async function countingHashes(fn: () => Promise<unknown>): Promise<string[]> {
  const original = crypto.createHash;
  const made: string[] = [];
  crypto.createHash = ((alg: string, o?: crypto.HashOptions) => {
    made.push(alg.toLowerCase());
    return original(alg, o);
  }) as typeof crypto.createHash;
  syncBuiltinESMExports();
  try {
    await fn();
  } finally {
    crypto.createHash = original;
    syncBuiltinESMExports();
  }
  return made;
}

describe("the signing core hashes a payload once", () => {
  let keys: MemoryKeyStore;
  let core: SigningService;

  before(async () => {
    keys = new MemoryKeyStore();
    await keys.add("ec-256", "EC-256");
    await keys.add("ec-384", "EC-384");
    core = new SigningService({ keys, authorizer: allowEverything });
  });

  it("a SHA-256 key: one SHA-256 of the payload serves the audit and the signature", async () => {
    const payload = randomBytes(64 * 1024);
    const made = await countingHashes(() => core.sign({ keyId: "ec-256", payload }, { id: "t" }));
    assert.deepEqual(made, ["sha256"]);
    assert.equal(keys.signed.at(-1)?.digest.toString("hex"), crypto.createHash("sha256").update(payload).digest("hex"));
  });

  it("a SHA-384 key: the audit's SHA-256 and the key's SHA-384, one each", async () => {
    const made = await countingHashes(() => core.sign({ keyId: "ec-384", payload: randomBytes(100) }, { id: "t" }));
    assert.deepEqual(made.sort(), ["sha256", "sha384"]);
  });

  it("a digest the caller made: nothing hashed", async () => {
    const made = await countingHashes(() => core.sign({ keyId: "ec-256", digest: randomBytes(32), hashAlgorithm: "SHA-256" }, { id: "t" }));
    assert.deepEqual(made, []);
  });
});
