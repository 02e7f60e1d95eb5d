import assert from "node:assert/strict";
import { execFile, execFileSync } from "node:child_process";
import { X509Certificate } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { requestFor, verifyNotarySignature } from "../helpers/notation.js";
import { CODE_SIGNING_LEAF_EXT, OpensslCa } from "../helpers/openssl-ca.js";
import { runPlugin } from "../helpers/plugin-process.js";
import { spawnCollect } from "../helpers/process.js";
import { HSM_SIGNER, isolatedToken, startServiceProcess, type ServiceProcess } from "../helpers/service-process.js";
import { PROJECT_ROOT } from "../helpers/softhsm.js";
import type { SoftHsmToken } from "../helpers/softhsm.js";
import { createTlsMaterial, type TlsMaterial } from "../helpers/tls.js";
import type { InventoryKey } from "../../src/client/index.js";

const POLICY = `rules:
  - name: builders
    match: { mtls: "spiffe://hsm-signer.dev/builder" }
    keys: ["*"]
custodians:
  - { mtls: "spiffe://hsm-signer.dev/custodian" }
`;

const TOKEN_LABEL = "admin-cli-test";
const SUBJECT = "CN=release, O=Example Corp, ST=WA, C=US";
/** Each CLI run is killed after this long (a hung call must fail the test, not the suite). */
const CLI_TIMEOUT_MS = 20_000;

interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** The environment without any HSM_SIGNER_ADMIN_* of the developer's shell. */
function cleanEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("HSM_SIGNER_ADMIN_")));
}

/** Runs the built `dist/hsm-signer` with these arguments (and extra environment). */
async function cli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  const r = await spawnCollect(HSM_SIGNER, args, "", { env: { ...cleanEnv(), ...env }, timeoutMs: CLI_TIMEOUT_MS });
  assert.equal(r.timedOut, false, `hsm-signer ${args.join(" ")} did not finish within ${CLI_TIMEOUT_MS} ms`);
  return { code: r.code, stdout: r.stdout, stderr: r.stderr };
}

/** The same from another directory (paths printed relative to it). */
function cliIn(cwd: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(HSM_SIGNER, args, { cwd, env: { ...cleanEnv(), ...env }, timeout: CLI_TIMEOUT_MS }, (e, stdout, stderr) => {
      resolve({ code: e ? (typeof e.code === "number" ? e.code : null) : 0, stdout, stderr });
    });
  });
}

/** Asserts exit 0 and an empty stderr, showing both streams otherwise. */
function ok(r: CliResult): CliResult {
  assert.equal(r.code, 0, `exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  assert.equal(r.stderr, "", "nothing on stderr");
  return r;
}

function pemBlocks(pem: string): Buffer[] {
  return [...pem.matchAll(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g)].map((m) => Buffer.from(new X509Certificate(m[0]).raw));
}

/** Attributes of a DN, e.g. "C=US, ST=WA, O=Example Corp, CN=release" (no escapes in these tests), by type. */
function dnAttributes(dn: string, separator: RegExp): Map<string, string> {
  return new Map(
    dn.split(separator).map((a) => {
      const i = a.indexOf("=");
      return [a.slice(0, i).trim().toUpperCase(), a.slice(i + 1).trim()] as [string, string];
    }),
  );
}

describe("hsm-signer slots|keys|certs: the built CLI against KeyAdmin of a service process (SoftHSM)", function () {
  this.timeout(60_000);
  let dir: string;
  let token: SoftHsmToken;
  let tls: TlsMaterial;
  let svc: ServiceProcess;
  let outsideCa: OpensslCa;
  /** The connection as flags, and as HSM_SIGNER_ADMIN_* variables. */
  let flags: string[];
  let env: NodeJS.ProcessEnv;
  /** Version 1's leaf of "release", from the outside CA. */
  let releaseV1Leaf: Buffer;

  /** A custodian command with the connection given by flags. */
  const admin = (args: string[]): Promise<CliResult> => cli([...args, ...flags]);
  /** The same with the connection given by the environment. */
  const adminByEnv = (args: string[]): Promise<CliResult> => cli(args, env);
  const file = (name: string): string => join(dir, name);

  const inventory = async (keyId?: string): Promise<InventoryKey[]> => {
    const r = ok(await adminByEnv(["keys", "list", "--json", ...(keyId ? ["--key-id", keyId] : [])]));
    return (JSON.parse(r.stdout) as { keys: InventoryKey[] }).keys;
  };

  /** Signs through the built plugin with the builder's certificate; the result and, when it signed, the verified chain. */
  const pluginSign = async (keyId: string, keySpec: string): Promise<{ code: number | null; stderr: string; chain: Buffer[] }> => {
    const cfg = { endpoint: `127.0.0.1:${svc.port}`, ca_file: tls.caFile, client_cert_file: tls.clientCertFile, client_key_file: tls.clientKeyFile };
    return signWithPluginConfig(keyId, keySpec, cfg);
  };

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "hsm-signer-admin-cli-"));
    token = isolatedToken(join(dir, "hsm"), TOKEN_LABEL);
    tls = createTlsMaterial(join(dir, "tls"), "builder", ["custodian"]);
    svc = await startServiceProcess({ name: "svc", dir, token, tls, policy: POLICY });
    const custodian = tls.extra.custodian;
    assert.ok(custodian);
    const endpoint = `127.0.0.1:${svc.adminPort}`;
    flags = ["--endpoint", endpoint, "--ca", tls.caFile, "--cert", custodian.certFile, "--key", custodian.keyFile];
    env = { HSM_SIGNER_ADMIN_ENDPOINT: endpoint, HSM_SIGNER_ADMIN_CA: tls.caFile, HSM_SIGNER_ADMIN_CERT: custodian.certFile, HSM_SIGNER_ADMIN_KEY: custodian.keyFile };
    outsideCa = OpensslCa.root(join(dir, "outside-ca"), { subject: "/C=US/ST=WA/O=Outside CA Inc/CN=Outside Root CA", key: "ec-384" });
  });

  after(async () => {
    await svc?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("slots: the table shows the managed token (flags); --json (connection from the environment) has its mechanisms", async () => {
    // Read-only calls run side by side (each CLI start costs most of a second).
    const [tableRun, jsonRun] = await Promise.all([admin(["slots"]), adminByEnv(["slots", "--json"])]);
    const table = ok(tableRun).stdout;
    assert.match(table, /^SLOT\s+TOKEN\s+SERIAL\s+MANUFACTURER \/ MODEL\s+FREE PUBLIC\s+FREE PRIVATE\s+MANAGED$/m);
    const row = table.split("\n").find((l) => l.includes(` ${TOKEN_LABEL} `));
    assert.ok(row, table);
    assert.match(row, /\byes$/, "the token this service manages");
    assert.match(table, new RegExp(`slot \\d+ \\(${TOKEN_LABEL}\\): .*\\n  flags: .*\\bTOKEN_INITIALIZED\\b`));

    const json = JSON.parse(ok(jsonRun).stdout) as { slots: { token: { label: string; managed: boolean; mechanisms: string[] } | null }[] };
    const managed = json.slots.filter((s) => s.token?.managed);
    assert.equal(managed.length, 1);
    assert.equal(managed[0]?.token?.label, TOKEN_LABEL);
    for (const m of ["ECDSA", "RSA_PKCS_PSS", "EC_KEY_PAIR_GEN", "RSA_PKCS_KEY_PAIR_GEN"]) assert.ok(managed[0]?.token?.mechanisms.includes(m), `mechanism ${m}`);
  });

  it("a non-custodian certificate (the builder's, by flags, also over a custodian's in the environment) is refused with exit 1 and a permission message", async () => {
    const builderFlags = ["--cert", tls.clientCertFile, "--key", tls.clientKeyFile];
    const [byFlags, overEnv] = await Promise.all([
      cli(["keys", "list", "--endpoint", `127.0.0.1:${svc.adminPort}`, "--ca", tls.caFile, ...builderFlags]),
      // Flags win over the environment: the custodian's certificate in HSM_SIGNER_ADMIN_* is not used.
      adminByEnv(["slots", ...builderFlags]),
    ]);
    for (const [r, method] of [
      [byFlags, "GetInventory"],
      [overEnv, "ListSlots"],
    ] as const) {
      assert.equal(r.code, 1, r.stderr);
      assert.equal(r.stdout, "");
      assert.match(r.stderr, new RegExp(`^hsm-signer: .*spiffe://hsm-signer\\.dev/builder may not call KeyAdmin\\.${method}`));
    }
  });

  it("without --ca (KeyAdmin's certificate is from a private CA) the error says to give the CA with --ca or HSM_SIGNER_ADMIN_CA", async () => {
    const custodian = tls.extra.custodian;
    assert.ok(custodian);
    const r = await cli(["slots", "--endpoint", `127.0.0.1:${svc.adminPort}`, "--cert", custodian.certFile, "--key", custodian.keyFile, "--timeout", "10"]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(
      r.stderr,
      new RegExp(`^hsm-signer: cannot reach KeyAdmin at 127\\.0\\.0\\.1:${svc.adminPort}: .*(self-signed certificate|unable to verify the first certificate|unable to get local issuer certificate)`),
    );
    assert.match(r.stderr, /give the CA that issued it with --ca FILE or HSM_SIGNER_ADMIN_CA\)$/m);
  });

  it("keys generate: a new key (table and next steps); an existing key id exits 1, a bad key spec exits 2", async () => {
    const r = ok(await admin(["keys", "generate", "--key-id", "release", "--key-spec", "EC-256"]));
    assert.match(r.stdout, /^generated key "release" version 1 \(EC-256\)$/m);
    assert.match(r.stdout, /^release\s+1\s+enabled\s+EC-256\s+-\s+-\s+-\s+-$/m, "no role, certificate or expiry yet");
    assert.match(r.stdout, /^ {2}release: no version can sign$/m);
    assert.match(r.stdout, /next: hsm-signer certs csr --key-id release/);

    const [again, badSpec] = await Promise.all([
      adminByEnv(["keys", "generate", "--key-id", "release", "--key-spec", "EC-384"]),
      admin(["keys", "generate", "--key-id", "weak", "--key-spec", "RSA-1024"]),
    ]);
    assert.equal(again.code, 1, again.stderr);
    assert.match(again.stderr, /^hsm-signer: key "release" already exists on the token/);

    assert.equal(badSpec.code, 2, badSpec.stderr);
    assert.match(badSpec.stderr, /--key-spec must be one of RSA-2048, .*EC-521, not "RSA-1024"/);
    assert.match(badSpec.stderr, /usage: hsm-signer keys generate/);

    const keys = await inventory();
    assert.deepEqual(
      keys.map((k) => k.keyId),
      ["release"],
      "nothing else was generated",
    );
    assert.equal(keys[0]?.versions[0]?.keySpec, "EC-256");
    assert.match(keys[0]?.versions[0]?.problem ?? "", /no certificate/);
  });

  it("certs csr --out, the outside openssl CA signs it, certs import of PEM and DER files (root first): the key signs through the plugin", async () => {
    const csrFile = file("release-v1.csr");
    const c = ok(await admin(["certs", "csr", "--key-id", "release", "--subject", SUBJECT, "--out", csrFile]));
    assert.equal(c.stdout, `CSR for release@v1 written to ${csrFile}\n`);
    const csrPem = readFileSync(csrFile, "utf8");
    assert.match(csrPem, /^-----BEGIN CERTIFICATE REQUEST-----\n/);

    // Typed most specific first, encoded C, ST, O, CN as test-chain leaves are (openssl prints in encoded order).
    assert.equal(execFileSyncText("openssl", ["req", "-in", csrFile, "-noout", "-subject", "-nameopt", "RFC2253"]), "subject=CN=release,O=Example Corp,ST=WA,C=US\n");
    assert.equal(execFileSyncText("openssl", ["req", "-in", csrFile, "-noout", "-subject", "-nameopt", "oneline"]), "subject=C = US, ST = WA, O = Example Corp, CN = release\n");
    releaseV1Leaf = outsideCa.signCsr(csrPem, { extensions: CODE_SIGNING_LEAF_EXT, days: 365 });
    const leaf = new X509Certificate(releaseV1Leaf);
    assert.equal(leaf.subject, "C=US\nST=WA\nO=Example Corp\nCN=release", "signCsr keeps the CSR's subject, in test-chain's order");
    writeFileSync(file("release-v1.der"), releaseV1Leaf);
    writeFileSync(file("outside-root.pem"), outsideCa.certPem);

    const imp = ok(await adminByEnv(["certs", "import", "--key-id", "release", file("outside-root.pem"), file("release-v1.der")]));
    assert.match(imp.stdout, /^stored a chain of 2 certificates for release@v1 \(all 2 written to the token\):$/m);
    assert.match(imp.stdout, /^ {2}1\. leaf: C=US, ST=WA, O=Example Corp, CN=release \(issuer C=US, ST=WA, O=Outside CA Inc, CN=Outside Root CA;/m);
    assert.match(imp.stdout, /^ {2}2\. root: C=US, ST=WA, O=Outside CA Inc, CN=Outside Root CA /m);

    const signed = await pluginSign("release", "EC-256");
    assert.equal(signed.code, 0, signed.stderr);
    assert.deepEqual(signed.chain, [releaseV1Leaf, outsideCa.certDer]);
  });

  it("certs import of a bad chain exits 1 with the server's line for each broken rule, and stores nothing", async () => {
    ok(await admin(["keys", "generate", "--key-id", "strict", "--key-spec", "EC-256"]));
    // Without --out the CSR goes to stdout.
    const csrPem = ok(await adminByEnv(["certs", "csr", "--key-id", "strict", "--subject", "CN=strict, O=Example Corp, ST=WA, C=US"])).stdout;
    assert.match(csrPem, /^-----BEGIN CERTIFICATE REQUEST-----\n[\s\S]+-----END CERTIFICATE REQUEST-----\n$/);
    // keyUsage present but not critical, and a serverAuth EKU: two rules broken by one leaf.
    writeFileSync(file("strict-bad.der"), outsideCa.signCsr(csrPem, { extensions: "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth" }));
    const r = await admin(["certs", "import", "--key-id", "strict", file("strict-bad.der"), outsideCa.certFile]);
    assert.equal(r.code, 1, r.stderr);
    assert.equal(r.stdout, "");
    assert.match(r.stderr, /^hsm-signer: the chain for key "strict" was rejected:$/m);
    // One line per broken rule, ending with its id in brackets (the last also carries the request id).
    const ruleLines = r.stderr
      .split("\n")
      .map((l) => l.replace(/ \[request [0-9a-f]+\]$/, ""))
      .filter((l) => /\[[a-z0-9-]+\]$/.test(l));
    assert.equal(ruleLines.length, 2, r.stderr);
    assert.ok(
      ruleLines.some((l) => /keyUsage is not marked critical.* \[leaf-key-usage-not-critical\]$/.test(l)),
      r.stderr,
    );
    assert.ok(
      ruleLines.some((l) => l.endsWith("[leaf-eku-forbidden]")),
      r.stderr,
    );
    assert.match((await inventory("strict"))[0]?.versions[0]?.problem ?? "", /no certificate/, "nothing was stored");

    // A chain whose leaf holds another key's public key: named, with its rule id, like the other rules.
    const [anyVersion, strictOrder] = await Promise.all([
      admin(["certs", "import", "--key-id", "strict", file("release-v1.der"), outsideCa.certFile]),
      admin(["certs", "import", "--key-id", "strict", "--version", "1", "--strict-order", file("release-v1.der"), outsideCa.certFile]),
    ]);
    for (const [r, which] of [
      [anyVersion, 'any version of key "strict"'],
      [strictOrder, 'key "strict" version 1'],
    ] as const) {
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /^hsm-signer: the chain for key "strict" was rejected:$/m);
      const line = r.stderr.split("\n").find((l) => l.includes("[leaf-key-mismatch]")) ?? "";
      assert.match(
        line,
        new RegExp(
          `^certificate 0 \\(CN=release, O=Example Corp\\): its public key \\(EC prime256v1\\) is not the one of ${which.replace(/"/g, '"')}.* \\[leaf-key-mismatch\\]( \\[request [0-9a-f]+\\])?$`,
        ),
        r.stderr,
      );
    }
  });

  it("keys test-chain --days 10 --root-out: keys list flags the short-lived chain in its table and in --json", async () => {
    const rootOut = file("short-lived-root.pem");
    const t = ok(await admin(["keys", "test-chain", "--key-id", "short-lived", "--key-spec", "RSA-2048", "--days", "10", "--root-out", rootOut]));
    assert.match(t.stdout, /^key "short-lived" \(RSA-2048\) version 1: chain of 2 certificates on the token; created rootKey, rootCertificate, key, leafCertificate$/m);
    assert.match(t.stdout, new RegExp(`^root certificate written to ${rootOut} `, "m"));
    const root = new X509Certificate(readFileSync(rootOut));
    assert.equal(root.subject, root.issuer, "a self-signed root");
    assert.ok(root.ca);

    const [listed, inventoryJson, narrowJson] = await Promise.all([adminByEnv(["keys", "list"]), inventory(), admin(["keys", "list", "--key-id", "short-lived", "--warn-days", "5", "--json"])]);
    const table = ok(listed).stdout;
    assert.match(table, /^KEY\s+VER\s+STATE\s+CUR\s+SPEC\s+ROLE\s+SUBJECT\s+ISSUER\s+EXPIRES$/m);
    assert.match(table, /^short-lived\s+1\s+enabled\s+\*\s+RSA-2048\s+signing\s+.*EXPIRES IN (9|10)d \(\d{4}-\d\d-\d\d\)$/m);
    assert.match(table, /^short-lived-root-ca\s+1\s+enabled\s+.*\bca\b/m);
    assert.match(
      table,
      /^release\s+1\s+enabled\s+\*\s+EC-256\s+signing\s+C=US, ST=WA, O=Example Corp, CN=release\s+C=US, ST=WA, O=Outside CA Inc, CN=Outside Root CA\s+\d{4}-\d\d-\d\d \(36[345]d\)$/m,
    );
    assert.match(table, /^ {2}strict@v1: .*no certificate/m);
    assert.match(table, /^4 key\(s\), 4 version\(s\); \d+ expiring within 30 days; \d+ with problems$/m);

    const keys = new Map(inventoryJson.map((k) => [k.keyId, k]));
    const v = keys.get("short-lived")?.versions[0];
    assert.equal(v?.expiringSoon, true);
    assert.ok(v && v.daysUntilExpiry >= 9 && v.daysUntilExpiry <= 10, String(v?.daysUntilExpiry));
    assert.equal(v?.role, "signing");
    assert.equal(keys.get("short-lived-root-ca")?.versions[0]?.role, "ca");
    assert.equal(keys.get("short-lived-root-ca")?.versions[0]?.problem, "", "a CA key with its self-signed root is not a problem");
    assert.doesNotMatch(table, /^ {2}short-lived-root-ca/m, "nothing about the CA key under problems");
    assert.equal(keys.get("release")?.versions[0]?.expiringSoon, false);
    // The shorter --warn-days window no longer flags the 10-day chain.
    const narrow = JSON.parse(ok(narrowJson).stdout) as { keys: InventoryKey[] };
    assert.equal(narrow.keys[0]?.versions[0]?.expiringSoon, false);
  });

  it("keys rotate: version 2 gets its chain by csr --version 2 and import; the plugin signs with it; certs chain --out still serves version 1", async () => {
    const r = ok(await adminByEnv(["keys", "rotate", "--key-id", "release"]));
    assert.match(r.stdout, /^key "release" has a new version 2; signing moves to it once it has a certificate chain$/m);
    assert.match(r.stdout, /next: hsm-signer certs csr --key-id release --version 2 /);
    assert.deepEqual((await pluginSign("release", "EC-256")).chain[0], releaseV1Leaf, "version 2 has no chain yet");

    const csrFile = file("release-v2.csr");
    assert.equal(ok(await admin(["certs", "csr", "--key-id", "release", "--version", "2", "--subject", SUBJECT, "--out", csrFile])).stdout, `CSR for release@v2 written to ${csrFile}\n`);
    const v2Leaf = outsideCa.signCsr(readFileSync(csrFile, "utf8"), { extensions: CODE_SIGNING_LEAF_EXT, days: 365 });
    writeFileSync(file("release-v2.pem"), new X509Certificate(v2Leaf).toString());
    const imp = ok(await admin(["certs", "import", "--key-id", "release", file("release-v2.pem"), file("outside-root.pem"), "--json"]));
    const imported = JSON.parse(imp.stdout) as { keyVersion: number; stored: number; certificateChain: string[] };
    assert.equal(imported.keyVersion, 2, "the chain went to the version whose key the leaf holds");
    assert.equal(imported.stored, 1, "the root was already on the token");
    assert.match(imported.certificateChain[0] ?? "", /^-----BEGIN CERTIFICATE-----\n/, "--json shows certificates as PEM");

    const signed = await pluginSign("release", "EC-256");
    assert.equal(signed.code, 0, signed.stderr);
    assert.deepEqual(signed.chain[0], v2Leaf, "new signatures use version 2");
    // A notation key whose key_spec plugin config is stale (EC-384 for this EC-256 key) says which setting to update, and how.
    const cfg = { endpoint: `127.0.0.1:${svc.port}`, ca_file: tls.caFile, client_cert_file: tls.clientCertFile, client_key_file: tls.clientKeyFile, key_spec: "EC-384" };
    const stale = await signWithPluginConfig("release", "EC-384", cfg);
    assert.equal(stale.code, 1);
    const staleError = JSON.parse(stale.stderr) as { errorCode: string; errorMessage: string };
    assert.match(staleError.errorMessage, /key "release" is EC-256, not EC-384 \(the request's key_spec\); with notation, update the key_spec plugin config: .*--plugin-config key_spec=EC-256/);
    const release = (await inventory("release"))[0];
    assert.deepEqual(
      release?.versions.map((v) => [v.version, v.state, v.current]),
      [
        [1, "enabled", false],
        [2, "enabled", true],
      ],
    );

    const v1File = file("release-v1-chain.pem");
    const [v1Run, currentRun] = await Promise.all([adminByEnv(["certs", "chain", "--key-id", "release", "--version", "1", "--out", v1File]), admin(["certs", "chain", "--key-id", "release"])]);
    assert.equal(ok(v1Run).stdout, `chain of 2 certificates for release@v1 written to ${v1File}\n`);
    assert.deepEqual(pemBlocks(readFileSync(v1File, "utf8")), [releaseV1Leaf, outsideCa.certDer]);
    const current = ok(currentRun).stdout;
    assert.deepEqual(pemBlocks(current), [v2Leaf, outsideCa.certDer], "without --version: the current chain, to stdout");
  });

  it("keys disable refuses signing (the plugin says ACCESS_DENIED); keys enable restores it", async () => {
    const d = ok(await admin(["keys", "disable", "--key-id", "release", "--reason", "suspected compromise, ticket SEC-1"]));
    assert.match(d.stdout, /^disabled key "release" \(every version\)$/m);
    assert.match(d.stdout, /^ {2}release: key disabled: suspected compromise, ticket SEC-1$/m);
    assert.equal((await inventory("release"))[0]?.state, "disabled");

    const refused = await pluginSign("release", "EC-256");
    assert.equal(refused.code, 1);
    const err = JSON.parse(refused.stderr) as { errorCode: string; errorMessage: string };
    assert.equal(err.errorCode, "ACCESS_DENIED");
    assert.match(err.errorMessage, /key "release" is disabled by a custodian: suspected compromise, ticket SEC-1/);

    assert.match(ok(await adminByEnv(["keys", "enable", "--key-id", "release"])).stdout, /^enabled key "release" \(every version\)$/m);
    assert.equal((await pluginSign("release", "EC-256")).code, 0, "signs again");
  });

  it("keys destroy: a wrong --confirm is a usage error, an enabled version is refused, a disabled one is destroyed and its chain kept", async () => {
    const [wrong, enabled] = await Promise.all([
      admin(["keys", "destroy", "--key-id", "release", "--version", "1", "--confirm", "release"]),
      adminByEnv(["keys", "destroy", "--key-id", "release", "--version", "1", "--confirm", "release@v1"]),
    ]);
    assert.equal(wrong.code, 2, wrong.stderr);
    assert.match(wrong.stderr, /--confirm must be exactly "release@v1" to destroy that version, not "release"/);

    assert.equal(enabled.code, 1, enabled.stderr);
    assert.match(enabled.stderr, /^hsm-signer: .*enabled; disable it first/);

    assert.match(ok(await admin(["keys", "disable", "--key-id", "release", "--version", "1", "--reason", "rotated"])).stdout, /^disabled release@v1$/m);
    // Version 1 signed: taking its certificate too needs --acknowledge-signed, and the message says so in the CLI's words.
    const unacknowledged = await admin(["keys", "destroy", "--key-id", "release", "--version", "1", "--confirm", "release@v1", "--destroy-certificate"]);
    assert.equal(unacknowledged.code, 1, unacknowledged.stderr);
    assert.match(unacknowledged.stderr, /has signed; .*Keep the certificate \(leave out --destroy-certificate\), or confirm with --acknowledge-signed/);
    const destroyed = ok(await adminByEnv(["keys", "destroy", "--key-id", "release", "--version", "1", "--confirm", "release@v1"]));
    assert.match(destroyed.stdout, /^destroyed release@v1: (private key, public key|public key, private key)$/m);
    assert.match(destroyed.stdout, /^release\s+1\s+destroyed\s/m);

    const versions = (await inventory("release"))[0]?.versions;
    assert.deepEqual(
      versions?.map((v) => [v.version, v.state]),
      [
        [1, "destroyed"],
        [2, "enabled"],
      ],
    );
    // The certificate stays: what version 1 signed remains verifiable.
    assert.deepEqual(pemBlocks(ok(await admin(["certs", "chain", "--key-id", "release", "--version", "1"])).stdout)[0], releaseV1Leaf);
    assert.equal((await pluginSign("release", "EC-256")).code, 0, "version 2 still signs");
  });

  it("keys notation-setup writes the root into a notation trust store and prints key add, cert add and a §6.2 trust policy that work", async () => {
    const notationDir = file("notation");
    const args = [
      "keys",
      "notation-setup",
      "--key-id",
      "release",
      "--store",
      "hsm-root",
      "--notation-dir",
      notationDir,
      "--endpoint",
      `127.0.0.1:${svc.port}`,
      "--ca-file",
      tls.caFile,
      "--client-cert-file",
      tls.clientCertFile,
      "--client-key-file",
      tls.clientKeyFile,
    ];
    // --endpoint is the plugin's here; KeyAdmin comes from the environment.
    const out = ok(await adminByEnv(args)).stdout;
    const rootFile = join(notationDir, "truststore/x509/ca/hsm-root/release-root.crt");
    assert.ok(existsSync(rootFile), out);
    const chain = pemBlocks(ok(await admin(["certs", "chain", "--key-id", "release"])).stdout);
    assert.deepEqual(pemBlocks(readFileSync(rootFile, "utf8")), [chain[chain.length - 1]], "the trust store holds the chain's root");
    assert.match(out, new RegExp(`^written to ${rootFile}$`, "m"));
    assert.match(out, /^ {2}notation cert add --type ca --store hsm-root release-root\.crt$/m);
    // The plugin package as a path that works from where the command ran (dist/ is where npm run package-plugin puts it).
    const pkg = join(PROJECT_ROOT, "dist", "notation-hsm-signer_0.1.0.tar.gz");
    const fileArg = (text: string): string => /notation plugin install --file (\S+)/.exec(text)?.[1] ?? "";
    const [fromRoot, fromElsewhere] = await Promise.all([cliIn(PROJECT_ROOT, args, env), cliIn(dir, [...args.slice(0, 6), "--notation-dir", file("notation-2"), ...args.slice(8)], env)]);
    assert.equal(fileArg(ok(fromRoot).stdout), relative(PROJECT_ROOT, pkg), fromRoot.stdout);
    assert.equal(fileArg(ok(fromElsewhere).stdout), pkg, fromElsewhere.stdout);
    assert.ok(existsSync(pkg) || /is not built yet; build it with: \(cd .* && npm run package-plugin\)/.test(fromRoot.stdout), fromRoot.stdout);

    // notation key add: its --plugin-config values are what the plugin needs to sign.
    const keyAdd = out.slice(out.indexOf("notation key add"), out.indexOf("\n\n", out.indexOf("notation key add")));
    assert.match(keyAdd, /^notation key add --plugin hsm-signer --id release \\\n/);
    assert.match(keyAdd, / release$/, "the key name");
    const pluginConfig = Object.fromEntries([...keyAdd.matchAll(/--plugin-config '?([a-z_]+)=([^'\s]+)'?/g)].map((m) => [m[1] as string, m[2] as string]));
    assert.deepEqual(pluginConfig, { endpoint: `127.0.0.1:${svc.port}`, ca_file: tls.caFile, client_cert_file: tls.clientCertFile, client_key_file: tls.clientKeyFile, key_spec: "EC-256" });
    const signed = await signWithPluginConfig("release", "EC-256", pluginConfig);
    assert.equal(signed.code, 0, signed.stderr);

    // The trust policy (the last thing printed), checked against notation-plugin-protocol.md §6.2.
    const policy = JSON.parse(out.slice(out.lastIndexOf("\n{\n") + 1)) as {
      version: string;
      trustPolicies: { name: string; registryScopes: string[]; signatureVerification: { level: string }; trustStores: string[]; trustedIdentities: string[] }[];
    };
    assert.equal(policy.version, "1.0");
    assert.equal(policy.trustPolicies.length, 1);
    const [statement] = policy.trustPolicies;
    assert.ok(statement);
    assert.ok(statement.name);
    assert.deepEqual(statement.registryScopes, ["*"]);
    assert.equal(statement.signatureVerification.level, "strict", "a non-skip level, which needs trustStores and trustedIdentities");
    assert.deepEqual(statement.trustStores, ["ca:hsm-root"], "a ca: store, the one the root was written to");
    assert.equal(statement.trustedIdentities.length, 1);
    const identity = statement.trustedIdentities[0] ?? "";
    assert.match(identity, /^x509\.subject: /);
    const wanted = dnAttributes(identity.slice("x509.subject: ".length), /,\s*/);
    for (const t of ["C", "ST", "O"]) assert.ok(wanted.has(t), `identity has ${t}`);
    const leafSubject = dnAttributes(new X509Certificate(chain[0] as Buffer).subject, /\n/);
    for (const [type, value] of wanted) assert.equal(leafSubject.get(type), value, `identity ${type} matches the leaf`);

    // Again, KeyAdmin by flags (--admin-endpoint, as --endpoint is the plugin's): the same root is already there and left alone.
    const byFlags = ok(await cli([...args, "--admin-endpoint", `127.0.0.1:${svc.adminPort}`, ...flags.slice(2)])).stdout;
    assert.match(byFlags, new RegExp(`^already in ${rootFile} \\(unchanged\\)$`, "m"));
  });
});

function execFileSyncText(file: string, args: string[]): string {
  return execFileSync(file, args, { encoding: "utf8" });
}

/** Runs the built plugin's generate-signature with this pluginConfig and verifies a signature it returns. */
async function signWithPluginConfig(keyId: string, keySpec: string, pluginConfig: Record<string, string>): Promise<{ code: number | null; stderr: string; chain: Buffer[] }> {
  const req = requestFor("generate-signature-jws", keyId, keySpec, pluginConfig);
  const r = await runPlugin("generate-signature", JSON.stringify(req));
  if (r.code !== 0) return { code: r.code, stderr: r.stderr, chain: [] };
  const out = JSON.parse(r.stdout) as { signature: string; certificateChain: string[] };
  const chain = out.certificateChain.map((c) => Buffer.from(c, "base64"));
  assert.ok(verifyNotarySignature(Buffer.from(req.payload as string, "base64"), Buffer.from(out.signature, "base64"), chain[0] as Buffer, keySpec), "the signature verifies against the leaf");
  return { code: r.code, stderr: r.stderr, chain };
}
