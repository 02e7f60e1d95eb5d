import assert from "node:assert/strict";
import { medianInterval } from "../bench/load.js";

/**
 * The benchmark's confidence interval of a median (npm run bench prints it with each CPU verdict):
 * the order statistics and their chances, against values worked out by hand from the binomial
 * distribution, and a check by simulation that the interval holds the median as often as it says.
 */
describe("bench: the confidence interval of a median", () => {
  it("is the range for 5 values (1 - 2/32 = 93.75%) and for 7 (98.4%: the next, x2 to x6, is only 87.5%)", () => {
    assert.deepEqual(medianInterval([3, 1, 5, 2, 4]), { low: 1, high: 5, level: 0.9375 });
    assert.deepEqual(medianInterval([7, 1, 6, 2, 5, 3, 4]), { low: 1, high: 7, level: 1 - 2 / 128 });
  });

  it("narrows with more values: x2 to x9 of 10 (1 - 2 * 11/1024), x3 to x9 of 11 (1 - 2 * 67/2048)", () => {
    const ten = [10, 9, 8, 7, 6, 5, 4, 3, 2, 1];
    assert.deepEqual(medianInterval(ten), { low: 2, high: 9, level: 1 - (2 * 11) / 1024 });
    const eleven = [...ten, 11];
    assert.deepEqual(medianInterval(eleven), { low: 3, high: 9, level: 1 - (2 * 67) / 2048 });
  });

  it("says how little a range of 3 values is worth, and has nothing to say of none", () => {
    assert.deepEqual(medianInterval([2, 3, 1]), { low: 1, high: 3, level: 0.75 });
    const none = medianInterval([]);
    assert.ok(Number.isNaN(none.low) && Number.isNaN(none.high) && none.level === 0);
  });

  it("holds the true median at least as often as its level says (simulated, skewed values)", () => {
    // Exponential values (median ln 2), 4,000 samples of 9 with a seeded generator.
    let seed = 42;
    // mulberry32: 32-bit integer arithmetic, exact in JavaScript.
    const rand = (): number => {
      seed = (seed + 0x6d2b79f5) | 0;
      let x = Math.imul(seed ^ (seed >>> 15), 1 | seed);
      x = (x + Math.imul(x ^ (x >>> 7), 61 | x)) ^ x;
      return (((x ^ (x >>> 14)) >>> 0) + 0.5) / 2 ** 32;
    };
    let held = 0;
    let level = 0;
    const trials = 4000;
    for (let t = 0; t < trials; t++) {
      const xs = Array.from({ length: 9 }, () => -Math.log(rand()));
      const i = medianInterval(xs);
      level = i.level;
      if (i.low <= Math.LN2 && Math.LN2 <= i.high) held++;
    }
    assert.ok(level >= 0.9, `level ${level}`);
    assert.ok(held / trials >= level - 0.02, `held ${held / trials} of the time, level ${level}`);
  });
});
