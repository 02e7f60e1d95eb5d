import assert from "node:assert/strict";
import type { Slot } from "graphene-pk11";
import { isSignerError, SignerError } from "../../src/errors/index.js";
import { HsmSupervisor, type HsmFault, type HsmSupervisorOptions, type SupervisedSessions } from "../../src/hsm/hsm-supervisor.js";
import { ObjectGate } from "../../src/hsm/object-gate.js";
import { createLogger } from "../../src/log/index.js";

/** Sessions on a stand-in token: each answer is set by the test, each call recorded. */
class FakeSessions implements SupervisedSessions {
  busy = 0;
  fault: HsmFault | undefined;
  /** How many reopen() calls fail before one succeeds. */
  failReopens = 0;
  readonly calls: string[] = [];
  /** What each shed() turned the waiters away with. */
  readonly turnedAway: unknown[] = [];
  readonly reopenedOn: (Slot | undefined)[] = [];

  inUse(): number {
    return this.busy;
  }
  inspect(): HsmFault | undefined {
    this.calls.push("inspect");
    return this.fault;
  }
  /** An answer the HSM holds back until the test lets it go. */
  hold: Promise<void> | undefined;
  async inspectInBackground(): Promise<HsmFault | undefined> {
    this.calls.push("inspectInBackground");
    await this.hold;
    return this.fault;
  }
  shed(error: () => unknown): void {
    this.calls.push("shed");
    this.turnedAway.push(error());
  }
  reopen(slot: Slot | undefined): void {
    this.calls.push("reopen");
    this.reopenedOn.push(slot);
    if (this.failReopens > 0) {
      this.failReopens--;
      throw new SignerError("HSM_UNAVAILABLE", "the token is still away");
    }
    this.fault = undefined;
  }
}

function supervise(o: HsmSupervisorOptions = {}): { sessions: FakeSessions; supervisor: HsmSupervisor } {
  const sessions = new FakeSessions();
  const supervisor = new HsmSupervisor(sessions, { healthCheckIntervalMs: 0, reconnectMinMs: 5, reconnectMaxMs: 20, ...o });
  return { sessions, supervisor };
}

async function until(what: string, ok: () => boolean, ms = 2_000): Promise<void> {
  const end = Date.now() + ms;
  while (!ok()) {
    if (Date.now() > end) assert.fail(`timed out waiting until ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

const ckr = (name: string, code: number): Error => new Error(`${name}:${code}`);

describe("HsmSupervisor (src/hsm/hsm-supervisor.ts) over stand-in sessions", () => {
  let supervisor: HsmSupervisor;
  afterEach(() => supervisor?.close());

  it("up while the token and the login are fine: check() looks, and admits sessions", () => {
    const s = supervise();
    supervisor = s.supervisor;
    assert.equal(supervisor.check(), true);
    assert.deepEqual(s.sessions.calls, ["inspect"]);
    assert.equal(supervisor.state, "up");
    assert.equal(supervisor.admits, true);
  });

  it("the periodic check looks through inspectInBackground (off the event loop), one look at a time behind a slow HSM; a fault it finds takes the HSM down", async () => {
    const s = supervise({ healthCheckIntervalMs: 5 });
    supervisor = s.supervisor;
    let answer: () => void = () => undefined;
    s.sessions.hold = new Promise<void>((r) => (answer = r));
    supervisor.start();
    await until("a look has started", () => s.sessions.calls.includes("inspectInBackground"));
    await new Promise((r) => setTimeout(r, 60));
    assert.deepEqual(s.sessions.calls, ["inspectInBackground"], "about 12 periods went by: one look, still unanswered, and never the synchronous inspect()");
    assert.equal(supervisor.state, "up");
    s.sessions.fault = { reason: "C_GetTokenInfo failed with CKR_DEVICE_REMOVED", reconnect: true };
    answer();
    await until("down", () => supervisor.state !== "up");
    assert.deepEqual(s.sessions.calls.slice(0, 2), ["inspectInBackground", "shed"]);
    assert.ok(isSignerError(s.sessions.turnedAway[0]) && /CKR_DEVICE_REMOVED/.test(s.sessions.turnedAway[0].message));
  });

  it("a background look that fails (the reader thread, not the HSM) leaves the HSM up and is logged; the next period looks again", async () => {
    const lines: Record<string, unknown>[] = [];
    const s = supervise({ healthCheckIntervalMs: 5, logger: createLogger("debug", (l) => void lines.push(JSON.parse(l) as Record<string, unknown>)) });
    supervisor = s.supervisor;
    s.sessions.hold = Promise.reject(new Error("the HSM reader thread stopped: exit code 1"));
    s.sessions.hold.catch(() => undefined);
    supervisor.start();
    await until("two looks", () => s.sessions.calls.filter((c) => c === "inspectInBackground").length >= 2);
    assert.equal(supervisor.state, "up");
    assert.ok(lines.some((l) => l.msg === "HSM health check failed" && /reader thread stopped/.test(String(l.error))));
  });

  it("a lost login: down at once (waiters turned away with HSM_UNAVAILABLE), repaired at once, rescanned before anyone else gets a session", async () => {
    const admittedDuringRescan: boolean[] = [];
    const s = supervise({
      onRecovered: () => {
        admittedDuringRescan.push(supervisor.admits);
        return Promise.resolve();
      },
    });
    supervisor = s.supervisor;
    s.sessions.fault = { reason: "the HSM user is no longer logged in", reconnect: false };
    assert.equal(supervisor.check(), false);
    assert.equal(supervisor.state, "down");
    assert.equal(supervisor.admits, false);
    const turnedAway = s.sessions.turnedAway[0];
    assert.ok(isSignerError(turnedAway) && turnedAway.code === "HSM_UNAVAILABLE" && turnedAway.retryAfterMs !== undefined && /no longer logged in/.test(turnedAway.message));
    assert.equal(supervisor.check(), false, "no look while down");
    await until("up again", () => supervisor.state === "up");
    assert.deepEqual(s.sessions.reopenedOn, [undefined], "the same slot: a login is repaired without re-initializing the module");
    assert.deepEqual(admittedDuringRescan, [true]);
    assert.deepEqual(supervisor.counters, { faults: 1, recoveries: 1 });
  });

  it("a lost token: reconnects through reconnect() with backoff, until the token is back", async () => {
    const slot = { handle: Buffer.from("new") } as unknown as Slot;
    let reconnects = 0;
    const s = supervise({
      reconnect: () => {
        reconnects++;
        return slot;
      },
    });
    supervisor = s.supervisor;
    s.sessions.failReopens = 2;
    s.sessions.fault = { reason: "C_GetTokenInfo failed with CKR_TOKEN_NOT_PRESENT", reconnect: true };
    assert.equal(supervisor.check(), false);
    const during = supervisor.unavailable();
    assert.match(during.message, /^the HSM is unavailable \(C_GetTokenInfo failed with CKR_TOKEN_NOT_PRESENT\); reconnecting, next attempt in \d+ ms$/);
    await until("up again", () => supervisor.state === "up");
    assert.equal(reconnects, 3);
    assert.deepEqual(s.sessions.reopenedOn, [slot, slot, slot]);
    assert.deepEqual(supervisor.counters, { faults: 1, recoveries: 1 });
  });

  it("no attempt while sessions of the lost generation are still in use", async () => {
    const s = supervise();
    supervisor = s.supervisor;
    s.sessions.busy = 1;
    s.sessions.fault = { reason: "the HSM user is no longer logged in", reconnect: false };
    supervisor.check();
    await new Promise((r) => setTimeout(r, 120));
    assert.equal(s.sessions.reopenedOn.length, 0);
    s.sessions.busy = 0;
    await until("up again", () => supervisor.state === "up");
  });

  it("a failed rescan counts as a failed attempt; the next one starts from a re-initialized module", async () => {
    let rescans = 0;
    let reconnects = 0;
    const s = supervise({
      reconnect: () => {
        reconnects++;
        return {} as Slot;
      },
      onRecovered: () => (++rescans === 1 ? Promise.reject(new Error("rescan failed")) : Promise.resolve()),
    });
    supervisor = s.supervisor;
    s.sessions.fault = { reason: "the HSM user is no longer logged in", reconnect: false };
    supervisor.check();
    await until("up again", () => supervisor.state === "up");
    assert.equal(rescans, 2);
    assert.equal(reconnects, 1, "only the attempt after the failure re-initializes");
    assert.deepEqual(s.sessions.calls.filter((c) => c === "shed").length, 2, "the fault's, and the failed attempt's sessions");
  });

  it("a refused PIN is final: every caller gets it, and nothing is retried", async () => {
    const s = supervise();
    supervisor = s.supervisor;
    const pin = new SignerError("HSM_PIN_INCORRECT", "the HSM refused the PIN");
    supervisor.loginRefused(pin);
    assert.equal(supervisor.state, "fatal");
    assert.equal(supervisor.unavailable(), pin);
    assert.deepEqual(s.sessions.turnedAway, [pin]);
    assert.equal(supervisor.check(), false);
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(s.sessions.reopenedOn.length, 0);
  });

  it("diagnose: an ordinary failure passes untouched; a suspect one makes it look, and becomes HSM_UNAVAILABLE when the HSM is down", () => {
    const s = supervise();
    supervisor = s.supervisor;
    const notFound = new SignerError("KEY_NOT_FOUND", "gone");
    assert.equal(supervisor.diagnose(notFound), notFound);
    assert.deepEqual(s.sessions.calls, [], "no look for an ordinary failure");
    const suspect = ckr("CKR_GENERAL_ERROR", 5);
    assert.equal(supervisor.diagnose(suspect), suspect, "the HSM is fine: the original error");
    assert.deepEqual(s.sessions.calls, ["inspect"]);
    s.sessions.fault = { reason: "C_GetTokenInfo failed with CKR_DEVICE_ERROR", reconnect: true };
    const seen = supervisor.diagnose(new SignerError("HSM_UNAVAILABLE", "a call found out"));
    assert.ok(isSignerError(seen) && seen.code === "HSM_UNAVAILABLE" && /CKR_DEVICE_ERROR/.test(seen.message));
  });

  it("closed: no more checks, and callers are told so", () => {
    const s = supervise();
    supervisor = s.supervisor;
    supervisor.close();
    assert.equal(supervisor.check(), false);
    assert.equal(supervisor.admits, false);
    assert.equal(supervisor.unavailable().message, "the HSM session pool is closed");
  });
});

describe("ObjectGate (src/hsm/object-gate.ts)", () => {
  it("a free gate runs the operation in this very turn; the next ones wait, in order, one at a time", async () => {
    const gate = new ObjectGate();
    const order: string[] = [];
    let release!: () => void;
    const first = gate.run(() => {
      order.push("first");
      return new Promise<void>((r) => (release = r));
    });
    assert.deepEqual(order, ["first"], "started synchronously");
    const second = gate.run(() => void order.push("second"));
    const third = gate.run(() => void order.push("third"));
    await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(order, ["first"]);
    release();
    await Promise.all([first, second, third]);
    assert.deepEqual(order, ["first", "second", "third"]);
  });

  it("a waiter whose deadline passes gets DEADLINE_EXCEEDED and leaves the line; a failed operation lets the next one in", async () => {
    const gate = new ObjectGate();
    let release!: () => void;
    const first = gate.run(() => new Promise<void>((_, reject) => (release = () => reject(new Error("failed")))));
    const late = gate.run(() => assert.fail("never runs"), Date.now() + 20);
    const next = gate.run(() => "ran");
    await assert.rejects(late, (e: unknown) => isSignerError(e) && e.code === "DEADLINE_EXCEEDED");
    release();
    await assert.rejects(first, /failed/);
    assert.equal(await next, "ran");
    assert.equal(await gate.run(() => "free again"), "free again");
  });
});
