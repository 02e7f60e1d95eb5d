import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ADMIN_USAGE, AdminUsageError, DEFAULT_ADMIN_ENDPOINT, parseAdminArgs, type AdminCommand, type ParsedAdminArgs } from "../../src/admin/admin-args.js";
import { runAdmin, writtenSummary, type AdminIo, type KeyAdminApi } from "../../src/admin/admin-cli.js";
import { describeCallFailure } from "../../src/admin/describe-call-failure.js";
import { GrpcCallError, Status, type InventoryKey, type KeyAdminClientOptions, type KeyVersionInfo, type SlotInfo } from "../../src/client/index.js";
import { inCanonicalOrder } from "../../src/hsm/key-custody.js";
import { formatBytes, formatExpiry, formatInventory, formatJson, formatSlots, renderTable } from "../../src/admin/admin-format.js";
import { defaultNotationDir, notationKeyAddCommand, parseDn, shellQuote, subjectIdentityProblems, trustPolicyFor, trustStoreRootPath } from "../../src/admin/notation-setup.js";

const ENV = { HSM_SIGNER_ADMIN_CERT: "/etc/admin/client.pem", HSM_SIGNER_ADMIN_KEY: "/etc/admin/client-key.pem" };

function parse(argv: string[], env: NodeJS.ProcessEnv = ENV): Extract<ParsedAdminArgs, { help: false }> {
  const p = parseAdminArgs(argv, env);
  assert.equal(p.help, false);
  return p as Extract<ParsedAdminArgs, { help: false }>;
}

function command(argv: string[], env: NodeJS.ProcessEnv = ENV): AdminCommand {
  return parse(argv, env).command;
}

/** Asserts a usage error whose message mentions every string given; returns the error. */
function usageError(argv: string[], env: NodeJS.ProcessEnv, ...mentions: string[]): AdminUsageError {
  let caught: unknown;
  try {
    parseAdminArgs(argv, env);
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof AdminUsageError, `expected a usage error for ${argv.join(" ")}, got ${String(caught)}`);
  for (const m of mentions) assert.ok(caught.message.includes(m), `message should mention ${JSON.stringify(m)}: ${caught.message}`);
  return caught;
}

function version(v: Partial<KeyVersionInfo> & { version: number }): KeyVersionInfo {
  return {
    state: "enabled",
    keySpec: "EC-256",
    current: false,
    objectId: "01",
    certificateSubject: "",
    certificateIssuer: "",
    notBefore: "",
    notAfter: "",
    daysUntilExpiry: 0,
    expiringSoon: false,
    expired: false,
    chainLength: 0,
    problem: "",
    hasSigned: false,
    created: "",
    role: "signing",
    disabledReason: "",
    ...v,
  };
}

describe("admin command line: argument parsing (parseAdminArgs)", () => {
  it("reads every command into its typed form", () => {
    assert.deepEqual(command(["slots"]), { kind: "slots" });
    assert.deepEqual(command(["keys", "list"]), { kind: "keys-list", keyId: undefined, warnDays: undefined });
    assert.deepEqual(command(["keys", "list", "--key-id", "release", "--warn-days", "60"]), { kind: "keys-list", keyId: "release", warnDays: 60 });
    assert.deepEqual(command(["keys", "generate", "--key-id", "release", "--key-spec", "EC-384", "--token", "signing"]), {
      kind: "keys-generate",
      keyId: "release",
      keySpec: "EC-384",
      tokenLabel: "signing",
    });
    assert.deepEqual(command(["keys", "rotate", "--key-id", "release"]), { kind: "keys-rotate", keyId: "release", keySpec: undefined });
    assert.deepEqual(command(["keys", "disable", "--key-id", "release", "--version", "2", "--reason", "laptop lost"]), {
      kind: "keys-set-state",
      keyId: "release",
      version: 2,
      enabled: false,
      reason: "laptop lost",
    });
    assert.deepEqual(command(["keys", "enable", "--key-id", "release"]), { kind: "keys-set-state", keyId: "release", version: 0, enabled: true, reason: undefined });
    assert.deepEqual(command(["keys", "destroy", "--key-id", "release", "--version", "1", "--confirm", "release@v1", "--destroy-certificate", "--acknowledge-signed"]), {
      kind: "keys-destroy",
      keyId: "release",
      version: 1,
      confirm: "release@v1",
      destroyCertificate: true,
      acknowledgeSigned: true,
    });
    assert.deepEqual(command(["keys", "test-chain", "--key-id", "k", "--key-spec", "RSA-3072", "--org", "Example", "--state", "WA", "--country", "US", "--days", "30", "--root-out", "r.pem"]), {
      kind: "keys-test-chain",
      keyId: "k",
      keySpec: "RSA-3072",
      rootKeyId: undefined,
      rootKeySpec: undefined,
      organization: "Example",
      state: "WA",
      country: "US",
      validityDays: 30,
      rootOut: "r.pem",
    });
    assert.deepEqual(command(["certs", "csr", "--key-id", "k", "--version", "3", "--subject", "CN=k, O=Ex, ST=WA, C=US", "--out", "k.csr"]), {
      kind: "certs-csr",
      keyId: "k",
      version: 3,
      subject: "CN=k, O=Ex, ST=WA, C=US",
      out: "k.csr",
    });
    assert.deepEqual(command(["certs", "import", "--key-id", "k", "--strict-order", "leaf.pem", "ca.der"]), {
      kind: "certs-import",
      keyId: "k",
      version: 0,
      strictOrder: true,
      files: ["leaf.pem", "ca.der"],
    });
    assert.deepEqual(command(["certs", "chain", "--key-id", "k"]), { kind: "certs-chain", keyId: "k", version: 0, out: undefined });
  });

  it("takes the connection from the environment, with flags winning and defaults for the rest", () => {
    const fromEnv = parse(["slots"], { ...ENV, HSM_SIGNER_ADMIN_ENDPOINT: "admin.example.com:9443", HSM_SIGNER_ADMIN_CA: "/etc/admin/ca.pem" });
    assert.deepEqual(fromEnv.connection, {
      endpoint: "admin.example.com:9443",
      caFile: "/etc/admin/ca.pem",
      certFile: ENV.HSM_SIGNER_ADMIN_CERT,
      keyFile: ENV.HSM_SIGNER_ADMIN_KEY,
      serverName: undefined,
      timeoutMs: 30_000,
    });
    assert.equal(fromEnv.json, false);
    const flags = parse(["slots", "--endpoint", "[::1]:7000", "--ca", "ca.pem", "--cert", "c.pem", "--key", "k.pem", "--server-name", "admin", "--timeout", "2.5", "--json"], {
      ...ENV,
      HSM_SIGNER_ADMIN_ENDPOINT: "ignored:1",
    });
    assert.deepEqual(flags.connection, { endpoint: "[::1]:7000", caFile: "ca.pem", certFile: "c.pem", keyFile: "k.pem", serverName: "admin", timeoutMs: 2500 });
    assert.equal(flags.json, true);
    assert.equal(parse(["slots"]).connection.endpoint, DEFAULT_ADMIN_ENDPOINT);
    assert.equal(parse(["slots", "--admin-endpoint", "a:1"]).connection.endpoint, "a:1");
  });

  it("requires the client certificate and key, since KeyAdmin is mTLS only", () => {
    const e = usageError(["slots"], {}, "mTLS only", "--cert", "--key", "HSM_SIGNER_ADMIN_CERT");
    assert.match(e.usage, /usage: hsm-signer slots/);
    usageError(["slots", "--cert", "c.pem"], {}, "--key");
    usageError(["keys", "list"], { HSM_SIGNER_ADMIN_KEY: "k.pem" }, "--cert");
  });

  it("refuses bad values with a message that names the flag", () => {
    usageError(["keys", "generate", "--key-id", "k", "--key-spec", "RSA-1024"], ENV, "--key-spec", "EC-256", "RSA-1024");
    usageError(["keys", "generate", "--key-spec", "EC-256"], ENV, "--key-id is required");
    usageError(["keys", "list", "--warn-days", "soon"], ENV, "--warn-days");
    usageError(["keys", "disable", "--key-id", "k", "--version", "0"], ENV, "--version", "from 1");
    usageError(["keys", "disable", "--key-id", "k", "--version", "-1"], ENV, "--version");
    usageError(["keys", "test-chain", "--key-id", "k", "--key-spec", "EC-256", "--days", "4000"], ENV, "--days");
    usageError(["slots", "--timeout", "0"], ENV, "--timeout");
    usageError(["slots", "--timeout", "0.0001"], ENV, "--timeout", "from 0.001");
    assert.equal(parse(["slots", "--timeout", "0.001"]).connection.timeoutMs, 1);
    usageError(["slots", "--timeout", "ten"], ENV, "--timeout");
    usageError(["slots", "--endpoint", "no-port"], ENV, "no-port", "host:port");
    usageError(["slots", "--endpoint", "a:1", "--admin-endpoint", "b:2"], ENV, "not both");
    usageError(["slots", "--bogus"], ENV, "bogus");
    usageError(["certs", "import", "--key-id", "k"], ENV, "certificate files");
    usageError(["certs", "csr", "--key-id", "k"], ENV, "--subject is required");
    usageError(["keys", "list", "stray"], ENV, "stray");
  });

  it("checks the destroy confirmation locally, naming the exact string to type", () => {
    usageError(["keys", "destroy", "--key-id", "release", "--version", "2", "--confirm", "release@v1"], ENV, '"release@v2"');
    usageError(["keys", "destroy", "--key-id", "release", "--version", "2"], ENV, "--confirm is required");
    usageError(["keys", "destroy", "--key-id", "release", "--confirm", "release@v2"], ENV, "--version is required");
    usageError(["keys", "destroy", "--key-id", "k", "--version", "1", "--confirm", "k@v1", "--acknowledge-signed"], ENV, "--destroy-certificate");
  });

  it("keys notation-setup: --endpoint is the plugin's, KeyAdmin's comes from --admin-endpoint or the environment", () => {
    const p = parse(
      ["keys", "notation-setup", "--key-id", "release", "--store", "hsm", "--endpoint", "signer.example.com:8443", "--ca-file", "ca.pem", "--admin-endpoint", "admin.example.com:9443"],
      ENV,
    );
    assert.equal(p.connection.endpoint, "admin.example.com:9443");
    assert.deepEqual(p.command, {
      kind: "keys-notation-setup",
      keyId: "release",
      store: "hsm",
      notationDir: undefined,
      pluginEndpoint: "signer.example.com:8443",
      caFile: "ca.pem",
      clientCertFile: undefined,
      clientKeyFile: undefined,
      keyName: "release",
    });
    assert.equal(parse(["keys", "notation-setup", "--key-id", "r", "--store", "s", "--endpoint", "s:1"], { ...ENV, HSM_SIGNER_ADMIN_ENDPOINT: "adm:2" }).connection.endpoint, "adm:2");
    usageError(["keys", "notation-setup", "--key-id", "r", "--store", "s"], ENV, "--endpoint is required");
    usageError(["keys", "notation-setup", "--key-id", "r", "--store", "a/b", "--endpoint", "s:1"], ENV, "--store", "[a-zA-Z0-9_.-]+");
    usageError(["keys", "notation-setup", "--key-id", "r", "--store", "s", "--endpoint", "s:1", "--client-cert-file", "c.pem"], ENV, "go together");
  });

  it("answers --help without needing a connection, and names unknown commands", () => {
    const h = parseAdminArgs(["keys", "destroy", "--help"], {});
    assert.equal(h.help, true);
    assert.match((h as { usage: string }).usage, /keys destroy --key-id ID --version N --confirm ID@vN/);
    const e = usageError(["keys", "frobnicate"], ENV, 'unknown command "keys frobnicate"');
    assert.match(e.usage, /keys list/);
    assert.doesNotMatch(e.usage, /certs csr/);
    usageError(["keys"], ENV, "subcommand");
    const family = parseAdminArgs(["certs", "--help"], {});
    assert.equal(family.help, true);
    assert.match((family as { usage: string }).usage, /certs csr[\s\S]*certs import[\s\S]*certs chain/);
    assert.doesNotMatch((family as { usage: string }).usage, /keys list/);
  });

  it("-h is --help; a command's --help is its own usage, also next to a mistake, and slots --help is not every command's", () => {
    for (const argv of [
      ["keys", "generate", "-h"],
      ["keys", "generate", "--bogus", "--help"],
      ["keys", "generate", "--key-spec", "RSA-1", "-h"],
    ]) {
      const h = parseAdminArgs(argv, {});
      assert.equal(h.help, true, argv.join(" "));
      assert.match((h as { usage: string }).usage, /^usage: hsm-signer keys generate --key-id ID/);
    }
    for (const argv of [
      ["slots", "--help"],
      ["slots", "-h"],
    ]) {
      const usage = (parseAdminArgs(argv, {}) as { usage: string }).usage;
      assert.match(usage, /^usage: hsm-signer slots /);
      assert.doesNotMatch(usage, /keys list|certs csr/);
    }
    const keys = parseAdminArgs(["keys", "-h"], {});
    assert.match((keys as { usage: string }).usage, /keys list[\s\S]*keys notation-setup/);
    // A mistake in the family: the synopses only, not every option of every command.
    const e = usageError(["certs", "frobnicate"], ENV, 'unknown command "certs frobnicate"');
    assert.ok(e.usage.split("\n").length < 10, e.usage);
    assert.doesNotMatch(e.usage, /connection options/);
  });

  it("certs csr --help says in which order the subject's attributes are encoded", () => {
    const usage = (parseAdminArgs(["certs", "csr", "--help"], {}) as { usage: string }).usage;
    assert.match(usage, /any order/);
    assert.match(usage, /C, ST, L, O, OU, CN/);
  });

  it("ADMIN_USAGE lists every command and the connection options", () => {
    for (const c of [
      "slots",
      "keys list",
      "keys generate",
      "keys rotate",
      "keys disable",
      "keys enable",
      "keys destroy",
      "keys test-chain",
      "keys notation-setup",
      "certs csr",
      "certs import",
      "certs chain",
    ]) {
      assert.ok(ADMIN_USAGE.includes(`  ${c} `) || ADMIN_USAGE.includes(`  ${c}\n`), `usage should list ${c}`);
    }
    for (const o of ["--endpoint", "--ca FILE", "--cert FILE --key FILE", "--server-name", "--timeout", "--json", "HSM_SIGNER_ADMIN_ENDPOINT"]) assert.ok(ADMIN_USAGE.includes(o), o);
  });
});

describe("admin command line: rendering", () => {
  it("renderTable aligns columns two spaces apart and trims trailing blanks", () => {
    assert.equal(
      renderTable(
        ["A", "LONGER", "C"],
        [
          ["xxx", "y", ""],
          ["z", "", "w"],
        ],
      ),
      ["A    LONGER  C", "xxx  y", "z            w"].join("\n"),
    );
  });

  it("formatBytes says unknown for -1", () => {
    assert.equal(formatBytes(-1), "unknown");
    assert.equal(formatBytes(512), "512 B");
    assert.equal(formatBytes(1536), "1.5 KiB");
    assert.equal(formatBytes(32 * 1024 * 1024), "32 MiB");
  });

  it("formatSlots shows tokens, memory (unknown when the token does not say), the managed token, flags and mechanisms", () => {
    const slots: SlotInfo[] = [
      {
        slotId: 1829370531,
        description: "SoftHSM slot ID 0x6d0a1ba3",
        manufacturer: "SoftHSM project",
        tokenPresent: true,
        token: {
          label: "signing",
          serialNumber: "a1b2c3",
          manufacturer: "SoftHSM project",
          model: "SoftHSM v2",
          flags: ["RNG", "LOGIN_REQUIRED", "TOKEN_INITIALIZED"],
          mechanisms: ["RSA_PKCS_PSS", "ECDSA"],
          freePublicMemory: -1,
          totalPublicMemory: -1,
          freePrivateMemory: 2048,
          totalPrivateMemory: 4096,
          managed: true,
        },
      },
      { slotId: 2, description: "empty slot", manufacturer: "", tokenPresent: false, token: undefined },
    ];
    const text = formatSlots(slots);
    const [header, row1, row2] = text.split("\n");
    assert.match(header ?? "", /^SLOT\s+TOKEN\s+SERIAL\s+MANUFACTURER \/ MODEL\s+FREE PUBLIC\s+FREE PRIVATE\s+MANAGED$/);
    assert.match(row1 ?? "", /^1829370531\s+signing\s+a1b2c3\s+SoftHSM project \/ SoftHSM v2\s+unknown\s+2\.0 KiB of 4\.0 KiB\s+yes$/);
    assert.match(row2 ?? "", /^2\s+\(no token\)/);
    assert.equal(header?.indexOf("TOKEN"), row1?.indexOf("signing"));
    assert.match(text, /flags: +RNG LOGIN_REQUIRED TOKEN_INITIALIZED/);
    assert.match(text, /mechanisms: +RSA_PKCS_PSS ECDSA/);
    assert.equal(formatSlots([]), "no slots");
  });

  it("formatExpiry flags expiring and expired certificates visibly", () => {
    assert.equal(formatExpiry({ notAfter: "", daysUntilExpiry: 0, expiringSoon: false, expired: false }), "-");
    assert.equal(formatExpiry({ notAfter: "2027-03-01T00:00:00Z", daysUntilExpiry: 365, expiringSoon: false, expired: false }), "2027-03-01 (365d)");
    assert.equal(formatExpiry({ notAfter: "2026-12-05T00:00:00Z", daysUntilExpiry: 12, expiringSoon: true, expired: false }), "EXPIRES IN 12d (2026-12-05)");
    assert.equal(formatExpiry({ notAfter: "2026-11-20T00:00:00Z", daysUntilExpiry: -3, expiringSoon: false, expired: true }), "EXPIRED 3d ago (2026-11-20)");
  });

  it("formatInventory lists every version with its marker, flags and problems, and a summary", () => {
    const keys: InventoryKey[] = [
      {
        keyId: "release",
        state: "enabled",
        currentVersion: 2,
        disabledReason: "",
        versions: [
          version({ version: 1, certificateSubject: "CN=release,O=Ex,ST=WA,C=US", certificateIssuer: "CN=root", notAfter: "2026-11-20T00:00:00Z", daysUntilExpiry: -3, expired: true }),
          version({
            version: 2,
            current: true,
            keySpec: "EC-384",
            certificateSubject: "CN=release,O=Ex,ST=WA,C=US",
            certificateIssuer: "CN=root",
            notAfter: "2026-12-05T00:00:00Z",
            daysUntilExpiry: 12,
            expiringSoon: true,
          }),
          version({ version: 3, state: "disabled", disabledReason: "not yet certified", problem: "no certificate", role: "" }),
        ],
      },
      { keyId: "old", state: "disabled", currentVersion: 0, disabledReason: "retired", versions: [version({ version: 1, state: "destroyed", role: "" })] },
    ];
    const text = formatInventory(keys, 30);
    const lines = text.split("\n");
    assert.match(lines[0] ?? "", /^KEY\s+VER\s+STATE\s+CUR\s+SPEC\s+ROLE\s+SUBJECT\s+ISSUER\s+EXPIRES$/);
    assert.match(lines[1] ?? "", /^release\s+1\s+enabled\s+EC-256\s+signing\s+CN=release,O=Ex,ST=WA,C=US\s+CN=root\s+EXPIRED 3d ago/);
    assert.match(lines[2] ?? "", /^release\s+2\s+enabled\s+\*\s+EC-384\s+signing\s+.*EXPIRES IN 12d \(2026-12-05\)$/);
    assert.match(lines[3] ?? "", /^release\s+3\s+disabled\s+EC-256\s+-\s+-\s+-\s+-$/);
    assert.match(lines[4] ?? "", /^old\s+1\s+destroyed/);
    assert.match(text, /^problems:$/m);
    assert.match(text, /^ {2}release@v3: no certificate$/m);
    assert.match(text, /^ {2}release@v3: disabled: not yet certified$/m);
    assert.match(text, /^ {2}old: key disabled: retired$/m);
    assert.match(text, /2 key\(s\), 4 version\(s\); 1 expiring within 30 days; 1 expired; 1 with problems$/);
    assert.equal(formatInventory([]), "no keys");
  });

  it("a disabled key shows its enabled versions as blocked", () => {
    const text = formatInventory([{ keyId: "k", state: "disabled", currentVersion: 0, disabledReason: "", versions: [version({ version: 1 })] }]);
    assert.match(text, /^k\s+1\s+enabled \(key disabled\)/m);
    assert.match(text, /^ {2}k: no version can sign$/m);
  });

  it("a CA key with a good chain is no problem: no note, not counted", () => {
    const ca = version({ version: 1, role: "ca", certificateSubject: "C=US, ST=WA, O=Demo, CN=demo Root CA", certificateIssuer: "C=US, ST=WA, O=Demo, CN=demo Root CA" });
    const text = formatInventory([
      { keyId: "demo", state: "enabled", currentVersion: 1, disabledReason: "", versions: [version({ version: 1, current: true })] },
      { keyId: "demo-root-ca", state: "enabled", currentVersion: 0, disabledReason: "", versions: [ca] },
    ]);
    assert.doesNotMatch(text, /problems/, text);
    assert.match(text, /^2 key\(s\), 2 version\(s\)$/m);
    // A CA whose chain is broken still is.
    const broken = formatInventory([
      { keyId: "ca", state: "enabled", currentVersion: 0, disabledReason: "", versions: [{ ...ca, problem: 'the certificate chain of CA key "ca" does not reach a self-signed root on the token' }] },
    ]);
    assert.match(broken, /^ {2}ca@v1: the certificate chain of CA key/m);
    assert.match(broken, /1 with problems$/);
  });

  it("--json output carries certificate bytes as PEM and other bytes as base64", () => {
    const der = Buffer.from([0x30, 0x03, 0x02, 0x01, 0x01]);
    const parsed = JSON.parse(formatJson({ keyId: "k", certificateChain: [der], other: Buffer.from("hi"), nested: { n: 1, list: [{ certificates: [der] }] } })) as Record<string, unknown>;
    assert.deepEqual(parsed, {
      keyId: "k",
      certificateChain: ["-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n"],
      other: "aGk=",
      nested: { n: 1, list: [{ certificates: ["-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n"] }] },
    });
  });
});

describe("admin command line: notation setup helpers", () => {
  it("finds notation's config directory as notation does (§1.1)", () => {
    assert.equal(defaultNotationDir({ HOME: "/home/u" }, "linux"), "/home/u/.config/notation");
    assert.equal(defaultNotationDir({ HOME: "/home/u", XDG_CONFIG_HOME: "/xdg" }, "linux"), "/xdg/notation");
    assert.equal(defaultNotationDir({ HOME: "/home/u", XDG_CONFIG_HOME: "relative" }, "linux"), ".notation");
    assert.equal(defaultNotationDir({}, "linux"), ".notation");
    assert.equal(defaultNotationDir({ HOME: "/home/u", NOTATION_CONFIG: "/etc/notation" }, "linux"), "/etc/notation");
    assert.equal(defaultNotationDir({ HOME: "/Users/u" }, "darwin"), "/Users/u/Library/Application Support/notation");
    assert.equal(defaultNotationDir({ APPDATA: "C:\\Users\\u\\AppData\\Roaming" }, "win32"), "C:\\Users\\u\\AppData\\Roaming\\notation");
  });

  it("puts the root in truststore/x509/ca/<store>/<key-id>-root.crt, with the key id made safe as a file name", () => {
    assert.equal(trustStoreRootPath("/n", "hsm", "release"), "/n/truststore/x509/ca/hsm/release-root.crt");
    assert.equal(trustStoreRootPath("/n", "hsm", "team/app key"), "/n/truststore/x509/ca/hsm/team_app_key-root.crt");
  });

  it("parses DNs with escapes and finds what notation would refuse in an x509.subject identity (§5.4, §6.2)", () => {
    assert.deepEqual(parseDn("CN=a\\, b,O=Ex+OU=x,ST=WA,C=US"), [
      [{ type: "CN", value: "a, b" }],
      [
        { type: "O", value: "Ex" },
        { type: "OU", value: "x" },
      ],
      [{ type: "ST", value: "WA" }],
      [{ type: "C", value: "US" }],
    ]);
    assert.deepEqual(subjectIdentityProblems("CN=release,O=Example Corp,ST=WA,C=US"), []);
    assert.deepEqual(subjectIdentityProblems("CN=a,O=b,S=c,C=d"), []);
    assert.match(subjectIdentityProblems("CN=release,O=Example").join("; "), /lacks C, ST/);
    assert.match(subjectIdentityProblems("CN=a,OU=x,OU=y,O=b,ST=c,C=d").join("; "), /OU appears more than once/);
    assert.match(subjectIdentityProblems("CN=a+OU=x,O=b,ST=c,C=d").join("; "), /multi-valued/);
    assert.match(subjectIdentityProblems("1.2.840.113549.1.9.1=#160161,CN=a,O=b,ST=c,C=d").join("; "), /non-standard/);
  });

  it("builds a strict trust policy for the store and the leaf subject", () => {
    assert.deepEqual(trustPolicyFor("release", "hsm", "CN=release,O=Ex,ST=WA,C=US"), {
      version: "1.0",
      trustPolicies: [
        {
          name: "hsm-signer-release",
          registryScopes: ["*"],
          signatureVerification: { level: "strict" },
          trustStores: ["ca:hsm"],
          trustedIdentities: ["x509.subject: CN=release,O=Ex,ST=WA,C=US"],
        },
      ],
    });
  });

  it("prints notation key add with our pluginConfig keys, shell-quoted", () => {
    assert.equal(shellQuote("simple-1.2:3/x"), "simple-1.2:3/x");
    assert.equal(shellQuote("it's"), "'it'\\''s'");
    assert.equal(
      notationKeyAddCommand({ keyName: "my key", keyId: "release", endpoint: "s:8443", caFile: "/etc/ca.pem", keySpec: "EC-256" }),
      "notation key add --plugin hsm-signer --id release \\\n    --plugin-config endpoint=s:8443 \\\n    --plugin-config ca_file=/etc/ca.pem \\\n    --plugin-config key_spec=EC-256 \\\n    'my key'",
    );
  });
});

describe("admin command line: messages", () => {
  it("import says how many certificates were written and how many were already there", () => {
    assert.equal(writtenSummary(3, 3), "all 3 written to the token");
    assert.equal(writtenSummary(1, 3), "1 written, 2 already on the token");
    assert.equal(writtenSummary(0, 2), "all 2 already on the token, nothing written");
  });

  it("an untrusted KeyAdmin certificate names --ca and HSM_SIGNER_ADMIN_CA", () => {
    // As the shared channel reports them (client/grpc-http2-client.ts): OpenSSL's words against the system roots, its own check against --ca.
    const context = (caGiven: boolean) => ({ endpoint: "a:1", timeoutMs: 30_000, caGiven });
    for (const openssl of ["self-signed certificate in certificate chain", "unable to verify the first certificate", "unable to get local issuer certificate"]) {
      const noCa = describeCallFailure(new GrpcCallError(Status.UNAVAILABLE, `TLS connection to a:1 failed: ${openssl}`, undefined, true), context(false));
      assert.match(noCa, new RegExp(`^cannot reach KeyAdmin at a:1: .*${openssl}.*system roots; give the CA that issued it with --ca FILE or HSM_SIGNER_ADMIN_CA\\)$`));
    }
    const notIssued = new GrpcCallError(Status.UNAVAILABLE, 'TLS connection to a:1 failed: the server certificate is not issued by a CA in ca_file (stopped at "CN=Other CA")', undefined, true);
    assert.match(describeCallFailure(notIssued, context(true)), /the CA bundle given \(--ca FILE or HSM_SIGNER_ADMIN_CA\) does not hold the CA/);
    const refused = describeCallFailure(new GrpcCallError(Status.UNAVAILABLE, "cannot reach a:1: connect ECONNREFUSED 127.0.0.1:1"), context(false));
    assert.equal(refused, "cannot reach KeyAdmin at a:1: connect ECONNREFUSED 127.0.0.1:1");
  });

  it("a failure's words: the service's message as-is when it sends a catalog code, the gRPC status otherwise", () => {
    const context = { endpoint: "a:1", timeoutMs: 2_500, caGiven: true };
    const exists = new GrpcCallError(Status.ALREADY_EXISTS, 'key "release" already exists on the token', undefined, true, "ALREADY_EXISTS");
    assert.equal(describeCallFailure(exists, context), 'key "release" already exists on the token');
    assert.equal(describeCallFailure(new GrpcCallError(Status.PERMISSION_DENIED, "no rule allows it"), context), "no rule allows it");
    const hsmDown = new GrpcCallError(Status.UNAVAILABLE, "the HSM is unavailable", undefined, false, "HSM_UNAVAILABLE");
    assert.equal(describeCallFailure(hsmDown, context), "KeyAdmin at a:1 is unavailable: the HSM is unavailable");
    for (const late of [
      new GrpcCallError(Status.DEADLINE_EXCEEDED, "no answer within 2500 ms"),
      new GrpcCallError(Status.DEADLINE_EXCEEDED, "the deadline passed", undefined, true, "DEADLINE_EXCEEDED"),
    ]) {
      assert.match(describeCallFailure(late, context), /^KeyAdmin at a:1 did not answer within 2\.5s \(--timeout, the budget of the whole command\): /);
    }
  });

  it("a --timeout that ends no call still ends the command (exit 1)", async () => {
    let err = "";
    const never: KeyAdminApi = Object.assign(fakeClient([], {}), { listSlots: () => new Promise<never>(() => undefined) });
    const started = Date.now();
    const files = mkdtempSync(join(tmpdir(), "hsm-signer-admin-timeout-"));
    writeFileSync(join(files, "c.pem"), "cert");
    writeFileSync(join(files, "k.pem"), "key");
    const env = { HSM_SIGNER_ADMIN_CERT: join(files, "c.pem"), HSM_SIGNER_ADMIN_KEY: join(files, "k.pem") };
    const code = await runAdmin(["slots", "--timeout", "0.2"], { env, out: () => undefined, err: (t) => (err += t), connect: () => never }).finally(() =>
      rmSync(files, { recursive: true, force: true }),
    );
    assert.equal(code, 1);
    assert.match(err, /did not finish within 0\.2s \(--timeout\)/);
    assert.ok(Date.now() - started < 20_000);
  });
});

describe("CSR subjects in canonical order", () => {
  it("puts C, ST, L, O, OU, CN in that order whatever the order typed, keeping escapes and other attributes", () => {
    assert.equal(inCanonicalOrder("CN=release, O=Example Corp, ST=WA, C=US"), "C=US, ST=WA, O=Example Corp, CN=release");
    assert.equal(inCanonicalOrder("C=US,ST=WA,O=Example,CN=release"), "C=US, ST=WA, O=Example, CN=release");
    assert.equal(inCanonicalOrder("cn=a; ou=Build; o=Acme\\, Inc; l=Seattle; st=WA; c=US"), "c=US, st=WA, l=Seattle, o=Acme\\, Inc, ou=Build, cn=a");
    assert.equal(inCanonicalOrder('CN="x, y", O=Ex, ST=WA, C=US, emailAddress=a@b'), 'C=US, ST=WA, O=Ex, CN="x, y", emailAddress=a@b');
  });
});

/** A stand-in KeyAdmin: each method answers from `answers` or throws what `fail` says. */
function fakeClient(calls: { method: string; request: unknown }[], answers: Partial<Record<keyof KeyAdminApi, unknown>>, fail?: GrpcCallError): KeyAdminApi {
  const handler = (method: string) => async (request: unknown) => {
    calls.push({ method, request });
    if (fail) throw fail;
    const a = answers[method as keyof KeyAdminApi];
    if (a === undefined) throw new Error(`unexpected call ${method}`);
    return a;
  };
  const methods = ["listSlots", "generateKey", "rotateKey", "createCsr", "importCertificateChain", "createTestChain", "setKeyState", "destroyKeyVersion", "getInventory", "getCertificateChain"];
  return Object.assign(Object.fromEntries(methods.map((m) => [m, handler(m)])), { endpoint: "fake:1", close: () => calls.push({ method: "close", request: undefined }) }) as unknown as KeyAdminApi;
}

describe("admin command line: commands against a stand-in KeyAdmin (runAdmin)", () => {
  let dir: string;
  let rootPem: string;
  let rootDer: Buffer;
  let otherPem: string;

  before(() => {
    dir = mkdtempSync(join(tmpdir(), "hsm-signer-admin-cli-"));
    const cert = (name: string): string => {
      execFileSync(
        "openssl",
        [
          "req",
          "-x509",
          "-newkey",
          "ec",
          "-pkeyopt",
          "ec_paramgen_curve:P-256",
          "-nodes",
          "-keyout",
          join(dir, `${name}-key.pem`),
          "-out",
          join(dir, `${name}.pem`),
          "-days",
          "30",
          "-subj",
          `/CN=${name}`,
        ],
        { stdio: "ignore" },
      );
      return readFileSync(join(dir, `${name}.pem`), "utf8");
    };
    rootPem = cert("root");
    otherPem = cert("other");
    rootDer = Buffer.from(rootPem.replace(/-----[^-]+-----|\s/g, ""), "base64");
    writeFileSync(join(dir, "client.pem"), "cert");
    writeFileSync(join(dir, "client-key.pem"), "key");
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  async function run(
    argv: string[],
    client: KeyAdminApi,
    env: NodeJS.ProcessEnv = {},
    extra: Pick<AdminIo, "cwd" | "pluginPackageFile"> = {},
  ): Promise<{ code: number; out: string; err: string; options: KeyAdminClientOptions | undefined }> {
    let out = "";
    let err = "";
    let options: KeyAdminClientOptions | undefined;
    const io: AdminIo = {
      env: { HSM_SIGNER_ADMIN_CERT: join(dir, "client.pem"), HSM_SIGNER_ADMIN_KEY: join(dir, "client-key.pem"), ...env },
      out: (t) => (out += t.endsWith("\n") ? t : `${t}\n`),
      err: (t) => (err += t.endsWith("\n") ? t : `${t}\n`),
      connect: (o) => {
        options = o;
        return client;
      },
      ...extra,
    };
    const code = await runAdmin(argv, io);
    return { code, out, err, options };
  }

  const chainAnswer = (leafSubject = "CN=release,O=Ex,ST=WA,C=US") => ({ keyId: "release", keyVersion: 2, certificateChain: [Buffer.from("leaf"), rootDer], leafSubject });
  const inventoryAnswer = { keys: [{ keyId: "release", state: "enabled", currentVersion: 2, disabledReason: "", versions: [version({ version: 2, keySpec: "EC-384", current: true })] }] };

  it("keys notation-setup writes the root once, prints key add, cert add and a trust policy, and refuses another root", async () => {
    const calls: { method: string; request: unknown }[] = [];
    const client = fakeClient(calls, { getCertificateChain: chainAnswer(), getInventory: inventoryAnswer });
    const notationDir = join(dir, "notation");
    const argv = ["keys", "notation-setup", "--key-id", "release", "--store", "hsm", "--notation-dir", notationDir, "--endpoint", "signer.example.com:8443", "--ca-file", "/etc/ca.pem"];
    const r = await run(argv, client);
    assert.equal(r.code, 0, r.err);
    const rootFile = join(notationDir, "truststore/x509/ca/hsm/release-root.crt");
    assert.equal(readFileSync(rootFile, "utf8"), rootPem.replace(/\r/g, ""));
    // Owner-only as notation's own store, and no temporary file left beside the root.
    for (const d of [notationDir, join(notationDir, "truststore"), join(notationDir, "truststore/x509/ca/hsm")]) assert.equal(statSync(d).mode & 0o777, 0o700, d);
    assert.equal(statSync(rootFile).mode & 0o777, 0o600);
    assert.deepEqual(readdirSync(join(notationDir, "truststore/x509/ca/hsm")), ["release-root.crt"]);
    assert.deepEqual(
      calls.map((c) => c.method),
      ["getCertificateChain", "getInventory", "close"],
    );
    assert.deepEqual(calls[0]?.request, { keyId: "release", keyVersion: 0 });
    assert.match(r.out, new RegExp(`written to ${rootFile}`));
    assert.match(r.out, /notation plugin install --file \S*notation-hsm-signer_[^ ]+\.tar\.gz/);
    assert.match(
      r.out,
      /notation key add --plugin hsm-signer --id release \\\n {4}--plugin-config endpoint=signer\.example\.com:8443 \\\n {4}--plugin-config ca_file=\/etc\/ca\.pem \\\n {4}--plugin-config key_spec=EC-384 \\\n {4}release/,
    );
    assert.ok(r.out.includes("notation cert add --type ca --store hsm release-root.crt"), r.out);
    const policy = JSON.parse(r.out.slice(r.out.indexOf("{"))) as { trustPolicies: { trustedIdentities: string[]; trustStores: string[] }[] };
    assert.deepEqual(policy.trustPolicies[0]?.trustedIdentities, ["x509.subject: CN=release,O=Ex,ST=WA,C=US"]);
    assert.deepEqual(policy.trustPolicies[0]?.trustStores, ["ca:hsm"]);

    const again = await run(argv, fakeClient([], { getCertificateChain: chainAnswer(), getInventory: inventoryAnswer }));
    assert.equal(again.code, 0, again.err);
    assert.match(again.out, /already in .*\(unchanged\)/);

    writeFileSync(rootFile, otherPem);
    const clash = await run(argv, fakeClient([], { getCertificateChain: chainAnswer(), getInventory: inventoryAnswer }));
    assert.equal(clash.code, 1);
    assert.match(clash.err, /^hsm-signer: refusing to overwrite .*release-root\.crt: it holds another certificate \(CN=other/);
    assert.equal(readFileSync(rootFile, "utf8"), otherPem);
  });

  it("keys notation-setup leaves a dangling symbolic link at the root's name alone and says so (exit 1)", async () => {
    const notationDir = join(dir, "notation-dangling");
    const storeDir = join(notationDir, "truststore/x509/ca/hsm");
    mkdirSync(storeDir, { recursive: true });
    const rootFile = join(storeDir, "release-root.crt");
    symlinkSync(join(dir, "nowhere.crt"), rootFile);
    const argv = ["keys", "notation-setup", "--key-id", "release", "--store", "hsm", "--notation-dir", notationDir, "--endpoint", "signer.example.com:8443"];
    const r = await run(argv, fakeClient([], { getCertificateChain: chainAnswer(), getInventory: inventoryAnswer }));
    assert.equal(r.code, 1);
    assert.equal(r.err, `hsm-signer: cannot read trust store file ${rootFile}: ENOENT\n`);
    assert.deepEqual(readdirSync(storeDir), ["release-root.crt"]);
  });

  it("keys notation-setup prints the plugin package as a path that works from the current directory, with its sha256, or how to build it", async () => {
    const project = join(dir, "project");
    mkdirSync(join(project, "dist"), { recursive: true });
    const pkg = join(project, "dist", "notation-hsm-signer_0.1.0.tar.gz");
    writeFileSync(pkg, "package bytes");
    const sha = createHash("sha256").update("package bytes").digest("hex");
    const argv = (n: string): string[] => ["keys", "notation-setup", "--key-id", "release", "--store", "hsm", "--notation-dir", join(dir, n), "--endpoint", "s:1"];
    const answers = { getCertificateChain: chainAnswer(), getInventory: inventoryAnswer };

    const inside = await run(argv("n1"), fakeClient([], answers), {}, { cwd: project, pluginPackageFile: pkg });
    assert.equal(inside.code, 0, inside.err);
    assert.match(inside.out, new RegExp(`^ {2}notation plugin install --file dist/notation-hsm-signer_0\\.1\\.0\\.tar\\.gz --sha256sum ${sha}$`, "m"));

    const elsewhere = await run(argv("n2"), fakeClient([], answers), {}, { cwd: join(dir, "n1"), pluginPackageFile: pkg });
    assert.ok(elsewhere.out.includes(`notation plugin install --file ${pkg} --sha256sum ${sha}\n`), elsewhere.out);

    rmSync(pkg);
    const missing = await run(argv("n3"), fakeClient([], answers), {}, { cwd: project, pluginPackageFile: pkg });
    assert.equal(missing.code, 0, missing.err);
    assert.match(missing.out, /is not built yet; build it with: \(cd .* && npm run package-plugin\)/);
    assert.ok(missing.out.includes(`notation plugin install --file dist/notation-hsm-signer_0.1.0.tar.gz --sha256sum "$(cut -d' ' -f1 dist/notation-hsm-signer_0.1.0.tar.gz.sha256)"`), missing.out);
    const json = JSON.parse((await run([...argv("n4"), "--json"], fakeClient([], answers), {}, { cwd: project, pluginPackageFile: pkg })).out) as {
      pluginPackage: string;
      pluginPackageBuilt: boolean;
    };
    assert.deepEqual([json.pluginPackage, json.pluginPackageBuilt], [pkg, false]);
  });

  it("keys notation-setup refuses a leaf subject notation cannot use, before writing anything", async () => {
    const notationDir = join(dir, "notation-bad");
    const r = await run(
      ["keys", "notation-setup", "--key-id", "release", "--store", "hsm", "--notation-dir", notationDir, "--endpoint", "s:1"],
      fakeClient([], { getCertificateChain: chainAnswer("CN=release") }),
    );
    assert.equal(r.code, 1);
    assert.match(r.err, /leaf subject "CN=release" .* lacks C, ST, O/);
    assert.throws(() => readFileSync(join(notationDir, "truststore/x509/ca/hsm/release-root.crt")));
  });

  it("prints the server's message as-is (one chain problem per line) and exits 1", async () => {
    const message = "certificate chain rejected:\ncertificate 1 (CN=leaf): keyUsage is not critical\ncertificate 2 (CN=ca): no basicConstraints";
    const r = await run(["certs", "import", "--key-id", "release", join(dir, "root.pem")], fakeClient([], {}, new GrpcCallError(Status.INVALID_ARGUMENT, message)));
    assert.equal(r.code, 1);
    assert.equal(r.err, `hsm-signer: ${message}\n`);
  });

  it("certs import sends each file's bytes as-is, one entry per file", async () => {
    const calls: { method: string; request: unknown }[] = [];
    const r = await run(
      ["certs", "import", "--key-id", "release", "--version", "2", join(dir, "root.pem"), join(dir, "other.pem")],
      fakeClient(calls, { importCertificateChain: { keyId: "release", keyVersion: 2, certificateChain: [rootDer], stored: 1 } }),
    );
    assert.equal(r.code, 0, r.err);
    const req = calls[0]?.request as { certificates: Buffer[]; keyVersion: number; strictOrder: boolean };
    assert.deepEqual(req.certificates, [Buffer.from(rootPem), Buffer.from(otherPem)]);
    assert.equal(req.keyVersion, 2);
    assert.equal(req.strictOrder, false);
    assert.match(r.out, /stored a chain of 1 certificates for release@v2 \(written to the token\)/);
    assert.match(r.out, /1\. leaf: CN=root/);
  });

  it("certs import refuses a private key given as a certificate file (PEM or DER), exits 1 and sends nothing", async () => {
    const der = join(dir, "root-key.der");
    execFileSync("openssl", ["pkey", "-in", join(dir, "root-key.pem"), "-outform", "DER", "-out", der], { stdio: "ignore" });
    const sec1 = join(dir, "root-key.sec1.der");
    execFileSync("openssl", ["ec", "-in", join(dir, "root-key.pem"), "-outform", "DER", "-out", sec1], { stdio: "ignore" });
    for (const keyFile of [join(dir, "root-key.pem"), der, sec1]) {
      const calls: { method: string; request: unknown }[] = [];
      const r = await run(["certs", "import", "--key-id", "release", join(dir, "root.pem"), keyFile], fakeClient(calls, { importCertificateChain: {} }));
      assert.equal(r.code, 1, keyFile);
      assert.equal(r.err, `hsm-signer: refusing to send ${keyFile}: it holds a private key, not a certificate; nothing was sent\n`);
      assert.equal(r.out, "");
      assert.deepEqual(
        calls.map((c) => c.method),
        ["close"],
      );
    }
  });

  it("--out and --root-out write owner-only files whole, and never over the command's --key, --cert or --ca file", async () => {
    const outDir = join(dir, "out");
    mkdirSync(outDir);
    const csr = join(outDir, "release.csr");
    const csrAnswer = { keyId: "release", keyVersion: 2, csrPem: "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n" };
    const ok = await run(["certs", "csr", "--key-id", "release", "--subject", "CN=a, O=b, ST=c, C=d", "--out", csr], fakeClient([], { createCsr: csrAnswer }));
    assert.equal(ok.code, 0, ok.err);
    assert.equal(readFileSync(csr, "utf8"), csrAnswer.csrPem);
    assert.equal(statSync(csr).mode & 0o777, 0o600);
    const root = join(outDir, "root.pem");
    const chain = await run(
      ["keys", "test-chain", "--key-id", "demo", "--key-spec", "EC-256", "--root-out", root],
      fakeClient([], { createTestChain: { keyVersion: 1, certificateChain: [rootDer], created: [] } }),
    );
    assert.equal(chain.code, 0, chain.err);
    assert.equal(statSync(root).mode & 0o777, 0o600);
    assert.deepEqual(readdirSync(outDir).sort(), ["release.csr", "root.pem"]);

    const key = join(dir, "client-key.pem");
    const clash = await run(["certs", "chain", "--key-id", "release", "--out", key], fakeClient([], { getCertificateChain: chainAnswer() }));
    assert.equal(clash.code, 1);
    assert.equal(clash.err, `hsm-signer: refusing to write --out ${key}: it is the --key file of this command\n`);
    assert.equal(readFileSync(key, "utf8"), "key");
    const ca = join(dir, "other.pem");
    const caClash = await run(["certs", "chain", "--key-id", "release", "--ca", ca, "--out", ca], fakeClient([], { getCertificateChain: chainAnswer() }));
    assert.equal(caClash.code, 1);
    assert.match(caClash.err, /it is the --ca file of this command/);
    assert.equal(readFileSync(ca, "utf8"), otherPem);

    const notFile = await run(["certs", "chain", "--key-id", "release", "--out", outDir], fakeClient([], { getCertificateChain: chainAnswer() }));
    assert.equal(notFile.code, 1);
    assert.match(notFile.err, /refusing to write --out .*out: it exists and is not a regular file/);
    assert.deepEqual(readdirSync(outDir).sort(), ["release.csr", "root.pem"]);
  });

  it("a missing file fails with its name before any call; usage errors exit 2 with the usage", async () => {
    const calls: { method: string; request: unknown }[] = [];
    const missing = await run(["certs", "import", "--key-id", "k", join(dir, "nope.pem")], fakeClient(calls, {}));
    assert.equal(missing.code, 1);
    assert.match(missing.err, /cannot read certificate file .*nope\.pem: ENOENT/);
    assert.deepEqual(
      calls.map((c) => c.method),
      ["close"],
    );
    const usage = await run(["keys", "generate", "--key-id", "k"], fakeClient([], {}));
    assert.equal(usage.code, 2);
    assert.match(usage.err, /^hsm-signer: --key-spec is required\n\nusage: hsm-signer keys generate/);
    const noCert = await run(["slots", "--cert", join(dir, "absent.pem")], fakeClient([], {}));
    assert.equal(noCert.code, 1);
    assert.match(noCert.err, /cannot read --cert .*absent\.pem: ENOENT/);
  });

  it("passes connection settings to the client and --json prints the response", async () => {
    const r = await run(["slots", "--json", "--endpoint", "adm:9", "--timeout", "5", "--server-name", "admin"], fakeClient([], { listSlots: { slots: [] } }));
    assert.equal(r.code, 0, r.err);
    assert.deepEqual(JSON.parse(r.out), { slots: [] });
    assert.equal(r.options?.endpoint, "adm:9");
    assert.equal(r.options?.timeoutMs, 5000);
    assert.equal(r.options?.serverName, "admin");
    assert.equal(r.options?.cert.toString(), "cert");
    assert.equal(r.options?.ca, undefined);
  });

  it("certs chain prints PEM; keys list passes the warning window", async () => {
    const chain = await run(["certs", "chain", "--key-id", "release"], fakeClient([], { getCertificateChain: chainAnswer() }));
    assert.equal(chain.code, 0, chain.err);
    assert.equal((chain.out.match(/-----BEGIN CERTIFICATE-----/g) ?? []).length, 2);
    const calls: { method: string; request: unknown }[] = [];
    const list = await run(["keys", "list", "--warn-days", "60"], fakeClient(calls, { getInventory: inventoryAnswer }));
    assert.equal(list.code, 0, list.err);
    assert.deepEqual(calls[0]?.request, { keyId: "", expiryWarningDays: 60 });
    assert.match(list.out, /^release\s+2\s+enabled\s+\*\s+EC-384/m);
  });
});
