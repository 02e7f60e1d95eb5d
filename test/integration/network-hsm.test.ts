/**
 * A network HSM, played by SoftHSM behind a PKCS#11 shim whose calls take as long as the test
 * says (test/fixtures/slow-pkcs11): the service's housekeeping reads it on a thread of its own,
 * never on the event loop, and an HSM that stops answering them is reported, not waited for.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { openHsm, type Hsm } from "../../src/hsm/index.js";
import { digest } from "../../src/signing/key-spec.js";
import { getFixture, keyIdOf, type Fixture } from "../helpers/fixture.js";
import { slowHsm, type SlowHsm } from "../helpers/slow-hsm.js";

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function until(what: string, probe: () => boolean, withinMs: number): Promise<void> {
  const t0 = Date.now();
  while (!probe()) {
    if (Date.now() - t0 > withinMs) assert.fail(`${what}: not within ${withinMs} ms`);
    await sleep(20);
  }
}

/** The process's main thread: its Linux thread id is the process id. */
const EVENT_LOOP_TID = process.pid;

describe("a network HSM (SoftHSM behind a shim that makes its calls slow or hang)", function () {
  this.timeout(60_000);
  let f: Fixture;
  let slow: SlowHsm;
  let hsm: Hsm;

  const signOnce = async (): Promise<Buffer> => {
    const key = await hsm.keys.getKey(keyIdOf("EC-256"));
    return hsm.keys.signDigest(key, "SHA-256", digest("SHA-256", randomBytes(32)));
  };

  before(async () => {
    f = await getFixture();
    slow = slowHsm(f.token.module);
    hsm = await openHsm({ modulePath: slow.module, tokenLabel: f.token.label, pin: f.token.pin, poolSize: 2, keyRefreshMs: 50, healthCheckIntervalMs: 50 });
    // The key's first-signature marker is written once, on the event loop (a custody write, not housekeeping).
    await signOnce();
  });

  after(async () => {
    slow?.delay(0);
    await hsm?.close();
    slow?.cleanup();
  });

  it("with 5 ms per call, the health checks, key polls and a full rescan read the HSM on another thread: none of their calls is made on the event loop", async () => {
    slow.clearTrace();
    slow.delay(5);
    await hsm.keys.refresh();
    const count = (fn: string): number => slow.trace().filter((c) => c.fn === fn).length;
    // The rescan searches 7 times, each poll 4 times.
    await until("two health checks and two key polls", () => count("C_GetTokenInfo") >= 2 && count("C_GetSessionInfo") >= 2 && count("C_FindObjectsInit") >= 15, 20_000);
    assert.equal((await signOnce()).length, 64, "signing goes on meanwhile");
    const trace = slow.trace();
    assert.deepEqual(
      trace.filter((c) => c.tid === EVENT_LOOP_TID),
      [],
      "no PKCS#11 call on the event loop",
    );
    const threads = new Set(trace.filter((c) => c.fn !== "C_SignInit" && c.fn !== "C_Sign").map((c) => c.tid));
    assert.equal(threads.size, 1, "the housekeeping reads run on one thread of their own");
    assert.ok(count("C_GetAttributeValue") > 0, "the rescan read the objects");
  });

  it("an HSM that stops answering: the health check's read is reported as running ever longer (readiness), the event loop stays free, the pool is not torn down; once the HSM answers, all is as before", async () => {
    slow.delay(0);
    slow.clearTrace();
    slow.delay(30_000, ["C_GetTokenInfo"]);
    await until("a health check waits on the HSM", () => hsm.longestReadMs() > 500, 10_000);
    const t0 = performance.now();
    await sleep(10);
    assert.ok(performance.now() - t0 < 400, "the event loop runs while the HSM does not answer");
    assert.equal(hsm.pool.healthy, true, "no reconnection under a thread still inside the module");
    assert.equal((await signOnce()).length, 64, "the sessions were not lent to the stuck read: signing goes on");
    slow.delay(0);
    await until("the read answered", () => hsm.longestReadMs() < 500, 10_000);
    await until("another health check answered", () => slow.trace().filter((c) => c.fn === "C_GetSessionInfo").length >= 1, 10_000);
    assert.equal(hsm.pool.healthy, true);
    assert.equal((await signOnce()).length, 64);
  });
});
