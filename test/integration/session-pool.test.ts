import assert from "node:assert/strict";
import { findSlot, loadModule, SessionPool } from "../../src/hsm/index.js";
import type { SignerError } from "../../src/errors/index.js";
import { getFixture } from "../helpers/fixture.js";

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
      pool.close();
    }
  });
  // A wrong PIN is tested in test/e2e/service-process.test.ts, in a process of its own: login state
  // is per process, so here the fixture's login would answer CKR_USER_ALREADY_LOGGED_IN.
});
