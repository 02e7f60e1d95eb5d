import assert from "node:assert/strict";
import pkcs11js from "pkcs11js";
import { Doorbell, Mailbox, MailboxState } from "../../src/hsm/sign-mailbox.js";

/** Both sides of a mailbox in one thread: the signing thread's side is called by hand. */
function pair(bell = new Doorbell(Doorbell.create(2, 0))): { main: Mailbox; thread: Mailbox; bell: Doorbell; state: () => number } {
  const sab = Mailbox.create();
  const i32 = new Int32Array(sab);
  return { main: new Mailbox(sab, bell), thread: new Mailbox(sab, bell), bell, state: () => Atomics.load(i32, 0) };
}

const ecJob = () => ({ session: Buffer.alloc(8), key: Buffer.alloc(8), mechanism: { mechanism: pkcs11js.CKM_ECDSA }, data: Buffer.alloc(32), outLength: 80 });

const pss: pkcs11js.Mechanism = {
  mechanism: pkcs11js.CKM_RSA_PKCS_PSS,
  parameter: { type: pkcs11js.CK_PARAMS_RSA_PSS, hashAlg: pkcs11js.CKM_SHA384, mgf: pkcs11js.CKG_MGF1_SHA384, saltLen: 48 } as pkcs11js.RsaPSS,
};

const settled = async (p: Promise<unknown>): Promise<boolean> => {
  let done = false;
  void p.then(() => (done = true));
  // Long enough for a wake-up task to run if one was queued.
  await new Promise((r) => setTimeout(r, 50));
  return done;
};

describe("sign mailbox: the shared memory between the event loop and a signing thread", () => {
  it("carries a job (handles, mechanism with parameters, data, output size) and its signature across", async () => {
    const { main, thread, bell, state } = pair();
    const job = { session: Buffer.from("0100000000000000", "hex"), key: Buffer.from("2a00000000000000", "hex"), mechanism: pss, data: Buffer.alloc(48, 7), outLength: 400 };
    main.post(job);
    assert.equal(state(), MailboxState.JOB);
    assert.equal(thread.waitForJob(), MailboxState.JOB);
    assert.deepEqual(thread.readJob(), job);
    const rung = bell.rung(bell.rings());
    thread.reply(Buffer.alloc(384, 9));
    await rung;
    assert.equal(main.hasAnswered(), true);
    assert.deepEqual(main.answer(), { signature: Buffer.alloc(384, 9) });
    // Taken: the mailbox is idle again, and a thread holding the answer would not ring for it.
    assert.equal(state(), MailboxState.IDLE);
    assert.equal(main.hasAnswered(), false);
  });

  it("carries Buffer parameters of a mechanism as Buffers (Buffer.toJSON runs before a JSON replacer)", () => {
    const { main, thread } = pair();
    const iv: pkcs11js.Mechanism = { mechanism: pkcs11js.CKM_AES_CBC_PAD, parameter: Buffer.from("000102030405060708090a0b0c0d0e0f", "hex") };
    const job = { session: Buffer.alloc(8), key: Buffer.alloc(8), mechanism: iv, data: Buffer.alloc(32), outLength: 80 };
    main.post(job);
    assert.deepEqual(thread.readJob().mechanism, iv);
  });

  it("the last job's mechanism is reused (not encoded, not parsed) only while the next job's is the same", () => {
    const { main, thread } = pair();
    const ec: pkcs11js.Mechanism = { mechanism: pkcs11js.CKM_ECDSA };
    const pss256: pkcs11js.Mechanism = {
      mechanism: pkcs11js.CKM_RSA_PKCS_PSS,
      parameter: { type: pkcs11js.CK_PARAMS_RSA_PSS, hashAlg: pkcs11js.CKM_SHA256, mgf: pkcs11js.CKG_MGF1_SHA256, saltLen: 32 } as pkcs11js.RsaPSS,
    };
    const salt20: pkcs11js.Mechanism = { ...pss, parameter: { ...(pss.parameter as pkcs11js.RsaPSS), saltLen: 20 } as pkcs11js.RsaPSS };
    const iv = (hex: string): pkcs11js.Mechanism => ({ mechanism: pkcs11js.CKM_AES_CBC_PAD, parameter: Buffer.from(hex, "hex") });
    // Equal but distinct objects too: each signature makes its mechanism anew.
    const sequence = [pss, { ...pss, parameter: { ...(pss.parameter as pkcs11js.RsaPSS) } as pkcs11js.RsaPSS }, salt20, pss256, ec, { ...ec }, iv("00"), iv("01"), iv("01"), pss];
    const seen: pkcs11js.Mechanism[] = [];
    for (const mechanism of sequence) {
      main.post({ session: Buffer.alloc(8), key: Buffer.alloc(8), mechanism, data: Buffer.alloc(32), outLength: 80 });
      assert.equal(thread.waitForJob(), MailboxState.JOB);
      seen.push(thread.readJob().mechanism);
      thread.reply(Buffer.alloc(64));
    }
    assert.deepEqual(seen, sequence);
  });

  it("keeps a failure's message and its CKR_ code, vendor codes above 2^31 included", () => {
    const { main, thread } = pair();
    main.post(ecJob());
    thread.fail("CKR_VENDOR_DEFINED: ünïcode kept", 0x80000001);
    assert.equal(main.hasAnswered(), true);
    assert.deepEqual(main.answer(), { error: { message: "CKR_VENDOR_DEFINED: ünïcode kept", code: 0x80000001 } });
  });

  // Atomics.waitAsync sometimes wakes while the value is unchanged (seen about once in 2,000
  // waits under load); taking that for an answer would hand a busy thread a second job, so the
  // event loop goes by each mailbox's state (sign-threads.ts, watch).
  it("a wake-up of the doorbell without an answer is no answer", async () => {
    const { main, thread, bell, state } = pair();
    main.post(ecJob());
    const seen = bell.rings();
    const woken = bell.rung(seen);
    Atomics.notify(new Int32Array(bell.buffer), 1);
    assert.equal(await settled(woken), true, "a wake-up without a ring");
    assert.equal(bell.rings(), seen);
    assert.equal(main.hasAnswered(), false);
    assert.equal(state(), MailboxState.JOB);
    const rung = bell.rung(seen);
    thread.reply(Buffer.alloc(64, 1));
    assert.equal(await settled(rung), true);
    assert.equal(main.hasAnswered(), true);
  });

  it("doorbell: an answer rings at once unless two other jobs are running; the last ones always ring", () => {
    const bell = new Doorbell(Doorbell.create(2, 50));
    const boxes = [pair(bell), pair(bell), pair(bell), pair(bell)];
    for (const b of boxes) b.main.post(ecJob());
    const rings = [bell.rings()];
    for (const b of boxes) {
      b.thread.reply(Buffer.alloc(64));
      rings.push(bell.rings());
    }
    // Four running: the first two answers are held (3, then 2 others still run), the last two ring.
    assert.deepEqual(
      rings.map((r) => r - rings[0]!),
      [0, 0, 0, 1, 2],
    );
    assert.ok(boxes.every((b) => b.main.hasAnswered()));
    // One job alone rings at once.
    boxes[0]!.main.answer();
    boxes[0]!.main.post(ecJob());
    boxes[0]!.thread.fail("CKR_DEVICE_ERROR", 0x30);
    assert.equal(bell.rings() - rings[0]!, 3);
  });

  it("doorbell: with no hold (0 ms) every answer rings", () => {
    const bell = new Doorbell(Doorbell.create(2, 0));
    const boxes = [pair(bell), pair(bell), pair(bell), pair(bell)];
    for (const b of boxes) b.main.post(ecJob());
    const before = bell.rings();
    for (const b of boxes) b.thread.reply(Buffer.alloc(64));
    assert.equal(bell.rings() - before, 4);
  });

  it("a job that does not fit is refused before anything is posted", () => {
    const { main, state } = pair();
    const base = ecJob();
    assert.throws(() => main.post({ ...base, data: Buffer.alloc(4096) }), /longer than 1024 bytes/);
    assert.throws(() => main.post({ ...base, outLength: 100_000 }), /larger than/);
    assert.throws(() => main.post({ ...base, key: Buffer.alloc(64) }), /handle longer/);
    assert.equal(state(), MailboxState.IDLE);
  });

  it("a stop order is not overwritten by the answer of a job that was still running", () => {
    const { main, thread, state } = pair();
    main.post(ecJob());
    assert.equal(thread.waitForJob(), MailboxState.JOB);
    main.stop();
    thread.reply(Buffer.alloc(64));
    assert.equal(state(), MailboxState.STOP);
    assert.equal(thread.waitForJob(), MailboxState.STOP);
  });
});
