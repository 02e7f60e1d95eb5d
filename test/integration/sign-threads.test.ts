import assert from "node:assert/strict";
import { createHash, verify, X509Certificate } from "node:crypto";
import { ObjectClass } from "graphene-pk11";
import pkcs11js from "pkcs11js";
import { SignThreads } from "../../src/hsm/sign-threads.js";
import { getFixture, keyIdOf } from "../helpers/fixture.js";

describe("SignThreads: C_SignInit + C_Sign in worker threads on pooled sessions", function () {
  this.timeout(60_000);

  it("queues jobs beyond its threads and signs each on its own session", async () => {
    const f = await getFixture();
    const key = await f.hsm.keys.getKey(keyIdOf("EC-256"));
    const leaf = new X509Certificate(key.chain[0] as Buffer).publicKey;
    const threads = new SignThreads(f.token.module, 1);
    const sessions = await Promise.all([f.hsm.pool.acquire(), f.hsm.pool.acquire(), f.hsm.pool.acquire()]);
    try {
      const handle = sessions[0]!.find({ class: ObjectClass.PRIVATE_KEY, label: keyIdOf("EC-256") }).items(0).handle;
      const messages = sessions.map((_, i) => Buffer.from(`job ${i}`));
      const digests = messages.map((m) => createHash("sha256").update(m).digest());
      // Three jobs, one thread: two of them wait in the queue.
      const sigs = await Promise.all(sessions.map((s, i) => threads.sign(s.handle, handle, { mechanism: pkcs11js.CKM_ECDSA }, digests[i] as Buffer, 80)));
      sigs.forEach((sig, i) => {
        assert.equal(sig.length, 64);
        assert.ok(verify("sha256", messages[i] as Buffer, { key: leaf, dsaEncoding: "ieee-p1363" }, sig), `job ${i} verifies`);
      });
      // A PKCS#11 failure comes back with its CKR_ code, for the HSM layer to translate.
      await assert.rejects(threads.sign(sessions[0]!.handle, Buffer.alloc(8, 0xff), { mechanism: pkcs11js.CKM_ECDSA }, digests[0] as Buffer, 80), (e: Error & { code?: number }) => {
        assert.match(e.message, /CKR_/);
        assert.equal(typeof e.code, "number");
        return true;
      });
    } finally {
      for (const s of sessions) f.hsm.pool.release(s, true);
      await threads.close();
    }
  });
});
