/**
 * hsm-signer serve (its own process, scripts/demo-setup.sh's configuration) on a network HSM,
 * played by SoftHSM behind a PKCS#11 shim whose calls take as long as the test says
 * (test/fixtures/slow-pkcs11): the token checks and key polls never run on the service's event
 * loop, and an HSM that stops answering them makes the replica unready while it still answers
 * its probes and scrapes at once.
 */
import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type * as grpc from "@grpc/grpc-js";
import { verifyNotarySignature } from "../helpers/notation.js";
import { callSigner, signerClient, type SignResponse } from "../helpers/signer-client.js";
import { demoSetup, HSM_SIGNER, waitForLog } from "../helpers/service-process.js";
import { slowHsm, type SlowHsm } from "../helpers/slow-hsm.js";
import { softHsmModule } from "../helpers/softhsm.js";

const KEY = "network-key";
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function until(what: string, probe: () => Promise<boolean> | boolean, withinMs: number): Promise<void> {
  const t0 = Date.now();
  while (!(await probe())) {
    if (Date.now() - t0 > withinMs) assert.fail(`${what}: not within ${withinMs} ms`);
    await sleep(100);
  }
}

describe("hsm-signer serve on a slow, then hung, network HSM (a PKCS#11 shim in front of SoftHSM)", function () {
  this.timeout(120_000);
  let data: string;
  let slow: SlowHsm;
  let child: ChildProcess | undefined;
  let client: grpc.Client;
  let metricsPort: number;

  const sign = async (): Promise<void> => {
    const payload = randomBytes(100);
    const r = await callSigner<SignResponse>(client, "Sign", { keyId: KEY, payload }, Date.now() + 10_000);
    assert.ok(verifyNotarySignature(payload, r.signature, r.certificateChain[0] as Buffer, "EC-256"), "the signature verifies");
  };
  /** How long an answer of the ops listener took, and its status. */
  const timed = async (path: string): Promise<{ status: number; ms: number; body: string }> => {
    const t0 = performance.now();
    const res = await fetch(`http://127.0.0.1:${metricsPort}${path}`);
    const body = await res.text();
    return { status: res.status, ms: performance.now() - t0, body };
  };
  const metric = async (series: string): Promise<number> => {
    const line = (await timed("/metrics")).body.split("\n").find((l) => l.startsWith(`${series} `));
    return line === undefined ? Number.NaN : Number(line.slice(series.length + 1));
  };

  before(async () => {
    data = mkdtempSync(join(tmpdir(), "hsm-signer-network-"));
    const { port, metricsPort: m } = await demoSetup({ data, keyId: KEY, tokenLabel: "hsm-signer-network", timeoutMs: 60_000 });
    metricsPort = m;
    slow = slowHsm(softHsmModule());
    const configFile = join(data, "config.yaml");
    const config = readFileSync(configFile, "utf8");
    const moduleLine = /^ {2}module: .*$/m;
    assert.match(config, moduleLine);
    writeFileSync(configFile, config.replace(moduleLine, `  module: ${slow.module}\n  keyRefreshSeconds: 1\n  signStallSeconds: 1`));
    child = spawn(HSM_SIGNER, ["serve", "--config", configFile], { env: { ...process.env, ...slow.env, SOFTHSM2_CONF: join(data, "softhsm2.conf") }, stdio: ["ignore", "pipe", "pipe"] });
    await waitForLog(child, "hsm-signer listening");
    client = signerClient(readFileSync(join(data, "tls/ca.pem")), port);
    // The key's first signature writes its marker on the event loop (a custody write, not housekeeping).
    await sign();
  });

  after(() => {
    slow?.delay(0);
    client?.close();
    child?.kill("SIGKILL");
    slow?.cleanup();
    if (data) rmSync(data, { recursive: true, force: true });
  });

  it("5 ms per PKCS#11 call: Sign answers, and over a token check and several key polls none of the service's PKCS#11 calls is made on its event loop", async () => {
    slow.clearTrace();
    slow.delay(5);
    const count = (fn: string): number => slow.trace().filter((c) => c.fn === fn).length;
    // The token check runs every 5 s, the key poll every second.
    await until(
      "a token check and three key polls",
      async () => {
        await sign();
        return count("C_GetTokenInfo") >= 1 && count("C_GetSessionInfo") >= 1 && count("C_FindObjectsInit") >= 12;
      },
      30_000,
    );
    const trace = slow.trace();
    assert.ok(trace.some((c) => c.fn === "C_Sign"));
    assert.deepEqual(
      trace.filter((c) => c.tid === child?.pid),
      [],
      "no PKCS#11 call on the service's main thread (its Linux thread id is its process id)",
    );
  });

  it("C_GetTokenInfo hangs: the replica goes unready (naming the HSM) and reports the stuck read, while /healthz and /metrics answer at once; the HSM answers again: ready, and Sign works", async () => {
    slow.delay(0);
    assert.equal((await timed("/readyz")).status, 200);
    slow.delay(60_000, ["C_GetTokenInfo"]);
    // The next token check starts within 5 s and is stuck from then on; unready 1 s later (hsm.signStallSeconds).
    await until("unready", async () => (await timed("/readyz")).status === 503, 15_000);
    const readyz = JSON.parse((await timed("/readyz")).body) as { ready: boolean; checks: Record<string, boolean> };
    assert.deepEqual(readyz, { ready: false, checks: { hsm: false, audit: true, signing: true } });
    assert.ok((await metric("hsm_signer_hsm_longest_running_read_seconds")) >= 1);
    for (const path of ["/healthz", "/metrics"]) {
      const r = await timed(path);
      assert.equal(r.status, 200);
      assert.ok(r.ms < 2_000, `${path} answered in ${Math.round(r.ms)} ms while the HSM does not answer`);
    }
    await sign();
    slow.delay(0);
    await until("ready again", async () => (await timed("/readyz")).status === 200, 15_000);
    assert.equal(await metric("hsm_signer_hsm_longest_running_read_seconds"), 0);
    await sign();
  });
});
