import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { checkConfig } from "../../src/bin/config-check.js";
import { loadConfig, readPin } from "../../src/bin/config.js";
import { PROJECT_ROOT, softHsmModule } from "../helpers/softhsm.js";
import { OpensslCa } from "../helpers/openssl-ca.js";
import { createTlsMaterial, type TlsMaterial } from "../helpers/tls.js";

describe("configuration: file, environment overrides, every problem at once", () => {
  let dir: string;
  const write = (yaml: string): string => {
    const f = join(dir, "config.yaml");
    writeFileSync(f, yaml);
    return f;
  };
  const minimal =
    "listen: 127.0.0.1:8443\ntls: { insecure: true }\nhsm: { module: /usr/lib/softhsm/libsofthsm2.so, tokenLabel: t, pinFile: pin }\npolicy: { file: policy.yaml }\naudit: { dir: audit }\n";

  before(() => {
    dir = mkdtempSync(join(tmpdir(), "hsm-signer-config-"));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it("defaults: 10 s shutdown grace, 2 s key refresh, 15 s sign stall, no admin or health listeners; relative paths from the file", () => {
    const c = loadConfig(write(minimal), {});
    assert.equal(c.shutdown.graceMs, 10_000);
    assert.equal(c.hsm.keyRefreshMs, 2_000);
    assert.equal(c.hsm.signStallMs, 15_000);
    assert.equal(c.admin.listen, undefined);
    assert.equal(c.metrics.grpcHealthListen, undefined);
    assert.equal(c.audit.dir, join(dir, "audit"));
    assert.equal(c.audit.commitDelayMs, 1);
    assert.equal(c.hsm.answerHoldMs, 2);
  });

  it("audit.commitDelayMs: 0 turns the group-commit wait off; beyond 100 ms is refused", () => {
    assert.equal(loadConfig(write(minimal.replace("audit: { dir: audit }", "audit: { dir: audit, commitDelayMs: 0 }")), {}).audit.commitDelayMs, 0);
    assert.throws(() => loadConfig(write(minimal.replace("audit: { dir: audit }", "audit: { dir: audit, commitDelayMs: 250 }")), {}), /audit\.commitDelayMs: must be an integer from 0 to 100/);
  });

  it("hsm.answerHoldMs: 0 turns the signing threads' answer hold off; beyond 100 ms is refused", () => {
    const hsm = (extra: string): string => minimal.replace("pinFile: pin }", `pinFile: pin${extra} }`);
    assert.equal(loadConfig(write(hsm(", answerHoldMs: 0")), {}).hsm.answerHoldMs, 0);
    assert.throws(() => loadConfig(write(hsm(", answerHoldMs: 101")), {}), /hsm\.answerHoldMs: must be an integer from 0 to 100/);
  });

  it("environment overrides win over the file", () => {
    const c = loadConfig(write(`${minimal}shutdown: { graceSeconds: 30 }\n`), {
      HSM_SIGNER_SHUTDOWN_GRACE_SECONDS: "5",
      HSM_SIGNER_GRPC_HEALTH_LISTEN: "0.0.0.0:9465",
      HSM_SIGNER_METRICS_LISTEN: "0.0.0.0:9464",
      HSM_SIGNER_LISTEN: "127.0.0.2:9000",
    });
    assert.equal(c.shutdown.graceMs, 5_000);
    assert.equal(c.metrics.grpcHealthListen, "0.0.0.0:9465");
    assert.equal(c.metrics.listen, "0.0.0.0:9464");
    assert.equal(c.listen, "127.0.0.2:9000");
  });

  it("KeyAdmin needs TLS material and a client CA; a bad grace and a bad health listener are reported with it", () => {
    const f = write(
      `${minimal.replace("pinFile: pin }", "pinFile: pin, signStallSeconds: 0 }")}shutdown: { graceSeconds: -1 }\nmetrics: { grpcHealthListen: nowhere }\nadmin: { listen: 127.0.0.1:9443 }\n`,
    );
    assert.throws(
      () => loadConfig(f, {}),
      (e: Error) => {
        for (const want of ["hsm.signStallSeconds", "shutdown.graceSeconds", "metrics.grpcHealthListen", "admin.certFile and admin.keyFile", "admin.clientCaFile"])
          assert.ok(e.message.includes(want), `missing ${want} in: ${e.message}`);
        return true;
      },
    );
  });

  it("two listeners on one port (same host, or either on every interface) are refused, which serve's second bind would be", () => {
    const clash = (listeners: string): string => {
      try {
        loadConfig(write(`${minimal.replace("listen: 127.0.0.1:8443\n", "")}${listeners}`), {});
        return "";
      } catch (e) {
        return (e as Error).message;
      }
    };
    assert.match(
      clash("listen: 127.0.0.1:8443\nmetrics: { listen: 127.0.0.1:9464, grpcHealthListen: 127.0.0.1:9464 }\n"),
      /metrics\.grpcHealthListen: 127\.0\.0\.1:9464 takes the port of metrics\.listen/,
    );
    assert.match(clash("listen: 0.0.0.0:8443\nadmin: { listen: 127.0.0.1:8443 }\n"), /admin\.listen: 127\.0\.0\.1:8443 takes the port of listen \(0\.0\.0\.0:8443\)/);
    // The default listen (127.0.0.1:8443) counts too.
    assert.match(clash('metrics: { listen: "[::]:8443" }\n'), /metrics\.listen: \[::\]:8443 takes the port of listen \(127\.0\.0\.1:8443\)/);
    // Other hosts, other ports, or port 0 (a free one each time) are fine.
    assert.equal(clash("listen: 127.0.0.1:8443\nmetrics: { listen: 127.0.0.2:8443, grpcHealthListen: 127.0.0.1:0 }\nadmin: { listen: 127.0.0.1:0 }\n").includes("takes the port"), false);
  });
});

describe("the HSM PIN as serve reads it", () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), "hsm-signer-pin-"));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));
  const hsm = (pinFile?: string) => ({ pinFile, pinEnv: "TEST_PIN" }) as Parameters<typeof readPin>[0];
  const refused = (pinFile: string, want: RegExp): void =>
    assert.throws(
      () => readPin(hsm(pinFile), { TEST_PIN: "from-env" }),
      (e: Error & { code?: string }) => e.code === "CONFIG_INVALID" && want.test(e.message) && !e.message.includes("from-env"),
    );

  it("hsm.pinFile: one trailing newline dropped; it wins over the environment variable", () => {
    const f = join(dir, "pin");
    writeFileSync(f, "12 34\n\n", { mode: 0o600 });
    assert.equal(readPin(hsm(f), { TEST_PIN: "from-env" }), "12 34\n");
  });

  it("a FIFO (no writer), a directory, an empty, a missing or a too large PIN file is refused at once with the setting named", () => {
    const fifo = join(dir, "fifo");
    execFileSync("mkfifo", [fifo]);
    refused(fifo, /^hsm\.pinFile: .*fifo is not a regular file \(a FIFO\)$/);
    refused(dir, /not a regular file \(a directory\)/);
    writeFileSync(join(dir, "empty"), "\n");
    refused(join(dir, "empty"), /^hsm\.pinFile: .*empty is empty$/);
    refused(join(dir, "missing"), /^hsm\.pinFile: cannot read .*missing \(ENOENT\)$/);
    writeFileSync(join(dir, "large"), Buffer.alloc(1024 * 1024 + 1, 0x31));
    refused(join(dir, "large"), /larger than the limit/);
  });

  it("without hsm.pinFile: the environment variable hsm.pinEnv names, and a clear error when it is unset", () => {
    assert.equal(readPin(hsm(), { TEST_PIN: "from-env" }), "from-env");
    assert.throws(() => readPin(hsm(), {}), /no HSM PIN: set hsm\.pinFile, or the environment variable TEST_PIN/);
  });

  it("a PIN written in hsm.pinEnv (instead of its variable's name) is not echoed when serve starts", () => {
    assert.throws(
      () => readPin({ pinFile: undefined, pinEnv: "9876-s3cret" }, {}),
      (e: Error & { code?: string }) =>
        e.code === "CONFIG_INVALID" && /^no HSM PIN: set hsm\.pinFile, or hsm\.pinEnv, which is not the name of a set environment variable/.test(e.message) && !e.message.includes("9876-s3cret"),
    );
  });
});

describe("config check: what serve would open, every problem at once", () => {
  let dir: string;
  let tls: TlsMaterial;
  let module: string;
  const f = (name: string): string => join(dir, name);
  const problemsOf = (fn: () => unknown): string[] => {
    try {
      fn();
    } catch (e) {
      return (e as Error).message
        .split("\n")
        .slice(1)
        .map((l) => l.trim().replace(/^- /, ""));
    }
    return [];
  };
  /** A configuration whose every file is good; `over` replaces lines by their first word. */
  const config = (name: string, over: Record<string, string> = {}): string => {
    const lines: Record<string, string> = {
      listen: "listen: 127.0.0.1:8443",
      tls: `tls: { certFile: ${tls.dir}/server.pem, keyFile: ${tls.dir}/server-key.pem, clientCaFile: ${tls.caFile} }`,
      hsm: `hsm: { module: ${module}, tokenLabel: t, pinFile: pin }`,
      policy: "policy: { file: policy.yaml }",
      audit: "audit: { dir: audit }",
      ...over,
    };
    writeFileSync(f(name), `${Object.values(lines).filter(Boolean).join("\n")}\n`);
    return f(name);
  };

  before(() => {
    dir = mkdtempSync(join(tmpdir(), "hsm-signer-config-check-"));
    tls = createTlsMaterial(join(dir, "tls"));
    module = softHsmModule();
    writeFileSync(f("pin"), "1234\n");
    writeFileSync(f("policy.yaml"), 'rules:\n  - name: builders\n    match: { mtls: "spiffe://x/builder" }\n    keys: ["*"]\n');
    writeFileSync(f("bad-policy.yaml"), "rules:\n  - name: broken\n    keys: 5\n");
    writeFileSync(
      f("jwks.json"),
      JSON.stringify({ keys: [{ kty: "EC", crv: "P-256", x: "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", y: "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0", kid: "k1" }] }),
    );
    writeFileSync(f("not-jwks.json"), "{}");
    writeFileSync(f("a-file"), "");
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it("tls.clientCrlFile: needs tls.clientCaFile, and must hold a CRL from each client CA (a CRL of another CA is named as missing)", () => {
    const other = OpensslCa.root(join(dir, "pki"), { subject: "/O=Elsewhere/CN=Other Root" });
    writeFileSync(f("other.crl"), other.crl());
    const tlsLine = (extra: string): string => `tls: { certFile: ${tls.dir}/server.pem, keyFile: ${tls.dir}/server-key.pem${extra} }`;
    assert.throws(() => loadConfig(config("crl-no-ca.yaml", { tls: tlsLine(", clientCrlFile: other.crl") }), {}), /tls\.clientCrlFile: needs tls\.clientCaFile/);
    const file = config("crl-other.yaml", { tls: tlsLine(`, clientCaFile: ${tls.caFile}, clientCrlFile: other.crl`) });
    assert.equal(loadConfig(file, {}).tls.clientCrlFile, f("other.crl"));
    const problems = problemsOf(() => checkConfig(file, {}));
    assert.ok(
      problems.some((p) => /^tls\.clientCrlFile: no CRL from ".*" of tls\.clientCaFile; /.test(p)),
      problems.join("\n"),
    );
    // KeyAdmin with its own client CA takes only its own CRLs.
    assert.throws(() => loadConfig(config("admin-crl.yaml", { admin: "admin: { listen: 127.0.0.1:8444, clientCrlFile: other.crl }" }), {}), /admin\.clientCrlFile: needs admin\.clientCaFile/);
  });

  it("limits: 1024 connections, a 10 s TLS handshake and 300 s idle connections by default, each bounded", () => {
    const c = loadConfig(config("limits.yaml"), {});
    assert.deepEqual([c.limits.maxConnections, c.limits.tlsHandshakeTimeoutMs, c.limits.connectionIdleMs], [1024, 10_000, 300_000]);
    const set = loadConfig(config("limits-set.yaml", { limits: "limits: { maxConnections: 50, tlsHandshakeTimeoutSeconds: 3, connectionIdleSeconds: 90 }" }), {});
    assert.deepEqual([set.limits.maxConnections, set.limits.tlsHandshakeTimeoutMs, set.limits.connectionIdleMs], [50, 3_000, 90_000]);
    assert.throws(
      () => loadConfig(config("limits-idle.yaml", { limits: "limits: { connectionIdleSeconds: 30, maxDeadlineSeconds: 60 }" }), {}),
      /limits\.connectionIdleSeconds: must be longer than limits\.maxDeadlineSeconds/,
    );
    assert.throws(
      () => loadConfig(config("limits-bad.yaml", { limits: "limits: { maxConnections: 0, tlsHandshakeTimeoutSeconds: 600 }" }), {}),
      /limits\.maxConnections: .*\n.*limits\.tlsHandshakeTimeoutSeconds: /,
    );
  });

  it("a configuration whose files are all good is valid, and says what was checked", () => {
    const checked = checkConfig(config("good.yaml"), {});
    for (const what of ["policy", "PIN file", "PKCS#11 module", "TLS files", "audit directory"]) assert.ok(checked.includes(what), `${what} in ${checked.join(", ")}`);
  });

  it("with audit.postgres and no audit.dir, it says the database's settings were checked, not an audit directory", () => {
    writeFileSync(f("db-password"), "secret\n");
    const file = config("postgres.yaml", { audit: `audit: { postgres: { host: 127.0.0.1, database: a, user: u, passwordFile: db-password } }` });
    const checked = checkConfig(file, {});
    assert.ok(checked.includes("audit database settings (not connected)"), checked.join(", "));
    assert.ok(!checked.includes("audit directory"), checked.join(", "));
    assert.ok(!checkConfig(config("dir.yaml"), {}).includes("audit database settings (not connected)"));
  });

  it("an invalid policy, a missing PIN file and a missing PKCS#11 module are each reported, all at once", () => {
    const file = config("three.yaml", { hsm: `hsm: { module: ${f("no-such-lib.so")}, tokenLabel: t, pinFile: no-pin }`, policy: "policy: { file: bad-policy.yaml }" });
    // loadConfig alone (what it did before) finds nothing wrong.
    assert.doesNotThrow(() => loadConfig(file, {}));
    const problems = problemsOf(() => checkConfig(file, {}));
    assert.ok(
      problems.some((p) => p.startsWith(`hsm.module: ${f("no-such-lib.so")} does not exist`)),
      problems.join("\n"),
    );
    assert.ok(
      problems.some((p) => p.startsWith(`hsm.pinFile: cannot read ${f("no-pin")} (ENOENT)`)),
      problems.join("\n"),
    );
    assert.ok(
      problems.some((p) => p.startsWith(`policy.file: ${f("bad-policy.yaml")}: `)),
      problems.join("\n"),
    );
  });

  it("a module that is a directory, a PIN variable that is not set, TLS files that do not parse or do not match, a bad JWKS, an audit dir that is a file", () => {
    writeFileSync(f("garbage.pem"), "not a certificate");
    const file = config("many.yaml", {
      hsm: `hsm: { module: ${dir}, tokenLabel: t, pinEnv: HSM_SIGNER_TEST_PIN_UNSET }`,
      tls: `tls: { certFile: ${tls.dir}/server.pem, keyFile: ${tls.dir}/client-key.pem, clientCaFile: garbage.pem }`,
      audit: "audit: { dir: a-file/audit }",
      auth: "auth: { jwt: [ { issuer: i, audience: a, jwksFile: not-jwks.json }, { issuer: j, audience: a, jwksFile: jwks.json } ] }",
    });
    const problems = problemsOf(() => checkConfig(file, {}));
    const want = [
      `hsm.module: ${dir} is not a regular file`,
      "hsm.pinEnv: the environment variable HSM_SIGNER_TEST_PIN_UNSET is not set",
      `tls.keyFile: ${tls.dir}/client-key.pem is not the private key of the certificate in ${tls.dir}/server.pem`,
      `tls.clientCaFile: ${f("garbage.pem")} holds no PEM certificate`,
      `auth.jwt[0].jwksFile: ${f("not-jwks.json")} is not a JWKS`,
      // where it is (loadConfig) or that it can be written (checkConfig): one problem, not both
      `audit.dir: ${f("a-file")}`,
    ];
    for (const w of want)
      assert.ok(
        problems.some((p) => p.startsWith(w)),
        `missing "${w}" in:\n${problems.join("\n")}`,
      );
    assert.equal(problems.length, want.length, problems.join("\n"));
    // The PIN from the environment is enough, and never shown.
    const withPin = problemsOf(() => checkConfig(file, { HSM_SIGNER_TEST_PIN_UNSET: "s3cret-pin" }));
    assert.equal(withPin.length, want.length - 1);
    assert.ok(!withPin.join("\n").includes("s3cret-pin"));
  });

  it("a PIN, a password or a connection string written where a variable's name goes is not echoed (hsm.pinEnv, audit.postgres.passwordEnv, urlEnv)", () => {
    const problems = [
      ...problemsOf(() => checkConfig(config("pin-env.yaml", { hsm: `hsm: { module: ${module}, tokenLabel: t, pinEnv: "9876 s3cret" }` }), {})),
      ...problemsOf(() => checkConfig(config("url-env.yaml", { audit: 'audit: { postgres: { urlEnv: "postgres://svc:s3cret@db.example/audit" } }' }), {})),
      ...problemsOf(() => checkConfig(config("password-env.yaml", { audit: "audit: { postgres: { host: 127.0.0.1, passwordEnv: s3cretPassword } }" }), {})),
    ];
    for (const setting of ["hsm.pinEnv", "audit.postgres.urlEnv", "audit.postgres.passwordEnv"])
      assert.ok(
        problems.some((p) => p.startsWith(`${setting}: is not the name of a set environment variable`)),
        `${setting} in:\n${problems.join("\n")}`,
      );
    assert.equal(problems.length, 3, problems.join("\n"));
    assert.ok(!problems.join("\n").includes("s3cret"), problems.join("\n"));
  });

  it("an audit directory that does not exist yet is fine when it can be created", () => {
    mkdirSync(f("var"), { recursive: true });
    assert.doesNotThrow(() => checkConfig(config("audit-new.yaml", { audit: "audit: { dir: var/lib/audit }" }), {}));
  });
});

describe("the shipped configurations", () => {
  it("deploy/base/config.yaml has no problem but files that only exist in the cluster", () => {
    let problems: string[] = [];
    try {
      loadConfig(join(PROJECT_ROOT, "deploy/base/config.yaml"), {});
    } catch (e) {
      problems = (e as Error).message
        .split("\n")
        .slice(1)
        .map((l) => l.trim().replace(/^- /, ""));
    }
    const elsewhere = problems.filter((p) => !/cannot read \/etc\/hsm-signer\//.test(p));
    assert.deepEqual(elsewhere, []);
  });
});
