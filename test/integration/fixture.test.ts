import assert from "node:assert/strict";
import { KEY_SPECS } from "../../src/signing/key-spec.js";
import { getFixture, keyIdOf } from "../helpers/fixture.js";

describe("shared SoftHSM fixture", function () {
  this.timeout(120_000);

  it("holds a usable key with a complete chain for every key spec", async () => {
    const f = await getFixture();
    for (const spec of KEY_SPECS) {
      const k = await f.hsm.keys.getKey(keyIdOf(spec));
      assert.equal(k.spec, spec);
      assert.equal(k.unusableReason, undefined);
      assert.equal(k.chain.length, 2);
    }
  });
});
