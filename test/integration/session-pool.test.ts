import assert from "node:assert/strict";
import { createHash, createPublicKey, verify, X509Certificate } from "node:crypto";
import { ObjectClass } from "graphene-pk11";
import { findSlot, generateKeyPair, loadModule, SessionPool } from "../../src/hsm/index.js";
import type { SignerError } from "../../src/errors/index.js";
import { getFixture, keyIdOf } from "../helpers/fixture.js";

describe("SessionPool on SoftHSM: a full pool under deadlines", function () {
  this.timeout(30_000);

  it("a waiter gets DEADLINE_EXCEEDED at its deadline, waiters beyond the limit get POOL_EXHAUSTED, a released session goes to the next waiter", async () => {
    const f = await getFixture();
    const pool = new SessionPool(findSlot(loadModule(f.token.module), { tokenLabel: f.token.label }), f.token.pin, { size: 1, maxWaiters: 1 });
    pool.start();
    try {
      const held = await pool.acquire();
      const started = Date.now();
      await assert.rejects(pool.acquire(Date.now() + 150), (e: SignerError) => e.code === "DEADLINE_EXCEEDED");
      assert.ok(Date.now() - started >= 140, "waited until its deadline");
      const waiting = pool.acquire(Date.now() + 5_000);
      await assert.rejects(pool.acquire(Date.now() + 5_000), (e: SignerError) => e.code === "POOL_EXHAUSTED" && e.retryAfterMs !== undefined);
      const counts = (): object => ({ size: pool.stats.size, inUse: pool.stats.inUse, idle: pool.stats.idle, waiting: pool.stats.waiting });
      assert.deepEqual(counts(), { size: 1, inUse: 1, idle: 0, waiting: 1 });
      pool.release(held);
      const next = await waiting;
      assert.equal(next, held, "the same logged-in session, handed over");
      pool.release(next);
      assert.deepEqual(counts(), { size: 1, inUse: 0, idle: 1, waiting: 0 });
    } finally {
      await pool.close(0);
    }
  });
  // SoftHSM drops every object handle of a token when the process's last session on it closes;
  // a pool that closed its sessions one failed operation at a time left the key store's handles
  // dead (CKR_OBJECT_HANDLE_INVALID) until the next rescan.
  it("every session released as lost, one after another: replaced at once, and cached key handles still sign", async () => {
    const f = await getFixture();
    const key = await f.hsm.keys.getKey(keyIdOf("EC-256"));
    const size = f.hsm.pool.stats.size;
    const all = await Promise.all(Array.from({ length: size }, () => f.hsm.pool.acquire()));
    for (const s of all) f.hsm.pool.release(s, true);
    assert.equal(f.hsm.pool.stats.idle, size, "each lost session was replaced");
    const digest = createHash("sha256").update("after").digest();
    const sig = await f.hsm.keys.signDigest(key, "SHA-256", digest);
    assert.ok(verify("sha256", Buffer.from("after"), { key: new X509Certificate(key.chain[0] as Buffer).publicKey, dsaEncoding: "ieee-p1363" }, sig));
  });

  // A wrong PIN is tested in test/e2e/service-process.test.ts, in a process of its own: login state
  // is per process, so here the fixture's login would answer CKR_USER_ALREADY_LOGGED_IN.

  // SoftHSM is not safe with C_FindObjects while C_GenerateKeyPair runs on a libuv thread: about
  // 1 generation in 10 failed with CKR_GENERAL_ERROR, so 40 in a row all succeeded by chance
  // in about 1 run in 70. use() runs object operations one at a time.
  it("key generations (on a libuv thread) beside a rescan loop: every generation succeeds, every rescan too", async () => {
    const f = await getFixture();
    const prefix = `gen-beside-scan-${process.pid}-`;
    let stop = false;
    let scans = 0;
    const scanning = (async () => {
      while (!stop) {
        await f.hsm.keys.refresh();
        scans++;
        await new Promise((r) => setImmediate(r));
      }
    })();
    try {
      for (let i = 0; i < 40; i++) await f.hsm.pool.use((s) => generateKeyPair(s, `${prefix}${i}`, "EC-256"));
    } finally {
      stop = true;
      await scanning;
      await f.hsm.pool.use((s) => {
        for (const cls of [ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY]) {
          const found = s.find({ class: cls });
          for (let i = 0; i < found.length; i++) {
            const o = found.items(i);
            if (String(o.getAttribute("label")).startsWith(prefix)) o.destroy();
          }
        }
      });
      await f.hsm.keys.refresh();
    }
    assert.ok(scans >= 20, `the rescans ran alongside (${scans})`);
  });

  it("object operations wait in order for the running one; a waiter whose deadline passes gets DEADLINE_EXCEEDED and the others still run", async () => {
    const f = await getFixture();
    let release!: () => void;
    const order: string[] = [];
    const first = f.hsm.pool.use(async (s) => {
      order.push("first");
      await new Promise<void>((r) => (release = r));
      return s.find({ class: ObjectClass.PRIVATE_KEY }).length;
    });
    const late = f.hsm.pool.use(() => order.push("late"), Date.now() + 100);
    const second = f.hsm.pool.use(() => order.push("second"));
    await assert.rejects(late, (e: SignerError) => e.code === "DEADLINE_EXCEEDED" && /another HSM object operation/.test(e.message));
    assert.deepEqual(order, ["first"], "nothing ran beside the first");
    release();
    assert.ok((await first) > 0);
    await second;
    assert.deepEqual(order, ["first", "second"]);
  });
  // The first signature of a version records it on the token (one shared object operation per
  // version). That operation carried the deadline of the caller that started it: a second caller
  // with time to spare failed DEADLINE_EXCEEDED with the first, behind a long key generation.
  it("first signatures of a version behind a long object operation: one caller's short deadline does not fail another's", async () => {
    const f = await getFixture();
    const keyId = `first-sign-${process.pid}`;
    await f.hsm.pool.use((s) => generateKeyPair(s, keyId, "EC-256"));
    await f.hsm.keys.refresh();
    const key = await f.hsm.keys.getKey(keyId);
    const spki = createPublicKey({ key: f.hsm.keys.publicKeySpki(keyId) as Buffer, format: "der", type: "spki" });
    let release!: () => void;
    const held = f.hsm.pool.use(() => new Promise<void>((r) => (release = r)));
    try {
      const digest = createHash("sha256").update("first").digest();
      const short = f.hsm.keys.signDigest(key, "SHA-256", digest, Date.now() + 100);
      const patient = f.hsm.keys.signDigest(key, "SHA-256", digest, Date.now() + 20_000);
      await assert.rejects(short, (e: SignerError) => e.code === "DEADLINE_EXCEEDED");
      release();
      await held;
      assert.ok(verify("sha256", Buffer.from("first"), { key: spki, dsaEncoding: "ieee-p1363" }, await patient), "the caller with time left is signed for");
    } finally {
      release();
      await held;
      await f.hsm.pool.use((s) => {
        const ids = new Set<string>();
        for (const cls of [ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY]) {
          const found = s.find({ class: cls, label: keyId });
          for (let i = 0; i < found.length; i++) {
            ids.add((found.items(i).getAttribute("id") as Buffer).toString("hex"));
            found.items(i).destroy();
          }
        }
        for (const id of ids) {
          const markers = s.find({ class: ObjectClass.DATA, label: `hsm-signer:signed:${id}` });
          for (let i = 0; i < markers.length; i++) markers.items(i).destroy();
        }
      });
      await f.hsm.keys.refresh();
    }
  });
});
