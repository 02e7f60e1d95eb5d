import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { SignerError } from "../../src/errors/index.js";
import { loadTlsMaterial, sameTlsMaterial, type TlsFiles } from "../../src/server/tls-material.js";
import { crlSignedBy, parseCrls, subjectDer } from "../../src/tls/crl.js";
import { CLIENT_LEAF_EXT, OpensslCa, SERVER_LEAF_EXT } from "../helpers/openssl-ca.js";

const DAY = 24 * 3600_000;

describe("client CRLs and a listener's TLS material (tls/crl.ts, server/tls-material.ts)", function () {
  this.timeout(60_000);
  let dir: string;
  let root: OpensslCa;
  let inter: OpensslCa;
  let impostor: OpensslCa;
  let base: TlsFiles;
  let n = 0;
  const file = (content: string | Buffer): string => {
    const f = join(dir, `f${++n}`);
    writeFileSync(f, content);
    return f;
  };
  const problem = (f: TlsFiles): string => {
    try {
      loadTlsMaterial(f);
    } catch (e) {
      assert.ok(e instanceof SignerError && e.code === "CONFIG_INVALID", String(e));
      return e.message;
    }
    return assert.fail("loaded");
  };

  before(() => {
    dir = mkdtempSync(join(tmpdir(), "tls-material-"));
    root = OpensslCa.root(dir, { subject: "/O=Corp/CN=Client Root" });
    inter = root.intermediate({ subject: "/O=Corp/CN=Build Agents" });
    // Another CA with the very same name: its CRL names the right issuer, but it did not sign it.
    impostor = OpensslCa.root(dir, { subject: "/O=Corp/CN=Build Agents" });
    const server = root.leaf({ subject: "/CN=localhost", extensions: SERVER_LEAF_EXT });
    base = {
      section: "tls",
      certFile: file(new X509Certificate(server.der).toString()),
      keyFile: file(server.keyPem),
      clientCaFile: file(root.certPem + inter.certPem),
    };
  });

  after(() => rmSync(dir, { recursive: true, force: true }));

  it("reads each CRL of a PEM bundle and a DER CRL: issuer, dates, and who signed it", () => {
    const next = new Date(Math.floor((Date.now() + 3 * DAY) / 1000) * 1000);
    const revoked = inter.leaf({ subject: "/CN=gone", extensions: CLIENT_LEAF_EXT });
    inter.revoke(revoked.der);
    const crls = parseCrls(Buffer.from(root.crl() + inter.crl({ nextUpdate: next })));
    assert.equal(crls.length, 2);
    const [r, i] = crls as [(typeof crls)[0], (typeof crls)[0]];
    const [rootCert, interCert, impostorCert] = [root, inter, impostor].map((c) => new X509Certificate(c.certDer)) as [X509Certificate, X509Certificate, X509Certificate];
    assert.ok(r.issuer.equals(subjectDer(rootCert)));
    assert.ok(i.issuer.equals(subjectDer(interCert)));
    assert.equal(i.nextUpdate?.getTime(), next.getTime());
    assert.ok(i.thisUpdate.getTime() < Date.now());
    assert.equal(crlSignedBy(i, interCert), true);
    assert.equal(crlSignedBy(i, rootCert), false);
    assert.equal(crlSignedBy(i, impostorCert), false, "same name, another key");

    const der = Buffer.from(/-----BEGIN X509 CRL-----([\s\S]+?)-----END/.exec(inter.crl())?.[1] ?? "", "base64");
    const fromDer = parseCrls(der);
    assert.equal(fromDer.length, 1);
    assert.equal(crlSignedBy(fromDer[0] as (typeof crls)[0], interCert), true);
    assert.match((fromDer[0] as (typeof crls)[0]).pem.toString(), /^-----BEGIN X509 CRL-----\n[A-Za-z0-9+/=\n]+-----END X509 CRL-----\n$/);

    assert.deepEqual(parseCrls(Buffer.from("not a CRL")), []);
    assert.throws(() => parseCrls(Buffer.from("-----BEGIN X509 CRL-----\nMIIB\n-----END X509 CRL-----\n")), /CRL 1 cannot be read/);
  });

  it("loads a certificate, its key, client CAs and one CRL per CA, split for node:tls; the earliest nextUpdate is reported", () => {
    const soon = new Date(Date.now() + 2 * DAY);
    const m = loadTlsMaterial({ ...base, clientCrlFile: file(root.crl() + inter.crl({ nextUpdate: soon })) });
    assert.equal(m.crl?.length, 2);
    assert.ok(m.crl?.every((c) => (c.toString().match(/BEGIN X509 CRL/g) ?? []).length === 1));
    assert.equal(Math.floor((m.crlNextUpdate?.getTime() ?? 0) / 1000), Math.floor(soon.getTime() / 1000));
    assert.deepEqual(m.warnings, []);
    assert.ok(m.certNotAfter.getTime() > Date.now());
    assert.ok(sameTlsMaterial(m, loadTlsMaterial({ ...base, clientCrlFile: file(root.crl() + inter.crl({ nextUpdate: soon })) })) === false, "a new CRL is a change");
    assert.ok(sameTlsMaterial(loadTlsMaterial(base), loadTlsMaterial(base)));
    // A DER CRL file (as many CAs publish them) for a bundle of one CA.
    const der = Buffer.from(/-----BEGIN X509 CRL-----([\s\S]+?)-----END/.exec(root.crl())?.[1] ?? "", "base64");
    assert.equal(loadTlsMaterial({ ...base, clientCaFile: file(root.certPem), clientCrlFile: file(der) }).crl?.length, 1);
  });

  it("refuses CRLs that would have every client of a CA refused, or that its CA did not sign, naming the CA", () => {
    assert.match(problem({ ...base, clientCrlFile: file(root.crl()) }), /^tls\.clientCrlFile: no CRL from "O=Corp, CN=Build Agents" of tls\.clientCaFile; .*every client it issued refused/);
    assert.match(problem({ ...base, clientCrlFile: file(root.crl() + impostor.crl()) }), /^tls\.clientCrlFile: the CRL from "O=Corp, CN=Build Agents" is not signed by that CA of tls\.clientCaFile$/);
    assert.match(problem({ ...base, clientCrlFile: file("no CRL here\n") }), /^tls\.clientCrlFile: .* holds no CRL/);
    assert.match(problem({ ...base, clientCaFile: undefined, clientCrlFile: file(root.crl()) }), /^tls\.clientCrlFile: needs tls\.clientCaFile/);
    assert.match(problem({ ...base, section: "admin", keyFile: file(root.leaf({ extensions: SERVER_LEAF_EXT }).keyPem) }), /^admin\.keyFile: .* is not the key of the certificate in admin\.certFile$/);
  });

  it("warns, without refusing, about a CRL past its nextUpdate: OpenSSL refuses every client of that CA until a newer one comes", () => {
    const stale = loadTlsMaterial({ ...base, clientCrlFile: file(root.crl() + inter.crl({ nextUpdate: new Date(Date.now() - 3600_000) })) });
    assert.equal(stale.warnings.length, 1);
    assert.match(stale.warnings[0] ?? "", /^a CRL in tls\.clientCrlFile is past its nextUpdate \(.*\): every client certificate its CA issued is refused/);
  });
});
