import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { generateKeyPairSync } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { get as httpGet } from "node:http";
import { connect as netConnect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect as tlsConnect } from "node:tls";
import * as grpc from "@grpc/grpc-js";
import { exportJWK, SignJWT } from "jose";
import { requestFor, verifyNotarySignature } from "../helpers/notation.js";
import { runPlugin } from "../helpers/plugin-process.js";
import { spawnCollect } from "../helpers/process.js";
import { adminClient, callAdmin, freePort, HSM_SIGNER, isolatedToken, startServiceProcess, type ServiceProcess } from "../helpers/service-process.js";
import { callSigner, signerClient } from "../helpers/signer-client.js";
import type { SoftHsmToken } from "../helpers/softhsm.js";
import { createTlsMaterial, type TlsMaterial } from "../helpers/tls.js";
import { auditRecordsIn } from "../helpers/audit-records.js";

const ISSUER = "https://token.actions.githubusercontent.com";

function fetchText(port: number, path: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    httpGet({ host: "127.0.0.1", port, path, timeout: 10_000 }, (res) => {
      let body = "";
      res.on("data", (d: Buffer) => (body += d.toString()));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body }));
    }).on("error", reject);
  });
}

function metric(text: string, reason: string): number {
  return Number(new RegExp(`^hsm_signer_tls_handshake_failures_total\\{reason="${reason}"\\} (\\S+)$`, "m").exec(text)?.[1]);
}

describe("hsm-signer serve: client certificates and bearer tokens on one TLS listener", function () {
  this.timeout(180_000);
  let dir: string;
  let token: SoftHsmToken;
  let tls: TlsMaterial;
  let foreign: TlsMaterial;
  let svc: ServiceProcess | undefined;

  before(() => {
    dir = mkdtempSync(join(tmpdir(), "identity-tls-"));
    token = isolatedToken(join(dir, "hsm"), "identity-tls");
    tls = createTlsMaterial(join(dir, "tls"), "build-a", ["custodian"]);
    // Another CA with a client certificate naming the same identity.
    foreign = createTlsMaterial(join(dir, "foreign-tls"), "build-a");
  });

  after(async () => {
    await svc?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("with auth.jwt and tls.clientCaFile: ready, signs for a client certificate and for a token without one, refuses (audited) neither; refused handshakes are counted and logged", async () => {
    const key = generateKeyPairSync("ec", { namedCurve: "P-256" });
    const jwksFile = join(dir, "jwks.json");
    writeFileSync(jwksFile, JSON.stringify({ keys: [{ ...(await exportJWK(key.publicKey)), kid: "k1", alg: "ES256", use: "sig" }] }));
    const metricsPort = await freePort();
    svc = await startServiceProcess({
      name: "mixed",
      dir,
      token,
      tls,
      policy: `custodians:
  - { mtls: "spiffe://hsm-signer.dev/custodian" }
rules:
  - name: build
    match: { mtls: "spiffe://hsm-signer.dev/build-a" }
    keys: ["e2e-key"]
  - name: ci
    match: { jwt: { issuer: "${ISSUER}", claims: { repository: "corp/app" } } }
    keys: ["e2e-key"]
`,
      extraConfig: ["auth:", "  jwt:", `    - { issuer: "${ISSUER}", audience: hsm-signer, jwksFile: ${jwksFile}, algorithms: [ES256] }`, `metrics: { listen: 127.0.0.1:${metricsPort} }`],
    });
    const log: Record<string, unknown>[] = [];
    svc.child.stdout?.on("data", (d: Buffer) => {
      for (const line of d.toString().split("\n")) if (line.startsWith("{")) log.push(JSON.parse(line) as Record<string, unknown>);
    });
    assert.equal((await fetchText(metricsPort, "/readyz")).status, 200);

    const admin = adminClient(tls.ca, svc.adminPort, tls.extra.custodian as { key: Buffer; cert: Buffer });
    await callAdmin(admin, "CreateTestChain", { keyId: "e2e-key", keySpec: "EC-256" });
    admin.close();

    const tokenFile = join(dir, "token");
    const jwt = await new SignJWT({ repository: "corp/app" })
      .setProtectedHeader({ alg: "ES256", kid: "k1" })
      .setIssuer(ISSUER)
      .setAudience("hsm-signer")
      .setSubject("repo:corp/app:ref:refs/tags/v1")
      .setIssuedAt()
      .setExpirationTime("10m")
      .sign(key.privateKey);
    writeFileSync(tokenFile, `${jwt}\n`, { mode: 0o600 });
    const base = { endpoint: `127.0.0.1:${svc.port}`, ca_file: tls.caFile, timeout: "30s" };
    for (const cfg of [
      { ...base, client_cert_file: tls.clientCertFile, client_key_file: tls.clientKeyFile },
      { ...base, token_file: tokenFile },
    ]) {
      const req = requestFor("generate-signature-jws", "e2e-key", "EC-256", cfg);
      // The service sees the key once its refresh (1 s) finds it: retry briefly.
      let r = await runPlugin("generate-signature", JSON.stringify(req));
      for (let i = 0; i < 40 && r.code !== 0 && /not found|unknown key/i.test(r.stderr); i++) {
        await new Promise((res) => setTimeout(res, 250));
        r = await runPlugin("generate-signature", JSON.stringify(req));
      }
      assert.equal(r.code, 0, r.stderr);
      const { signature, certificateChain } = JSON.parse(r.stdout) as { signature: string; certificateChain: string[] };
      assert.ok(verifyNotarySignature(Buffer.from(req.payload as string, "base64"), Buffer.from(signature, "base64"), Buffer.from(certificateChain[0] as string, "base64"), "EC-256"));
    }
    const none = signerClient(tls.ca, svc.port);
    const e = await callSigner(none, "DescribeKey", { keyId: "e2e-key" }).then(
      () => assert.fail("a caller without credentials was served"),
      (err: grpc.ServiceError) => err,
    );
    none.close();
    assert.equal(e.code, grpc.status.UNAUTHENTICATED, e.details);
    const lines = auditRecordsIn(svc.auditDir);
    const signer = lines.filter((l) => l.method === "Sign" || l.method === "DescribeKey");
    assert.deepEqual(
      signer.filter((l) => l.result !== "NOT_FOUND").map((l) => [l.method, l.result, l.identity, l.identityKind]),
      [
        ["Sign", "OK", "spiffe://hsm-signer.dev/build-a", "mtls-uri"],
        ["Sign", "OK", `${ISSUER}#repo:corp/app:ref:refs/tags/v1`, "jwt"],
        ["DescribeKey", "UNAUTHENTICATED", "-", undefined],
      ],
    );

    // Refused in the handshake: a certificate of another CA, and plain HTTP to the TLS port.
    await new Promise<void>((resolve) => {
      const s = tlsConnect({ host: "127.0.0.1", port: svc?.port, servername: "localhost", ca: tls.ca, cert: foreign.clientCert, key: foreign.clientKey, ALPNProtocols: ["h2"] });
      s.on("error", () => undefined);
      s.on("close", () => resolve());
      s.resume();
      setTimeout(() => s.destroy(), 5000).unref();
    });
    await new Promise<void>((resolve) => {
      netConnect(svc?.port ?? 0, "127.0.0.1", function (this: Socket) {
        this.end("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
      })
        .on("error", () => undefined)
        .on("close", () => resolve())
        .resume();
    });
    const deadline = Date.now() + 20_000;
    let text = "";
    while (Date.now() < deadline) {
      text = (await fetchText(metricsPort, "/metrics")).body;
      if (metric(text, "unknown_ca") >= 1 && metric(text, "protocol") >= 1) break;
      await new Promise((res) => setTimeout(res, 100));
    }
    assert.equal(
      metric(text, "unknown_ca"),
      1,
      text
        .split("\n")
        .filter((l) => l.includes("tls_handshake"))
        .join("\n"),
    );
    assert.equal(metric(text, "protocol"), 1);
    assert.equal(metric(text, "no_certificate"), 0, "the token caller without a certificate is no refusal");
    const refused = log.filter((l) => l.msg === "TLS handshake refused");
    assert.deepEqual(refused.map((l) => l.reason).sort(), ["protocol", "unknown_ca"]);
    assert.match(String(refused.find((l) => l.reason === "unknown_ca")?.peer), /^127\.0\.0\.1:\d+$/);
    assert.equal((await fetchText(metricsPort, "/readyz")).status, 200);
  });

  it("SIGHUP re-reads a jwksFile: a key taken out is refused from then on, a key put in is accepted, and a bad file keeps the keys in use", async () => {
    await svc?.stop();
    svc = undefined;
    const [a, b] = [generateKeyPairSync("ec", { namedCurve: "P-256" }), generateKeyPairSync("ec", { namedCurve: "P-256" })];
    const jwk = async (k: typeof a, kid: string): Promise<object> => ({ ...(await exportJWK(k.publicKey)), kid, alg: "ES256", use: "sig" });
    const jwksFile = join(dir, "jwks-reload.json");
    writeFileSync(jwksFile, JSON.stringify({ keys: [await jwk(a, "a")] }));
    svc = await startServiceProcess({
      name: "jwks-reload",
      dir,
      token,
      tls,
      policy: `rules:\n  - name: ci\n    match: { jwt: { issuer: "${ISSUER}", claims: { sub: "*" } } }\n    keys: ["*"]\n`,
      extraConfig: ["auth:", "  jwt:", `    - { issuer: "${ISSUER}", audience: hsm-signer, jwksFile: ${jwksFile}, algorithms: [ES256] }`],
    });
    const child = svc.child;
    const log: Record<string, unknown>[] = [];
    child.stdout?.on("data", (d: Buffer) => {
      for (const line of d.toString().split("\n")) if (line.startsWith("{")) log.push(JSON.parse(line) as Record<string, unknown>);
    });
    const jwtOf = (k: typeof a, kid: string): Promise<string> =>
      new SignJWT({}).setProtectedHeader({ alg: "ES256", kid }).setIssuer(ISSUER).setAudience("hsm-signer").setSubject("repo:corp/app").setIssuedAt().setExpirationTime("10m").sign(k.privateKey);
    const [tokenA, tokenB] = [await jwtOf(a, "a"), await jwtOf(b, "b")];
    const client = signerClient(tls.ca, svc.port);
    const listKeys = (jwt: string): Promise<string> => {
      const md = new grpc.Metadata();
      md.set("authorization", `Bearer ${jwt}`);
      const fn = (client as unknown as Record<string, (r: object, m: grpc.Metadata, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null) => void) => void>).ListKeys!.bind(client);
      return new Promise((resolve) => fn({}, md, { deadline: Date.now() + 20_000 }, (e) => resolve(e ? `${grpc.status[e.code]}: ${e.details}` : "OK")));
    };
    const eventually = async (what: string, cond: () => Promise<boolean>): Promise<void> => {
      const end = Date.now() + 10_000;
      while (!(await cond())) {
        if (Date.now() > end) assert.fail(`${what} within 10 s of SIGHUP`);
        await new Promise((r) => setTimeout(r, 100));
      }
    };
    try {
      assert.equal(await listKeys(tokenA), "OK");
      assert.match(await listKeys(tokenB), /^UNAUTHENTICATED: .*no key of issuer/);

      // The operator takes key a out (compromised) and puts key b in, then sends SIGHUP.
      writeFileSync(jwksFile, JSON.stringify({ keys: [await jwk(b, "b")] }));
      child.kill("SIGHUP");
      await eventually("a token of the removed key is refused", async () => (await listKeys(tokenA)) !== "OK");
      assert.match(await listKeys(tokenA), /^UNAUTHENTICATED: .*no key of issuer/);
      assert.equal(await listKeys(tokenB), "OK");
      assert.ok(
        log.some((l) => l.msg === "JWKS reloaded"),
        "the reload is logged",
      );

      // A file that is not a JWKS: logged, and the keys in use stay.
      writeFileSync(jwksFile, "{ not json");
      child.kill("SIGHUP");
      await eventually("the failed reload is logged", () => Promise.resolve(log.some((l) => l.msg === "JWKS reload failed; the keys in use stay")));
      assert.match(String(log.find((l) => l.msg === "JWKS reload failed; the keys in use stay")?.error), /jwks-reload\.json: not valid JSON/);
      assert.equal(await listKeys(tokenB), "OK");
      assert.equal(child.exitCode, null, "SIGHUP did not stop the service");
    } finally {
      client.close();
    }
    for (const l of log) assert.ok(!JSON.stringify(l).includes(tokenA.split(".")[2] as string), "no token in the log");
  });

  it("refuses to start, with a clear message, when its listener cannot complete a TLS handshake", async () => {
    // OpenSSL loads a DSA certificate and key, but no TLS 1.2/1.3 client and server can agree on
    // a cipher for it: every handshake fails. The service must not come up looking ready.
    const params = join(dir, "dsa-params.pem");
    execFileSync("openssl", ["dsaparam", "-out", params, "2048"], { stdio: "ignore" });
    execFileSync("openssl", ["req", "-x509", "-newkey", `dsa:${params}`, "-nodes", "-keyout", join(dir, "dsa-key.pem"), "-out", join(dir, "dsa.pem"), "-subj", "/CN=localhost", "-days", "2"], {
      stdio: "ignore",
    });
    const [port, metricsPort] = [await freePort(), await freePort()];
    const configFile = join(dir, "dsa.yaml");
    writeFileSync(
      configFile,
      [
        `listen: 127.0.0.1:${port}`,
        "tls:",
        `  certFile: ${join(dir, "dsa.pem")}`,
        `  keyFile: ${join(dir, "dsa-key.pem")}`,
        `  clientCaFile: ${tls.caFile}`,
        "hsm:",
        `  module: ${token.module}`,
        `  tokenLabel: ${token.label}`,
        `  pinFile: ${token.pinFile}`,
        "  sessions: 1",
        `policy: { file: ${join(dir, "mixed", "policy.yaml")} }`,
        `audit: { dir: ${join(dir, "dsa-audit")} }`,
        `metrics: { listen: 127.0.0.1:${metricsPort} }`,
        "",
      ].join("\n"),
    );
    const r = await spawnCollect(HSM_SIGNER, ["serve", "--config", configFile], "", { env: { ...process.env, SOFTHSM2_CONF: token.conf }, timeoutMs: 90_000 });
    assert.equal(r.timedOut, false, "serve kept running");
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`the TLS listener on 127\\.0\\.0\\.1:${port} cannot complete a TLS handshake \\(a loopback handshake to 127\\.0\\.0\\.1:${port} failed: .*handshake failure`));
    assert.doesNotMatch(r.stdout, /hsm-signer listening/);
  });
});
