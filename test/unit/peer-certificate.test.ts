import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { once } from "node:events";
import tls from "node:tls";
import { checkServerCertificate, parseCaBundle, presentedChain } from "../../src/tls/peer-certificate.js";

/** Certificates made by openssl, independent of the code under test. */
class Pki {
  constructor(readonly dir: string) {}

  private path(n: string): string {
    return join(this.dir, n);
  }

  ca(name: string, opts: { issuer?: string; ext?: string } = {}): void {
    const ext = opts.ext ?? "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash";
    this.issue(name, `/CN=${name}`, ext, opts.issuer);
  }

  /** issuer undefined: self-signed. */
  issue(name: string, subject: string, ext: string, issuer?: string): void {
    execFileSync(
      "openssl",
      ["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", this.path(`${name}.key`), "-out", this.path(`${name}.csr`), "-subj", subject],
      { stdio: "ignore" },
    );
    writeFileSync(this.path(`${name}.ext`), ext);
    const signer = issuer ?? name;
    const args = [
      "x509",
      "-req",
      "-in",
      this.path(`${name}.csr`),
      "-out",
      this.path(`${name}.pem`),
      "-sha256",
      "-extfile",
      this.path(`${name}.ext`),
      "-set_serial",
      String((Date.now() % 1e9) + Math.floor(Math.random() * 1000)),
    ];
    if (issuer) args.push("-CA", this.path(`${signer}.pem`), "-CAkey", this.path(`${signer}.key`));
    else args.push("-key", this.path(`${name}.key`));
    args.push("-days", issuer ? "30" : "365");
    execFileSync("openssl", args, { stdio: "ignore" });
  }

  cert(name: string): X509Certificate {
    return new X509Certificate(readFileSync(this.path(`${name}.pem`)));
  }
}

const SERVER_EXT = "subjectAltName=DNS:signer.example.com,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature";

describe("checkServerCertificate (ca_file verification done in the plugin)", function () {
  this.timeout(60_000);
  let dir: string;
  let pki: Pki;

  before(() => {
    dir = mkdtempSync(join(tmpdir(), "server-cert-"));
    pki = new Pki(dir);
    pki.ca("root");
    pki.ca("inter", { issuer: "root" });
    pki.ca("other-root");
    pki.issue("leaf", "/CN=signer", SERVER_EXT, "root");
    pki.issue("leaf-via-inter", "/CN=signer", SERVER_EXT, "inter");
    pki.issue("leaf-other", "/CN=signer", SERVER_EXT, "other-root");
    pki.issue("leaf-client-only", "/CN=signer", "subjectAltName=DNS:signer.example.com\nextendedKeyUsage=clientAuth", "root");
    pki.issue("not-a-ca", "/CN=not-a-ca", "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature", "root");
    pki.issue("leaf-under-not-a-ca", "/CN=signer", SERVER_EXT, "not-a-ca");
    // A team's CA, name-constrained to its own domain, and one that may issue leaves only.
    const CA = "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash";
    pki.ca("team", { issuer: "root", ext: `${CA}\nnameConstraints=critical,permitted;DNS:team.example.com,excluded;IP:127.0.0.0/255.0.0.0` });
    pki.issue("team-leaf-outside", "/CN=signer", SERVER_EXT, "team");
    pki.issue("team-leaf-inside", "/CN=svc", "subjectAltName=DNS:svc.team.example.com\nextendedKeyUsage=serverAuth", "team");
    pki.ca("team-excluding", { issuer: "root", ext: `${CA}\nnameConstraints=critical,excluded;DNS:signer.example.com` });
    pki.issue("team-excluding-leaf", "/CN=signer", SERVER_EXT, "team-excluding");
    pki.ca("leaves-only", { issuer: "root", ext: CA.replace("CA:TRUE", "CA:TRUE,pathlen:0") });
    pki.ca("sub-of-leaves-only", { issuer: "leaves-only" });
    pki.issue("leaf-under-sub", "/CN=signer", SERVER_EXT, "sub-of-leaves-only");
    pki.issue("leaf-under-leaves-only", "/CN=signer", SERVER_EXT, "leaves-only");
  });

  after(() => rmSync(dir, { recursive: true, force: true }));

  const anchors = (): X509Certificate[] => [pki.cert("root")];

  it("accepts a server certificate issued by a CA from ca_file, by DNS name and by IP", () => {
    assert.equal(checkServerCertificate(pki.cert("leaf"), [pki.cert("leaf")], anchors(), "signer.example.com"), undefined);
    assert.equal(checkServerCertificate(pki.cert("leaf"), [pki.cert("leaf")], anchors(), "127.0.0.1"), undefined);
  });

  it("accepts a chain through an intermediate the server presents, and refuses it when the server does not", () => {
    const leaf = pki.cert("leaf-via-inter");
    assert.equal(checkServerCertificate(leaf, [leaf, pki.cert("inter")], anchors(), "signer.example.com"), undefined);
    assert.match(checkServerCertificate(leaf, [leaf], anchors(), "signer.example.com") ?? "", /not issued by a CA in ca_file/);
  });

  it("refuses a certificate from another CA, a wrong host, an expired certificate, a client-only EKU", () => {
    assert.match(checkServerCertificate(pki.cert("leaf-other"), [pki.cert("leaf-other")], anchors(), "signer.example.com") ?? "", /not issued by a CA in ca_file/);
    assert.match(checkServerCertificate(pki.cert("leaf"), [pki.cert("leaf")], anchors(), "evil.example.com") ?? "", /does not name evil\.example\.com/);
    assert.match(checkServerCertificate(pki.cert("leaf"), [pki.cert("leaf")], anchors(), "127.0.0.2") ?? "", /does not name/);
    const in60Days = Date.now() + 60 * 86400_000; // the leaf is valid for 30 days
    assert.match(checkServerCertificate(pki.cert("leaf"), [pki.cert("leaf")], anchors(), "signer.example.com", in60Days) ?? "", /not valid now/);
    assert.match(checkServerCertificate(pki.cert("leaf-client-only"), [pki.cert("leaf-client-only")], anchors(), "signer.example.com") ?? "", /serverAuth/);
  });

  it("refuses a chain through a presented certificate that is not a CA", () => {
    const leaf = pki.cert("leaf-under-not-a-ca");
    assert.match(checkServerCertificate(leaf, [leaf, pki.cert("not-a-ca")], anchors(), "signer.example.com") ?? "", /not issued by a CA in ca_file/);
  });

  it("honours the name constraints of the CAs on the path (a team's CA cannot issue the service's name)", () => {
    const chain = (leaf: string, ...cas: string[]): X509Certificate[] => [pki.cert(leaf), ...cas.map((c) => pki.cert(c))];
    // OpenSSL agrees: these are the expectations of any RFC 5280 verifier.
    const opensslVerify = (leaf: string, inter: string, name: string): boolean => {
      try {
        execFileSync("openssl", ["verify", "-CAfile", join(dir, "root.pem"), "-untrusted", join(dir, `${inter}.pem`), ...(name ? ["-verify_hostname", name] : []), join(dir, `${leaf}.pem`)], {
          stdio: "ignore",
        });
        return true;
      } catch {
        return false;
      }
    };
    assert.equal(opensslVerify("team-leaf-outside", "team", "signer.example.com"), false);
    assert.match(checkServerCertificate(pki.cert("team-leaf-outside"), chain("team-leaf-outside", "team"), anchors(), "signer.example.com") ?? "", /name constraints of "CN=team"/);
    assert.match(checkServerCertificate(pki.cert("team-leaf-outside"), chain("team-leaf-outside", "team"), anchors(), "127.0.0.1") ?? "", /name constraints of "CN=team"/);
    assert.match(
      checkServerCertificate(pki.cert("team-excluding-leaf"), chain("team-excluding-leaf", "team-excluding"), anchors(), "signer.example.com") ?? "",
      /name constraints of "CN=team-excluding"/,
    );
    assert.equal(opensslVerify("team-leaf-inside", "team", "svc.team.example.com"), true);
    assert.equal(checkServerCertificate(pki.cert("team-leaf-inside"), chain("team-leaf-inside", "team"), anchors(), "svc.team.example.com"), undefined);
  });

  it("honours a CA's path length: a CA that may issue only leaves cannot vouch for another CA", () => {
    const leaf = pki.cert("leaf-under-sub");
    assert.match(checkServerCertificate(leaf, [leaf, pki.cert("sub-of-leaves-only"), pki.cert("leaves-only")], anchors(), "signer.example.com") ?? "", /path length/);
    const direct = pki.cert("leaf-under-leaves-only");
    assert.equal(checkServerCertificate(direct, [direct, pki.cert("leaves-only")], anchors(), "signer.example.com"), undefined);
  });

  it("accepts a server certificate pinned in ca_file itself", () => {
    assert.equal(checkServerCertificate(pki.cert("leaf-other"), [pki.cert("leaf-other")], [pki.cert("leaf-other")], "signer.example.com"), undefined);
  });

  it("reads every certificate of a PEM bundle, and a DER file", () => {
    const bundle = Buffer.concat([readFileSync(join(dir, "other-root.pem")), readFileSync(join(dir, "root.pem"))]);
    const parsed = parseCaBundle(bundle);
    assert.equal(parsed.length, 2);
    assert.equal(checkServerCertificate(pki.cert("leaf"), [pki.cert("leaf")], parsed, "signer.example.com"), undefined);
    assert.equal(parseCaBundle(pki.cert("root").raw).length, 1);
  });
});

describe("presentedChain: the certificates a TLS server really sends", function () {
  this.timeout(60_000);
  let dir: string;
  let pki: Pki;

  before(() => {
    dir = mkdtempSync(join(tmpdir(), "presented-chain-"));
    pki = new Pki(dir);
    pki.ca("root");
    pki.ca("int1", { issuer: "root" });
    pki.ca("int2", { issuer: "int1" });
    pki.issue("leaf1", "/CN=signer", SERVER_EXT, "int1");
    pki.issue("leaf2", "/CN=signer", SERVER_EXT, "int2");
  });

  after(() => rmSync(dir, { recursive: true, force: true }));

  const pem = (n: string): Buffer => readFileSync(join(dir, `${n}.pem`));

  /** A TLS server whose certificate file holds the leaf and then its intermediates; the client's view of it. */
  async function handshake(leaf: string, intermediates: string[]): Promise<{ leaf: X509Certificate | undefined; all: X509Certificate[] }> {
    const server = tls.createServer({ key: readFileSync(join(dir, `${leaf}.key`)), cert: Buffer.concat([pem(leaf), ...intermediates.map(pem)]) }, (s) => s.on("error", () => undefined).end());
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    const socket = tls.connect({ host: "127.0.0.1", port: (server.address() as { port: number }).port, ca: [], rejectUnauthorized: false });
    try {
      await once(socket, "secureConnect");
      // It leaves the socket as it was: asked twice, the same answer.
      const once1 = presentedChain(socket);
      const twice = presentedChain(socket);
      assert.deepEqual(
        twice.all.map((c) => c.fingerprint256),
        once1.all.map((c) => c.fingerprint256),
      );
      return twice;
    } finally {
      socket.destroy();
      server.close();
    }
  }

  for (const [leaf, intermediates] of [
    ["leaf1", ["int1"]],
    ["leaf2", ["int2", "int1"]],
  ] as const) {
    it(`root → ${[...intermediates].reverse().join(" → ")} → server: every certificate sent is seen, and the chain verifies with only the root as anchor`, async () => {
      const got = await handshake(leaf, [...intermediates]);
      assert.equal(got.leaf?.fingerprint256, pki.cert(leaf).fingerprint256);
      assert.deepEqual(
        got.all.map((c) => c.subject),
        [pki.cert(leaf), ...intermediates.map((n) => pki.cert(n))].map((c) => c.subject),
      );
      assert.ok(got.leaf);
      assert.equal(checkServerCertificate(got.leaf, got.all, [pki.cert("root")], "127.0.0.1"), undefined);
    });
  }
});
