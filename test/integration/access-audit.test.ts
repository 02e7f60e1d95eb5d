import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createHash, generateKeyPairSync, randomBytes } from "node:crypto";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import * as grpc from "@grpc/grpc-js";
import { exportJWK, SignJWT } from "jose";
import { AuditLog, auditFilesIn, verifyAuditFiles } from "../../src/audit/index.js";
import { getFixture, keyIdOf, startTestServer, type Fixture, type TestServer } from "../helpers/fixture.js";
import { requestFor, verifyNotarySignature } from "../helpers/notation.js";
import { runPlugin } from "../helpers/plugin-process.js";
import { callSigner, signerClient, type KeyInfo, type SignResponse } from "../helpers/signer-client.js";
import { PROJECT_ROOT } from "../helpers/softhsm.js";
import { auditRecordsIn } from "../helpers/audit-records.js";

const run = promisify(execFile);
const HSM_SIGNER = join(PROJECT_ROOT, "dist/hsm-signer");

type Receipt = { sequence: number; lineHash: string };
type Signed = SignResponse & { receipt: Receipt };

const records = (dir: string): Record<string, unknown>[] => auditRecordsIn(dir);

async function expectCode(p: Promise<unknown>, code: grpc.status, re?: RegExp): Promise<grpc.ServiceError> {
  const e = await p.then(
    () => assert.fail(`expected ${grpc.status[code]}, the call succeeded`),
    (err: grpc.ServiceError) => err,
  );
  assert.equal(e.code, code, `${grpc.status[e.code]}: ${e.details}`);
  if (re) assert.match(e.details, re);
  return e;
}

const jwsPayload = (keyId: string, spec: string): Buffer => Buffer.from(requestFor("generate-signature-jws", keyId, spec, {}).payload as string, "base64");

describe("identity, policy and audit through the real gRPC server", function () {
  this.timeout(90_000);
  let f: Fixture;
  let tmp: string;
  const servers: TestServer[] = [];
  const clients: grpc.Client[] = [];
  const start = async (o: Parameters<typeof startTestServer>[1]): Promise<TestServer> => {
    const s = await startTestServer(f, o);
    servers.push(s);
    return s;
  };
  const client = (port: number, cert?: { key: Buffer; cert: Buffer }): grpc.Client => {
    const c = signerClient(f.tls.ca, port, cert);
    clients.push(c);
    return c;
  };
  const withToken = (token: string): grpc.CallOptions & { metadata: grpc.Metadata } => {
    const md = new grpc.Metadata();
    md.set("authorization", `Bearer ${token}`);
    return { metadata: md };
  };
  const callWith = <T>(c: grpc.Client, method: "Sign" | "DescribeKey" | "ListKeys", req: object, md?: grpc.Metadata): Promise<T> => {
    if (!md) return callSigner<T>(c, method, req);
    const fn = (c as unknown as Record<string, (r: object, m: grpc.Metadata, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r: T) => void) => void>)[method]!.bind(c);
    return new Promise<T>((res, rej) => fn(req, md, { deadline: Date.now() + 20_000 }, (e, r) => (e ? rej(e) : res(r))));
  };

  before(async () => {
    f = await getFixture();
    tmp = mkdtempSync(join(tmpdir(), "access-audit-"));
  });

  after(async () => {
    for (const c of clients) c.close();
    for (const s of servers) await s.close(1000);
    rmSync(tmp, { recursive: true, force: true });
  });

  describe("mTLS callers", () => {
    const policy = `rules:
  - name: build-farm
    match: { mtls: "spiffe://hsm-signer.dev/test-client" }
    keys: ["test-ec-*"]
`;

    it("sign only with the keys their rule names; everything else is PERMISSION_DENIED and audited", async () => {
      const s = await start({ mtls: true, policy });
      const c = client(s.port, { key: f.tls.clientKey, cert: f.tls.clientCert });
      const payload = jwsPayload(keyIdOf("EC-256"), "EC-256");
      const r = await callSigner<Signed>(c, "Sign", { keyId: keyIdOf("EC-256"), payload });
      assert.ok(verifyNotarySignature(payload, r.signature, r.certificateChain[0] as Buffer, "EC-256"));
      await expectCode(
        callSigner(c, "Sign", { keyId: keyIdOf("RSA-2048"), payload }),
        grpc.status.PERMISSION_DENIED,
        /spiffe:\/\/hsm-signer\.dev\/test-client may not call Sign with key "test-rsa-2048"/,
      );
      const { keys } = await callSigner<{ keys: KeyInfo[] }>(c, "ListKeys", {});
      assert.deepEqual(keys.map((k) => k.keyId).sort(), [keyIdOf("EC-256"), keyIdOf("EC-384"), keyIdOf("EC-521")]);
      const recs = records(s.auditDir);
      const ok = recs.find((x) => x.method === "Sign" && x.result === "OK");
      const denied = recs.find((x) => x.method === "Sign" && x.result === "PERMISSION_DENIED");
      assert.equal(ok?.identity, "spiffe://hsm-signer.dev/test-client");
      assert.equal(ok?.decision, "allow");
      assert.equal(ok?.keyId, keyIdOf("EC-256"));
      assert.equal(ok?.payloadKind, "notary-jws");
      assert.equal((ok?.artifact as { digest: string }).digest, "sha256:d7fe34585a19531bacc65a58cf4073b1488568cd2891304e56f035591c62b4bc");
      assert.equal(ok?.payloadDigest, `sha256:${createHash("sha256").update(payload).digest("hex")}`);
      assert.equal(ok?.seq, r.receipt.sequence, "the receipt names the audit line of the signature");
      assert.equal(denied?.decision, "deny");
      assert.ok(!JSON.stringify(recs).includes(payload.toString("base64")), "payload bytes are never in the audit");
    });

    it("a caller with no credentials at all is UNAUTHENTICATED when anonymous callers are not allowed", async () => {
      const s = await start({ policy });
      const c = client(s.port);
      await expectCode(callSigner(c, "DescribeKey", { keyId: keyIdOf("EC-256") }), grpc.status.UNAUTHENTICATED, /no client certificate or bearer token/);
      const recs = records(s.auditDir);
      assert.equal(recs.at(-1)?.result, "UNAUTHENTICATED");
      assert.equal(recs.at(-1)?.identity, "-");
    });
  });

  describe("OIDC/JWT callers", () => {
    const issuer = "https://token.actions.githubusercontent.com";
    const audience = "hsm-signer";
    let key: ReturnType<typeof generateKeyPairSync>;
    let jwksFile: string;
    const token = (claims: Record<string, unknown>, exp = "5m"): Promise<string> =>
      new SignJWT({ repository: "corp/app", ref: "refs/tags/v1.0.0", ...claims })
        .setProtectedHeader({ alg: "ES256", kid: "k1" })
        .setIssuer(issuer)
        .setAudience(audience)
        .setSubject("repo:corp/app:ref:refs/tags/v1.0.0")
        .setIssuedAt()
        .setExpirationTime(exp)
        .sign(key.privateKey);
    // One token per 100 s: the burst of 3 cannot refill while the plugin runs, however slow the machine.
    const policy = `rateLimits:
  perIdentity: { ratePerSecond: 0.01, burst: 3 }
rules:
  - name: ci-release
    match:
      jwt: { issuer: "${issuer}", claims: { repository: "corp/app", ref: "refs/tags/*" } }
    keys: ["test-ec-256"]
`;

    before(async () => {
      key = generateKeyPairSync("ec", { namedCurve: "P-256" });
      jwksFile = join(tmp, "jwks.json");
      writeFileSync(jwksFile, JSON.stringify({ keys: [{ ...(await exportJWK(key.publicKey)), kid: "k1", alg: "ES256", use: "sig" }] }));
    });

    it("sign when their claims match a rule; other claims, expired tokens and no token are refused", async () => {
      const s = await start({ policy, jwt: [{ issuer, audience, jwksFile, algorithms: ["ES256"] }] });
      const c = client(s.port);
      const payload = randomBytes(100);
      const good = await callWith<Signed>(c, "Sign", { keyId: keyIdOf("EC-256"), payload }, withToken(await token({})).metadata);
      assert.ok(verifyNotarySignature(payload, good.signature, good.certificateChain[0] as Buffer, "EC-256"));
      await expectCode(callWith(c, "Sign", { keyId: keyIdOf("EC-256"), payload }, withToken(await token({ ref: "refs/heads/main" })).metadata), grpc.status.PERMISSION_DENIED);
      await expectCode(callWith(c, "Sign", { keyId: keyIdOf("EC-256"), payload }, withToken(await token({}, "-1m")).metadata), grpc.status.UNAUTHENTICATED);
      const recs = records(s.auditDir).filter((x) => x.method === "Sign");
      assert.deepEqual(
        recs.map((x) => x.result),
        ["OK", "PERMISSION_DENIED", "UNAUTHENTICATED"],
      );
      assert.equal(recs[0]?.identity, `${issuer}#repo:corp/app:ref:refs/tags/v1.0.0`);
      assert.ok(!readFileSync(auditFilesIn(s.auditDir)[0] as string, "utf8").includes("eyJ"), "no token in the audit");
    });

    it("over the rate limit: RESOURCE_EXHAUSTED with a retry delay; the plugin (token_file) reports THROTTLED", async () => {
      const s = await start({ policy, jwt: [{ issuer, audience, jwksFile, algorithms: ["ES256"] }] });
      const tokenFile = join(tmp, "token");
      writeFileSync(tokenFile, `${await token({})}\n`);
      const cfg = { endpoint: `127.0.0.1:${s.port}`, ca_file: f.tls.caFile, token_file: tokenFile, timeout: "1s" };
      const req = JSON.stringify(requestFor("generate-signature-cose", keyIdOf("EC-256"), "EC-256", cfg));
      for (let i = 0; i < 3; i++) {
        const ok = await runPlugin("generate-signature", req);
        assert.equal(ok.code, 0, ok.stderr);
      }
      const r = await runPlugin("generate-signature", req);
      assert.equal(r.code, 1);
      assert.equal(r.stdout, "");
      const err = JSON.parse(r.stderr) as { errorCode: string; errorMessage: string };
      assert.equal(err.errorCode, "THROTTLED");
      assert.match(err.errorMessage, /rate limit/);
      const c = client(s.port);
      const e = await expectCode(callWith(c, "Sign", { keyId: keyIdOf("EC-256"), payload: Buffer.from("x") }, withToken(await token({})).metadata), grpc.status.RESOURCE_EXHAUSTED, /retry in \d+ ms/);
      assert.ok(Number(e.metadata.get("retry-after-ms")[0]) > 0);
    });
  });

  describe("the audit log", () => {
    it("holds exactly one line per request after a burst of concurrent signatures, and the chain verifies", async () => {
      const s = await start({});
      const c = client(s.port);
      const before = records(s.auditDir).length;
      const n = 120;
      const results = await Promise.all(Array.from({ length: n }, (_, i) => callSigner<Signed>(c, "Sign", { keyId: keyIdOf(i % 2 ? "EC-256" : "RSA-2048"), payload: Buffer.from(`burst ${i}`) })));
      const recs = records(s.auditDir);
      assert.equal(recs.length - before, n);
      const seqs = new Set(results.map((r) => r.receipt.sequence));
      assert.equal(seqs.size, n, "each answer has its own audit line");
      for (const r of results) {
        const line = recs.find((x) => x.seq === r.receipt.sequence);
        assert.equal(line?.requestId, r.requestId);
      }
      const v = await verifyAuditFiles(auditFilesIn(s.auditDir));
      assert.ok(v.ok, JSON.stringify(v.firstBad));
    });

    it("when it cannot be written, Sign fails with UNAVAILABLE and no signature leaves", async () => {
      const dir = join(tmp, "full-audit");
      mkdirSync(dir);
      symlinkSync("/dev/full", join(dir, "audit-0000000000000001.jsonl"));
      const audit = await AuditLog.open({ dir });
      const s = await start({ audit });
      const c = client(s.port);
      await expectCode(callSigner(c, "Sign", { keyId: keyIdOf("EC-256"), payload: Buffer.from("must not be signed") }), grpc.status.UNAVAILABLE, /audit/);
      await expectCode(callSigner(c, "DescribeKey", { keyId: keyIdOf("EC-256") }), grpc.status.UNAVAILABLE, /audit/);
      assert.equal(audit.healthy, false);
      await audit.close().catch(() => undefined);
    });

    it("hsm-signer audit verify and search (globs, --key-id) work on the service's files, and find a tampered line", async () => {
      const s = await start({});
      const c = client(s.port);
      const payload = jwsPayload(keyIdOf("EC-384"), "EC-384");
      await callSigner<Signed>(c, "Sign", { keyId: keyIdOf("EC-384"), payload });
      await callSigner(c, "DescribeKey", { keyId: keyIdOf("EC-384") });
      await callSigner(c, "ListKeys", {});
      const ok = await run(HSM_SIGNER, ["audit", "verify", "--dir", s.auditDir]);
      assert.match(ok.stdout, /^OK: 3 records/);
      const found = await run(HSM_SIGNER, ["audit", "search", "--dir", s.auditDir, "--artifact", "sha256:d7fe34585a19531bacc65a58cf4073b1488568cd2891304e56f035591c62b4bc", "--json"]);
      const hits = found.stdout
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l) as Record<string, unknown>);
      assert.equal(hits.length, 1);
      assert.equal(hits[0]?.keyId, keyIdOf("EC-384"));
      assert.equal(hits[0]?.identity, "anonymous");
      // --identity and --key-id are globs, as the README's example and the policy have them.
      const search = async (...args: string[]): Promise<Record<string, unknown>[]> =>
        (await run(HSM_SIGNER, ["audit", "search", "--dir", s.auditDir, ...args, "--json"])).stdout
          .trim()
          .split("\n")
          .filter(Boolean)
          .map((l) => JSON.parse(l) as Record<string, unknown>);
      assert.deepEqual(
        (await search("--identity", "anon*")).map((r) => r.method),
        ["Sign", "DescribeKey", "ListKeys"],
      );
      assert.deepEqual(
        (await search("--identity", "anonymou?", "--key-id", "test-ec-*")).map((r) => r.method),
        ["Sign", "DescribeKey"],
      );
      assert.deepEqual(await search("--key-id", "test-ec"), [], "anchored: a glob matches the whole key id");
      assert.match((await run(HSM_SIGNER, ["audit", "search", "--dir", s.auditDir, "--identity", "spiffe://corp/build/*"])).stdout, /^0 record\(s\)$/m);
      // --key is a private-key file in the custodian commands: here it is refused, not reinterpreted.
      const key = await run(HSM_SIGNER, ["audit", "search", "--dir", s.auditDir, "--key", "test-ec-384"]).then(
        () => assert.fail("--key was accepted"),
        (e: { code: number; stderr: string }) => e,
      );
      assert.equal(key.code, 2);
      assert.match(key.stderr, /audit search takes the key id as --key-id \(--key is the TLS private-key file in other commands\)/);
      const file = auditFilesIn(s.auditDir)[0] as string;
      const lines = readFileSync(file, "utf8").split("\n");
      lines[0] = (lines[0] as string).replace('"identity":"anonymous"', '"identity":"someone-else"');
      const copy = join(tmp, "tampered");
      mkdirSync(copy);
      writeFileSync(join(copy, readdirSync(s.auditDir)[0] as string), lines.join("\n"));
      const bad = await run(HSM_SIGNER, ["audit", "verify", "--dir", copy]).then(
        () => assert.fail("a tampered file verified"),
        (e: { code: number; stdout: string }) => e,
      );
      assert.equal(bad.code, 1);
      assert.match(bad.stdout, /FAILED at .*:2:/);
    });
  });

  it("a policy change on disk applies without a restart; an invalid one is rejected and the old one stays", async () => {
    const s = await start({ policy: 'allowAnonymousOnLoopback: true\nrules:\n  - name: a\n    match: { anonymous: true }\n    keys: ["test-ec-256"]\n' });
    const c = client(s.port);
    await callSigner(c, "DescribeKey", { keyId: keyIdOf("EC-256") });
    await expectCode(callSigner(c, "DescribeKey", { keyId: keyIdOf("EC-384") }), grpc.status.PERMISSION_DENIED);
    writeFileSync(s.policyFile, 'allowAnonymousOnLoopback: true\nrules:\n  - name: b\n    match: { anonymous: true }\n    keys: ["test-ec-384"]\n');
    assert.equal(await s.policy.reload(), true);
    await callSigner(c, "DescribeKey", { keyId: keyIdOf("EC-384") });
    await expectCode(callSigner(c, "DescribeKey", { keyId: keyIdOf("EC-256") }), grpc.status.PERMISSION_DENIED);
    writeFileSync(s.policyFile, "rules: [ this is not valid");
    assert.equal(await s.policy.reload(), false);
    await callSigner(c, "DescribeKey", { keyId: keyIdOf("EC-384") });
  });
});
