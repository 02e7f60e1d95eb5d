import { performance } from "node:perf_hooks";
import { SignerError } from "../errors/index.js";

/** One token bucket: `key` names it (for example the caller or the key id), the rest is its shape. */
export interface TokenBucketSpec {
  key: string;
  /** Tokens added per second, > 0. */
  ratePerSecond: number;
  /** Bucket size: how many requests may pass at once after a quiet period, >= 1. */
  burst: number;
}

export type TakeResult = { ok: true } | { ok: false; retryAfterMs: number };
const TAKEN: TakeResult = Object.freeze({ ok: true });

/**
 * Upper bound on live buckets. Callers are authenticated, so this only matters when very many
 * identities or keys show up; past it the least recently used bucket goes first.
 */
export const DEFAULT_MAX_BUCKETS = 100_000;
/**
 * Buckets checked for idleness per `take`. A bucket that has refilled completely is the same as
 * no bucket, so dropping it changes nothing; a few per call keeps the map near the active set
 * without a timer and without a full scan.
 */
const IDLE_SWEEP_PER_TAKE = 2;

interface Bucket {
  tokens: number;
  /** Clock reading (ms) at which `tokens` was computed. */
  at: number;
  ratePerSecond: number;
  burst: number;
}

export interface RateLimiterOptions {
  maxBuckets?: number;
}

/**
 * Token buckets keyed by name. `take` consumes one token from every named bucket or from none
 * (so a request refused by the per-key limit does not also eat the caller's own allowance).
 * Times are milliseconds of a monotonic clock; pass `now` only to make tests deterministic, and
 * then always pass it.
 */
export class RateLimiter {
  private readonly buckets = new Map<string, Bucket>();
  private readonly maxBuckets: number;

  constructor(options: RateLimiterOptions = {}) {
    this.maxBuckets = options.maxBuckets ?? DEFAULT_MAX_BUCKETS;
    if (!Number.isInteger(this.maxBuckets) || this.maxBuckets < 1) throw new RangeError("maxBuckets must be a positive integer");
  }

  /** Live buckets, for metrics and tests. */
  get size(): number {
    return this.buckets.size;
  }

  take(specs: readonly TokenBucketSpec[], now: number = performance.now()): TakeResult {
    if (specs.length === 0) {
      // No limit applies (the usual case: a policy without rate limits): nothing to build per call.
      if (this.buckets.size > 0) this.sweepIdle(now);
      return TAKEN;
    }
    // The same bucket named twice costs two tokens, as two separate limits would.
    const wanted = new Map<string, { bucket: Bucket; cost: number }>();
    for (const spec of specs) {
      checkSpec(spec);
      const entry = wanted.get(spec.key);
      if (entry) entry.cost += 1;
      else wanted.set(spec.key, { bucket: this.refilled(spec, now), cost: 1 });
    }
    let retryAfterMs = 0;
    for (const { bucket, cost } of wanted.values()) {
      if (bucket.tokens >= cost) continue;
      // A cost above the burst can never be met; report the time to a full bucket anyway.
      const missing = Math.min(cost, bucket.burst) - bucket.tokens;
      // The epsilon keeps float noise (60.000000001) from adding a millisecond; at least 1 ms.
      retryAfterMs = Math.max(retryAfterMs, 1, Math.ceil((missing / bucket.ratePerSecond) * 1000 - 1e-6));
    }
    if (retryAfterMs > 0) {
      this.sweepIdle(now);
      return { ok: false, retryAfterMs };
    }
    for (const { bucket, cost } of wanted.values()) bucket.tokens -= cost;
    this.sweepIdle(now);
    return TAKEN;
  }

  /** `take`, throwing RATE_LIMITED with the retry delay when refused. */
  enforce(specs: readonly TokenBucketSpec[], now?: number): void {
    const r = this.take(specs, now);
    if (!r.ok) throw new SignerError("RATE_LIMITED", `rate limit exceeded; retry after ${r.retryAfterMs} ms`, { retryAfterMs: r.retryAfterMs });
  }

  /** The bucket for `spec`, refilled up to `now` and moved to the most recently used end. */
  private refilled(spec: TokenBucketSpec, now: number): Bucket {
    let b = this.buckets.get(spec.key);
    if (b) {
      this.buckets.delete(spec.key);
      // A policy reload may change a limit; the bucket keeps what it has, within the new burst.
      b.ratePerSecond = spec.ratePerSecond;
      b.burst = spec.burst;
      refill(b, now);
    } else {
      b = { tokens: spec.burst, at: now, ratePerSecond: spec.ratePerSecond, burst: spec.burst };
      while (this.buckets.size >= this.maxBuckets) this.evictOldest();
    }
    this.buckets.set(spec.key, b);
    return b;
  }

  private evictOldest(): void {
    const oldest = this.buckets.keys().next();
    if (!oldest.done) this.buckets.delete(oldest.value);
  }

  /** Drops the least recently used buckets if they have refilled completely. */
  private sweepIdle(now: number): void {
    let n = 0;
    for (const [key, b] of this.buckets) {
      if (n++ >= IDLE_SWEEP_PER_TAKE) break;
      refill(b, now);
      if (b.tokens < b.burst) break;
      this.buckets.delete(key);
    }
  }
}

function refill(b: Bucket, now: number): void {
  // max(0, ...): a clock read out of order must not drain the bucket.
  const elapsedMs = Math.max(0, now - b.at);
  b.tokens = Math.min(b.burst, b.tokens + (elapsedMs / 1000) * b.ratePerSecond);
  b.at = Math.max(b.at, now);
}

function checkSpec(spec: TokenBucketSpec): void {
  if (!(Number.isFinite(spec.ratePerSecond) && spec.ratePerSecond > 0) || !(Number.isFinite(spec.burst) && spec.burst >= 1)) {
    throw new SignerError("INTERNAL", `invalid rate limit for ${spec.key}: ratePerSecond must be > 0 and burst >= 1`);
  }
}
