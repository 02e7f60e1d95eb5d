import "reflect-metadata";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { KeyObject, sign as nodeSign, webcrypto } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as x509 from "@peculiar/x509";
import { checkCodeSigningChain, readTlv, tlvChildren, tlvRaw } from "../helpers/chain-checker.js";

x509.cryptoProvider.set(webcrypto);

type Keys = webcrypto.CryptoKeyPair;
type SignAlg = { name: string; hash: string; saltLength?: number };

const subtle = webcrypto.subtle;
const NOW = new Date(Math.floor(Date.now() / 1000) * 1000);
const HOUR = 3600_000;
const DAY = 24 * HOUR;

const ROOT_DN = "CN=Checker Test Root CA, O=Checker, ST=WA, C=US";
const INTER_DN = "CN=Checker Test Intermediate CA, O=Checker, ST=WA, C=US";
const LEAF_DN = "CN=checker-leaf, O=Checker, ST=WA, C=US";

const ecKeys = (namedCurve: string): Promise<Keys> => subtle.generateKey({ name: "ECDSA", namedCurve }, true, ["sign", "verify"]) as Promise<Keys>;
const rsaKeys = (name: string, modulusLength: number, hash = "SHA-256"): Promise<Keys> =>
  subtle.generateKey({ name, modulusLength, publicExponent: new Uint8Array([1, 0, 1]), hash }, true, ["sign", "verify"]) as Promise<Keys>;

interface CertSpec {
  subject: string;
  issuer: string;
  publicKey: webcrypto.CryptoKey;
  signingKey: webcrypto.CryptoKey;
  signingAlgorithm: SignAlg;
  extensions: x509.Extension[];
  notBefore?: Date;
  notAfter?: Date;
  serial?: string;
}

async function makeCert(s: CertSpec): Promise<Buffer> {
  const c = await x509.X509CertificateGenerator.create({
    serialNumber: s.serial ?? "0102030405060708",
    subject: s.subject,
    issuer: s.issuer,
    notBefore: s.notBefore ?? new Date(NOW.getTime() - HOUR),
    notAfter: s.notAfter ?? new Date(NOW.getTime() + 30 * DAY),
    publicKey: s.publicKey,
    signingKey: s.signingKey,
    signingAlgorithm: s.signingAlgorithm,
    extensions: s.extensions,
  });
  return Buffer.from(c.rawData);
}

const KU = x509.KeyUsageFlags;
const leafExtensions = (): x509.Extension[] => [
  new x509.BasicConstraintsExtension(false, undefined, true),
  new x509.KeyUsagesExtension(KU.digitalSignature, true),
  new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.codeSigning], false),
];
const caExtensions = (pathLen?: number): x509.Extension[] => [new x509.BasicConstraintsExtension(true, pathLen, true), new x509.KeyUsagesExtension(KU.keyCertSign | KU.cRLSign, true)];

// --- DER surgery: change TBS fields and re-sign, for what @peculiar/x509 will not produce. ---

function tlv(tag: number, content: Buffer): Buffer {
  const n = content.length;
  const len = n < 0x80 ? Buffer.from([n]) : n < 0x100 ? Buffer.from([0x81, n]) : Buffer.from([0x82, n >> 8, n & 0xff]);
  return Buffer.concat([Buffer.from([tag]), len, content]);
}

/** Replaces TBS fields (0 version, 1 serial, 2 signature, 3 issuer, 4 validity, 5 subject, 6 spki, 7 extensions) and re-signs with an ECDSA key. */
function resign(der: Buffer, signer: webcrypto.CryptoKey, hash: string, mutate: (fields: Buffer[]) => Buffer[]): Buffer {
  const [tbs, alg] = tlvChildren(readTlv(der));
  const fields = tlvChildren(tbs as NonNullable<typeof tbs>).map((t) => Buffer.from(tlvRaw(t)));
  const newTbs = tlv(0x30, Buffer.concat(mutate(fields)));
  const sig = nodeSign(hash, newTbs, KeyObject.from(signer)); // ECDSA: DER Ecdsa-Sig-Value, as X.509 wants
  return tlv(0x30, Buffer.concat([newTbs, Buffer.from(tlvRaw(alg as NonNullable<typeof alg>)), tlv(0x03, Buffer.concat([Buffer.from([0]), sig]))]));
}

function assertOnly(violations: string[], ...patterns: RegExp[]): void {
  const msg = `violations:\n  ${violations.join("\n  ") || "(none)"}`;
  assert.equal(violations.length, patterns.length, msg);
  for (const p of patterns)
    assert.ok(
      violations.some((v) => p.test(v)),
      `no violation matches ${p}\n${msg}`,
    );
}

function assertHas(violations: string[], ...patterns: RegExp[]): void {
  const msg = `violations:\n  ${violations.join("\n  ") || "(none)"}`;
  for (const p of patterns)
    assert.ok(
      violations.some((v) => p.test(v)),
      `no violation matches ${p}\n${msg}`,
    );
}

describe("chain checker (notation-plugin-protocol.md §5.2/§5.3)", function () {
  this.timeout(60_000);

  let rootKeys: Keys;
  let interKeys: Keys;
  let leafKeys: Keys;
  let otherKeys: Keys;
  let rsaLeafKeys: Keys;
  let rsa1024Keys: Keys;
  let pssRootKeys: Keys;
  let root: Buffer;
  const ROOT_ALG: SignAlg = { name: "ECDSA", hash: "SHA-384" };

  before(async () => {
    [rootKeys, interKeys, leafKeys, otherKeys, rsaLeafKeys, rsa1024Keys, pssRootKeys] = await Promise.all([
      ecKeys("P-384"),
      ecKeys("P-256"),
      ecKeys("P-256"),
      ecKeys("P-256"),
      rsaKeys("RSASSA-PKCS1-v1_5", 2048),
      rsaKeys("RSASSA-PKCS1-v1_5", 1024),
      rsaKeys("RSA-PSS", 2048),
    ]);
    root = await makeCert({ subject: ROOT_DN, issuer: ROOT_DN, publicKey: rootKeys.publicKey, signingKey: rootKeys.privateKey, signingAlgorithm: ROOT_ALG, extensions: caExtensions() });
  });

  /** A leaf signed by the shared root, with overrides. */
  const leaf = (o: Partial<CertSpec> = {}): Promise<Buffer> =>
    makeCert({ subject: LEAF_DN, issuer: ROOT_DN, publicKey: leafKeys.publicKey, signingKey: rootKeys.privateKey, signingAlgorithm: ROOT_ALG, extensions: leafExtensions(), ...o });
  /** A root (self-signed with rootKeys), with overrides. */
  const rootWith = (o: Partial<CertSpec> = {}): Promise<Buffer> =>
    makeCert({ subject: ROOT_DN, issuer: ROOT_DN, publicKey: rootKeys.publicKey, signingKey: rootKeys.privateKey, signingAlgorithm: ROOT_ALG, extensions: caExtensions(), ...o });

  describe("conforming chains pass", () => {
    it("EC P-256 leaf under an EC P-384 root", async () => {
      assert.deepEqual(checkCodeSigningChain([await leaf(), root], NOW), []);
    });

    it("RSA-2048 leaf under an RSA-PSS (SHA-256, salt 32) root; keyUsage with contentCommitment; 20-byte serial", async () => {
      const pss: SignAlg = { name: "RSA-PSS", hash: "SHA-256", saltLength: 32 };
      const r = await makeCert({ subject: ROOT_DN, issuer: ROOT_DN, publicKey: pssRootKeys.publicKey, signingKey: pssRootKeys.privateKey, signingAlgorithm: pss, extensions: caExtensions(0) });
      const l = await makeCert({
        subject: LEAF_DN,
        issuer: ROOT_DN,
        publicKey: rsaLeafKeys.publicKey,
        signingKey: pssRootKeys.privateKey,
        signingAlgorithm: pss,
        serial: "7f" + "11".repeat(19),
        extensions: [new x509.KeyUsagesExtension(KU.digitalSignature | KU.nonRepudiation, true)],
      });
      assert.deepEqual(checkCodeSigningChain([l, r], NOW), []);
    });

    it("leaf, intermediate (pathLen 0), root (pathLen 1)", async () => {
      const r = await rootWith({ extensions: caExtensions(1) });
      const i = await makeCert({ subject: INTER_DN, issuer: ROOT_DN, publicKey: interKeys.publicKey, signingKey: rootKeys.privateKey, signingAlgorithm: ROOT_ALG, extensions: caExtensions(0) });
      const l = await leaf({ issuer: INTER_DN, signingKey: interKeys.privateKey, signingAlgorithm: { name: "ECDSA", hash: "SHA-256" } });
      assert.deepEqual(checkCodeSigningChain([l, i, r], NOW), []);
    });

    it("a single self-signed, self-issued leaf", async () => {
      const l = await leaf({ issuer: LEAF_DN, signingKey: leafKeys.privateKey, signingAlgorithm: { name: "ECDSA", hash: "SHA-256" } });
      assert.deepEqual(checkCodeSigningChain([l], NOW), []);
    });
  });

  describe("leaf rules", () => {
    it("keyUsage not critical", async () => {
      const l = await leaf({ extensions: [new x509.KeyUsagesExtension(KU.digitalSignature, false)] });
      assertOnly(checkCodeSigningChain([l, root], NOW), /^cert\[0\] \(leaf\): \[§5\.3 leaf keyUsage\] keyUsage extension is not critical/);
    });

    it("keyUsage missing", async () => {
      const l = await leaf({ extensions: [new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.codeSigning])] });
      assertOnly(checkCodeSigningChain([l, root], NOW), /^cert\[0\] \(leaf\): .*keyUsage extension is missing/);
    });

    it("keyUsage without digitalSignature", async () => {
      const l = await leaf({ extensions: [new x509.KeyUsagesExtension(KU.nonRepudiation, true)] });
      assertOnly(checkCodeSigningChain([l, root], NOW), /^cert\[0\] .*lacks digitalSignature/);
    });

    it("keyUsage with forbidden bits (keyEncipherment, keyCertSign, decipherOnly)", async () => {
      const l = await leaf({ extensions: [new x509.KeyUsagesExtension(KU.digitalSignature | KU.keyEncipherment | KU.keyCertSign | KU.decipherOnly, true)] });
      assertOnly(checkCodeSigningChain([l, root], NOW), /cert\[0\].*forbidden keyEncipherment/, /cert\[0\].*forbidden keyCertSign/, /cert\[0\].*forbidden decipherOnly/);
    });

    it("EKU serverAuth", async () => {
      const l = await leaf({ extensions: [...leafExtensions().slice(0, 2), new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.codeSigning, x509.ExtendedKeyUsage.serverAuth])] });
      assertOnly(checkCodeSigningChain([l, root], NOW), /^cert\[0\] \(leaf\): \[§5\.3 leaf extendedKeyUsage\] .*serverAuth/);
    });

    it("EKU clientAuth, emailProtection, timeStamping, OCSPSigning", async () => {
      const E = x509.ExtendedKeyUsage;
      const l = await leaf({ extensions: [...leafExtensions().slice(0, 2), new x509.ExtendedKeyUsageExtension([E.clientAuth, E.emailProtection, E.timeStamping, E.ocspSigning])] });
      assertOnly(checkCodeSigningChain([l, root], NOW), /clientAuth/, /emailProtection/, /timeStamping/, /OCSPSigning/);
    });

    it("basicConstraints cA=true on the leaf", async () => {
      const l = await leaf({ extensions: [new x509.BasicConstraintsExtension(true, undefined, true), new x509.KeyUsagesExtension(KU.digitalSignature, true)] });
      assertOnly(checkCodeSigningChain([l, root], NOW), /^cert\[0\] .*leaf basicConstraints.*cA=true/);
    });

    it("leaf key RSA 1024", async () => {
      const l = await leaf({ publicKey: rsa1024Keys.publicKey });
      assertOnly(checkCodeSigningChain([l, root], NOW), /^cert\[0\] .*\[§5\.3 leaf key\] public key rsa 1024/);
    });

    it("subject without ST", async () => {
      const l = await leaf({ subject: "CN=checker-leaf, O=Checker, C=US" });
      assertOnly(checkCodeSigningChain([l, root], NOW), /^cert\[0\] .*subject has no ST/);
    });

    it("subject without C and O", async () => {
      const l = await leaf({ subject: "CN=checker-leaf, ST=WA" });
      assertOnly(checkCodeSigningChain([l, root], NOW), /subject has no C\b/, /subject has no O\b/);
    });

    it("subject with emailAddress", async () => {
      const l = await leaf({ subject: `${LEAF_DN}, E=signer@example.com` });
      assertOnly(checkCodeSigningChain([l, root], NOW), /^cert\[0\] .*non-standard attribute emailAddress/);
    });

    it("subject with a duplicate attribute type (two OU)", async () => {
      const l = await leaf({ subject: `${LEAF_DN}, OU=a, OU=b` });
      assertOnly(checkCodeSigningChain([l, root], NOW), /^cert\[0\] .*2 OU attributes/);
    });

    it("subject with a multi-valued RDN", async () => {
      const l = await leaf({ subject: "CN=checker-leaf+OU=x, O=Checker, ST=WA, C=US" });
      assertOnly(checkCodeSigningChain([l, root], NOW), /^cert\[0\] .*multi-valued RDN/);
    });
  });

  describe("CA rules", () => {
    it("CA without basicConstraints", async () => {
      const r = await rootWith({ extensions: [new x509.KeyUsagesExtension(KU.keyCertSign, true)] });
      assertOnly(checkCodeSigningChain([await leaf(), r], NOW), /^cert\[1\] \(root\): \[§5\.3 CA basicConstraints\] basicConstraints extension is missing/);
    });

    it("CA basicConstraints not critical, and cA=false", async () => {
      const r1 = await rootWith({ extensions: [new x509.BasicConstraintsExtension(true, undefined, false), new x509.KeyUsagesExtension(KU.keyCertSign, true)] });
      assertOnly(checkCodeSigningChain([await leaf(), r1], NOW), /^cert\[1\] .*basicConstraints extension is not critical/);
      const r2 = await rootWith({ extensions: [new x509.BasicConstraintsExtension(false, undefined, true), new x509.KeyUsagesExtension(KU.keyCertSign, true)] });
      assertOnly(checkCodeSigningChain([await leaf(), r2], NOW), /^cert\[1\] .*cA=false/);
    });

    it("CA keyUsage missing, not critical, or without keyCertSign", async () => {
      const bc = new x509.BasicConstraintsExtension(true, undefined, true);
      const r1 = await rootWith({ extensions: [bc] });
      assertOnly(checkCodeSigningChain([await leaf(), r1], NOW), /^cert\[1\] .*\[§5\.3 CA keyUsage\] keyUsage extension is missing/);
      const r2 = await rootWith({ extensions: [bc, new x509.KeyUsagesExtension(KU.keyCertSign, false)] });
      assertOnly(checkCodeSigningChain([await leaf(), r2], NOW), /^cert\[1\] .*keyUsage extension is not critical/);
      const r3 = await rootWith({ extensions: [bc, new x509.KeyUsagesExtension(KU.cRLSign | KU.digitalSignature, true)] });
      assertOnly(checkCodeSigningChain([await leaf(), r3], NOW), /^cert\[1\] .*lacks keyCertSign/);
    });

    it("root pathLen 0 above an intermediate", async () => {
      const r = await rootWith({ extensions: caExtensions(0) });
      const i = await makeCert({ subject: INTER_DN, issuer: ROOT_DN, publicKey: interKeys.publicKey, signingKey: rootKeys.privateKey, signingAlgorithm: ROOT_ALG, extensions: caExtensions(0) });
      const l = await leaf({ issuer: INTER_DN, signingKey: interKeys.privateKey, signingAlgorithm: { name: "ECDSA", hash: "SHA-256" } });
      assertOnly(checkCodeSigningChain([l, i, r], NOW), /^cert\[2\] \(root\): \[§5\.3 CA pathLen\]/);
    });

    it("CA with an RSA 1024 key", async () => {
      const r = await makeCert({
        subject: ROOT_DN,
        issuer: ROOT_DN,
        publicKey: rsa1024Keys.publicKey,
        signingKey: rsa1024Keys.privateKey,
        signingAlgorithm: { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" },
        extensions: caExtensions(),
      });
      const l = await leaf({ signingKey: rsa1024Keys.privateKey, signingAlgorithm: { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" } });
      assertOnly(checkCodeSigningChain([l, r], NOW), /^cert\[1\] .*CA key/);
    });
  });

  describe("signature algorithms", () => {
    it("SHA-1 signed leaf (ecdsa-with-SHA1)", async () => {
      const l = await leaf({ signingAlgorithm: { name: "ECDSA", hash: "SHA-1" } });
      assertOnly(checkCodeSigningChain([l, root], NOW), /^cert\[0\] \(leaf\): \[§5\.3 signature algorithm\] .*SHA-1/);
    });

    it("SHA-1 signed root (sha1WithRSAEncryption)", async () => {
      const sha1Keys = await rsaKeys("RSASSA-PKCS1-v1_5", 2048, "SHA-1");
      const alg = { name: "RSASSA-PKCS1-v1_5", hash: "SHA-1" };
      const r = await makeCert({ subject: ROOT_DN, issuer: ROOT_DN, publicKey: sha1Keys.publicKey, signingKey: sha1Keys.privateKey, signingAlgorithm: alg, extensions: caExtensions() });
      const l = await leaf({ signingKey: (await rsaKeys("RSASSA-PKCS1-v1_5", 2048)).privateKey, signingAlgorithm: { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" } });
      const v = checkCodeSigningChain([l, r], NOW);
      // The leaf is signed by another key, so also "does not verify"; the SHA-1 root must be named.
      assertHas(v, /^cert\[1\] \(root\): \[§5\.3 signature algorithm\] .*sha1WithRSAEncryption \(SHA-1\)/);
    });

    it("SHA-1 signed by openssl (sha1WithRSAEncryption self-signed leaf)", () => {
      const dir = mkdtempSync(join(tmpdir(), "checker-sha1-"));
      try {
        execFileSync(
          "openssl",
          [
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-sha1",
            "-keyout",
            join(dir, "k.pem"),
            "-outform",
            "DER",
            "-out",
            join(dir, "c.der"),
            "-days",
            "2",
            "-subj",
            "/C=US/ST=WA/O=Checker/CN=sha1-leaf",
            "-addext",
            "keyUsage=critical,digitalSignature",
            "-addext",
            "basicConstraints=critical,CA:FALSE",
          ],
          { stdio: "ignore" },
        );
        const der = readFileSync(join(dir, "c.der"));
        // openssl sets notBefore = now; check a little later.
        const v = checkCodeSigningChain([der], new Date(Date.now() + 60_000), { issuedAt: new Date(Date.now() + 60_000) });
        assertOnly(v, /^cert\[0\] \(leaf\): \[§5\.3 signature algorithm\] is signed with sha1WithRSAEncryption \(SHA-1\)/);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

    it("RSA-PSS with salt length 20 (Go requires salt = hash length)", async () => {
      const r = await makeCert({
        subject: ROOT_DN,
        issuer: ROOT_DN,
        publicKey: pssRootKeys.publicKey,
        signingKey: pssRootKeys.privateKey,
        signingAlgorithm: { name: "RSA-PSS", hash: "SHA-256", saltLength: 20 },
        extensions: caExtensions(),
      });
      const l = await leaf({ signingKey: pssRootKeys.privateKey, signingAlgorithm: { name: "RSA-PSS", hash: "SHA-256", saltLength: 32 } });
      assertOnly(checkCodeSigningChain([l, r], NOW), /^cert\[1\] .*RSASSA-PSS with salt length 20, not 32/);
    });

    it("inner and outer signature algorithm differ", async () => {
      const l = resign(await leaf(), rootKeys.privateKey, "sha384", (f) => {
        f[2] = Buffer.from("300a06082a8648ce3d040304", "hex"); // ecdsa-with-SHA512 inside, SHA384 outside
        return f;
      });
      // OpenSSL (and Go) also refuse to verify such a certificate.
      assertOnly(checkCodeSigningChain([l, root], NOW), /^cert\[0\] .*inside the TBS differs/, /^cert\[0\] .*signature does not verify/);
    });
  });

  describe("structure and order", () => {
    it("wrong order (root first)", async () => {
      const v = checkCodeSigningChain([root, await leaf()], NOW);
      assertHas(
        v,
        /^cert\[0\] .*\[§5\.3 chain order\] is self-signed but is not the last/,
        /^cert\[0\] .*issuer DN bytes differ from the subject DN bytes of cert\[1\]/,
        /^cert\[1\] \(root\): \[§5\.2 root\] .*not self-issued/,
      );
    });

    it("root missing (leaf alone, not self-signed)", async () => {
      assertHas(checkCodeSigningChain([await leaf()], NOW), /^cert\[0\] .*\[§5\.2 root\] .*not self-issued/, /^cert\[0\] .*does not verify under its own key/);
    });

    it("leaf signed by another key with the right issuer DN", async () => {
      const l = await leaf({ signingKey: otherKeys.privateKey, signingAlgorithm: { name: "ECDSA", hash: "SHA-256" } });
      assertOnly(checkCodeSigningChain([l, root], NOW), /^cert\[0\] .*signature does not verify under the public key of cert\[1\]/);
    });

    it("leaf signed by the root key but naming another issuer", async () => {
      const l = await leaf({ issuer: "CN=Some Other Root, O=Checker, ST=WA, C=US" });
      assertOnly(checkCodeSigningChain([l, root], NOW), /^cert\[0\] .*issuer DN bytes differ/);
    });

    it("issuer DN equal as text but encoded differently (UTF8String vs PrintableString)", async () => {
      const l = resign(await leaf(), rootKeys.privateKey, "sha384", (f) => {
        const issuer = Buffer.from(f[3] as Buffer);
        const i = issuer.indexOf(Buffer.from("Checker Test Root CA"));
        const tag = issuer[i - 2];
        assert.ok(i > 2 && (tag === 0x0c || tag === 0x13), "expected a UTF8String or PrintableString CN");
        issuer[i - 2] = tag === 0x0c ? 0x13 : 0x0c; // swap UTF8String <-> PrintableString
        f[3] = issuer;
        return f;
      });
      assertOnly(checkCodeSigningChain([l, root], NOW), /^cert\[0\] .*issuer DN bytes differ/);
    });

    it("a self-signed certificate in the middle", async () => {
      const selfLeaf = await leaf({ issuer: LEAF_DN, signingKey: leafKeys.privateKey, signingAlgorithm: { name: "ECDSA", hash: "SHA-256" } });
      const v = checkCodeSigningChain([selfLeaf, root], NOW);
      assertHas(v, /^cert\[0\] .*is self-signed but is not the last/);
    });

    it("duplicate certificate and duplicate extension", async () => {
      assertHas(checkCodeSigningChain([await leaf(), root, root], NOW), /^cert\[2\] .*duplicate of cert\[1\]/);
      const l = await leaf({ extensions: [...leafExtensions(), new x509.KeyUsagesExtension(KU.digitalSignature, true)] });
      assertOnly(checkCodeSigningChain([l, root], NOW), /^cert\[0\] .*extension 2\.5\.29\.15 more than once/);
    });

    it("empty chain and garbage", () => {
      assertOnly(checkCodeSigningChain([], NOW), /chain is empty/);
      assertHas(checkCodeSigningChain([Buffer.from("3003020101", "hex"), root], NOW), /^cert\[0\] .*\[DER\]/);
    });
  });

  describe("serial numbers", () => {
    const serialField = (hex: string): Buffer => tlv(0x02, Buffer.from(hex, "hex"));

    it("negative serial", async () => {
      const l = resign(await leaf(), rootKeys.privateKey, "sha384", (f) => ((f[1] = serialField("ff01")), f));
      assertOnly(checkCodeSigningChain([l, root], NOW), /^cert\[0\] .*\[§5\.3 serial\] serial number is negative/);
    });

    it("zero serial", async () => {
      const l = resign(await leaf(), rootKeys.privateKey, "sha384", (f) => ((f[1] = serialField("00")), f));
      assertOnly(checkCodeSigningChain([l, root], NOW), /^cert\[0\] .*serial number is zero/);
    });

    it("21-byte serial", async () => {
      const l = resign(await leaf(), rootKeys.privateKey, "sha384", (f) => ((f[1] = serialField("01" + "22".repeat(20))), f));
      assertOnly(checkCodeSigningChain([l, root], NOW), /^cert\[0\] .*serial number is 21 bytes/);
    });

    it("the resign helper itself yields a conforming certificate when nothing changes", async () => {
      const l = resign(await leaf(), rootKeys.privateKey, "sha384", (f) => f);
      assert.deepEqual(checkCodeSigningChain([l, root], NOW), []);
    });
  });

  describe("validity and backdating", () => {
    const notBefore = new Date(NOW.getTime() - 2 * HOUR);
    const notAfter = new Date(NOW.getTime() - HOUR);

    it("expired leaf", async () => {
      const l = await leaf({ notBefore, notAfter });
      assertOnly(checkCodeSigningChain([l, root], NOW), /^cert\[0\] \(leaf\): \[§5\.3 validity\] has expired/);
    });

    it("validity is inclusive at both ends", async () => {
      const l = await leaf({ notBefore, notAfter });
      assert.deepEqual(checkCodeSigningChain([l, root], notAfter), []);
      const r = await rootWith({ notBefore: new Date(NOW.getTime() - 3 * HOUR) });
      assert.deepEqual(checkCodeSigningChain([l, r], notBefore), []);
      assertOnly(checkCodeSigningChain([l, r], new Date(notBefore.getTime() - 1000)), /^cert\[0\] .*not yet valid/);
      assertOnly(checkCodeSigningChain([l, r], new Date(notAfter.getTime() + 1000)), /^cert\[0\] .*has expired/);
    });

    it("expired root", async () => {
      const r = await rootWith({ notBefore, notAfter });
      assertOnly(checkCodeSigningChain([await leaf(), r], NOW), /^cert\[1\] \(root\): \[§5\.3 validity\] has expired/);
    });

    it("notBefore not backdated (equal to the issuance time)", async () => {
      const l = await leaf({ notBefore: NOW });
      assertOnly(checkCodeSigningChain([l, root], NOW, { issuedAt: NOW }), /^cert\[0\] .*\[backdating\] notBefore/);
      assert.deepEqual(checkCodeSigningChain([l, root], NOW, { issuedAt: new Date(NOW.getTime() + 1000) }), []);
    });
  });
});
