import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import * as grpc from "@grpc/grpc-js";
import type { KeyStore } from "../../src/signing/ports.js";
import { getFixture, keyIdOf, startTestServer, type Fixture, type TestServer } from "../helpers/fixture.js";
import { callSigner, signerClient, type SignResponse } from "../helpers/signer-client.js";
import { auditRecordsIn } from "../helpers/audit-records.js";

interface Line {
  requestId: string;
  method: string;
  result: string;
  keyId?: string;
}

const lines = (dir: string): Line[] => auditRecordsIn<Line>(dir);

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls the audit until `ok` holds (the audit line of a call grpc-js ended is written right after). */
async function auditUntil(dir: string, ok: (l: Line[]) => boolean, ms: number): Promise<Line[]> {
  const until = Date.now() + ms;
  for (;;) {
    const l = lines(dir);
    if (ok(l) || Date.now() > until) return l;
    await sleep(20);
  }
}

/**
 * How calls end other than with an answer from their handler, and what the audit says of them.
 * The HSM is the fixture's SoftHSM; a key store in front of it only waits before each signature,
 * standing in for a slow network HSM.
 */
describe("calls that end early: deadline, cancellation, a body that does not decode (real SoftHSM, gRPC over TLS)", function () {
  this.timeout(60_000);
  const HSM_DELAY_MS = 3_000;
  let f: Fixture;
  let s: TestServer;
  let client: grpc.Client;
  let signed = 0;

  before(async () => {
    f = await getFixture();
    const slow: KeyStore = {
      getKey: (id, v) => f.hsm.keys.getKey(id, v),
      listKeys: () => f.hsm.keys.listKeys(),
      async signDigest(key, hash, digest, deadline) {
        await sleep(HSM_DELAY_MS);
        const sig = await f.hsm.keys.signDigest(key, hash, digest, deadline);
        signed++;
        return sig;
      },
    };
    s = await startTestServer(f, { keys: slow });
    client = signerClient(f.tls.ca, s.port);
  });

  after(async () => {
    client?.close();
    await s?.close(1000);
  });

  it("the deadline passes while the HSM works: DEADLINE_EXCEEDED, audited as such at the deadline, not when the HSM is done; no signature", async () => {
    const started = Date.now();
    const before = signed;
    const e = await callSigner<SignResponse>(client, "Sign", { keyId: keyIdOf("EC-256"), payload: randomBytes(50) }, Date.now() + 400).then(
      () => assert.fail("answered"),
      (err: grpc.ServiceError) => err,
    );
    assert.equal(e.code, grpc.status.DEADLINE_EXCEEDED);
    const recs = await auditUntil(s.auditDir, (l) => l.some((x) => x.method === "Sign" && x.result === "DEADLINE_EXCEEDED"), HSM_DELAY_MS / 2);
    assert.ok(Date.now() - started < HSM_DELAY_MS, "the audit line was written before the HSM finished");
    assert.equal(signed, before, "the HSM has not finished yet");
    assert.deepEqual(
      recs.filter((x) => x.method === "Sign").map((x) => x.result),
      ["DEADLINE_EXCEEDED"],
    );
    // When the signature comes, it goes nowhere and adds no second line.
    await sleep(HSM_DELAY_MS);
    assert.equal(signed, before + 1);
    assert.deepEqual(
      lines(s.auditDir)
        .filter((x) => x.method === "Sign")
        .map((x) => x.result),
      ["DEADLINE_EXCEEDED"],
    );
  });

  it("the client cancels: one CANCELLED line at once, none when the HSM is done", async () => {
    const before = lines(s.auditDir).length;
    await new Promise<void>((resolve) => {
      const call = (client as unknown as { sign: (r: object, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null) => void) => grpc.ClientUnaryCall }).sign(
        { keyId: keyIdOf("EC-256"), payload: randomBytes(50) },
        { deadline: Date.now() + 30_000 },
        (err) => {
          assert.equal(err?.code, grpc.status.CANCELLED);
          resolve();
        },
      );
      setTimeout(() => call.cancel(), 300);
    });
    const recs = await auditUntil(s.auditDir, (l) => l.length > before, HSM_DELAY_MS / 2);
    assert.deepEqual(
      recs.slice(before).map((x) => [x.method, x.result, x.keyId]),
      [["Sign", "CANCELLED", keyIdOf("EC-256")]],
    );
    await sleep(HSM_DELAY_MS);
    assert.equal(lines(s.auditDir).length, before + 1, "exactly one line for the cancelled call");
  });

  it("a body that is not a SignRequest: INVALID_ARGUMENT that says so, audited (grpc-js alone answered INTERNAL, unaudited)", async () => {
    const before = lines(s.auditDir).length;
    const garbage = Buffer.from([0x08]); // a field tag, then the end where its value should be
    const e = await new Promise<grpc.ServiceError>((resolve) => {
      client.makeUnaryRequest(
        "/hsm_signer.v1.Signer/Sign",
        (b: Buffer) => b,
        (b: Buffer) => b,
        garbage,
        { deadline: Date.now() + 10_000 },
        (err) => resolve(err as grpc.ServiceError),
      );
    });
    assert.equal(e.code, grpc.status.INVALID_ARGUMENT);
    assert.match(e.details, /the request body is not a Sign request message: .+ \[request [0-9a-f]+\]/);
    const recs = lines(s.auditDir).slice(before);
    assert.deepEqual(
      recs.map((x) => [x.method, x.result]),
      [["Sign", "INVALID_ARGUMENT"]],
    );
  });

  it("a caller cannot make an audit line large with a long key id", async () => {
    const before = lines(s.auditDir).length;
    const keyId = "k".repeat(1_000_000);
    await assert.rejects(callSigner(client, "Sign", { keyId, payload: randomBytes(10) }), (e: grpc.ServiceError) => e.code === grpc.status.INVALID_ARGUMENT);
    const rec = lines(s.auditDir).slice(before)[0];
    assert.equal(rec?.result, "INVALID_ARGUMENT");
    assert.ok(rec?.keyId !== undefined && rec.keyId.length < 200 && rec.keyId.startsWith("kkkk") && rec.keyId.endsWith("(999872 more characters)"), rec?.keyId?.slice(0, 300));
  });
});
