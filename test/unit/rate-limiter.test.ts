import assert from "node:assert/strict";
import { SignerError } from "../../src/errors/index.js";
import { RateLimiter, type TokenBucketSpec } from "../../src/auth/rate-limiter.js";

describe("RateLimiter (token buckets)", () => {
  const alice: TokenBucketSpec = { key: "id:alice", ratePerSecond: 10, burst: 3 };
  const bob: TokenBucketSpec = { key: "id:bob", ratePerSecond: 10, burst: 3 };
  const key: TokenBucketSpec = { key: "key:release", ratePerSecond: 1, burst: 4 };

  it("lets a burst through, then refuses with the delay until the next token", () => {
    const rl = new RateLimiter();
    for (let i = 0; i < 3; i++) assert.deepEqual(rl.take([alice], 0), { ok: true });
    assert.deepEqual(rl.take([alice], 0), { ok: false, retryAfterMs: 100 });
    // 40 ms later 0.4 of a token has come back: 60 ms to go.
    assert.deepEqual(rl.take([alice], 40), { ok: false, retryAfterMs: 60 });
  });

  it("refills at the configured rate, never above the burst", () => {
    const rl = new RateLimiter();
    for (let i = 0; i < 3; i++) rl.take([alice], 0);
    assert.equal(rl.take([alice], 100).ok, true);
    assert.equal(rl.take([alice], 100).ok, false);
    // A long quiet period refills only up to the burst.
    for (let i = 0; i < 3; i++) assert.equal(rl.take([alice], 60_000).ok, true, `take ${i}`);
    assert.equal(rl.take([alice], 60_000).ok, false);
  });

  it("keeps identities apart", () => {
    const rl = new RateLimiter();
    for (let i = 0; i < 3; i++) rl.take([alice], 0);
    assert.equal(rl.take([alice], 0).ok, false);
    assert.equal(rl.take([bob], 0).ok, true);
  });

  it("shares a per-key bucket across identities, all or nothing", () => {
    const rl = new RateLimiter();
    // The key allows 4 at once: alice takes 3 (her burst), bob 1, then the key is empty.
    for (let i = 0; i < 3; i++) assert.equal(rl.take([alice, key], 0).ok, true);
    assert.equal(rl.take([bob, key], 0).ok, true);
    const refused = rl.take([bob, key], 0);
    assert.deepEqual(refused, { ok: false, retryAfterMs: 1000 });
    // The refusal by the key bucket did not spend bob's own tokens: he still has 2 for other keys.
    const other: TokenBucketSpec = { key: "key:other", ratePerSecond: 1, burst: 4 };
    assert.equal(rl.take([bob, other], 0).ok, true);
    assert.equal(rl.take([bob, other], 0).ok, true);
    assert.equal(rl.take([bob, other], 0).ok, false);
  });

  it("reports the longest wait when several buckets are empty", () => {
    const rl = new RateLimiter();
    const slow: TokenBucketSpec = { key: "slow", ratePerSecond: 0.5, burst: 1 };
    const fast: TokenBucketSpec = { key: "fast", ratePerSecond: 100, burst: 1 };
    assert.equal(rl.take([slow, fast], 0).ok, true);
    assert.deepEqual(rl.take([slow, fast], 0), { ok: false, retryAfterMs: 2000 });
  });

  it("applies a changed limit (policy reload) to an existing bucket", () => {
    const rl = new RateLimiter();
    for (let i = 0; i < 3; i++) rl.take([alice], 0);
    const faster = { ...alice, ratePerSecond: 1000 };
    assert.equal(rl.take([faster], 1).ok, true);
  });

  it("throws RATE_LIMITED with retryAfterMs from enforce", () => {
    const rl = new RateLimiter();
    const one: TokenBucketSpec = { key: "one", ratePerSecond: 4, burst: 1 };
    rl.enforce([one], 0);
    assert.throws(
      () => rl.enforce([one], 0),
      (e: unknown) => e instanceof SignerError && e.code === "RATE_LIMITED" && e.retryAfterMs === 250,
    );
  });

  it("rejects a bucket that could never pass", () => {
    const rl = new RateLimiter();
    assert.throws(() => rl.take([{ key: "x", ratePerSecond: 0, burst: 1 }]), SignerError);
    assert.throws(() => rl.take([{ key: "x", ratePerSecond: 1, burst: 0 }]), SignerError);
  });

  it("stays within its size bound, evicting the least recently used bucket", () => {
    const rl = new RateLimiter({ maxBuckets: 100 });
    const spec = (n: number): TokenBucketSpec => ({ key: `id:${n}`, ratePerSecond: 0.001, burst: 2 });
    rl.take([spec(0)], 0);
    for (let n = 1; n < 1000; n++) {
      rl.take([spec(n)], 0);
      if (n % 50 === 0) rl.take([spec(0)], 0); // keeps id:0 recently used
      assert.ok(rl.size <= 100, `size ${rl.size}`);
    }
    // id:0 survived the churn: its bucket is empty now (burst 2, both spent), not a fresh one.
    assert.equal(rl.take([spec(0)], 0).ok, false);
    // id:1 was evicted long ago; it starts over with a full bucket.
    assert.equal(rl.take([spec(1)], 0).ok, true);
  });

  it("drops buckets that have refilled completely (idle callers cost no memory)", () => {
    const rl = new RateLimiter();
    for (let n = 0; n < 50; n++) rl.take([{ key: `id:${n}`, ratePerSecond: 10, burst: 5 }], 0);
    assert.equal(rl.size, 50);
    // Long after: every take sweeps a few of the oldest, idle, buckets.
    for (let i = 0; i < 30; i++) rl.take([{ key: "busy", ratePerSecond: 1, burst: 100 }], 10_000);
    assert.ok(rl.size <= 1, `size ${rl.size}`);
  });
});
