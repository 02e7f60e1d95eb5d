import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { randomBytes, X509Certificate } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import type * as grpc from "@grpc/grpc-js";
import { exportJWK, generateKeyPair } from "jose";
import type { InventoryKey } from "../../src/client/index.js";
import { status } from "@grpc/grpc-js";
import { ERROR_CODE_TRAILER } from "../../src/errors/index.js";
import { checkCodeSigningChain as checkChain } from "../helpers/chain-checker.js";
import { requestFor, verifyNotarySignature } from "../helpers/notation.js";
import { CA_EXT, CODE_SIGNING_LEAF_EXT, OpensslCa } from "../helpers/openssl-ca.js";
import { runPlugin } from "../helpers/plugin-process.js";
import { adminClient, callAdmin, HSM_SIGNER, isolatedToken, startServiceProcess, type ServiceProcess } from "../helpers/service-process.js";
import { callSigner, signerClient, type SignResponse } from "../helpers/signer-client.js";
import type { SoftHsmToken } from "../helpers/softhsm.js";
import { createTlsMaterial, type TlsMaterial } from "../helpers/tls.js";

const run = promisify(execFile);

const POLICY = `rules:
  - name: builders
    match: { mtls: "spiffe://hsm-signer.dev/builder" }
    keys: ["*"]
  - name: release-auditor
    match: { mtls: "spiffe://hsm-signer.dev/auditor" }
    keys: ["*"]
    allowOldVersions: true
custodians:
  - { mtls: "spiffe://hsm-signer.dev/custodian" }
`;

async function rejected(p: Promise<unknown>): Promise<grpc.ServiceError> {
  return p.then(
    () => assert.fail("the call succeeded"),
    (e: grpc.ServiceError) => e,
  );
}

describe("KeyAdmin: key custodians manage keys and certificates end to end (SoftHSM, two service processes)", function () {
  this.timeout(180_000);
  let dir: string;
  let token: SoftHsmToken;
  let tls: TlsMaterial;
  let svc: ServiceProcess;
  let admin: grpc.Client;
  let builder: grpc.Client;
  /** Admin calls made by this file, to compare with the audit. */
  let adminCalls = 0;
  let outsideCa: OpensslCa;

  const call = <T>(method: string, req: object, client = admin): Promise<T> => {
    adminCalls++;
    return callAdmin<T>(client, method, req);
  };
  const sign = (keyId: string, keyVersion = 0, client = builder): Promise<SignResponse> => callSigner<SignResponse>(client, "Sign", { keyId, payload: randomBytes(32), keyVersion });

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "hsm-signer-key-admin-"));
    token = isolatedToken(join(dir, "hsm"), "key-admin-test");
    tls = createTlsMaterial(join(dir, "tls"), "builder", ["custodian", "auditor"]);
    svc = await startServiceProcess({ name: "a", dir, token, tls, policy: POLICY });
    admin = adminClient(tls.ca, svc.adminPort, clientCertificate(tls, "custodian"));
    builder = signerClient(tls.ca, svc.port, { key: tls.clientKey, cert: tls.clientCert });
    outsideCa = OpensslCa.root(join(dir, "outside-ca"), { subject: "/C=US/ST=WA/O=Outside CA Inc/CN=Outside Root CA", key: "ec-384" });
  });

  after(async () => {
    admin?.close();
    builder?.close();
    await svc?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("lists the module's slots with the managed token, its flags and signing mechanisms", async () => {
    const r = await call<{ slots: { tokenPresent: boolean; token: { label: string; managed: boolean; flags: string[]; mechanisms: string[] } | null }[] }>("ListSlots", {});
    const managed = r.slots.filter((s) => s.token?.managed);
    assert.equal(managed.length, 1);
    assert.equal(managed[0]?.token?.label, "key-admin-test");
    assert.ok(managed[0]?.token?.flags.includes("TOKEN_INITIALIZED"));
    for (const m of ["ECDSA", "RSA_PKCS_PSS", "EC_KEY_PAIR_GEN", "RSA_PKCS_KEY_PAIR_GEN"]) assert.ok(managed[0]?.token?.mechanisms.includes(m), `mechanism ${m}`);
  });

  it("refuses callers that are not custodians, and keys that exist or specs that do not", async () => {
    const notCustodian = adminClient(tls.ca, svc.adminPort, { key: tls.clientKey, cert: tls.clientCert });
    try {
      const e = await rejected(call("GetInventory", {}, notCustodian));
      assert.equal(e.code, status.PERMISSION_DENIED);
      assert.match(e.details, /spiffe:\/\/hsm-signer.dev\/builder may not call KeyAdmin.GetInventory/);
      // What grpc-js would refuse by itself, before any method, is answered and audited on this
      // listener too: an unknown method, and a message over 4 MiB (counted in adminCalls: KeyAdmin.GenerateKey).
      const raw = (path: string, body: Buffer): Promise<grpc.ServiceError> =>
        rejected(
          new Promise((res, rej) =>
            notCustodian.makeUnaryRequest(
              path,
              (b: Buffer) => b,
              (b: Buffer) => b,
              body,
              (err, r) => (err ? rej(err) : res(r)),
            ),
          ),
        );
      const unknown = await raw("/hsm_signer.v1.KeyAdmin/ExportKey", Buffer.alloc(0));
      assert.equal(unknown.code, status.UNIMPLEMENTED);
      assert.match(unknown.details, /^no method \/hsm_signer\.v1\.KeyAdmin\/ExportKey on this listener \[request [0-9a-f]+\]$/);
      adminCalls++;
      const large = await raw("/hsm_signer.v1.KeyAdmin/GenerateKey", Buffer.alloc(4 * 1024 * 1024 + 1));
      assert.equal(large.code, status.INVALID_ARGUMENT);
      assert.match(large.details, /^the request message is too large: /);
      const lines = (await run(HSM_SIGNER, ["audit", "search", "--dir", svc.auditDir, "--identity", "spiffe://hsm-signer.dev/builder", "--json"])).stdout.trim().split("\n");
      assert.deepEqual(
        lines.slice(-2).map((l) => ((r: { method: string; result: string }) => [r.method, r.result])(JSON.parse(l))),
        [
          ["/hsm_signer.v1.KeyAdmin/ExportKey", "UNIMPLEMENTED"],
          ["KeyAdmin.GenerateKey", "PAYLOAD_TOO_LARGE"],
        ],
      );
    } finally {
      notCustodian.close();
    }
    await call("GenerateKey", { keyId: "dup", keySpec: "EC-256" });
    const exists = await rejected(call("GenerateKey", { keyId: "dup", keySpec: "EC-256" }));
    assert.equal(exists.code, status.ALREADY_EXISTS);
    const spec = await rejected(call("GenerateKey", { keyId: "x", keySpec: "RSA-1024" }));
    assert.equal(spec.code, status.INVALID_ARGUMENT);
    const other = await rejected(call("GenerateKey", { keyId: "y", keySpec: "EC-256", tokenLabel: "another-token" }));
    assert.equal(other.code, status.FAILED_PRECONDITION);
    assert.match(other.details, /logged in to token "key-admin-test" only/);
    // Whatever a caller's input makes of a message, the answer carries at most 4096 of its
    // characters (a 100,000-character token label: whole, the trailer was never delivered).
    const huge = await rejected(call("GenerateKey", { keyId: "y", keySpec: "EC-256", tokenLabel: "t".repeat(100_000) }));
    assert.equal(huge.code, status.FAILED_PRECONDITION);
    assert.match(huge.details, /^this service is logged in to token "key-admin-test" only; run a service for token "t+\.\.\.\(\d+ more characters\) \[request [0-9a-f]+\]$/);
    assert.ok(huge.details.length < 4200, `${huge.details.length} characters`);
  });

  it("generate, CSR, chain from an outside openssl CA, import: the key signs through the plugin and the signature verifies", async () => {
    const g = await call<{ key: InventoryKey; keyVersion: number }>("GenerateKey", { keyId: "release", keySpec: "EC-256" });
    assert.equal(g.keyVersion, 1);
    assert.equal(g.key.versions[0]?.problem.includes("no certificate"), true, "a new key has no certificate yet");
    const csr = await call<{ csrPem: string; keyVersion: number }>("CreateCsr", { keyId: "release", subject: "CN=release, O=Example Corp, ST=WA, C=US" });
    assert.match(csr.csrPem, /^-----BEGIN CERTIFICATE REQUEST-----/);
    const leaf = outsideCa.signCsr(csr.csrPem, { extensions: CODE_SIGNING_LEAF_EXT, days: 365 });
    // Root first and PEM, leaf as DER: any order and format is accepted and stored leaf first.
    const imported = await call<{ keyVersion: number; certificateChain: Buffer[]; stored: number }>("ImportCertificateChain", {
      keyId: "release",
      certificates: [Buffer.from(outsideCa.certPem), leaf],
    });
    assert.equal(imported.keyVersion, 1);
    assert.equal(imported.stored, 2);
    assert.deepEqual(imported.certificateChain[0], leaf);
    assert.deepEqual(checkChain(imported.certificateChain, new Date()), []);
    const cfg = { endpoint: `127.0.0.1:${svc.port}`, ca_file: tls.caFile, client_cert_file: tls.clientCertFile, client_key_file: tls.clientKeyFile };
    const req = requestFor("generate-signature-jws", "release", "EC-256", cfg);
    const r = await runPlugin("generate-signature", JSON.stringify(req));
    assert.equal(r.code, 0, r.stderr);
    const out = JSON.parse(r.stdout) as { signature: string; certificateChain: string[] };
    assert.equal(out.certificateChain.length, 2);
    const leafDer = Buffer.from(out.certificateChain[0] as string, "base64");
    assert.equal(new X509Certificate(leafDer).issuer, new X509Certificate(outsideCa.certDer).subject);
    assert.ok(verifyNotarySignature(Buffer.from(req.payload as string, "base64"), Buffer.from(out.signature, "base64"), leafDer, "EC-256"));
  });

  it("a CSR subject with an attribute type notation cannot match, and a certificate whose public key cannot be read: INVALID_ARGUMENT naming the problem, not INTERNAL", async () => {
    const csr = await rejected(call("CreateCsr", { keyId: "release", subject: "C=US, ST=WA, O=x, FOO=bar" }));
    assert.equal(csr.code, status.INVALID_ARGUMENT, csr.details);
    assert.match(csr.details, /^subject "C=US, ST=WA, O=x, FOO=bar" cannot name a notation identity: it has FOO, which notation cannot match in a trust policy/);
    // id-ecPublicKey (1.2.840.10045.2.1) patched to 1.2.840.10045.2.9: Node parses the certificate but cannot read its key.
    const oid = Buffer.from("06072a8648ce3d0201", "hex");
    const odd = Buffer.from(outsideCa.certDer);
    odd[odd.indexOf(oid) + oid.length - 1] = 0x09;
    const imported = await rejected(call("ImportCertificateChain", { keyId: "release", certificates: [odd] }));
    assert.equal(imported.code, status.INVALID_ARGUMENT, imported.details);
    assert.match(imported.details, /^input 1 of 1 \(not PEM, so read as DER\) has a public key that cannot be read \(algorithm 1\.2\.840\.10045\.2\.9\)/);
  });

  describe("a bad chain is rejected with its own reason", () => {
    let csrPem: string;
    before(async () => {
      await call("GenerateKey", { keyId: "strict", keySpec: "EC-256" });
      csrPem = (await call<{ csrPem: string }>("CreateCsr", { keyId: "strict", subject: "CN=strict, O=Example Corp, ST=WA, C=US" })).csrPem;
    });

    const cases: { name: string; rule: string; chain: () => Buffer[]; strictOrder?: boolean }[] = [
      {
        name: "the leaf holds another key",
        rule: "leaf-key-mismatch",
        chain: () => [outsideCa.leaf({ subject: "/C=US/ST=WA/O=Example Corp/CN=other", extensions: CODE_SIGNING_LEAF_EXT }).der, outsideCa.certDer],
      },
      {
        name: "keyUsage missing",
        rule: "leaf-key-usage-missing",
        chain: () => [outsideCa.signCsr(csrPem, { extensions: "basicConstraints=critical,CA:FALSE\nextendedKeyUsage=codeSigning" }), outsideCa.certDer],
      },
      {
        name: "keyUsage not critical",
        rule: "leaf-key-usage-not-critical",
        chain: () => [outsideCa.signCsr(csrPem, { extensions: "keyUsage=digitalSignature\nextendedKeyUsage=codeSigning" }), outsideCa.certDer],
      },
      {
        name: "serverAuth EKU",
        rule: "leaf-eku-forbidden",
        chain: () => [outsideCa.signCsr(csrPem, { extensions: "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth" }), outsideCa.certDer],
      },
      {
        name: "a CA without basicConstraints",
        rule: "ca-basic-constraints-missing",
        chain: () => {
          const mid = outsideCa.intermediate({ subject: "/C=US/ST=WA/O=Outside CA Inc/CN=No BC Intermediate", extensions: "keyUsage=critical,keyCertSign,cRLSign" });
          return [mid.signCsr(csrPem, { extensions: CODE_SIGNING_LEAF_EXT }), mid.certDer, outsideCa.certDer];
        },
      },
      { name: "SHA-1 signed", rule: "weak-signature-hash", chain: () => [outsideCa.signCsr(csrPem, { extensions: CODE_SIGNING_LEAF_EXT, md: "sha1" }), outsideCa.certDer] },
      {
        name: "expired",
        rule: "expired",
        chain: () => [outsideCa.signCsr(csrPem, { extensions: CODE_SIGNING_LEAF_EXT, notBefore: new Date("2020-01-01T00:00:00Z"), notAfter: new Date("2021-01-01T00:00:00Z") }), outsideCa.certDer],
      },
      {
        name: "root missing",
        rule: "root-missing",
        chain: () => {
          const mid = outsideCa.intermediate({ subject: "/C=US/ST=WA/O=Outside CA Inc/CN=Issuing CA", extensions: CA_EXT });
          return [mid.signCsr(csrPem, { extensions: CODE_SIGNING_LEAF_EXT }), mid.certDer];
        },
      },
      { name: "wrong order (strict order asked)", rule: "wrong-order", strictOrder: true, chain: () => [outsideCa.certDer, outsideCa.signCsr(csrPem, { extensions: CODE_SIGNING_LEAF_EXT })] },
    ];
    for (const c of cases) {
      it(c.name, async () => {
        const e = await rejected(call("ImportCertificateChain", { keyId: "strict", certificates: c.chain(), strictOrder: c.strictOrder ?? false }));
        assert.equal(e.code, status.INVALID_ARGUMENT, e.details);
        assert.match(e.details, new RegExp(`\\b${c.rule}\\b`), e.details);
        const inv = await call<{ keys: InventoryKey[] }>("GetInventory", { keyId: "strict" });
        assert.equal(inv.keys[0]?.versions[0]?.problem.includes("no certificate"), true, "nothing was stored");
      });
    }
  });

  it("rotation: new signatures move to version 2, version 1 stays listed, retrievable and verifiable; old versions only by policy", async () => {
    const before = await sign("release");
    assert.equal(before.keyVersion, 1);
    const rotated = await call<{ key: InventoryKey; keyVersion: number }>("RotateKey", { keyId: "release" });
    assert.equal(rotated.keyVersion, 2);
    assert.equal(rotated.key.currentVersion, 1, "version 2 has no chain yet, so version 1 still signs");
    assert.equal((await sign("release")).keyVersion, 1);
    const csr = await call<{ csrPem: string; keyVersion: number }>("CreateCsr", { keyId: "release", keyVersion: 2, subject: "CN=release, O=Example Corp, ST=WA, C=US" });
    assert.equal(csr.keyVersion, 2);
    const imported = await call<{ keyVersion: number }>("ImportCertificateChain", {
      keyId: "release",
      certificates: [outsideCa.signCsr(csr.csrPem, { extensions: CODE_SIGNING_LEAF_EXT, days: 365 }), outsideCa.certDer],
    });
    assert.equal(imported.keyVersion, 2, "the chain went to the version whose key the leaf holds");
    const after = await sign("release");
    assert.equal(after.keyVersion, 2);
    assert.notDeepEqual(after.certificateChain[0], before.certificateChain[0]);
    // Version 1's chain is still served, and the old signature still verifies against it.
    const v1 = await call<{ certificateChain: Buffer[]; keyVersion: number }>("GetCertificateChain", { keyId: "release", keyVersion: 1 });
    assert.deepEqual(v1.certificateChain[0], before.certificateChain[0]);
    const inv = await call<{ keys: InventoryKey[] }>("GetInventory", { keyId: "release" });
    assert.deepEqual(
      inv.keys[0]?.versions.map((v) => [v.version, v.state, v.current]),
      [
        [1, "enabled", false],
        [2, "enabled", true],
      ],
    );
    // Signing with version 1 needs a rule with allowOldVersions.
    const denied = await rejected(sign("release", 1));
    assert.equal(denied.code, status.PERMISSION_DENIED);
    assert.match(denied.details, /only with the current version/);
    const auditor = signerClient(tls.ca, svc.port, clientCertificate(tls, "auditor"));
    try {
      assert.equal((await sign("release", 1, auditor)).keyVersion, 1);
    } finally {
      auditor.close();
    }
  });

  it("disable: a second, separately started service on the same token refuses the key (plugin: ACCESS_DENIED); enable restores it", async () => {
    const second = await startServiceProcess({ name: "b", dir, token, tls, policy: POLICY });
    const client2 = signerClient(tls.ca, second.port, { key: tls.clientKey, cert: tls.clientCert });
    try {
      assert.equal((await sign("release", 0, client2)).keyVersion, 2);
      const longReason = await rejected(call("SetKeyState", { keyId: "release", enabled: false, reason: "x".repeat(257) }));
      assert.equal(longReason.code, status.INVALID_ARGUMENT);
      await call("SetKeyState", { keyId: "release", enabled: false, reason: "suspected compromise, ticket SEC-1" });
      const e = await eventually(
        () => rejected(sign("release", 0, client2)),
        (x) => x.code === status.PERMISSION_DENIED,
      );
      assert.match(e.details, /key "release" is disabled by a custodian: suspected compromise, ticket SEC-1/);
      const cfg = { endpoint: `127.0.0.1:${second.port}`, ca_file: tls.caFile, client_cert_file: tls.clientCertFile, client_key_file: tls.clientKeyFile };
      const r = await runPlugin("generate-signature", JSON.stringify(requestFor("generate-signature-jws", "release", "EC-256", cfg)));
      assert.equal(r.code, 1);
      const err = JSON.parse(r.stderr) as { errorCode: string; errorMessage: string };
      assert.equal(err.errorCode, "ACCESS_DENIED");
      assert.match(err.errorMessage, /disabled/);
      await call("SetKeyState", { keyId: "release", enabled: true });
      await eventually(
        () => sign("release", 0, client2).then((x) => x.keyVersion),
        (v) => v === 2,
      );
    } finally {
      client2.close();
      await second.stop();
    }
  });

  it("a disabled key signs no CSR and, as a root CA key, certifies no test chain leaf: KEY_DISABLED (PERMISSION_DENIED) with the reason", async () => {
    await call("GenerateKey", { keyId: "compromised", keySpec: "EC-256" });
    await call("SetKeyState", { keyId: "compromised", enabled: false, reason: "suspected compromise, ticket SEC-2" });
    const csr = await rejected(call("CreateCsr", { keyId: "compromised", subject: "CN=compromised, O=Example Corp, ST=WA, C=US" }));
    assert.equal(csr.code, status.PERMISSION_DENIED, csr.details);
    assert.deepEqual(csr.metadata.get(ERROR_CODE_TRAILER), ["KEY_DISABLED"]);
    assert.match(csr.details, /^key "compromised" is disabled by a custodian: suspected compromise, ticket SEC-2 \[request [0-9a-f]+\]$/);
    const chain = await rejected(call("CreateTestChain", { keyId: "leaf-of-compromised", keySpec: "EC-256", rootKeyId: "compromised" }));
    assert.equal(chain.code, status.PERMISSION_DENIED, chain.details);
    assert.deepEqual(chain.metadata.get(ERROR_CODE_TRAILER), ["KEY_DISABLED"]);
    const inv = await call<{ keys: InventoryKey[] }>("GetInventory", {});
    assert.deepEqual(
      inv.keys.filter((k) => k.keyId === "leaf-of-compromised"),
      [],
      "no key was made for the refused leaf",
    );
  });

  it("destroy: only a disabled version, only with the exact confirmation; its certificate stays unless acknowledged", async () => {
    const enabled = await rejected(call("DestroyKeyVersion", { keyId: "release", keyVersion: 1, confirm: "release@v1" }));
    assert.equal(enabled.code, status.FAILED_PRECONDITION);
    assert.match(enabled.details, /enabled; disable it first/);
    await call("SetKeyState", { keyId: "release", keyVersion: 1, enabled: false, reason: "rotated" });
    const unconfirmed = await rejected(call("DestroyKeyVersion", { keyId: "release", keyVersion: 1, confirm: "release" }));
    assert.equal(unconfirmed.code, status.INVALID_ARGUMENT);
    assert.match(unconfirmed.details, /confirm with exactly "release@v1"/);
    const d = await call<{ key: InventoryKey; destroyed: string[] }>("DestroyKeyVersion", { keyId: "release", keyVersion: 1, confirm: "release@v1" });
    assert.deepEqual(d.destroyed.sort(), ["private key", "public key"]);
    const v1 = d.key.versions.find((v) => v.version === 1);
    assert.equal(v1?.state, "destroyed");
    assert.equal(v1?.hasSigned, true);
    // The certificate is still there: old signatures stay verifiable.
    assert.equal((await call<{ certificateChain: Buffer[] }>("GetCertificateChain", { keyId: "release", keyVersion: 1 })).certificateChain.length, 2);
    const unacknowledged = await rejected(call("DestroyKeyVersion", { keyId: "release", keyVersion: 1, confirm: "release@v1", destroyCertificate: true }));
    assert.equal(unacknowledged.code, status.FAILED_PRECONDITION);
    assert.match(unacknowledged.details, /has signed; its certificate is the last record/);
    const gone = await call<{ destroyed: string[] }>("DestroyKeyVersion", { keyId: "release", keyVersion: 1, confirm: "release@v1", destroyCertificate: true, acknowledgeSigned: true });
    assert.deepEqual(gone.destroyed, ["certificate"]);
    assert.equal((await sign("release")).keyVersion, 2, "the current version still signs");
  });

  it("test chain through KeyAdmin, and an inventory that flags certificates near expiry", async () => {
    const t = await call<{ certificateChain: Buffer[]; created: string[] }>("CreateTestChain", { keyId: "short-lived", keySpec: "RSA-2048", validityDays: 10 });
    assert.deepEqual(t.created, ["rootKey", "rootCertificate", "key", "leafCertificate"]);
    assert.deepEqual(checkChain(t.certificateChain, new Date()), []);
    const inv = await call<{ keys: InventoryKey[] }>("GetInventory", {});
    const byId = new Map(inv.keys.map((k) => [k.keyId, k]));
    const v = byId.get("short-lived")?.versions[0];
    assert.equal(v?.expiringSoon, true);
    assert.ok(v && v.daysUntilExpiry >= 9 && v.daysUntilExpiry <= 10, String(v?.daysUntilExpiry));
    assert.equal(v?.role, "signing");
    assert.equal(byId.get("short-lived-root-ca")?.versions[0]?.role, "ca");
    assert.equal(byId.get("release")?.versions[1]?.expiringSoon, false);
  });

  it("CreateTestChain for a 128-character key id, whose default root key id would exceed the limit: INVALID_ARGUMENT, and no key is made", async () => {
    const long = `long-${"k".repeat(123)}`;
    const e = await rejected(call("CreateTestChain", { keyId: long, keySpec: "EC-256" }));
    assert.equal(e.code, status.INVALID_ARGUMENT, e.details);
    assert.match(e.details, /^the root key id would be "long-k+-root-ca" \(the key id and "-root-ca"\), 136 characters: longer than the 128 characters a key id may have/);
    const inv = await call<{ keys: InventoryKey[] }>("GetInventory", {});
    assert.deepEqual(
      inv.keys.filter((k) => k.keyId.startsWith("long-")),
      [],
    );
  });

  // RSA-4096 generation takes seconds on SoftHSM. Run on the event loop, it froze the whole
  // service: no Sign, health probe or scrape was answered until the key pair was made.
  it("an RSA-4096 generation runs beside signing: Sign calls keep completing while it is under way", async () => {
    await call("CreateTestChain", { keyId: "while-generating", keySpec: "EC-256" });
    // A version's first signature writes its has-signed record to the token, an object operation
    // that waits for a running generation (SessionPool.use() through object-gate.ts); later ones do not.
    await sign("while-generating");
    let generating = true;
    const generated = call<{ key: InventoryKey; keyVersion: number }>("GenerateKey", { keyId: "big-rsa", keySpec: "RSA-4096" }).finally(() => {
      generating = false;
    });
    let during = 0;
    while (generating) {
      const r = await sign("while-generating");
      assert.equal(r.keyId, "while-generating");
      if (generating) during++;
    }
    const g = await generated;
    assert.equal(g.keyVersion, 1);
    assert.equal(g.key.versions[0]?.keySpec, "RSA-4096");
    // Blocked, only the one or two calls made before the generation started would count.
    assert.ok(during >= 10, `only ${during} Sign calls completed while the key pair was generated`);
  });

  // A change may be on the token when the caller's deadline passes: the call runs to its end
  // and the audit records what happened (OK), not the DEADLINE_EXCEEDED the caller saw.
  it("a generation that outlives the caller's deadline completes, and the audit says OK", async () => {
    adminCalls++;
    const e = await new Promise<grpc.ServiceError | null>((resolve) => {
      const fn = (admin as unknown as { generateKey: (r: object, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null) => void) => void }).generateKey.bind(admin);
      fn({ keyId: "late-rsa", keySpec: "RSA-4096" }, { deadline: Date.now() + 250 }, (err) => resolve(err));
    });
    // RSA-4096 generation on SoftHSM takes 0.3 to 10 s, so the caller almost always gives up first.
    assert.ok(e === null || e.code === status.DEADLINE_EXCEEDED, String(e));
    const inv = await eventually(
      () => call<{ keys: InventoryKey[] }>("GetInventory", { keyId: "late-rsa" }),
      (v) => (v as { keys?: InventoryKey[] }).keys?.[0]?.versions[0]?.keySpec === "RSA-4096",
      30_000,
    );
    assert.equal(inv.keys.length, 1);
    const r = await run(HSM_SIGNER, ["audit", "search", "--dir", svc.auditDir, "--key-id", "late-rsa", "--json"]);
    const records = r.stdout
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as { method: string; result: string });
    // The intent line written before the key was generated, then the call's own line.
    assert.deepEqual(
      records.filter((x) => x.method === "KeyAdmin.GenerateKey").map((x) => x.result),
      ["STARTED", "OK"],
    );
  });

  it("every KeyAdmin call, allowed or refused, is in the audit, and the audit chain verifies", async () => {
    const r = await run(HSM_SIGNER, ["audit", "search", "--dir", svc.auditDir, "--json"]);
    const records = r.stdout
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as { method: string; decision: string; identity: string; requestId: string; result: string });
    // One line per call, and before each call that changes the token its intent line (STARTED),
    // followed later by that call's own line.
    const adminRecords = records.filter((x) => x.method.startsWith("KeyAdmin.") && x.result !== "STARTED");
    assert.equal(adminRecords.length, adminCalls);
    const intents = records.filter((x) => x.result === "STARTED");
    assert.ok(intents.length > 0);
    for (const i of intents) {
      assert.equal(i.decision, "allow", "only an allowed call gets as far as its intent");
      const at = records.indexOf(i);
      assert.ok(
        records.slice(at + 1).some((x) => x.requestId === i.requestId && x.result !== "STARTED"),
        `${i.method} ${i.requestId}: no line after its intent`,
      );
    }
    assert.ok(adminRecords.some((x) => x.decision === "deny" && x.identity === "spiffe://hsm-signer.dev/builder"));
    assert.match((await run(HSM_SIGNER, ["audit", "verify", "--dir", svc.auditDir])).stdout, /^OK: /);
  });
});

function clientCertificate(tls: TlsMaterial, name: string): { key: Buffer; cert: Buffer } {
  const c = tls.extra[name];
  if (!c) throw new Error(`no client certificate ${name}`);
  return { key: c.key, cert: c.cert };
}

/** Retries `fn` until `ok` holds (a bounded wait for another replica to notice a change). */
async function eventually<T>(fn: () => Promise<T>, ok: (v: T) => boolean, ms = 10_000): Promise<T> {
  const until = Date.now() + ms;
  for (;;) {
    const v = await fn().catch((e: unknown) => e as T);
    if (ok(v)) return v;
    if (Date.now() > until) assert.fail(`not within ${ms} ms: ${String((v as { details?: string }).details ?? JSON.stringify(v))}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

// With bearer tokens on, the Signer listener only requests client certificates and checks them
// itself against tls.clientCaFile. KeyAdmin has its own client CA, checked by its TLS: the
// Signer's check, applied to KeyAdmin too, refused every custodian of another CA.
describe("KeyAdmin with its own client CA while bearer tokens are on (service process)", function () {
  this.timeout(120_000);
  let dir: string;
  let svc: ServiceProcess | undefined;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "hsm-signer-admin-ca-"));
  });
  after(async () => {
    await svc?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("a custodian whose certificate comes from admin.clientCaFile gets in; one from the Signer's CA does not", async () => {
    const token = isolatedToken(join(dir, "hsm"), "admin-ca-test");
    const tls = createTlsMaterial(join(dir, "tls"), "builder");
    const adminTls = createTlsMaterial(join(dir, "admin-tls"), "custodian");
    const { publicKey } = await generateKeyPair("ES256", { extractable: true });
    const jwksFile = join(dir, "jwks.json");
    writeFileSync(jwksFile, JSON.stringify({ keys: [{ ...(await exportJWK(publicKey)), kid: "k1", alg: "ES256", use: "sig" }] }));
    svc = await startServiceProcess({
      name: "a",
      dir,
      token,
      tls,
      policy: `rules: []\ncustodians:\n  - { mtls: "spiffe://hsm-signer.dev/custodian" }\n`,
      adminClientCaFile: adminTls.caFile,
      extraConfig: [`auth: { jwt: [{ issuer: "https://issuer.test", audience: hsm-signer, jwksFile: ${jwksFile}, algorithms: [ES256] }] }`],
    });
    const custodian = adminClient(readFileSync(tls.caFile), svc.adminPort, { key: adminTls.clientKey, cert: adminTls.clientCert });
    const stranger = adminClient(readFileSync(tls.caFile), svc.adminPort, { key: tls.clientKey, cert: tls.clientCert });
    try {
      const r = await callAdmin<{ slots: unknown[] }>(custodian, "ListSlots", {});
      assert.ok(r.slots.length > 0);
      await assert.rejects(callAdmin(stranger, "ListSlots", {}), (e: grpc.ServiceError) => e.code === status.UNAVAILABLE || e.code === status.UNAUTHENTICATED || e.code === status.PERMISSION_DENIED);
    } finally {
      custodian.close();
      stranger.close();
    }
  });
});
