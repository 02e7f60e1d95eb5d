import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { createServer, type Server, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { spawnCollect } from "../helpers/process.js";
import { HSM_SIGNER } from "../helpers/service-process.js";
import { softHsmModule } from "../helpers/softhsm.js";
import { createTlsMaterial, type TlsMaterial } from "../helpers/tls.js";

/** Each run is killed after this long: a hang fails the test, not the suite. */
const CLI_TIMEOUT_MS = 30_000;

async function cli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; stdout: string; stderr: string; ms: number }> {
  const clean = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("HSM_SIGNER_")));
  const r = await spawnCollect(HSM_SIGNER, args, "", { env: { ...clean, ...env }, timeoutMs: CLI_TIMEOUT_MS });
  assert.equal(r.timedOut, false, `hsm-signer ${args.join(" ")} did not finish within ${CLI_TIMEOUT_MS} ms`);
  return { code: r.code, stdout: r.stdout, stderr: r.stderr, ms: r.ms };
}

/** Every command, by the words that name it. */
const LOCAL = ["serve", "config check", "test-chain", "audit verify", "audit search", "token init", "version"];
const ADMIN = [
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
];

/** The other commands' names as they would appear at the start of a usage line. */
function otherCommands(path: string): RegExp[] {
  return [...LOCAL, ...ADMIN]
    .filter((c) => c !== path && !(path === "test-chain" && c === "keys test-chain") && !(path === "keys test-chain" && c === "test-chain"))
    .map((c) => new RegExp(`^(usage: )?\\s*(hsm-signer )?${c} `, "m"));
}

describe("hsm-signer: every command answers --help and -h with its own usage; a usage error prints only that command's", function () {
  this.timeout(120_000);

  it("--help and -h: exit 0, the command's own usage on stdout, nothing on stderr", async () => {
    const runs = [...LOCAL, ...ADMIN].flatMap((path) => ["--help", "-h"].map((flag) => ({ path, flag })));
    // Several at a time: each start costs a few hundred ms on a loaded machine.
    for (let i = 0; i < runs.length; i += 6) {
      const batch = runs.slice(i, i + 6);
      const results = await Promise.all(batch.map(({ path, flag }) => cli([...path.split(" "), flag])));
      results.forEach((r, n) => {
        const { path, flag } = batch[n] as { path: string; flag: string };
        const what = `hsm-signer ${path} ${flag}`;
        assert.equal(r.code, 0, `${what}: exit ${r.code}\n${r.stderr}`);
        assert.equal(r.stderr, "", what);
        assert.ok(r.stdout.startsWith(`usage: hsm-signer ${path}`), `${what}:\n${r.stdout}`);
        for (const other of otherCommands(path)) assert.doesNotMatch(r.stdout, other, `${what} shows only its own usage`);
      });
    }
  });

  it("families and the whole: audit --help, keys -h, help test-chain, --help (everything)", async () => {
    const [audit, keys, helpCmd, all] = await Promise.all([cli(["audit", "--help"]), cli(["keys", "-h"]), cli(["help", "test-chain"]), cli(["--help"])]);
    for (const r of [audit, keys, helpCmd, all]) assert.equal(r.code, 0, r.stderr);
    assert.match(audit.stdout, /audit verify[\s\S]*audit search/);
    assert.doesNotMatch(audit.stdout, /token init|serve/);
    assert.match(keys.stdout, /keys list[\s\S]*keys notation-setup/);
    assert.match(helpCmd.stdout, /^usage: hsm-signer test-chain --config FILE/);
    for (const c of [...LOCAL, ...ADMIN]) assert.ok(all.stdout.includes(` ${c}`), `--help lists ${c}`);
  });

  it("audit verify --help: files without --cert; the database only with --cert (as the command requires)", async () => {
    const r = await cli(["audit", "verify", "--help"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(
      r.stdout,
      /^usage: hsm-signer audit verify \(--dir DIR \| FILE\.\.\.\)\n {7}hsm-signer audit verify \(--dir DIR \| --config FILE \| --database\) --cert FILE \[--replica ID\] \[--json\]\n/,
    );
    assert.doesNotMatch(r.stdout, /\[--cert FILE\]/, "--cert is not optional with --config or --database");
  });

  it("audit verify of a directory that holds no audit log (emptied, the wrong mount) or no record (empty files) is no OK: exit 1 naming it, with or without --cert", async () => {
    const dir = mkdtempSync(join(tmpdir(), "hsm-signer-empty-audit-"));
    try {
      const certFile = join(dir, "..", `${dir.slice(dir.lastIndexOf("/") + 1)}.pem`);
      execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "/dev/null", "-out", certFile, "-subj", "/CN=audit", "-days", "1"], {
        stdio: "ignore",
      });
      const noRecords = async (args: string[], where: string): Promise<void> => {
        const r = await cli(args);
        assert.equal(r.code, 1, `hsm-signer ${args.join(" ")}: exit ${r.code}\n${r.stdout}${r.stderr}`);
        assert.equal(r.stdout, "");
        assert.equal(r.stderr, `hsm-signer: nothing to verify: no audit records in ${where}\n`);
      };
      try {
        for (const args of [
          ["audit", "verify", "--dir", dir],
          ["audit", "verify", "--dir", dir, "--cert", certFile],
        ]) {
          const r = await cli(args);
          assert.equal(r.code, 1, `hsm-signer ${args.join(" ")}: exit ${r.code}\n${r.stdout}${r.stderr}`);
          assert.doesNotMatch(r.stdout, /OK/);
          assert.equal(r.stderr, `hsm-signer: ${dir} holds no audit files (audit-<first seq>.jsonl): nothing to verify\n`);
        }
        // An empty checkpoints.jsonl (with --cert), then an empty audit file too (with and without):
        // nothing was verified, which used to print "OK: every chain intact" and "OK: 0 records".
        writeFileSync(join(dir, "checkpoints.jsonl"), "");
        await noRecords(["audit", "verify", "--dir", dir, "--cert", certFile], dir);
        const file = join(dir, "audit-0000000000000001.jsonl");
        writeFileSync(file, "");
        await Promise.all([noRecords(["audit", "verify", "--dir", dir, "--cert", certFile], dir), noRecords(["audit", "verify", "--dir", dir], dir), noRecords(["audit", "verify", file], file)]);
      } finally {
        rmSync(certFile, { force: true });
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("usage errors: exit 2, the problem named, then only that command's usage", async () => {
    const cases: { args: string[]; says: RegExp; usage: string }[] = [
      { args: ["test-chain", "--bogus"], says: /Unknown option '--bogus'/, usage: "test-chain" },
      { args: ["test-chain", "stray"], says: /Unexpected argument 'stray'/, usage: "test-chain" },
      { args: ["serve"], says: /--config is required/, usage: "serve" },
      { args: ["serve", "--config"], says: /--config/, usage: "serve" },
      { args: ["config", "check", "--bogus"], says: /Unknown option '--bogus'/, usage: "config check" },
      { args: ["token", "init", "--label", "x"], says: /--module is required/, usage: "token init" },
      { args: ["audit", "verify"], says: /give audit files, or --dir DIR/, usage: "audit verify" },
      { args: ["audit", "verify", "--database"], says: /needs --cert FILE/, usage: "audit verify" },
      { args: ["audit", "search", "audit-0001.log", "--from", "yesterday"], says: /--from must be a date/, usage: "audit search" },
      { args: ["audit", "search", "--dir", "audit", "--replica", "r1"], says: /--replica applies to the audit database/, usage: "audit search" },
      { args: ["audit", "search", "audit-0001.log", "--limit", "5"], says: /--limit applies to audit search over the audit database/, usage: "audit search" },
      { args: ["audit", "verify", "--dir", "audit", "--replica", "r1"], says: /--replica applies to the checkpoints \(--cert FILE\)/, usage: "audit verify" },
      { args: ["keys", "generate", "--key-id", "k"], says: /--key-spec is required/, usage: "keys generate" },
      { args: ["certs", "csr", "--nope"], says: /Unknown option '--nope'/, usage: "certs csr" },
    ];
    const results = await Promise.all(cases.map((c) => cli(c.args)));
    results.forEach((r, i) => {
      const c = cases[i] as (typeof cases)[number];
      const what = `hsm-signer ${c.args.join(" ")}`;
      assert.equal(r.code, 2, `${what}: exit ${r.code}\n${r.stderr}`);
      assert.equal(r.stdout, "", what);
      const [first = "", ...rest] = r.stderr.split("\n");
      assert.match(first, /^hsm-signer: /, what);
      assert.match(first, c.says, `${what}: ${first}`);
      const usage = rest.join("\n");
      assert.match(usage, new RegExp(`usage: hsm-signer ${c.usage} `), `${what}:\n${r.stderr}`);
      for (const other of otherCommands(c.usage)) assert.doesNotMatch(usage, other, `${what} prints only its own usage:\n${r.stderr}`);
    });
  });

  it("no command, an unknown one, a family without its subcommand: a short list of commands, exit 2", async () => {
    const [none, unknown, audit, keys] = await Promise.all([cli([]), cli(["frobnicate"]), cli(["audit"]), cli(["keys", "frobnicate"])]);
    for (const r of [none, unknown, audit, keys]) {
      assert.equal(r.code, 2, r.stderr);
      assert.ok(r.stderr.split("\n").length < 20, `short:\n${r.stderr}`);
    }
    assert.match(unknown.stderr, /^hsm-signer: unknown command "frobnicate"/);
    assert.match(audit.stderr, /^hsm-signer: "audit" needs a subcommand\n[\s\S]*audit verify[\s\S]*audit search/);
    assert.match(keys.stderr, /^hsm-signer: unknown command "keys frobnicate"\n[\s\S]*keys list/);
  });
});

describe("hsm-signer config check: what serve would open (the built CLI)", function () {
  this.timeout(60_000);
  let dir: string;
  let tls: TlsMaterial;

  before(() => {
    dir = mkdtempSync(join(tmpdir(), "hsm-signer-config-check-e2e-"));
    tls = createTlsMaterial(join(dir, "tls"));
    writeFileSync(join(dir, "pin"), "1234\n");
    writeFileSync(join(dir, "policy.yaml"), 'rules:\n  - name: b\n    match: { mtls: "spiffe://x/b" }\n    keys: ["*"]\n');
    writeFileSync(join(dir, "bad-policy.yaml"), "rules: [ { name: 5 } ]\n");
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  const write = (name: string, module: string, pinFile: string, policy: string): string => {
    const file = join(dir, name);
    writeFileSync(
      file,
      `listen: 127.0.0.1:8443\ntls: { certFile: ${tls.dir}/server.pem, keyFile: ${tls.dir}/server-key.pem, clientCaFile: ${tls.caFile} }\nhsm: { module: ${module}, tokenLabel: t, pinFile: ${pinFile} }\npolicy: { file: ${policy} }\naudit: { dir: audit }\n`,
    );
    return file;
  };

  it("an invalid policy, a missing PIN file and a missing module: exit 1 with the three problems; a good configuration is valid", async () => {
    const [bad, good] = await Promise.all([
      cli(["config", "check", "--config", write("bad.yaml", join(dir, "libnothing.so"), "no-pin", "bad-policy.yaml")]),
      cli(["config", "check", "--config", write("good.yaml", softHsmModule(), "pin", "policy.yaml")]),
    ]);
    assert.equal(bad.code, 1, bad.stdout);
    assert.equal(bad.stdout, "");
    assert.match(bad.stderr, /^hsm-signer: configuration .*bad\.yaml has \d+ problem\(s\):/);
    assert.match(bad.stderr, /^ {2}- hsm\.module: .*libnothing\.so does not exist/m);
    assert.match(bad.stderr, /^ {2}- hsm\.pinFile: cannot read .*no-pin \(ENOENT\)/m);
    assert.match(bad.stderr, /^ {2}- policy\.file: .*bad-policy\.yaml: /m);
    assert.equal(good.code, 0, good.stderr);
    assert.match(good.stdout, /^configuration is valid \(checked: settings, policy, PIN file, PKCS#11 module, TLS files, audit directory\)$/m);
  });

  it("a FIFO named by a file setting is refused at once, naming the setting (it used to hang config check and serve), so is a file over 1 MiB; a symlink to a file is fine", async () => {
    const fifo = join(dir, "cert.fifo");
    execFileSync("mkfifo", [fifo]);
    const big = join(dir, "big-key.pem");
    writeFileSync(big, Buffer.alloc(2 * 1024 * 1024, "A"));
    const link = join(dir, "ca-link.pem");
    symlinkSync(tls.caFile, link);
    const file = join(dir, "fifo.yaml");
    writeFileSync(
      file,
      `listen: 127.0.0.1:8443\ntls: { certFile: ${fifo}, keyFile: ${big}, clientCaFile: ${link} }\nhsm: { module: ${softHsmModule()}, tokenLabel: t, pinFile: pin }\npolicy: { file: policy.yaml }\naudit: { dir: audit }\n`,
    );
    // cli() kills each run after CLI_TIMEOUT_MS and fails the test if it had to.
    const [check, serve] = await Promise.all([cli(["config", "check", "--config", file]), cli(["serve", "--config", file])]);
    for (const r of [check, serve]) {
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /^ {2}- tls\.certFile: .*cert\.fifo is not a regular file \(a FIFO\)$/m);
      assert.match(r.stderr, /^ {2}- tls\.keyFile: .*big-key\.pem is larger than the limit of 1048576 bytes \(1 MiB\)$/m);
      assert.doesNotMatch(r.stderr, /clientCaFile/);
      assert.ok(r.ms < 15_000, `took ${Math.round(r.ms)} ms`);
    }
  });

  it("a YAML syntax error says where it is, never what the line holds (it may hold a secret): config check and audit migrate", async () => {
    const file = join(dir, "secret-line.yaml");
    writeFileSync(file, "hsm:\n  pin: s3cr3t-PIN: 1234\n");
    // A tag yaml does not know is a warning, which yaml's parse() printed with its code frame.
    const tagged = join(dir, "secret-tag.yaml");
    writeFileSync(tagged, "hsm:\n  pin: !secret s3cr3t-PIN\n");
    const runs = await Promise.all([cli(["config", "check", "--config", file]), cli(["audit", "migrate", "--config", file]), cli(["config", "check", "--config", tagged])]);
    for (const r of runs) {
      assert.notEqual(r.code, 0, r.stderr);
      assert.ok(!`${r.stdout}${r.stderr}`.includes("s3cr3t-PIN"), `the secret is echoed:\n${r.stdout}${r.stderr}`);
    }
    for (const r of runs.slice(0, 2)) {
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /^hsm-signer: cannot read configuration .*secret-line\.yaml: .* at line 2, column 8$/m);
    }
  });
});

describe("hsm-signer: a secret written where a variable's name goes is never echoed (the built CLI)", function () {
  this.timeout(60_000);
  let dir: string;

  before(() => {
    dir = mkdtempSync(join(tmpdir(), "hsm-signer-secret-name-"));
    writeFileSync(join(dir, "url.yaml"), "audit:\n  dir: audit\n  postgres:\n    urlEnv: postgres://svc:hunter2SECRET@db.example/audit\n");
    writeFileSync(join(dir, "password.yaml"), "audit:\n  dir: audit\n  postgres:\n    host: 127.0.0.1\n    passwordEnv: hunter2SECRET\n");
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it("audit.postgres.urlEnv holding the connection string, passwordEnv the password: audit search, config check and serve say so without the value", async () => {
    const runs = await Promise.all(
      ["url.yaml", "password.yaml"].flatMap((file) =>
        [
          ["audit", "search", "--config"],
          ["config", "check", "--config"],
          ["serve", "--config"],
        ].map((cmd) => cli([...cmd, join(dir, file)])),
      ),
    );
    for (const r of runs) {
      assert.equal(r.code, 1, r.stdout + r.stderr);
      assert.match(r.stderr, /^ {2}- audit\.postgres\.(urlEnv|passwordEnv): is not the name of a set environment variable/m);
      assert.ok(!`${r.stdout}${r.stderr}`.includes("hunter2SECRET"), `the secret is echoed:\n${r.stdout}${r.stderr}`);
    }
  });
});

describe("hsm-signer audit commands with --database: the connection from the environment follows audit.postgres's TLS rule (the built CLI)", function () {
  this.timeout(60_000);
  // A remote host (TEST-NET-1, never routed): the refusal must come before any connection, since
  // a connection attempt there could only fail later with "cannot connect".
  const host = "192.0.2.10";
  let dir: string;

  before(() => {
    dir = mkdtempSync(join(tmpdir(), "hsm-signer-database-tls-"));
    writeFileSync(join(dir, "config.yaml"), "audit:\n  dir: audit\n");
  });
  after(() => {
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("a connection string to a remote host without TLS: search, verify, export and migrate exit 1 at once, naming the host, never connecting or showing the password", async () => {
    const url = `postgres://svc:pw-SECRET@${host}:5432/audit`;
    const certFile = join(dir, "cert.pem");
    execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "/dev/null", "-out", certFile, "-subj", "/CN=audit", "-days", "1"], {
      stdio: "ignore",
    });
    const commands = [
      ["audit", "search", "--database"],
      ["audit", "verify", "--database", "--cert", certFile],
      ["audit", "export", "--database", "--replica", "r", "--out", join(dir, "export")],
      ["audit", "migrate", "--database"],
      // The --config path refused it already (audit.postgres from the variable): the same words.
      ["audit", "search", "--config", join(dir, "config.yaml")],
    ];
    const runs = await Promise.all(commands.map((args) => cli(args, { HSM_SIGNER_AUDIT_DATABASE_URL: url })));
    const pgEnv = { PGHOST: host, PGPORT: "5432", PGUSER: "svc", PGPASSWORD: "pw-SECRET", PGDATABASE: "audit" };
    const byPgHost = await cli(["audit", "search", "--database"], pgEnv);
    runs.forEach((r, i) => {
      const what = commands[i]!.join(" ");
      assert.equal(r.code, 1, `${what}: ${r.stdout}${r.stderr}`);
      assert.match(r.stderr, /^hsm-signer: the audit database connection string \(HSM_SIGNER_AUDIT_DATABASE_URL\) reaches 192\.0\.2\.10 without TLS: add sslmode=verify-full with sslrootcert/, what);
      assert.ok(!`${r.stdout}${r.stderr}`.includes("pw-SECRET"), `${what}: the password is shown`);
    });
    assert.equal(byPgHost.code, 1, byPgHost.stderr);
    assert.match(byPgHost.stderr, /^hsm-signer: the audit database connection \(PGHOST\) reaches 192\.0\.2\.10 without TLS: set PGSSLMODE=verify-full/);
    assert.ok(!existsSync(join(dir, "export")), "export made nothing");
  });
});

describe("hsm-signer custodian commands against an endpoint that accepts TCP and never speaks TLS", function () {
  this.timeout(60_000);
  let server: Server;
  let port: number;
  let dir: string;
  let tls: TlsMaterial;
  const sockets: Socket[] = [];

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "hsm-signer-admin-silent-"));
    tls = createTlsMaterial(join(dir, "tls"), "custodian");
    // Accepts every connection and never writes a byte: the TLS handshake never completes.
    server = createServer((s) => sockets.push(s));
    port = await new Promise<number>((ok) => server.listen(0, "127.0.0.1", () => ok((server.address() as { port: number }).port)));
  });
  after(async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((ok) => server.close(() => ok()));
    rmSync(dir, { recursive: true, force: true });
  });

  it("--timeout 2 bounds the whole command: exit 1 with the deadline message, well before the test's own limit", async () => {
    const flags = ["--endpoint", `127.0.0.1:${port}`, "--ca", tls.caFile, "--cert", tls.clientCertFile, "--key", tls.clientKeyFile, "--timeout", "2"];
    // notation-setup makes two calls: the budget is still the whole command's.
    const [slots, setup] = await Promise.all([
      cli(["slots", ...flags]),
      cli(["keys", "notation-setup", "--key-id", "k", "--store", "s", "--endpoint", "127.0.0.1:1", "--notation-dir", join(dir, "n"), "--admin-endpoint", `127.0.0.1:${port}`, ...flags.slice(2)]),
    ]);
    for (const r of [slots, setup]) {
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, new RegExp(`^hsm-signer: KeyAdmin at 127\\.0\\.0\\.1:${port} did not answer within 2s \\(--timeout`));
      // 2 s plus a process start; the old CLI stayed for minutes after printing the message.
      assert.ok(r.ms < 15_000, `took ${Math.round(r.ms)} ms`);
    }
  });
});
