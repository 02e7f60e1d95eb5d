import { SigningService } from "../../src/signing/signing-service.js";
import assert from "node:assert/strict";
import { generateKeyPairSync, X509Certificate } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { connect as netConnect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { ConnectionOptions } from "node:tls";
import * as grpc from "@grpc/grpc-js";
import { exportJWK, SignJWT } from "jose";
import { AuditLog } from "../../src/audit/index.js";
import { Authenticator, PolicyStore, RateLimiter } from "../../src/auth/index.js";
import { createLogger, silentLogger } from "../../src/log/index.js";
import { attempt } from "../helpers/tls.js";
import { SignerMetrics } from "../../src/metrics/index.js";
import { AccessControl } from "../../src/server/access-control.js";
import { startSignerServer, type RunningServer } from "../../src/server/signer-server.js";
import { TlsHandshakeFailureLog, TlsListener, type TlsHandshakeFailure } from "../../src/server/tls-listener.js";
import { getFixture, keyIdOf, type Fixture } from "../helpers/fixture.js";
import { requestFor, verifyNotarySignature } from "../helpers/notation.js";
import { CLIENT_LEAF_EXT, OpensslCa, SERVER_LEAF_EXT } from "../helpers/openssl-ca.js";
import { runPlugin } from "../helpers/plugin-process.js";
import { loadSignerClientClass, type SignResponse } from "../helpers/signer-client.js";
import { auditRecordsIn } from "../helpers/audit-records.js";

const ISSUER = "https://token.actions.githubusercontent.com";
const AUDIENCE = "hsm-signer";
const DAY = 24 * 3600_000;

interface Pem {
  cert: Buffer;
  key: Buffer;
  certFile: string;
  keyFile: string;
}

type AuditLine = Record<string, unknown>;

const auditLines = (dir: string): AuditLine[] => auditRecordsIn<AuditLine>(dir);

async function code(p: Promise<unknown>): Promise<grpc.ServiceError> {
  return p.then(
    () => assert.fail("the call succeeded"),
    (e: grpc.ServiceError) => e,
  );
}

async function waitFor(what: string, cond: () => boolean, ms = 20_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

describe("identity on one TLS listener: mTLS and bearer tokens mixed, identity kinds, refused handshakes", function () {
  this.timeout(120_000);
  let f: Fixture;
  let tmp: string;
  let root: OpensslCa;
  let server: Pem;
  let uriClient: Pem;
  let cnSpiffeClient: Pem;
  let cnLegacyClient: Pem;
  let dnsClient: Pem;
  let foreignClient: Pem;
  let viaIntermediateClient: Pem;
  let expiredClient: Pem;
  let notYetValidClient: Pem;
  let jwksFile: string;
  let signingKey: ReturnType<typeof generateKeyPairSync>;
  const closers: (() => unknown)[] = [];

  const pem = (name: string, l: { der: Buffer; keyPem: string }): Pem => {
    const certFile = join(tmp, `${name}.pem`);
    const keyFile = join(tmp, `${name}-key.pem`);
    writeFileSync(certFile, new X509Certificate(l.der).toString());
    writeFileSync(keyFile, l.keyPem, { mode: 0o600 });
    return { cert: readFileSync(certFile), key: readFileSync(keyFile), certFile, keyFile };
  };

  const token = (claims: Record<string, unknown> = {}): Promise<string> =>
    new SignJWT({ repository: "corp/app", ...claims })
      .setProtectedHeader({ alg: "ES256", kid: "k1" })
      .setIssuer(ISSUER)
      .setAudience(AUDIENCE)
      .setSubject("repo:corp/app:ref:refs/tags/v1")
      .setIssuedAt()
      .setExpirationTime("5m")
      .sign(signingKey.privateKey);

  const POLICY = `custodians: []
rules:
  - name: build-farm
    match: { mtls: "spiffe://corp/build/*" }
    keys: ["${keyIdOf("EC-256")}"]
  - name: ci
    match: { jwt: { issuer: "${ISSUER}", claims: { repository: "corp/app" } } }
    keys: ["${keyIdOf("EC-256")}"]
  - name: legacy-by-cn
    match: { mtls: { cn: "legacy-*" } }
    keys: ["${keyIdOf("EC-384")}"]
`;

  interface Started extends RunningServer {
    auditDir: string;
    failures: TlsHandshakeFailure[];
  }

  /**
   * The real Signer server as `serve` builds it for `tls.clientCaFile` with JWT issuers
   * (client certificates optional, verified) or without them (required).
   */
  const start = async (o: { optional: boolean; onHandshakeFailure?: (x: TlsHandshakeFailure) => void }): Promise<Started> => {
    const dir = mkdtempSync(join(tmp, "server-"));
    const policyFile = join(dir, "policy.yaml");
    writeFileSync(policyFile, POLICY);
    const auditDir = join(dir, "audit");
    const audit = await AuditLog.open({ dir: auditDir });
    const policy = await PolicyStore.open(policyFile, silentLogger);
    const authenticator = await Authenticator.create({ jwt: o.optional ? [{ issuer: ISSUER, audience: AUDIENCE, jwksFile, algorithms: ["ES256"] }] : [] }, silentLogger);
    const failures: TlsHandshakeFailure[] = [];
    const access = new AccessControl({ authenticator, policy, limiter: new RateLimiter() });
    const s = await startSignerServer({
      listen: "127.0.0.1:0",
      tls: {
        insecure: false,
        cert: server.cert,
        key: server.key,
        clientCa: Buffer.from(root.certPem),
        requireClientCertificate: !o.optional,
        onHandshakeFailure: (x) => {
          failures.push(x);
          o.onHandshakeFailure?.(x);
        },
      },
      signing: new SigningService({ keys: f.hsm.keys, authorizer: access }),
      logger: silentLogger,
      access,
      audit,
    });
    closers.push(async () => {
      await s.close(1000);
      policy.close();
      authenticator.close();
      await audit.close();
    });
    return { ...s, auditDir, failures };
  };

  const client = (port: number, cert?: Pem): grpc.Client => {
    const Client = loadSignerClientClass();
    const creds = cert ? grpc.credentials.createSsl(Buffer.from(root.certPem), cert.key, cert.cert) : grpc.credentials.createSsl(Buffer.from(root.certPem));
    const c = new Client(`127.0.0.1:${port}`, creds, { "grpc.ssl_target_name_override": "localhost" });
    closers.push(() => c.close());
    return c;
  };

  const signWith = <T>(c: grpc.Client, req: object, authorization?: string): Promise<T> => {
    const md = new grpc.Metadata();
    if (authorization) md.set("authorization", authorization);
    const fn = (c as unknown as Record<string, (r: object, m: grpc.Metadata, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r: T) => void) => void>).Sign!.bind(c);
    return new Promise<T>((res, rej) => fn(req, md, { deadline: Date.now() + 20_000 }, (e, r) => (e ? rej(e) : res(r))));
  };

  before(async () => {
    f = await getFixture();
    tmp = mkdtempSync(join(tmpdir(), "mixed-identity-"));
    root = OpensslCa.root(join(tmp, "pki"), { subject: "/CN=clients and server root" });
    const other = OpensslCa.root(join(tmp, "pki"), { subject: "/CN=another root" });
    server = pem("server", root.leaf({ subject: "/CN=localhost", extensions: SERVER_LEAF_EXT }));
    uriClient = pem("uri", root.leaf({ subject: "/CN=build-a", extensions: `${CLIENT_LEAF_EXT}\nsubjectAltName=URI:spiffe://corp/build/a` }));
    // No SAN at all; the CN spells the same SPIFFE id (openssl -subj needs "/" escaped).
    cnSpiffeClient = pem("cn-spiffe", root.leaf({ subject: "/CN=spiffe:\\/\\/corp\\/build\\/a", extensions: CLIENT_LEAF_EXT }));
    cnLegacyClient = pem("cn-legacy", root.leaf({ subject: "/CN=legacy-1", extensions: CLIENT_LEAF_EXT }));
    dnsClient = pem("dns", root.leaf({ subject: "/CN=spiffe:\\/\\/corp\\/build\\/a", extensions: `${CLIENT_LEAF_EXT}\nsubjectAltName=DNS:runner-1.corp.example` }));
    // A client certificate from an intermediate CA: the client sends leaf + intermediate, the
    // service trusts only the root (the configuration most PKIs hand out).
    const inter = root.intermediate({ subject: "/CN=clients intermediate" });
    const viaInter = inter.leaf({ subject: "/CN=build-b", extensions: `${CLIENT_LEAF_EXT}\nsubjectAltName=URI:spiffe://corp/build/b` });
    viaIntermediateClient = pem("via-intermediate", viaInter);
    writeFileSync(viaIntermediateClient.certFile, new X509Certificate(viaInter.der).toString() + new X509Certificate(inter.certDer).toString());
    viaIntermediateClient.cert = readFileSync(viaIntermediateClient.certFile);
    foreignClient = pem("foreign", other.leaf({ subject: "/CN=build-a", extensions: `${CLIENT_LEAF_EXT}\nsubjectAltName=URI:spiffe://corp/build/a` }));
    expiredClient = pem(
      "expired",
      root.leaf({ subject: "/CN=old", notBefore: new Date(Date.now() - 30 * DAY), notAfter: new Date(Date.now() - DAY), extensions: `${CLIENT_LEAF_EXT}\nsubjectAltName=URI:spiffe://corp/build/a` }),
    );
    notYetValidClient = pem(
      "future",
      root.leaf({
        subject: "/CN=future",
        notBefore: new Date(Date.now() + DAY),
        notAfter: new Date(Date.now() + 30 * DAY),
        extensions: `${CLIENT_LEAF_EXT}\nsubjectAltName=URI:spiffe://corp/build/a`,
      }),
    );
    signingKey = generateKeyPairSync("ec", { namedCurve: "P-256" });
    jwksFile = join(tmp, "jwks.json");
    writeFileSync(jwksFile, JSON.stringify({ keys: [{ ...(await exportJWK(signingKey.publicKey)), kid: "k1", alg: "ES256", use: "sig" }] }));
  });

  after(async () => {
    for (const c of closers.reverse()) await c();
    rmSync(tmp, { recursive: true, force: true });
  });

  describe("JWT issuers with tls.clientCaFile (client certificates optional)", () => {
    it("one listener serves a caller with a client certificate, a caller with a token and none, and refuses (audited) a caller with neither", async () => {
      const s = await start({ optional: true });
      const payload = Buffer.from("mixed mode");
      const byCert = await signWith<SignResponse>(client(s.port, uriClient), { keyId: keyIdOf("EC-256"), payload });
      assert.ok(verifyNotarySignature(payload, byCert.signature, byCert.certificateChain[0] as Buffer, "EC-256"));
      const noCert = client(s.port);
      const byToken = await signWith<SignResponse>(noCert, { keyId: keyIdOf("EC-256"), payload }, `Bearer ${await token()}`);
      assert.ok(verifyNotarySignature(payload, byToken.signature, byToken.certificateChain[0] as Buffer, "EC-256"));
      const refused = await code(signWith(noCert, { keyId: keyIdOf("EC-256"), payload }));
      assert.equal(refused.code, grpc.status.UNAUTHENTICATED, refused.details);
      assert.match(refused.details, /no client certificate or bearer token/);
      const lines = auditLines(s.auditDir).filter((l) => l.method === "Sign");
      assert.deepEqual(
        lines.map((l) => [l.result, l.identity, l.identityKind]),
        [
          ["OK", "spiffe://corp/build/a", "mtls-uri"],
          ["OK", `${ISSUER}#repo:corp/app:ref:refs/tags/v1`, "jwt"],
          ["UNAUTHENTICATED", "-", undefined],
        ],
      );
      assert.deepEqual(s.failures, [], "no handshake was refused");
    });

    it("a client certificate issued by an intermediate CA (sent with its intermediate, the root trusted) signs, as with required certificates", async () => {
      const payload = Buffer.from("intermediate");
      for (const optional of [true, false]) {
        const s = await start({ optional });
        const r = await signWith<SignResponse>(client(s.port, viaIntermediateClient), { keyId: keyIdOf("EC-256"), payload });
        assert.ok(verifyNotarySignature(payload, r.signature, r.certificateChain[0] as Buffer, "EC-256"), `optional=${optional}`);
        const lines = auditLines(s.auditDir).filter((l) => l.method === "Sign");
        assert.deepEqual(
          lines.map((l) => [l.result, l.identity, l.identityKind]),
          [["OK", "spiffe://corp/build/b", "mtls-uri"]],
          `optional=${optional}`,
        );
        assert.deepEqual(s.failures, [], "no handshake was refused");
      }
    });

    it("the notation plugin signs with a token_file and no client certificate, and with a client certificate and no token", async () => {
      const s = await start({ optional: true });
      const tokenFile = join(tmp, "token");
      writeFileSync(tokenFile, `${await token()}\n`, { mode: 0o600 });
      const base = { endpoint: `127.0.0.1:${s.port}`, ca_file: root.certFile, timeout: "20s" };
      for (const cfg of [
        { ...base, token_file: tokenFile },
        { ...base, client_cert_file: uriClient.certFile, client_key_file: uriClient.keyFile },
      ]) {
        const r = await runPlugin("generate-signature", JSON.stringify(requestFor("generate-signature-jws", keyIdOf("EC-256"), "EC-256", cfg)));
        assert.equal(r.code, 0, r.stderr);
        assert.ok((JSON.parse(r.stdout) as { signature: string }).signature);
      }
      const none = await runPlugin("generate-signature", JSON.stringify(requestFor("generate-signature-jws", keyIdOf("EC-256"), "EC-256", base)));
      assert.equal(none.code, 1);
      assert.match(none.stderr, /no client certificate or bearer token/);
      assert.deepEqual(
        auditLines(s.auditDir).map((l) => [l.result, l.identityKind]),
        [
          ["OK", "jwt"],
          ["OK", "mtls-uri"],
          ["UNAUTHENTICATED", undefined],
        ],
      );
    });

    it("a presented certificate must verify even though certificates are optional: another CA's is refused in the handshake", async () => {
      const s = await start({ optional: true });
      const e = await code(signWith(client(s.port, foreignClient), { keyId: keyIdOf("EC-256"), payload: Buffer.from("x") }, `Bearer ${await token()}`));
      assert.equal(e.code, grpc.status.UNAVAILABLE, e.details);
      await waitFor("the refusal to be reported", () => s.failures.length > 0);
      assert.equal(s.failures[0]?.reason, "unknown_ca");
      assert.equal(s.failures[0]?.issuer, "CN=another root");
      assert.deepEqual(auditLines(s.auditDir), [], "nothing reached a method");
    });
  });

  describe("identity kinds with real certificates", () => {
    it("a certificate with no SAN and CN=spiffe://... is a CN identity: it does not match the URI SAN rule, and the audit says mtls-cn", async () => {
      for (const optional of [false, true]) {
        const s = await start({ optional });
        const payload = Buffer.from("kinds");
        await signWith(client(s.port, uriClient), { keyId: keyIdOf("EC-256"), payload });
        const cn = await code(signWith(client(s.port, cnSpiffeClient), { keyId: keyIdOf("EC-256"), payload }));
        assert.equal(cn.code, grpc.status.PERMISSION_DENIED, cn.details);
        assert.match(cn.details, /cn:spiffe:\/\/corp\/build\/a may not call Sign .*no rule matches caller cn:spiffe:\/\/corp\/build\/a \(mtls, certificate CN\)/);
        const dns = await code(signWith(client(s.port, dnsClient), { keyId: keyIdOf("EC-256"), payload }));
        assert.equal(dns.code, grpc.status.PERMISSION_DENIED, dns.details);
        // A CN rule (mtls: { cn: ... }) lets a certificate without SANs in.
        await signWith(client(s.port, cnLegacyClient), { keyId: keyIdOf("EC-384"), payload });
        assert.deepEqual(
          auditLines(s.auditDir).map((l) => [l.result, l.identity, l.identityKind, l.decision]),
          [
            ["OK", "spiffe://corp/build/a", "mtls-uri", "allow"],
            ["PERMISSION_DENIED", "cn:spiffe://corp/build/a", "mtls-cn", "deny"],
            ["PERMISSION_DENIED", "dns:runner-1.corp.example", "mtls-dns", "deny"],
            ["OK", "cn:legacy-1", "mtls-cn", "allow"],
          ],
          `optional: ${optional}`,
        );
      }
    });
  });

  describe("refused TLS handshakes", () => {
    it("each refusal is reported with its reason, counted in hsm_signer_tls_handshake_failures_total and logged rate-limited", async () => {
      const metrics = new SignerMetrics({ version: "test" });
      const logLines: Record<string, unknown>[] = [];
      // An hour: every refusal below falls in the first interval of its reason, however slow the machine.
      const log = new TlsHandshakeFailureLog(
        createLogger("info", (l) => logLines.push(JSON.parse(l) as Record<string, unknown>)),
        metrics.observeTlsHandshakeFailure,
        3_600_000,
      );
      closers.push(() => log.close());
      const required = await start({ optional: false, onHandshakeFailure: log.report });
      const optional = await start({ optional: true, onHandshakeFailure: log.report });
      const cert = (p: Pem): ConnectionOptions => ({ ca: Buffer.from(root.certPem), cert: p.cert, key: p.key });
      // No certificate where one is required: OpenSSL's "certificate required" alert reaches the client.
      const none = await attempt(required.port, { ca: Buffer.from(root.certPem) });
      assert.match(none.error ?? "", /certificate required/);
      for (const s of [required, optional]) {
        await attempt(s.port, cert(foreignClient));
        await attempt(s.port, cert(expiredClient));
        await attempt(s.port, cert(notYetValidClient));
        await attempt(s.port, { ...cert(uriClient), ALPNProtocols: ["http/1.1"] });
        await new Promise<void>((res) =>
          netConnect(s.port, "127.0.0.1", function (this: import("node:net").Socket) {
            this.end("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
          })
            .on("close", () => res())
            .resume(),
        );
      }
      // A good certificate is never reported.
      assert.equal((await attempt(required.port, cert(uriClient))).secure, true);
      const expected = ["unknown_ca", "certificate_expired", "certificate_not_yet_valid", "no_h2", "protocol"];
      await waitFor("every refusal to be reported", () => required.failures.length >= 6 && optional.failures.length >= 5);
      assert.deepEqual(
        required.failures.map((x) => x.reason),
        ["no_certificate", ...expected],
      );
      assert.deepEqual(
        optional.failures.map((x) => x.reason),
        expected,
      );
      for (const x of [...required.failures, ...optional.failures]) assert.match(x.peer, /^127\.0\.0\.1:\d+$/);
      assert.equal(optional.failures[1]?.subject, "CN=old", "the refused certificate is named");

      const text = await metrics.metricsText();
      const count = (reason: string): number => Number(new RegExp(`^hsm_signer_tls_handshake_failures_total\\{reason="${reason}"\\} (\\S+)$`, "m").exec(text)?.[1]);
      assert.deepEqual(Object.fromEntries(["no_certificate", ...expected, "closed", "other"].map((r) => [r, count(r)])), {
        no_certificate: 1,
        unknown_ca: 2,
        certificate_expired: 2,
        certificate_not_yet_valid: 2,
        no_h2: 2,
        protocol: 2,
        closed: 0,
        other: 0,
      });
      // One line per reason at once; the second of each reason (within the interval) only counted...
      const refusedLines = (): Record<string, unknown>[] => logLines.filter((l) => l.msg === "TLS handshake refused");
      assert.deepEqual(
        refusedLines()
          .map((l) => l.reason)
          .sort(),
        ["no_certificate", ...expected].sort(),
      );
      assert.ok(refusedLines().every((l) => l.level === "warn" && typeof l.peer === "string" && typeof l.code === "string"));
      // ...and summed up in one line when the interval ends (here: at close()).
      log.close();
      const summaries = logLines.filter((l) => l.msg === "TLS handshakes refused (not logged one by one)");
      assert.deepEqual(summaries.map((l) => [l.reason, l.suppressed]).sort(), expected.map((r) => [r, 1]).sort());
    });

    it("listens on every address a host name resolves to (localhost), on one port, each checked by a handshake", async () => {
      const l = await TlsListener.open(new grpc.Server(), "localhost:0", { cert: server.cert, key: server.key, requireClientCertificate: false });
      closers.push(() => l.destroy());
      assert.ok(l.port > 0);
      assert.equal((await attempt(l.port, { ca: Buffer.from(root.certPem) }, true)).secure, true);
      await assert.rejects(TlsListener.open(new grpc.Server(), "localhost", { cert: server.cert, key: server.key, requireClientCertificate: false }), /cannot listen on localhost: not host:port/);
    });

    it("start-up fails with a clear message when the listener cannot complete a TLS handshake (a DSA server certificate)", async () => {
      const dsaParams = join(tmp, "dsa-params.pem");
      const { execFileSync } = await import("node:child_process");
      execFileSync("openssl", ["dsaparam", "-out", dsaParams, "2048"], { stdio: "ignore" });
      execFileSync("openssl", ["req", "-x509", "-newkey", `dsa:${dsaParams}`, "-nodes", "-keyout", join(tmp, "dsa-key.pem"), "-out", join(tmp, "dsa.pem"), "-subj", "/CN=localhost", "-days", "2"], {
        stdio: "ignore",
      });
      await assert.rejects(
        TlsListener.open(new grpc.Server(), "127.0.0.1:0", { cert: readFileSync(join(tmp, "dsa.pem")), key: readFileSync(join(tmp, "dsa-key.pem")), requireClientCertificate: false }),
        (e: Error & { code?: string }) => {
          assert.equal(e.code, "CONFIG_INVALID");
          assert.match(e.message, /the TLS listener on 127\.0\.0\.1:0 cannot complete a TLS handshake \(a loopback handshake to 127\.0\.0\.1:\d+ failed: .*handshake failure/);
          return true;
        },
      );
    });
  });
});
