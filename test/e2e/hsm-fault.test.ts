/**
 * HSM faults made real against hsm-signer running as its own process (dist/hsm-signer serve), on
 * a SoftHSM token of its own (scripts/demo-setup.sh), with no restart between fault and recovery:
 *
 *  1. a second process logs in to the same token, logs out and calls C_CloseAllSessions: with
 *     SoftHSM, sessions and login state belong to the process, so the service must not notice;
 *  2. the token directory is moved away: readiness goes false by itself (background check), Sign
 *     fails fast with UNAVAILABLE; moved back: the service reconnects (C_Finalize + C_Initialize,
 *     new sessions, C_Login, key rescan) and signs again within a bounded time;
 *  3. a second process changes the user PIN, then the token goes away and comes back: the
 *     service's one C_Login with its old PIN gets CKR_PIN_INCORRECT and is never retried, even
 *     after the PIN is set back.
 *
 * Faults that SoftHSM cannot produce from outside the process (a session closed under the
 * service, a logout of the service's login) are made in the pool's own process in
 * test/integration/hsm-recovery.test.ts.
 */
import assert from "node:assert/strict";
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, renameSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { protoPath as healthProtoPath } from "grpc-health-check";
import { verifyNotarySignature } from "../helpers/notation.js";
import { callSigner, signerClient, type SignResponse } from "../helpers/signer-client.js";
import { adminClient, callAdmin, demoSetup, HSM_SIGNER, waitForLog } from "../helpers/service-process.js";
import { PROJECT_ROOT, softHsmModule } from "../helpers/softhsm.js";

const run = promisify(execFile);
const ACTOR = join(PROJECT_ROOT, "dist/test/helpers/pkcs11-actor.js");
const TOKEN_LABEL = "hsm-signer-fault";
const KEY = "fault-key";
/** "Fast" for a refusal while the HSM is down: no waiting for a session or a timeout. */
const FAST_MS = 500;
/** The service must be signing again this long after the token is back (reconnect backoff tops out at 5 s). */
const RECOVERY_BOUND_MS = 12_000;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls `probe` every `everyMs` until it returns true; fails after `withinMs`. Returns the time it took. */
async function until(what: string, probe: () => Promise<boolean>, withinMs: number, everyMs = 100): Promise<number> {
  const t0 = Date.now();
  for (;;) {
    if (await probe()) return Date.now() - t0;
    if (Date.now() - t0 > withinMs) assert.fail(`${what}: not within ${withinMs} ms`);
    await sleep(everyMs);
  }
}

describe("HSM faults made real against the service process, and recovery without a restart", function () {
  this.timeout(120_000);
  let data: string;
  let port: number;
  let metricsPort: number;
  let adminPort: number;
  let child: ChildProcess | undefined;
  let client: grpc.Client;
  let health: grpc.Client;
  let pin: string;
  const env = (): NodeJS.ProcessEnv => ({ ...process.env, SOFTHSM2_CONF: join(data, "softhsm2.conf") });

  const sign = async (): Promise<SignResponse> => {
    const payload = randomBytes(100);
    const r = await callSigner<SignResponse>(client, "Sign", { keyId: KEY, payload }, Date.now() + 10_000);
    assert.ok(verifyNotarySignature(payload, r.signature, r.certificateChain[0] as Buffer, "EC-256"), "the signature verifies");
    return r;
  };
  /** A Sign expected to fail: the error and how long it took. */
  const failingSign = async (): Promise<{ e: grpc.ServiceError; ms: number }> => {
    const t0 = performance.now();
    const e = await callSigner<SignResponse>(client, "Sign", { keyId: KEY, payload: randomBytes(100) }, Date.now() + 10_000).then(
      () => assert.fail("Sign succeeded while the HSM was down"),
      (err: grpc.ServiceError) => err,
    );
    return { e, ms: performance.now() - t0 };
  };
  const readyz = async (): Promise<number> => (await fetch(`http://127.0.0.1:${metricsPort}/readyz`)).status;
  const healthStatus = (): Promise<string> =>
    new Promise((resolve, reject) =>
      (health as unknown as { Check: (r: object, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r: { status: string }) => void) => void }).Check(
        { service: "hsm_signer.v1.Signer" },
        { deadline: Date.now() + 5_000 },
        (e, r) => (e ? reject(e) : resolve(r.status)),
      ),
    );
  const metric = async (series: string): Promise<number> => {
    const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    const line = text.split("\n").find((l) => l.startsWith(`${series} `));
    return line === undefined ? Number.NaN : Number(line.slice(series.length + 1));
  };
  const actor = async (action: string, actorPin: string, newPin?: string): Promise<string[]> => {
    const r = await run(process.execPath, [ACTOR, JSON.stringify({ module: softHsmModule(), label: TOKEN_LABEL, pin: actorPin, action, newPin })], { env: env(), timeout: 20_000 });
    return (JSON.parse(r.stdout) as { done: string[] }).done;
  };
  const moveTokensAway = (): void => renameSync(join(data, "tokens"), join(data, "tokens.away"));
  const moveTokensBack = (): void => renameSync(join(data, "tokens.away"), join(data, "tokens"));

  before(async () => {
    data = mkdtempSync(join(tmpdir(), "hsm-signer-fault-"));
    ({ port, metricsPort, adminPort } = await demoSetup({ data, keyId: KEY, tokenLabel: TOKEN_LABEL, timeoutMs: 60_000 }));
    pin = readFileSync(join(data, "pin"), "utf8").trim();
    child = spawn(HSM_SIGNER, ["serve", "--config", join(data, "config.yaml")], { env: env(), stdio: ["ignore", "pipe", "pipe"] });
    await waitForLog(child, "hsm-signer listening");
    const ca = readFileSync(join(data, "tls/ca.pem"));
    client = signerClient(ca, port);
    const def = protoLoader.loadSync(healthProtoPath, { keepCase: true, enums: String, defaults: true });
    const Health = (((grpc.loadPackageDefinition(def).grpc as grpc.GrpcObject).health as grpc.GrpcObject).v1 as grpc.GrpcObject).Health as grpc.ServiceClientConstructor;
    health = new Health(`127.0.0.1:${port}`, grpc.credentials.createSsl(ca), { "grpc.ssl_target_name_override": "localhost" });
  });

  after(() => {
    client?.close();
    health?.close();
    child?.kill("SIGKILL");
    rmSync(data, { recursive: true, force: true });
  });

  it("a second process logging out and closing all sessions of the token leaves the service's sessions alone (SoftHSM: per process)", async () => {
    await sign();
    assert.deepEqual(await actor("close-all-and-logout", pin), ["C_OpenSession", "C_Login", "C_Logout", "C_CloseAllSessions"]);
    // Several signatures, so that every pooled session is used after the second process acted.
    for (let i = 0; i < 8; i++) await sign();
    assert.equal(await readyz(), 200);
    assert.equal(await metric("hsm_signer_hsm_faults_total"), 0);
    assert.equal(await metric("hsm_signer_hsm_sessions_replaced_total"), 0);
  });

  it("token directory moved away: readiness goes false by itself, Sign fails fast with UNAVAILABLE; moved back: signing resumes without a restart", async () => {
    await sign();
    moveTokensAway();
    let back = false;
    try {
      // Nobody signs: the background check (every 5 s) notices.
      const noticed = await until("readyz 503 after the token went away", async () => (await readyz()) === 503, 8_000, 200);
      assert.equal(await healthStatus(), "NOT_SERVING");
      assert.equal(await metric("hsm_signer_hsm_up"), 0);
      for (let i = 0; i < 5; i++) {
        const { e, ms } = await failingSign();
        assert.equal(e.code, grpc.status.UNAVAILABLE, e.details);
        assert.match(e.details, /HSM is unavailable/);
        assert.match(e.details, /\[request [0-9a-f]+\]/);
        assert.ok(ms < FAST_MS, `refused in ${ms.toFixed(0)} ms`);
        assert.ok(Number(e.metadata.get("retry-after-ms")[0]) >= 100, "a retry-after hint");
      }
      // A custodian listing the slots meanwhile gets the PKCS#11 code in the message, not "internal error".
      const custodian = adminClient(readFileSync(join(data, "tls/ca.pem")), adminPort, {
        key: readFileSync(join(data, "tls/custodian-key.pem")),
        cert: readFileSync(join(data, "tls/custodian.pem")),
      });
      try {
        const e = await callAdmin(custodian, "listSlots", {}).then(
          () => assert.fail("ListSlots answered while the token is away"),
          (err: grpc.ServiceError) => err,
        );
        assert.match(e.details, /^listing the slots and their tokens: (HSM operation failed|the HSM is unavailable) \(CKR_\w+\) \[request [0-9a-f]+\]$/);
      } finally {
        custodian.close();
      }
      // Listing keys does not need the HSM: the last view of the token is served meanwhile.
      const keys = await callSigner<{ keys: { keyId: string }[] }>(client, "ListKeys", {});
      assert.deepEqual(
        keys.keys.map((k) => k.keyId),
        [KEY],
      );
      await sleep(1500); // some reconnection attempts fail while the token is away
      moveTokensBack();
      back = true;
      const took = await until(
        "Sign succeeds after the token is back",
        () =>
          sign().then(
            () => true,
            () => false,
          ),
        RECOVERY_BOUND_MS,
        200,
      );
      assert.equal(await readyz(), 200);
      assert.equal(await healthStatus(), "SERVING");
      assert.equal(await metric("hsm_signer_hsm_up"), 1);
      assert.equal(await metric("hsm_signer_hsm_faults_total"), 1);
      assert.equal(await metric("hsm_signer_hsm_recoveries_total"), 1);
      for (let i = 0; i < 8; i++) await sign();
      console.log(`      (readiness false ${noticed} ms after the move; signing again ${took} ms after the token came back)`);
    } finally {
      if (!back) moveTokensBack();
    }
  });

  it("a PIN changed behind the service's back: one C_Login with CKR_PIN_INCORRECT at reconnection, never retried", async () => {
    const newPin = randomBytes(8).toString("hex");
    assert.deepEqual(await actor("set-pin", pin, newPin), ["C_OpenSession", "C_Login", "C_SetPIN", "C_Logout"]);
    await sign(); // the service's login from before the change still holds
    const loginsBefore = await metric('hsm_signer_hsm_logins_total{result="ok"}');
    moveTokensAway();
    let back = false;
    try {
      const { e } = await failingSign();
      assert.equal(e.code, grpc.status.UNAVAILABLE);
      moveTokensBack();
      back = true;
      await until("the reconnection's C_Login is refused", async () => (await metric('hsm_signer_hsm_logins_total{result="pin_incorrect"}')) === 1, RECOVERY_BOUND_MS, 200);
      const { e: refused, ms } = await failingSign();
      assert.equal(refused.code, grpc.status.UNAVAILABLE);
      assert.match(refused.details, /CKR_PIN_INCORRECT/);
      assert.match(refused.details, /not retrying/);
      assert.ok(ms < FAST_MS, `refused in ${ms.toFixed(0)} ms`);
      // Even with the right PIN back on the token, nothing is tried again: a loop would lock a real token.
      assert.deepEqual(await actor("set-pin", newPin, pin), ["C_OpenSession", "C_Login", "C_SetPIN", "C_Logout"]);
      await sleep(6_000); // longer than the longest reconnect backoff
      assert.equal(await metric('hsm_signer_hsm_logins_total{result="pin_incorrect"}'), 1);
      assert.equal(await metric('hsm_signer_hsm_logins_total{result="ok"}'), loginsBefore);
      assert.equal(await readyz(), 503);
      assert.equal(await healthStatus(), "NOT_SERVING");
    } finally {
      if (!back) moveTokensBack();
    }
    // Still stops cleanly.
    const exited = new Promise<number | null>((resolve) => child?.on("exit", (code) => resolve(code)));
    child?.kill("SIGTERM");
    assert.equal(await exited, 0);
    child = undefined;
  });
});
