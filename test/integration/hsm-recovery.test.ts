/**
 * Faults SoftHSM only lets the pool's own process make: its sessions closed (C_CloseAllSessions)
 * and its login ended (C_Logout). Both also invalidate SoftHSM's handles of private objects, so
 * recovery has to log in again and rescan the keys. (A second process cannot do either: see
 * test/e2e/hsm-fault.test.ts.) Each test leaves the shared fixture's pool up again.
 */
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { findSlot, loadModule, openHsm, type Hsm } from "../../src/hsm/index.js";
import { openSession } from "../../src/hsm/hsm-token.js";
import type { SignerError } from "../../src/errors/index.js";
import { createLogger, withLogContext } from "../../src/log/index.js";
import { digest } from "../../src/signing/key-spec.js";
import { getFixture, keyIdOf, type Fixture } from "../helpers/fixture.js";

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function until(what: string, probe: () => boolean | Promise<boolean>, withinMs: number): Promise<number> {
  const t0 = Date.now();
  while (!(await probe())) {
    if (Date.now() - t0 > withinMs) assert.fail(`${what}: not within ${withinMs} ms`);
    await sleep(20);
  }
  return Date.now() - t0;
}

describe("HSM recovery in the pool's own process: sessions closed, login lost", function () {
  this.timeout(60_000);
  let f: Fixture;
  let hsm: Hsm;
  const lines: Record<string, unknown>[] = [];

  const signOnce = async (h: Hsm): Promise<Buffer> => {
    const key = await h.keys.getKey(keyIdOf("EC-256"));
    return h.keys.signDigest(key, "SHA-256", digest("SHA-256", randomBytes(32)));
  };
  const slot = () => findSlot(loadModule(f.token.module), { tokenLabel: f.token.label });

  before(async () => {
    f = await getFixture();
    const logger = createLogger("debug", (l) => void lines.push(JSON.parse(l) as Record<string, unknown>));
    hsm = await openHsm({ modulePath: f.token.module, tokenLabel: f.token.label, pin: f.token.pin, poolSize: 2, keyRefreshMs: 0, logger });
  });

  after(async () => {
    await hsm?.close();
    // The fixture's pool lost its sessions too; it must be up for the tests that follow.
    f.hsm.pool.check();
    await until("the fixture's pool is up again", () => f.hsm.pool.healthy, 10_000);
  });

  beforeEach(() => void lines.splice(0));

  it("C_CloseAllSessions: the call that finds out gets HSM_UNAVAILABLE, logged with its request id; the pool logs in again, rescans and signs", async () => {
    await signOnce(hsm);
    const s = slot();
    s.lib.C_CloseAllSessions(s.handle);
    const failed = await withLogContext({ requestId: "req-close-all" }, () => signOnce(hsm)).then(
      () => undefined,
      (e: SignerError) => e,
    );
    // Either the failing call noticed (UNAVAILABLE) or the pool had already swept: never another error.
    if (failed) assert.equal(failed.code, "HSM_UNAVAILABLE", failed.message);
    const took = await until(
      "signing again",
      () =>
        signOnce(hsm).then(
          () => true,
          () => false,
        ),
      5_000,
    );
    assert.ok(took < 2_000, `recovered in ${took} ms`);
    assert.ok(hsm.pool.healthy);
    assert.equal(hsm.pool.stats.counters.recoveries, 1);
    const down = lines.find((l) => l.msg === "HSM unavailable; reconnecting");
    assert.ok(down, JSON.stringify(lines));
    assert.equal(down.requestId, "req-close-all", "the line written while handling the request carries its id");
    const up = lines.find((l) => l.msg === "HSM available again");
    assert.ok(up);
    assert.equal(up.requestId, undefined, "reconnecting is not part of the request");
  });

  it("C_Logout: the periodic check notices without any call, and the pool logs in again by itself", async () => {
    await signOnce(hsm);
    const s = slot();
    const session = openSession(s);
    session.logout();
    session.close();
    // What the 5 s background check does, run now.
    assert.equal(hsm.pool.check(), false, "the login is gone");
    assert.equal(hsm.pool.healthy, false);
    await assert.rejects(signOnce(hsm), (e: SignerError) => e.code === "HSM_UNAVAILABLE" && e.retryAfterMs !== undefined);
    await until("the pool is up again", () => hsm.pool.healthy, 5_000);
    await signOnce(hsm);
    assert.equal(hsm.pool.stats.counters.recoveries, 2);
    assert.equal(hsm.pool.stats.counters.loginsPinIncorrect, 0);
  });
});
