import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { generateKeyPairSync, X509Certificate } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { isSignerError } from "../../src/errors/index.js";
import { checkCodeSigningChain as independentCheck } from "../helpers/chain-checker.js";
import { checkCodeSigningChain, formatChainProblems, orderChain, parseCertificateBundle, type ChainProblem } from "../../src/signing/chain-rules.js";
import { CODE_SIGNING_LEAF_EXT, OpensslCa } from "../helpers/openssl-ca.js";

const subj = (cn: string): string => `/C=US/ST=WA/O=Acme/CN=${cn}`;
const pem = (der: Buffer): string => new X509Certificate(der).toString();
/** "index:rule" per problem, so a test pins both and fails on anything extra. */
const ids = (problems: ChainProblem[]): string[] => problems.map((p) => `${p.index}:${p.rule}`);
const LEAF_WITHOUT_KU = "basicConstraints=critical,CA:FALSE\nextendedKeyUsage=codeSigning";

function rejects(fn: () => unknown, message: RegExp): void {
  assert.throws(fn, (e: unknown) => isSignerError(e) && e.code === "INVALID_ARGUMENT" && message.test(e.message));
}

describe("chain rules (src/signing/chain-rules.ts) on openssl-made chains", function () {
  this.timeout(60_000);
  let dir: string;
  let root: OpensslCa;
  let inter: OpensslCa;
  let leaf: Buffer;
  let ecRoot: OpensslCa;
  let ecInter: OpensslCa;

  before(() => {
    dir = mkdtempSync(join(tmpdir(), "chain-rules-"));
    root = OpensslCa.root(dir, { subject: subj("RSA Root"), key: "rsa-2048" });
    inter = root.intermediate({ subject: subj("RSA Inter"), key: "rsa-2048" });
    leaf = inter.leaf({ subject: subj("release"), key: "rsa-2048" }).der;
    ecRoot = OpensslCa.root(dir, { subject: subj("EC Root"), key: "ec-384", md: "sha384" });
    ecInter = ecRoot.intermediate({ subject: subj("EC Inter") });
  });

  after(() => rmSync(dir, { recursive: true, force: true }));

  describe("good chains", () => {
    /** The test checker (written apart from src/) must agree that the openssl chains are good. */
    const good = (chain: Buffer[]): void => {
      assert.deepEqual(checkCodeSigningChain(chain), []);
      assert.deepEqual(independentCheck(chain, new Date()), []);
    };

    it("RSA root -> intermediate -> leaf", () => {
      good([leaf, inter.certDer, root.certDer]);
    });

    it("EC root -> intermediate -> leaf, and root -> leaf", () => {
      good([ecInter.leaf({ subject: subj("ec") }).der, ecInter.certDer, ecRoot.certDer]);
      good([ecRoot.leaf({ subject: subj("direct"), key: "ec-384" }).der, ecRoot.certDer]);
    });

    it("a leaf for a bare public key (signPublicKey) and one from a CSR (signCsr)", () => {
      const { publicKey } = generateKeyPairSync("ec", { namedCurve: "P-256" });
      const spki = publicKey.export({ type: "spki", format: "der" });
      const fromSpki = inter.signPublicKey(spki, { subject: subj("hsm") });
      assert.ok(new X509Certificate(fromSpki).publicKey.export({ type: "spki", format: "der" }).equals(spki));
      assert.deepEqual(checkCodeSigningChain([fromSpki, inter.certDer, root.certDer]), []);
      execFileSync("openssl", ["req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", join(dir, "csr.key"), "-out", join(dir, "x.csr"), "-subj", "/CN=csr"], {
        stdio: "ignore",
      });
      const fromCsr = inter.signCsr(readFileSync(join(dir, "x.csr"), "utf8"), { subject: subj("csr") });
      assert.deepEqual(checkCodeSigningChain([fromCsr, inter.certDer, root.certDer]), []);
    });

    it("an intermediate with pathLen 0 directly above the leaf", () => {
      const i0 = root.intermediate({ subject: subj("pathlen0"), extensions: "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign" });
      assert.deepEqual(checkCodeSigningChain([i0.leaf({ subject: subj("l") }).der, i0.certDer, root.certDer]), []);
    });

    it("validity is inclusive at both ends", () => {
      const notBefore = new Date(Math.floor(Date.now() / 1000) * 1000 - 60_000);
      const notAfter = new Date(notBefore.getTime() + 3600_000);
      const l = inter.leaf({ subject: subj("window"), notBefore, notAfter }).der;
      assert.deepEqual(checkCodeSigningChain([l, inter.certDer, root.certDer], notAfter), []);
      assert.deepEqual(ids(checkCodeSigningChain([l, inter.certDer, root.certDer], new Date(notAfter.getTime() + 1000))), ["0:expired"]);
    });
  });

  describe("parseCertificateBundle", () => {
    it("splits a PEM bundle, accepts PEM and DER inputs together, and drops duplicates", () => {
      const bundle = Buffer.from(inter.certPem + root.certPem);
      assert.deepEqual(parseCertificateBundle([bundle]), [inter.certDer, root.certDer]);
      assert.deepEqual(parseCertificateBundle([leaf, bundle, Buffer.from(pem(leaf)), root.certDer]), [leaf, inter.certDer, root.certDer]);
    });

    it("rejects garbage, naming the input and the PEM block", () => {
      rejects(() => parseCertificateBundle([root.certDer, Buffer.from("hello")]), /input 2 of 2 .*not a valid X\.509 certificate/);
      rejects(() => parseCertificateBundle([Buffer.from(`${root.certPem}-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n`)]), /input 1 of 1, PEM block 2 is not a valid/);
      rejects(() => parseCertificateBundle([Buffer.from(`${root.certPem}-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n`)]), /PEM block 2 is a PRIVATE KEY, not a CERTIFICATE/);
      rejects(() => parseCertificateBundle([Buffer.concat([root.certDer, Buffer.from([0])])]), /input 1 of 1 .*trailing bytes/);
      rejects(() => parseCertificateBundle([]), /no certificate/);
    });
  });

  describe("orderChain", () => {
    it("orders a shuffled chain, with or without the leaf key", () => {
      const spki = new X509Certificate(leaf).publicKey.export({ type: "spki", format: "der" });
      assert.deepEqual(orderChain([root.certDer, leaf, inter.certDer]), { chain: [leaf, inter.certDer, root.certDer], problems: [] });
      assert.deepEqual(orderChain([inter.certDer, root.certDer, leaf], spki), { chain: [leaf, inter.certDer, root.certDer], problems: [] });
    });

    it("reports an unrelated certificate and a duplicate", () => {
      const spki = new X509Certificate(leaf).publicKey.export({ type: "spki", format: "der" });
      const r = orderChain([root.certDer, leaf, ecRoot.certDer, inter.certDer, leaf], spki);
      assert.deepEqual(r.chain, [leaf, inter.certDer, root.certDer]);
      assert.deepEqual(ids(r.problems), ["-1:duplicate", "-1:unrelated-certificate"]);
      assert.equal(r.problems[1]?.subject, "C=US, ST=WA, O=Acme, CN=EC Root");
      assert.match(r.problems[1]?.message ?? "", /CN=EC Root, O=Acme\) is not on the path/);
    });

    it("without the leaf key, two candidate leaves are ambiguous", () => {
      assert.deepEqual(ids(orderChain([root.certDer, leaf, ecRoot.certDer, inter.certDer]).problems), ["-1:leaf-ambiguous"]);
    });

    it("reports a missing root, naming the missing issuer", () => {
      const r = orderChain([inter.certDer, leaf]);
      assert.deepEqual(r.chain, [leaf, inter.certDer]);
      assert.deepEqual(ids(r.problems), ["1:root-missing"]);
      assert.match(r.problems[0]?.message ?? "", /^certificate 1 \(CN=RSA Inter, O=Acme\): its issuer "C=US, ST=WA, O=Acme, CN=RSA Root" is not among/);
    });

    it("reports a leaf key that no certificate holds", () => {
      const other = generateKeyPairSync("ec", { namedCurve: "P-256" }).publicKey.export({ type: "spki", format: "der" });
      assert.deepEqual(orderChain([leaf, inter.certDer, root.certDer], other), {
        chain: [],
        problems: [{ index: -1, subject: "", rule: "leaf-key-mismatch", message: "no certificate holds the public key of this key; the leaf certificate must be issued for this key" }],
      });
    });
  });

  describe("bad chains: one rule id each, naming the certificate", () => {
    const check = (chain: Buffer[], at?: Date): ChainProblem[] => checkCodeSigningChain(chain, at);
    const underInter = (o: Parameters<OpensslCa["leaf"]>[0]): Buffer[] => [inter.leaf({ subject: subj("bad"), ...o }).der, inter.certDer, root.certDer];

    it("leaf keyUsage missing", () => {
      const p = check(underInter({ extensions: LEAF_WITHOUT_KU }));
      assert.deepEqual(ids(p), ["0:leaf-key-usage-missing"]);
      assert.match(p[0]?.message ?? "", /^certificate 0 \(CN=bad, O=Acme\): has no keyUsage/);
    });

    it("leaf keyUsage not critical", () => {
      const p = check(underInter({ extensions: `${LEAF_WITHOUT_KU}\nkeyUsage=digitalSignature` }));
      assert.deepEqual(ids(p), ["0:leaf-key-usage-not-critical"]);
      assert.equal(p[0]?.message, "certificate 0 (CN=bad, O=Acme): keyUsage is not marked critical; notation requires a critical keyUsage with digitalSignature");
      assert.equal(p[0]?.subject, "C=US, ST=WA, O=Acme, CN=bad");
    });

    it("leaf with keyCertSign", () => {
      const p = check(underInter({ extensions: `${LEAF_WITHOUT_KU}\nkeyUsage=critical,digitalSignature,keyCertSign` }));
      assert.deepEqual(ids(p), ["0:leaf-key-usage-forbidden"]);
      assert.match(p[0]?.message ?? "", /keyUsage has keyCertSign/);
    });

    it("leaf with the serverAuth EKU", () => {
      const p = check(underInter({ extensions: "keyUsage=critical,digitalSignature\nextendedKeyUsage=codeSigning,serverAuth" }));
      assert.deepEqual(ids(p), ["0:leaf-eku-forbidden"]);
      assert.match(p[0]?.message ?? "", /extendedKeyUsage has serverAuth/);
    });

    it("CA without basicConstraints", () => {
      const ca = root.intermediate({ subject: subj("no bc"), extensions: "keyUsage=critical,keyCertSign,cRLSign" });
      const p = check([ca.leaf({ subject: subj("l") }).der, ca.certDer, root.certDer]);
      assert.deepEqual(ids(p), ["1:ca-basic-constraints-missing"]);
      assert.match(p[0]?.message ?? "", /^certificate 1 \(CN=no bc, O=Acme\): has no basicConstraints/);
    });

    it("CA basicConstraints not critical", () => {
      const ca = root.intermediate({ subject: subj("bc"), extensions: "basicConstraints=CA:TRUE\nkeyUsage=critical,keyCertSign" });
      assert.deepEqual(ids(check([ca.leaf({ subject: subj("l") }).der, ca.certDer, root.certDer])), ["1:ca-basic-constraints-not-critical"]);
    });

    it("CA keyUsage without keyCertSign", () => {
      const ca = root.intermediate({ subject: subj("no certsign"), extensions: "basicConstraints=critical,CA:TRUE\nkeyUsage=critical,digitalSignature,cRLSign" });
      assert.deepEqual(ids(check([ca.leaf({ subject: subj("l") }).der, ca.certDer, root.certDer])), ["1:ca-key-usage-no-cert-sign"]);
    });

    it("SHA-1 signed certificates (leaf, then intermediate)", () => {
      const p = check(underInter({ md: "sha1" }));
      assert.deepEqual(ids(p), ["0:weak-signature-hash"]);
      assert.match(p[0]?.message ?? "", /signed with SHA-1/);
      const ca = root.intermediate({ subject: subj("sha1 inter"), md: "sha1" });
      assert.deepEqual(ids(check([ca.leaf({ subject: subj("l") }).der, ca.certDer, root.certDer])), ["1:weak-signature-hash"]);
    });

    it("wrong order: a root-first chain", () => {
      const p = check([root.certDer, inter.certDer, leaf]);
      assert.equal(p[0]?.rule, "wrong-order");
      assert.match(p[0]?.message ?? "", /leaf first, root last, i\.e\. 2, 1, 0 \(CN=release, O=Acme -> CN=RSA Inter, O=Acme -> CN=RSA Root, O=Acme\)/);
      const selfSigned = p.find((x) => x.rule === "self-signed-not-last");
      assert.equal(selfSigned?.message, "certificate 0 (CN=RSA Root, O=Acme): is self-signed but is not last: the chain must be ordered leaf first, root last");
      assert.ok(ids(p).includes("2:root-missing"));
    });

    it("expired leaf", () => {
      const p = check(underInter({ notBefore: new Date("2020-01-01T00:00:00Z"), notAfter: new Date("2021-01-01T00:00:00Z") }));
      assert.deepEqual(ids(p), ["0:expired"]);
      assert.match(p[0]?.message ?? "", /expired at 2021-01-01T00:00:00\.000Z/);
    });

    it("not yet valid leaf", () => {
      const notBefore = new Date(Date.now() + 24 * 3600_000);
      const p = check(underInter({ notBefore }));
      assert.deepEqual(ids(p), ["0:not-yet-valid"]);
      assert.deepEqual(check(underInter({ notBefore }), new Date(notBefore.getTime() + 1000)).length, 0);
    });

    it("missing root", () => {
      const p = check([leaf, inter.certDer]);
      assert.deepEqual(ids(p), ["1:root-missing"]);
      assert.match(p[0]?.message ?? "", /CN=RSA Root" is missing/);
    });

    it("pathLen violated", () => {
      const r0 = OpensslCa.root(dir, { subject: subj("pathlen0 root"), extensions: "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign" });
      const i = r0.intermediate({ subject: subj("i") });
      const p = check([i.leaf({ subject: subj("l") }).der, i.certDer, r0.certDer]);
      assert.deepEqual(ids(p), ["2:path-length"]);
      assert.match(p[0]?.message ?? "", /pathLenConstraint 0 allows fewer than the 1 CA/);
    });

    it("leaf subject without ST, with emailAddress, with a duplicate OU and a multi-valued RDN", () => {
      const noSt = check(underInter({ subject: "/C=US/O=Acme/CN=nost" }));
      assert.deepEqual(ids(noSt), ["0:leaf-subject"]);
      assert.match(noSt[0]?.message ?? "", /the subject has no ST/);
      const email = check(underInter({ subject: `${subj("mail")}/emailAddress=a@example.com` }));
      assert.deepEqual(ids(email), ["0:leaf-subject"]);
      assert.match(email[0]?.message ?? "", /has emailAddress/);
      const odd = check(underInter({ subject: "/C=US/ST=WA/O=Acme/OU=a/OU=b/CN=x+L=Sea" }));
      assert.deepEqual(ids(odd), ["0:leaf-subject", "0:leaf-subject"]);
      assert.match(formatChainProblems(odd), /has OU more than once.*\n.*multi-valued RDN/);
    });

    it("RSA-1024 leaf, and an RSA-1024 intermediate", () => {
      const p = check(underInter({ key: "rsa-1024" }));
      assert.deepEqual(ids(p), ["0:unsupported-key"]);
      assert.match(p[0]?.message ?? "", /RSA 1024 key/);
      const weak = root.intermediate({ subject: subj("weak"), key: "rsa-1024" });
      assert.deepEqual(ids(check([weak.leaf({ subject: subj("l") }).der, weak.certDer, root.certDer])), ["1:weak-ca-key"]);
    });

    it("a single self-signed leaf is legal; with a negative serial it is not", () => {
      const ext = join(dir, "self.ext");
      writeFileSync(ext, `[ext]\n${CODE_SIGNING_LEAF_EXT}\n`);
      execFileSync("openssl", ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", join(dir, "self.key")]);
      const selfSigned = (serial: string): Buffer => {
        const out = join(dir, `self${serial}.der`);
        execFileSync(
          "openssl",
          ["x509", "-new", "-key", join(dir, "self.key"), "-subj", subj("self"), "-set_serial", serial, "-days", "2", "-extfile", ext, "-extensions", "ext", "-outform", "DER", "-out", out],
          { stdio: "ignore" },
        );
        return readFileSync(out);
      };
      const later = new Date(Date.now() + 2000); // openssl x509 -new sets notBefore = now
      assert.deepEqual(check([selfSigned("5")], later), []);
      assert.deepEqual(ids(check([selfSigned("-5")], later)), ["0:negative-serial"]);
    });

    it("a duplicate certificate in the chain", () => {
      assert.deepEqual(ids(check([leaf, inter.certDer, inter.certDer, root.certDer])), ["2:duplicate", "1:not-issued-by-next"]);
    });

    it("a leaf issued by someone else than the next certificate", () => {
      const p = check([ecInter.leaf({ subject: subj("l") }).der, inter.certDer, root.certDer]);
      assert.deepEqual(ids(p), ["0:not-issued-by-next"]);
      assert.match(p[0]?.message ?? "", /was not issued by certificate 1 \(CN=RSA Inter, O=Acme\): its issuer is "C=US, ST=WA, O=Acme, CN=EC Inter"/);
    });
  });
});
