import assert from "node:assert/strict";
import pkcs11js from "pkcs11js";
import { Mailbox, MailboxState } from "../../src/hsm/sign-mailbox.js";

/** Both sides of a mailbox in one thread: the signing thread's side is called by hand. */
function pair(): { main: Mailbox; thread: Mailbox; state: () => number } {
  const sab = Mailbox.create();
  const i32 = new Int32Array(sab);
  return { main: new Mailbox(sab), thread: new Mailbox(sab), state: () => Atomics.load(i32, 0) };
}

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
    const { main, thread, state } = pair();
    const job = { session: Buffer.from("0100000000000000", "hex"), key: Buffer.from("2a00000000000000", "hex"), mechanism: pss, data: Buffer.alloc(48, 7), outLength: 400 };
    main.post(job);
    assert.equal(state(), MailboxState.JOB);
    assert.equal(thread.waitForJob(), MailboxState.JOB);
    assert.deepEqual(thread.readJob(), job);
    const answered = main.answered();
    thread.reply(Buffer.alloc(384, 9));
    await answered;
    assert.deepEqual(main.answer(), { signature: Buffer.alloc(384, 9) });
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

  it("keeps a failure's message and its CKR_ code, vendor codes above 2^31 included", async () => {
    const { main, thread } = pair();
    main.post({ session: Buffer.alloc(8), key: Buffer.alloc(8), mechanism: { mechanism: pkcs11js.CKM_ECDSA }, data: Buffer.alloc(32), outLength: 80 });
    thread.fail("CKR_VENDOR_DEFINED: ünïcode kept", 0x80000001);
    await main.answered();
    assert.deepEqual(main.answer(), { error: { message: "CKR_VENDOR_DEFINED: ünïcode kept", code: 0x80000001 } });
  });

  // Atomics.waitAsync sometimes wakes while the value is unchanged (seen about once in 2,000
  // waits under load); taking that for an answer would hand a busy thread a second job.
  it("a wake-up without an answer does not count as one", async () => {
    const { main, thread, state } = pair();
    main.post({ session: Buffer.alloc(8), key: Buffer.alloc(8), mechanism: { mechanism: pkcs11js.CKM_ECDSA }, data: Buffer.alloc(32), outLength: 80 });
    const answered = main.answered();
    Atomics.notify(new Int32Array(main.buffer), 0);
    assert.equal(await settled(answered), false, "answered() resolved while the job was still running");
    assert.equal(state(), MailboxState.JOB);
    thread.reply(Buffer.alloc(64, 1));
    assert.equal(await settled(answered), true);
  });

  it("a job that does not fit is refused before anything is posted", () => {
    const { main, state } = pair();
    const base = { session: Buffer.alloc(8), key: Buffer.alloc(8), mechanism: { mechanism: pkcs11js.CKM_ECDSA }, data: Buffer.alloc(32), outLength: 80 };
    assert.throws(() => main.post({ ...base, data: Buffer.alloc(4096) }), /longer than 1024 bytes/);
    assert.throws(() => main.post({ ...base, outLength: 100_000 }), /larger than/);
    assert.throws(() => main.post({ ...base, key: Buffer.alloc(64) }), /handle longer/);
    assert.equal(state(), MailboxState.IDLE);
  });

  it("a stop order is not overwritten by the answer of a job that was still running", () => {
    const { main, thread, state } = pair();
    main.post({ session: Buffer.alloc(8), key: Buffer.alloc(8), mechanism: { mechanism: pkcs11js.CKM_ECDSA }, data: Buffer.alloc(32), outLength: 80 });
    assert.equal(thread.waitForJob(), MailboxState.JOB);
    main.stop();
    thread.reply(Buffer.alloc(64));
    assert.equal(state(), MailboxState.STOP);
    assert.equal(thread.waitForJob(), MailboxState.STOP);
  });
});
