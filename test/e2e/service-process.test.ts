import assert from "node:assert/strict";
import { spawn, execFile, type ChildProcess } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { randomBytes, X509Certificate } from "node:crypto";
import { requestFor, verifyNotarySignature } from "../helpers/notation.js";
import { callSigner, signerClient, type SignResponse } from "../helpers/signer-client.js";
import { freePort, HSM_SIGNER, waitForLog } from "../helpers/service-process.js";
import { PROJECT_ROOT } from "../helpers/softhsm.js";

const run = promisify(execFile);
const PLUGIN = join(PROJECT_ROOT, "dist/plugin/notation-hsm-signer");

function plugin(command: string, request: unknown): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const p = spawn(PLUGIN, [command], { stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    p.stdout.on("data", (d: Buffer) => (stdout += d.toString()));
    p.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const t = setTimeout(() => p.kill("SIGKILL"), 20_000);
    p.on("error", reject);
    p.on("close", (code) => {
      clearTimeout(t);
      resolve({ code, stdout, stderr });
    });
    p.stdin.end(JSON.stringify(request));
  });
}

/** Waits for a JSON log line with this msg on the child's stdout. */

describe("hsm-signer as a process: quick-start set-up, serve, sign through the plugin, SIGTERM", function () {
  this.timeout(120_000);
  let data: string;
  let port: number;
  let metricsPort: number;
  let adminPort: number;
  let child: ChildProcess | undefined;

  before(async () => {
    data = mkdtempSync(join(tmpdir(), "hsm-signer-demo-"));
    port = await freePort();
    metricsPort = await freePort();
    adminPort = await freePort();
  });

  after(() => {
    child?.kill("SIGKILL");
    rmSync(data, { recursive: true, force: true });
  });

  it("sets up a token, TLS, a demo key and its chain, and a second run changes nothing", async () => {
    const env = { ...process.env, HSM_SIGNER_DATA: data, HSM_SIGNER_LISTEN: `127.0.0.1:${port}`, HSM_SIGNER_ADMIN_LISTEN: `127.0.0.1:${adminPort}`, DEMO_KEY_SPEC: "EC-384" };
    const first = await run("bash", [join(PROJECT_ROOT, "scripts/demo-setup.sh"), "--setup-only"], { env });
    assert.match(first.stderr, /created rootKey, rootCertificate, key, leafCertificate/);
    const root = readFileSync(join(data, "demo-key-root.pem"));
    assert.ok(new X509Certificate(root).ca, "the root written for notation cert add is a CA certificate");
    const second = await run("bash", [join(PROJECT_ROOT, "scripts/demo-setup.sh"), "--setup-only"], { env });
    assert.match(second.stderr, /nothing to create, all present/);
    assert.match(second.stdout, /token "hsm-signer-demo" already exists/);
    assert.deepEqual(readFileSync(join(data, "demo-key-root.pem")), root);
  });

  it("serves, signs a notation request through the plugin, and stops cleanly on SIGTERM", async () => {
    const env = { ...process.env, SOFTHSM2_CONF: join(data, "softhsm2.conf"), HSM_SIGNER_METRICS_LISTEN: `127.0.0.1:${metricsPort}` };
    child = spawn(HSM_SIGNER, ["serve", "--config", join(data, "config.yaml")], { env, stdio: ["ignore", "pipe", "pipe"] });
    const ready = await waitForLog(child, "hsm-signer listening");
    assert.equal(ready.port, port);
    const cfg = { endpoint: `127.0.0.1:${port}`, ca_file: join(data, "tls/ca.pem") };
    const d = await plugin("describe-key", requestFor("describe-key", "demo-key", "EC-384", cfg));
    assert.equal(d.code, 0, d.stderr);
    assert.deepEqual(JSON.parse(d.stdout), { keyId: "demo-key", keySpec: "EC-384" });
    const req = requestFor("generate-signature-jws", "demo-key", "EC-384", cfg);
    const s = await plugin("generate-signature", req);
    assert.equal(s.code, 0, s.stderr);
    assert.equal(s.stderr, "");
    const out = JSON.parse(s.stdout) as { signature: string; certificateChain: string[] };
    const leaf = Buffer.from(out.certificateChain[0] as string, "base64");
    assert.ok(verifyNotarySignature(Buffer.from(req.payload as string, "base64"), Buffer.from(out.signature, "base64"), leaf, "EC-384"));
    // Operators see the traffic, and the service as ready, on the metrics listener.
    const scrape = await fetch(`http://127.0.0.1:${metricsPort}/metrics`).then((r) => r.text());
    assert.match(scrape, /^hsm_signer_requests_total\{method="Sign",result="OK"\} 1$/m);
    assert.match(scrape, /^hsm_signer_requests_total\{method="DescribeKey",result="OK"\} 1$/m);
    assert.match(scrape, /^hsm_signer_sign_requests_total\{key="demo-key",result="OK"\} 1$/m);
    assert.match(scrape, /^hsm_signer_certificate_expiry_seconds\{key="demo-key"\} \d/m);
    assert.match(scrape, /^hsm_signer_audit_healthy 1$/m);
    const readyz = await fetch(`http://127.0.0.1:${metricsPort}/readyz`);
    assert.equal(readyz.status, 200);
    // The custodian commands the quick start prints work against its KeyAdmin listener.
    const adminEnv = {
      ...process.env,
      HSM_SIGNER_ADMIN_ENDPOINT: `127.0.0.1:${adminPort}`,
      HSM_SIGNER_ADMIN_CA: join(data, "tls/ca.pem"),
      HSM_SIGNER_ADMIN_CERT: join(data, "tls/custodian.pem"),
      HSM_SIGNER_ADMIN_KEY: join(data, "tls/custodian-key.pem"),
    };
    const inventory = JSON.parse((await run(HSM_SIGNER, ["keys", "list", "--json"], { env: adminEnv })).stdout) as { keys: { keyId: string; currentVersion: number }[] };
    assert.deepEqual(
      inventory.keys.map((k) => [k.keyId, k.currentVersion]),
      [
        ["demo-key", 1],
        ["demo-key-root-ca", 0],
      ],
    ); // a CA key never signs artifacts
    const exited = new Promise<number | null>((resolve) => child?.on("exit", (code) => resolve(code)));
    child.kill("SIGTERM");
    assert.equal(await exited, 0);
    child = undefined;
    // Both answered calls are in the audit, whose chain verifies.
    const v = await run(HSM_SIGNER, ["audit", "verify", "--dir", join(data, "audit")]);
    assert.match(v.stdout, /^OK: 3 records/);
  });

  it("SIGTERM during a burst: in-flight calls finish, every answered call is in the audit, then exit 0", async () => {
    child?.kill("SIGKILL"); // a service left over by a failed test would hold the ports
    const env = { ...process.env, SOFTHSM2_CONF: join(data, "softhsm2.conf"), HSM_SIGNER_METRICS_LISTEN: `127.0.0.1:${metricsPort}` };
    child = spawn(HSM_SIGNER, ["serve", "--config", join(data, "config.yaml")], { env, stdio: ["ignore", "pipe", "pipe"] });
    await waitForLog(child, "hsm-signer listening");
    const auditBefore = (await run(HSM_SIGNER, ["audit", "search", "--dir", join(data, "audit"), "--json"])).stdout.trim().split("\n").filter(Boolean).length;
    const client = signerClient(readFileSync(join(data, "tls/ca.pem")), port);
    const answered: string[] = [];
    let refused = 0;
    let stopped = false;
    const exited = new Promise<number | null>((resolve) => child?.on("exit", (code) => resolve(code)));
    // Four callers sign back to back; SIGTERM lands while calls are in flight.
    const callers = Array.from({ length: 4 }, async () => {
      while (!stopped) {
        try {
          const r = await callSigner<SignResponse>(client, "Sign", { keyId: "demo-key", payload: randomBytes(64) }, Date.now() + 10_000);
          answered.push(r.requestId);
        } catch {
          refused++;
          return;
        }
      }
    });
    await new Promise((r) => setTimeout(r, 300));
    child.kill("SIGTERM");
    const code = await exited;
    stopped = true;
    await Promise.all(callers);
    client.close();
    child = undefined;
    assert.equal(code, 0);
    assert.ok(answered.length > 0, "some calls were answered before the shutdown");
    assert.ok(refused > 0, "calls after the shutdown began were refused, not answered");
    const records = (await run(HSM_SIGNER, ["audit", "search", "--dir", join(data, "audit"), "--json"])).stdout
      .trim()
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { requestId: string; method: string; result: string });
    const okSigns = new Set(
      records
        .slice(auditBefore)
        .filter((r) => r.method === "Sign" && r.result === "OK")
        .map((r) => r.requestId),
    );
    for (const id of answered) assert.ok(okSigns.has(id), `answered request ${id} is in the audit`);
    assert.match((await run(HSM_SIGNER, ["audit", "verify", "--dir", join(data, "audit")])).stdout, /^OK: /);
  });

  it("the container try-out (DEMO_MTLS=1): callers from off loopback sign with the dev client certificate, none without", async () => {
    const dir = mkdtempSync(join(tmpdir(), "hsm-signer-demo-mtls-"));
    const [p, m, a] = [await freePort(), await freePort(), await freePort()];
    const env = { ...process.env, HSM_SIGNER_DATA: dir, HSM_SIGNER_LISTEN: `127.0.0.1:${p}`, HSM_SIGNER_METRICS_LISTEN: `127.0.0.1:${m}`, HSM_SIGNER_ADMIN_LISTEN: `127.0.0.1:${a}`, DEMO_MTLS: "1" };
    const setup = await run("bash", [join(PROJECT_ROOT, "scripts/demo-setup.sh"), "--setup-only"], { env });
    assert.match(setup.stderr, /client_cert_file=.*client\.pem --plugin-config client_key_file=/);
    const mtls = spawn(HSM_SIGNER, ["serve", "--config", join(dir, "config.yaml")], { env: { ...env, SOFTHSM2_CONF: join(dir, "softhsm2.conf") }, stdio: ["ignore", "pipe", "pipe"] });
    try {
      assert.equal((await waitForLog(mtls, "hsm-signer listening")).mtls, true);
      const cfg = { endpoint: `127.0.0.1:${p}`, ca_file: join(dir, "tls/ca.pem"), client_cert_file: join(dir, "tls/client.pem"), client_key_file: join(dir, "tls/client-key.pem") };
      const s = await plugin("generate-signature", requestFor("generate-signature-jws", "demo-key", "EC-256", cfg));
      assert.equal(s.code, 0, s.stderr);
      const without = await plugin("generate-signature", requestFor("generate-signature-jws", "demo-key", "EC-256", { endpoint: cfg.endpoint, ca_file: cfg.ca_file }));
      assert.equal(without.code, 1);
      const refused = JSON.parse(without.stderr) as { errorCode: string; errorMessage: string };
      assert.equal(refused.errorCode, "ACCESS_DENIED");
      assert.match(refused.errorMessage, /set client_cert_file and client_key_file/);
    } finally {
      mtls.kill("SIGKILL");
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("a wrong PIN stops the start with a clear message, without retrying", async () => {
    const cfg = readFileSync(join(data, "config.yaml"), "utf8").replace("pinFile: pin", "pinFile: wrong-pin");
    writeFileSync(join(data, "wrong-pin"), "not-the-pin\n");
    writeFileSync(join(data, "wrong-pin.yaml"), cfg);
    const env = { ...process.env, SOFTHSM2_CONF: join(data, "softhsm2.conf"), HSM_SIGNER_METRICS_LISTEN: `127.0.0.1:${metricsPort}` };
    const r = await run(HSM_SIGNER, ["serve", "--config", join(data, "wrong-pin.yaml")], { env, timeout: 30_000 }).then(
      () => assert.fail("serve started with a wrong PIN"),
      (e: { code: number; stderr: string }) => e,
    );
    assert.equal(r.code, 1);
    assert.match(r.stderr, /CKR_PIN_INCORRECT/);
    assert.match(r.stderr, /not retrying/);
    assert.ok(!r.stderr.includes("not-the-pin"), "the PIN is never printed");
  });

  // Started listeners, HSM threads and file watchers used to keep a failed start alive, silent.
  it("a port already in use (here the admin listener's) stops the start: exit 1 naming the address, nothing left running", async () => {
    const holder = await new Promise<ReturnType<typeof createServer>>((resolve) => {
      const srv = createServer();
      srv.listen(0, "127.0.0.1", () => resolve(srv));
    });
    const taken = (holder.address() as AddressInfo).port;
    try {
      const env = {
        ...process.env,
        SOFTHSM2_CONF: join(data, "softhsm2.conf"),
        HSM_SIGNER_LISTEN: `127.0.0.1:${await freePort()}`,
        HSM_SIGNER_METRICS_LISTEN: `127.0.0.1:${await freePort()}`,
        HSM_SIGNER_ADMIN_LISTEN: `127.0.0.1:${taken}`,
      };
      const started = Date.now();
      const r = await run(HSM_SIGNER, ["serve", "--config", join(data, "config.yaml")], { env, timeout: 30_000 }).then(
        () => assert.fail("serve started on a port in use"),
        (e: { code: number | null; stderr: string; killed?: boolean }) => e,
      );
      assert.equal(r.killed ?? false, false, `serve hung until killed: ${r.stderr}`);
      assert.equal(r.code, 1);
      assert.match(r.stderr, new RegExp(`cannot listen on 127\\.0\\.0\\.1:${taken}`));
      assert.ok(Date.now() - started < 20_000, `took ${Date.now() - started} ms to give up`);
    } finally {
      holder.close();
    }
  });

  // As a container's PID 1, Node ignores a SIGTERM no handler takes: a pod stopped while waiting
  // for its audit database or HSM waited out its grace period for SIGKILL.
  it("SIGTERM while the start waits for the audit database: closes what is open and exits 0 at once, with a line", async () => {
    const sockets: import("node:net").Socket[] = [];
    const stalled = createServer((c) => sockets.push(c)); // accepts, never answers: a hung database
    await new Promise<void>((resolve) => stalled.listen(0, "127.0.0.1", () => resolve()));
    try {
      const dbPort = (stalled.address() as AddressInfo).port;
      writeFileSync(join(data, "db-password"), "not-used\n");
      const cfg = readFileSync(join(data, "config.yaml"), "utf8").replace(
        "audit:\n  dir: audit\n",
        `audit:\n  postgres: { host: 127.0.0.1, port: ${dbPort}, database: audit, user: svc, passwordFile: db-password, timeoutSeconds: 60 }\n`,
      );
      writeFileSync(join(data, "stalled-db.yaml"), cfg);
      const env = { ...process.env, SOFTHSM2_CONF: join(data, "softhsm2.conf"), HSM_SIGNER_LISTEN: `127.0.0.1:${await freePort()}`, HSM_SIGNER_METRICS_LISTEN: `127.0.0.1:${await freePort()}` };
      const p = spawn(HSM_SIGNER, ["serve", "--config", join(data, "stalled-db.yaml")], { env, stdio: ["ignore", "pipe", "pipe"] });
      let out = "";
      p.stdout.on("data", (d: Buffer) => (out += d.toString()));
      p.stderr.on("data", (d: Buffer) => (out += d.toString()));
      const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => p.on("exit", (code, signal) => resolve({ code, signal })));
      const end = Date.now() + 15_000;
      while (sockets.length === 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
      assert.ok(sockets.length > 0, `serve never reached the database: ${out}`);
      const asked = Date.now();
      p.kill("SIGTERM");
      const timer = setTimeout(() => p.kill("SIGKILL"), 20_000);
      const r = await exited;
      clearTimeout(timer);
      assert.deepEqual(r, { code: 0, signal: null }, out);
      assert.ok(Date.now() - asked < 10_000, `took ${Date.now() - asked} ms`);
      assert.match(out, /"msg":"stopping during start-up","signal":"SIGTERM"/);
    } finally {
      for (const c of sockets) c.destroy();
      stalled.close();
    }
  });

  it("config check lists every problem at once and exits 1", async () => {
    const bad = join(data, "bad.yaml");
    writeFileSync(bad, "listen: nowhere\ntls:\n  insecure: false\nhsm:\n  pin: '1234'\n  sessions: 0\nbogus: 1\n");
    const r = await run(HSM_SIGNER, ["config", "check", "--config", bad]).then(
      () => assert.fail("config check accepted a bad file"),
      (e: { code: number; stderr: string }) => e,
    );
    assert.equal(r.code, 1);
    for (const want of ["listen:", "tls.certFile", "tls.keyFile", "hsm.module", "hsm.tokenLabel", "hsm.pin:", "hsm.sessions", "bogus"]) {
      assert.ok(r.stderr.includes(want), `missing "${want}" in: ${r.stderr}`);
    }
    assert.ok(!r.stderr.includes("1234"), "the PIN is never echoed");
  });
});

/**
 * A new user follows the quick start's printed instructions in another terminal. They used to
 * stop at `notation sign` (no trust store, trust policy or verify), and the service could not be
 * started again as the README said: SoftHSM finds the demo token only through SOFTHSM2_CONF
 * ("no initialized token with label ..."), and nothing put `hsm-signer` on PATH (a copy of
 * dist/hsm-signer fails with ERR_MODULE_NOT_FOUND). The quick start runs `npm link`; here it
 * links into a prefix of the test's own, not the machine's.
 */
describe("the quick start's printed instructions, followed as printed", function () {
  this.timeout(180_000);
  let data: string;
  let prefix: string;
  let port: number;
  let printed: string;
  let serve: ChildProcess | undefined;
  /** The user's terminal: hsm-signer on PATH, no SOFTHSM2_CONF (the tests' own fixture sets one in this process). */
  const userEnv = (): NodeJS.ProcessEnv => {
    const env: NodeJS.ProcessEnv = { ...process.env, PATH: `${join(prefix, "bin")}:${process.env.PATH ?? ""}` };
    delete env.SOFTHSM2_CONF;
    return env;
  };

  before(async () => {
    data = mkdtempSync(join(tmpdir(), "hsm-signer-printed-"));
    prefix = mkdtempSync(join(tmpdir(), "hsm-signer-npm-prefix-"));
    // What scripts/quickstart.sh does, with a prefix of our own and never the registry.
    await run("npm", ["link", "--offline", "--no-audit", "--no-fund", "--ignore-scripts"], { cwd: PROJECT_ROOT, env: { ...process.env, npm_config_prefix: prefix }, timeout: 120_000 });
    port = await freePort();
    const env = {
      ...userEnv(),
      HSM_SIGNER_DATA: data,
      HSM_SIGNER_LISTEN: `127.0.0.1:${port}`,
      HSM_SIGNER_ADMIN_LISTEN: `127.0.0.1:${await freePort()}`,
      HSM_SIGNER_METRICS_LISTEN: `127.0.0.1:${await freePort()}`,
    };
    printed = (await run("bash", [join(PROJECT_ROOT, "scripts/demo-setup.sh"), "--setup-only"], { env, timeout: 120_000 })).stderr;
  });

  after(() => {
    if (serve?.exitCode === null) serve.kill("SIGKILL");
    rmSync(data, { recursive: true, force: true });
    rmSync(prefix, { recursive: true, force: true });
  });

  it("npm link puts a working hsm-signer on PATH, for any folder", async () => {
    const r = await run("hsm-signer", ["version"], { cwd: tmpdir(), env: userEnv(), timeout: 60_000 });
    assert.equal(r.stdout.trim(), (JSON.parse(readFileSync(join(PROJECT_ROOT, "package.json"), "utf8")) as { version: string }).version);
  });

  it("prints the trust store, trust policy and verify steps, registry and OCI layout", () => {
    const lines = printed.split("\n").map((l) => l.trim());
    for (const want of [
      `notation cert add --type ca --store hsm-demo ${data}/demo-key-root.pem`,
      `notation policy import ${data}/notation-trustpolicy.json`,
      "notation verify <registry>/<repository>@sha256:<digest>",
      "notation sign --key demo --oci-layout <layout-folder>@sha256:<digest>",
      "notation verify --oci-layout --scope local/hsm-demo <layout-folder>@sha256:<digest>",
    ])
      assert.ok(lines.includes(want), `"${want}" is not printed:\n${printed}`);
    const policy = JSON.parse(readFileSync(join(data, "notation-trustpolicy.json"), "utf8")) as {
      version: string;
      trustPolicies: { registryScopes: string[]; trustStores: string[]; trustedIdentities: string[]; signatureVerification: { level: string } }[];
    };
    assert.equal(policy.version, "1.0");
    const [statement] = policy.trustPolicies;
    assert.ok(statement);
    assert.deepEqual(statement.registryScopes, ["local/hsm-demo"], "the OCI-layout verify's --scope is in the policy");
    assert.deepEqual(statement.trustStores, ["ca:hsm-demo"], "the store the printed cert add fills");
    assert.equal(statement.signatureVerification.level, "strict");
    const [identity] = statement.trustedIdentities;
    assert.ok(identity?.startsWith("x509.subject: "), String(identity));
    assert.ok(printed.includes(`"trustedIdentities": ["${identity}"]`), "the policy is printed too");
  });

  it("its serve command, run as printed, serves the key whose leaf subject the policy names, and stops on SIGTERM", async () => {
    const line = /^\s*(SOFTHSM2_CONF=\S+ hsm-signer serve --config \S+)\s*$/m.exec(printed)?.[1];
    assert.ok(line, `no serve command printed:\n${printed}`);
    assert.ok(line.startsWith(`SOFTHSM2_CONF=${data}/softhsm2.conf `));
    serve = spawn("bash", ["-c", line], { cwd: tmpdir(), env: userEnv(), stdio: ["ignore", "pipe", "pipe"] });
    let stderr = "";
    serve.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
    await waitForLog(serve, "hsm-signer listening", 90_000).catch((e: Error) => assert.fail(`${e.message}\n${stderr}`));
    const client = signerClient(readFileSync(join(data, "tls/ca.pem")), port);
    try {
      const chain = await callSigner<{ certificateChain: Buffer[] }>(client, "GetCertificateChain", { keyId: "demo-key" });
      const leaf = new X509Certificate(chain.certificateChain[0] as Buffer);
      // Node lists the subject's attributes one per line, in the certificate's order.
      const subject = leaf.subject.split("\n").join(", ");
      const policy = JSON.parse(readFileSync(join(data, "notation-trustpolicy.json"), "utf8")) as { trustPolicies: { trustedIdentities: string[] }[] };
      assert.deepEqual(policy.trustPolicies[0]?.trustedIdentities, [`x509.subject: ${subject}`]);
    } finally {
      client.close();
    }
    const exited = new Promise<number | null>((resolve) => serve?.on("exit", (code) => resolve(code)));
    serve.kill("SIGTERM");
    assert.equal(await exited, 0, stderr);
  });
});
