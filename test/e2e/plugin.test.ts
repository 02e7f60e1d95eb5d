import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash, randomBytes, X509Certificate } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import http2 from "node:http2";
import { builtinModules } from "node:module";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gunzipSync } from "node:zlib";
import protobuf from "protobufjs";
import { KEY_SPECS, type KeySpec } from "../../src/signing/key-spec.js";
import type { RunningServer } from "../../src/server/signer-server.js";
import { getFixture, keyIdOf, startTestServer, type Fixture } from "../helpers/fixture.js";
import { NOTATION_FIXTURES, requestFor, verifyNotarySignature, NOTARY_KEY_SPECS } from "../helpers/notation.js";
import { OpensslCa } from "../helpers/openssl-ca.js";
import { PLUGIN_KILL_AFTER_MS, PLUGIN_PATH, runPlugin, type PluginResult } from "../helpers/plugin-process.js";
import { startServiceProcess } from "../helpers/service-process.js";
import { PROJECT_ROOT } from "../helpers/softhsm.js";

const EXPECTED = NOTARY_KEY_SPECS;

const ERROR_CODES = ["VALIDATION_ERROR", "UNSUPPORTED_CONTRACT_VERSION", "ACCESS_DENIED", "TIMEOUT", "THROTTLED", "ERROR"];
/** Padded standard base64 (Go's StdEncoding, which notation decodes strictly). */
const STD_BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;
/** semver.org's strict SemVer 2.0.0, no leading "v" (notation-go internal/semver). */
const SEMVER = /^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$/;

const PKG_VERSION = (JSON.parse(readFileSync(join(PROJECT_ROOT, "package.json"), "utf8")) as { version: string }).version;

const json = (v: unknown): string => JSON.stringify(v);
/** Keeps assertion messages readable when the plugin dumps its minified source with a stack trace. */
const clip = (s: string): string => (s.length > 600 ? `${s.slice(0, 300)} … ${s.slice(-300)}` : s);

/** exit 0, nothing on stderr, stdout is exactly one JSON object. */
function success(r: PluginResult): Record<string, unknown> {
  assert.equal(r.timedOut, false, "plugin was killed after 20 s");
  assert.equal(r.code, 0, `exit ${r.code}; stderr: ${clip(r.stderr)}`);
  assert.equal(r.stderr, "", "stderr must be empty on success");
  const v = JSON.parse(r.stdout) as unknown;
  assert.ok(typeof v === "object" && v !== null && !Array.isArray(v), `stdout is not one JSON object: ${clip(r.stdout)}`);
  return v as Record<string, unknown>;
}

/** §1.5/§4: exit 1, stdout empty, the whole of stderr is one {errorCode, errorMessage} object. */
function failure(r: PluginResult, code: string, ...mentions: (string | RegExp)[]): string {
  assert.equal(r.timedOut, false, "plugin was killed after 20 s");
  assert.equal(r.code, 1, `exit ${r.code}; stdout: ${clip(r.stdout)}; stderr: ${clip(r.stderr)}`);
  assert.equal(r.stdout, "", "stdout must be empty on failure");
  let e: unknown;
  try {
    e = JSON.parse(r.stderr);
  } catch {
    assert.fail(`stderr is not exactly one JSON value: ${clip(JSON.stringify(r.stderr))}`);
  }
  assert.ok(typeof e === "object" && e !== null && !Array.isArray(e), `stderr is not a JSON object: ${r.stderr}`);
  const o = e as Record<string, unknown>;
  assert.deepEqual(Object.keys(o).sort(), ["errorCode", "errorMessage"], `unexpected error fields: ${r.stderr}`);
  assert.equal(o.errorCode, code, `errorMessage: ${String(o.errorMessage)}`);
  assert.equal(typeof o.errorMessage, "string");
  const msg = o.errorMessage as string;
  assert.ok(msg.length > 0, "errorMessage must not be empty");
  for (const m of mentions) {
    if (typeof m === "string") assert.ok(msg.includes(m), `errorMessage should mention ${JSON.stringify(m)}: ${msg}`);
    else assert.match(msg, m);
  }
  return msg;
}

/** A port on 127.0.0.1 that nothing listens on: bound, then closed. */
async function closedPort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((res) => s.listen(0, "127.0.0.1", res));
  const addr = s.address();
  assert.ok(addr && typeof addr === "object");
  await new Promise<void>((res) => s.close(() => res()));
  return addr.port;
}

function certsOf(chain: unknown): X509Certificate[] {
  assert.ok(Array.isArray(chain), "certificateChain must be an array");
  assert.ok(chain.length >= 2, "the chain must hold the leaf and the root");
  return chain.map((c, i) => {
    assert.equal(typeof c, "string", `certificateChain[${i}] is not a string`);
    assert.match(c as string, STD_BASE64, `certificateChain[${i}] is not padded standard base64`);
    return new X509Certificate(Buffer.from(c as string, "base64"));
  });
}

describe("notation-hsm-signer plugin executable (e2e)", function () {
  this.timeout(60_000);

  let f: Fixture;
  let server: RunningServer;
  let mtlsServer: RunningServer;
  let tmp: string;
  let otherCaFile: string;
  let cfg: Record<string, string>;

  before(async function () {
    this.timeout(180_000);
    assert.ok(existsSync(PLUGIN_PATH), `${PLUGIN_PATH} is missing: run npm run build`);
    assert.ok(statSync(PLUGIN_PATH).mode & 0o100, "the plugin must be executable (u+x)");
    f = await getFixture();
    server = await startTestServer(f);
    mtlsServer = await startTestServer(f, { mtls: true });
    tmp = mkdtempSync(join(tmpdir(), "hsm-signer-plugin-e2e-"));
    otherCaFile = join(tmp, "other-ca.pem");
    execFileSync(
      "openssl",
      ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", join(tmp, "other-ca-key.pem"), "-out", otherCaFile, "-days", "2", "-subj", "/CN=other"],
      { stdio: "ignore" },
    );
    cfg = { endpoint: `127.0.0.1:${server.port}`, ca_file: f.tls.caFile };
  });

  after(async () => {
    await server?.close(1000);
    await mtlsServer?.close(1000);
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  describe("get-plugin-metadata", () => {
    function checkMetadata(m: Record<string, unknown>): void {
      // §1.2 validate(), plus the name notation derives from the install directory.
      assert.equal(m.name, "hsm-signer");
      for (const k of ["description", "version", "url"]) assert.ok(typeof m[k] === "string" && (m[k] as string).length > 0, `${k} must be a non-empty string`);
      assert.match(m.version as string, SEMVER, "version must be strict SemVer");
      assert.equal(m.version, PKG_VERSION, "the bundle carries package.json's version");
      assert.ok(Array.isArray(m.supportedContractVersions) && m.supportedContractVersions.includes("1.0"));
      assert.deepEqual(m.capabilities, ["SIGNATURE_GENERATOR.RAW"]);
    }

    it("answers notation plugin ls ({}) byte-exact fixture", async () => {
      const stdin = readFileSync(join(NOTATION_FIXTURES, "get-plugin-metadata-plugin-ls.json"), "utf8");
      checkMetadata(success(await runPlugin("get-plugin-metadata", stdin)));
    });

    it("answers the first call of notation sign (with pluginConfig)", async () => {
      const stdin = readFileSync(join(NOTATION_FIXTURES, "get-plugin-metadata.json"), "utf8");
      assert.ok(stdin.includes("pluginConfig"));
      checkMetadata(success(await runPlugin("get-plugin-metadata", stdin)));
    });

    it("answers with empty stdin", async () => {
      checkMetadata(success(await runPlugin("get-plugin-metadata", "")));
    });

    it("needs no network: an endpoint nobody listens on does not matter", async () => {
      const port = await closedPort();
      const r = await runPlugin("get-plugin-metadata", json({ pluginConfig: { endpoint: `127.0.0.1:${port}`, ca_file: "/nonexistent/ca.pem", timeout: "1ms" } }));
      checkMetadata(success(r));
      assert.ok(r.ms < 5000, `took ${r.ms} ms`);
    });

    it("loads no TLS or node:http2 for metadata and describe-key with key_spec; TLS and node:http2 but no gRPC library when it calls the service", async () => {
      // A --require preload records, at exit, which of Node's own modules were loaded
      // (process.moduleLoadList: it sees http2/tls however they are reached) and which ids went
      // through Module._load (the bundle is CommonJS and require()s Node's modules).
      const preload = join(tmp, "record-modules.cjs");
      writeFileSync(
        preload,
        `const Module = require("module"); const fs = require("fs"); const seen = []; const load = Module._load;
Module._load = function (request) { seen.push(String(request)); return load.apply(this, arguments); };
process.on("exit", () => { fs.writeFileSync(process.env.HSM_SIGNER_TEST_MODULES_OUT, JSON.stringify({ required: seen, native: process.moduleLoadList.filter((m) => m.startsWith("NativeModule ")).map((m) => m.slice(13)) })); });\n`,
      );
      const run = async (command: string, stdin: string, out: string): Promise<{ r: PluginResult; required: string[]; native: string[] }> => {
        const r = await runPlugin(command, stdin, { ...process.env, HSM_SIGNER_TEST_MODULES_OUT: out }, { prefix: { file: process.execPath, args: ["--require", preload] } });
        return { r, ...(JSON.parse(readFileSync(out, "utf8")) as { required: string[]; native: string[] }) };
      };
      const meta = await run("get-plugin-metadata", "{}", join(tmp, "modules-metadata.json"));
      success(meta.r);
      const local = await run("describe-key", json(requestFor("describe-key", keyIdOf("EC-256"), "EC-256", { ...cfg, key_spec: "EC-256" })), join(tmp, "modules-local.json"));
      success(local.r);
      for (const [what, m] of [
        ["get-plugin-metadata", meta],
        ["describe-key with key_spec", local],
      ] as const) {
        assert.ok(m.native.includes("fs") && m.native.length > 20, "the probe must see Node's modules");
        for (const name of ["http2", "tls", "net", "@grpc/grpc-js", "@grpc/proto-loader", "protobufjs"]) {
          assert.ok(!m.required.includes(name) && !m.required.includes(`node:${name}`), `${what} required ${name}: ${m.required.join(", ")}`);
        }
        for (const name of ["http2", "tls", "internal/http2/core"]) assert.ok(!m.native.includes(name), `${what} loaded Node's ${name}`);
      }
      // Control: the same probe sees tls and node:http2 when the plugin really talks to the service.
      const dk = await run("describe-key", json(requestFor("describe-key", keyIdOf("EC-256"), "EC-256", cfg)), join(tmp, "modules-describe.json"));
      success(dk.r);
      assert.ok(dk.native.includes("tls"), "control: describe-key loads tls");
      assert.ok(dk.native.includes("http2"), "control: describe-key loads node:http2");
      assert.ok(!dk.required.some((m) => /grpc|protobufjs/.test(m)), `the plugin must not load @grpc/* or protobufjs: ${dk.required.join(", ")}`);
      // Only Node's own modules: the bundle carries no native addon and no package.
      const foreign = dk.required.filter((m) => m !== PLUGIN_PATH && !builtinModules.includes(m.replace(/^node:/, "")));
      assert.deepEqual(foreign, [], "the plugin required something not built into Node");
    });

    // notation gives standard input as a pipe (Go's os/exec); the plugin reads it with synchronous
    // reads, without node:net and the stream machinery, which only a socket on stdin (Node's
    // spawn, as runPlugin gives it) needs for its idle limit.
    it("reads a request on a pipe, as notation gives it, without node:net or streams", async () => {
      const preload = join(tmp, "record-native.cjs");
      const out = join(tmp, "modules-pipe.json");
      writeFileSync(
        preload,
        `process.on("exit", () => { require("fs").writeFileSync(process.env.HSM_SIGNER_TEST_MODULES_OUT, JSON.stringify(process.moduleLoadList.filter((m) => m.startsWith("NativeModule ")).map((m) => m.slice(13)))); });\n`,
      );
      // sh: printf REQUEST | exec node --require PRELOAD PLUGIN COMMAND (the last two appended by runPlugin)
      const viaPipe = (request: string): { file: string; args: string[] } => ({
        file: "/bin/sh",
        args: ["-c", 'printf "%s" "$3" | exec "$1" --require "$2" "$4" "$5"', "sh", process.execPath, preload, request],
      });
      const env = { ...process.env, HSM_SIGNER_TEST_MODULES_OUT: out };
      const request = json({ pluginConfig: { endpoint: "127.0.0.1:1" } });
      assert.equal(success(await runPlugin("get-plugin-metadata", "", env, { prefix: viaPipe(request) })).name, "hsm-signer");
      const native = JSON.parse(readFileSync(out, "utf8")) as string[];
      assert.ok(native.includes("fs") && native.length > 20, "the probe must see Node's modules");
      for (const name of ["net", "stream", "tty"]) assert.ok(!native.includes(name), `get-plugin-metadata on a pipe loaded Node's ${name}`);
      // Control: the same probe sees node:net when standard input is a socket.
      success(await runPlugin("get-plugin-metadata", request, env, { prefix: { file: process.execPath, args: ["--require", preload] } }));
      assert.ok((JSON.parse(readFileSync(out, "utf8")) as string[]).includes("net"), "control: a socket on stdin is read through node:net");
    });
  });

  for (const spec of KEY_SPECS) {
    describe(`key spec ${spec}`, () => {
      const keyId = keyIdOf(spec);
      const exp = EXPECTED[spec];

      it("describe-key echoes keyId and returns the key spec", async () => {
        const req = requestFor("describe-key", keyId, spec, cfg);
        const out = success(await runPlugin("describe-key", json(req)));
        assert.deepEqual(out, { keyId, keySpec: spec });
      });

      for (const format of ["jws", "cose"] as const) {
        it(`generate-signature (${format.toUpperCase()} payload) returns a verifiable signature and the chain leaf→root`, async () => {
          const req = requestFor(`generate-signature-${format}`, keyId, spec, cfg);
          assert.equal(req.hashAlgorithm, exp.hash);
          const payload = Buffer.from(req.payload as string, "base64");
          if (format === "cose") assert.deepEqual([...payload.subarray(0, 2)], [0x84, 0x6a]);
          else assert.match(payload.toString("latin1"), /^eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+$/);

          const out = success(await runPlugin("generate-signature", json(req)));
          assert.deepEqual(Object.keys(out).sort(), ["certificateChain", "keyId", "signature", "signingAlgorithm"]);
          assert.equal(out.keyId, keyId);
          assert.equal(out.signingAlgorithm, exp.signingAlgorithm);
          assert.equal(typeof out.signature, "string");
          assert.match(out.signature as string, STD_BASE64, "signature must be padded standard base64, not base64url");
          const sig = Buffer.from(out.signature as string, "base64");
          assert.equal(sig.length, exp.sigLen);

          const chain = certsOf(out.certificateChain);
          const leaf = chain[0] as X509Certificate;
          const root = chain[chain.length - 1] as X509Certificate;
          for (let i = 0; i < chain.length - 1; i++) {
            const child = chain[i] as X509Certificate;
            const parent = chain[i + 1] as X509Certificate;
            assert.ok(child.checkIssued(parent) && child.verify(parent.publicKey), `certificate ${i} is not issued by certificate ${i + 1}`);
            assert.ok(!child.checkIssued(child), `certificate ${i} must not be self-signed`);
          }
          assert.ok(root.checkIssued(root) && root.verify(root.publicKey), "the last certificate must be a self-signed root");
          assert.ok(root.raw.equals(f.roots.get(spec) as Buffer), "the root is the fixture's root for this key");
          assert.equal(leaf.ca, false);
          const details = leaf.publicKey.asymmetricKeyDetails;
          assert.equal(leaf.publicKey.asymmetricKeyType, exp.kty);
          assert.equal(exp.kty === "rsa" ? details?.modulusLength : details?.namedCurve, exp.size);

          assert.equal(verifyNotarySignature(payload, sig, leaf.raw, spec), true, "signature does not verify with the leaf key");
          const tampered = Buffer.from(payload);
          tampered.writeUInt8((tampered.at(-1) as number) ^ 1, tampered.length - 1);
          assert.equal(verifyNotarySignature(tampered, sig, leaf.raw, spec), false, "control: a changed payload must not verify");
        });
      }
    });
  }

  describe("pluginConfig key_spec", () => {
    it("describe-key answers from key_spec without calling the service", async () => {
      const endpoint = `127.0.0.1:${await closedPort()}`;
      const out = success(await runPlugin("describe-key", json(requestFor("describe-key", keyIdOf("EC-384"), "EC-384", { endpoint, ca_file: f.tls.caFile, key_spec: "EC-384" }))));
      assert.deepEqual(out, { keyId: keyIdOf("EC-384"), keySpec: "EC-384" });
    });

    it("a key_spec that is not the key's makes generate-signature fail at the service, not sign", async () => {
      const c = { ...cfg, key_spec: "RSA-2048" };
      const d = success(await runPlugin("describe-key", json(requestFor("describe-key", keyIdOf("EC-256"), "RSA-2048", c))));
      assert.equal(d.keySpec, "RSA-2048");
      // notation then asks for an RSA-2048 signature (SHA-256) from what is really an EC-256 key.
      const r = await runPlugin("generate-signature", json(requestFor("generate-signature-jws", keyIdOf("EC-256"), "RSA-2048", c)));
      failure(r, "VALIDATION_ERROR", keyIdOf("EC-256"), "EC-256");
    });

    it("an unknown key_spec → VALIDATION_ERROR", async () => {
      failure(await runPlugin("describe-key", json(requestFor("describe-key", keyIdOf("EC-256"), "EC-256", { ...cfg, key_spec: "RSA-1024" }))), "VALIDATION_ERROR", "key_spec");
    });
  });

  describe("standard input", () => {
    /**
     * Perl (in every Debian: perl-base) gives the plugin a pipe, its read end non-blocking unless
     * `blocking`, and a writer process that waits `delaySeconds` after the plugin started, then
     * writes the request and closes the pipe (or, with `write` false, only holds it open): the
     * first reads of a non-blocking pipe get EAGAIN, those of a blocking one wait.
     */
    const pipedStdin = (delaySeconds: number, write: boolean, blocking = false): { file: string; args: string[] } => ({
      file: "perl",
      args: [
        "-e",
        [
          "use Fcntl;",
          "pipe(my $r, my $w) or die $!;",
          blocking ? "" : "fcntl($r, F_SETFL, fcntl($r, F_GETFL, 0) | O_NONBLOCK) or die $!;",
          "my $req = do { local $/; <STDIN> };",
          "if (fork() == 0) {",
          '  close $r; open(STDOUT, ">", "/dev/null"); open(STDERR, ">", "/dev/null");',
          `  select(undef, undef, undef, ${delaySeconds}); ${write ? "print $w $req;" : ""} close $w; exit 0;`,
          "}",
          'close $w; open(STDIN, "<&", $r) or die $!; exec @ARGV or die $!;',
        ].join(" "),
      ],
    });
    /** The idle limit made short for a test (HSM_SIGNER_PLUGIN_STDIN_IDLE_MS). */
    const SHORT_IDLE_MS = 1000;
    const shortIdle = (): NodeJS.ProcessEnv => ({ ...process.env, HSM_SIGNER_PLUGIN_STDIN_IDLE_MS: String(SHORT_IDLE_MS) });
    /** Gave up at the idle limit, with the error notation shows, not at the writer's end nor after 20 s. */
    const gaveUpAtLimit = (r: PluginResult, limitMs: number, writerMs: number): void => {
      assert.equal(r.timedOut, false, "killed: the plugin hung");
      failure(r, "VALIDATION_ERROR", `no request on standard input for ${limitMs / 1000} s, and it was not closed`);
      assert.ok(r.ms >= limitMs && r.ms < Math.min(limitMs + 5000, writerMs), `gave up after ${r.ms} ms`);
    };

    for (const blocking of [false, true]) {
      it(`a ${blocking ? "blocking" : "non-blocking"} stdin whose writer is late: the plugin waits for the request and reads it to its end`, async () => {
        const endpoint = `127.0.0.1:${await closedPort()}`;
        const request = json(requestFor("describe-key", keyIdOf("EC-384"), "EC-384", { endpoint, ca_file: f.tls.caFile, key_spec: "EC-384" }));
        const r = await runPlugin("describe-key", request, shortIdle(), { prefix: pipedStdin(0.3, true, blocking) });
        assert.deepEqual(success(r), { keyId: keyIdOf("EC-384"), keySpec: "EC-384" });
        assert.ok(r.ms >= 300, `answered after ${r.ms} ms, before the request was written`);
      });
    }

    it("a non-blocking stdin that stays open with nothing in it: VALIDATION_ERROR after 10 s (the default), not a hang", async function () {
      this.timeout(30_000);
      const r = await runPlugin("describe-key", json(requestFor("describe-key", keyIdOf("EC-384"), "EC-384", cfg)), undefined, { prefix: pipedStdin(15, false) });
      gaveUpAtLimit(r, 10_000, 15_000);
    });

    // `sleep 30 | notation-hsm-signer get-plugin-metadata`: a synchronous read of a blocking pipe
    // waited for the writer, however long; the idle limit held only for a non-blocking one.
    it("a blocking pipe that stays open with nothing in it: VALIDATION_ERROR at the idle limit, not a hang", async function () {
      this.timeout(30_000);
      for (const command of ["get-plugin-metadata", "describe-key"]) {
        const r = await runPlugin(command, "", shortIdle(), { prefix: pipedStdin(15, false, true) });
        gaveUpAtLimit(r, SHORT_IDLE_MS, 15_000);
      }
    });

    it("a stdin the caller holds open and never writes (Node's spawn: a socket): VALIDATION_ERROR at the idle limit, not a hang", async function () {
      this.timeout(30_000);
      for (const command of ["get-plugin-metadata", "generate-signature"]) {
        const r = await runPlugin(command, "", shortIdle(), { holdStdin: true });
        gaveUpAtLimit(r, SHORT_IDLE_MS, PLUGIN_KILL_AFTER_MS);
      }
    });

    it("HSM_SIGNER_PLUGIN_STDIN_IDLE_MS that is not a whole number of ms from 1 to 600000 → VALIDATION_ERROR naming it", async () => {
      for (const v of ["abc", "0", "1.5", "600001", "-1"]) {
        failure(await runPlugin("get-plugin-metadata", "{}", { ...process.env, HSM_SIGNER_PLUGIN_STDIN_IDLE_MS: v }), "VALIDATION_ERROR", "HSM_SIGNER_PLUGIN_STDIN_IDLE_MS", `"${v}"`);
      }
    });
  });

  describe("mTLS", () => {
    it("signs with client_cert_file and client_key_file", async () => {
      const c = { endpoint: `127.0.0.1:${mtlsServer.port}`, ca_file: f.tls.caFile, client_cert_file: f.tls.clientCertFile, client_key_file: f.tls.clientKeyFile };
      assert.deepEqual(success(await runPlugin("describe-key", json(requestFor("describe-key", keyIdOf("EC-384"), "EC-384", c)))), { keyId: keyIdOf("EC-384"), keySpec: "EC-384" });
      const req = requestFor("generate-signature-jws", keyIdOf("EC-384"), "EC-384", c);
      const out = success(await runPlugin("generate-signature", json(req)));
      const leaf = certsOf(out.certificateChain)[0] as X509Certificate;
      assert.ok(verifyNotarySignature(Buffer.from(req.payload as string, "base64"), Buffer.from(out.signature as string, "base64"), leaf.raw, "EC-384"));
    });

    it("is refused without a client certificate, naming the endpoint", async () => {
      const endpoint = `127.0.0.1:${mtlsServer.port}`;
      const r = await runPlugin("describe-key", json(requestFor("describe-key", keyIdOf("EC-256"), "EC-256", { endpoint, ca_file: f.tls.caFile })));
      assert.equal(r.code, 1);
      const code = (JSON.parse(r.stderr) as { errorCode: string }).errorCode;
      assert.ok(code === "ACCESS_DENIED" || code === "ERROR", `errorCode ${code}`);
      failure(r, code, endpoint);
      assert.ok(r.ms < 15_000, `took ${r.ms} ms`);
    });
  });

  describe("errors", () => {
    const ek = (): string => keyIdOf("EC-256");

    it("unknown key → VALIDATION_ERROR naming the key (describe-key and generate-signature)", async () => {
      failure(await runPlugin("describe-key", json(requestFor("describe-key", "no-such-key-4711", "EC-256", cfg))), "VALIDATION_ERROR", "no-such-key-4711");
      failure(await runPlugin("generate-signature", json(requestFor("generate-signature-jws", "no-such-key-4711", "EC-256", cfg))), "VALIDATION_ERROR", "no-such-key-4711");
    });

    it('contractVersion "2.0" → UNSUPPORTED_CONTRACT_VERSION', async () => {
      for (const [cmd, name] of [
        ["describe-key", "describe-key"],
        ["generate-signature", "generate-signature-jws"],
      ] as const) {
        const req = requestFor(name, ek(), "EC-256", cfg);
        req.contractVersion = "2.0";
        failure(await runPlugin(cmd, json(req)), "UNSUPPORTED_CONTRACT_VERSION", "2.0");
      }
    });

    it("missing contractVersion → VALIDATION_ERROR", async () => {
      const req = requestFor("describe-key", ek(), "EC-256", cfg);
      delete req.contractVersion;
      failure(await runPlugin("describe-key", json(req)), "VALIDATION_ERROR", "contractVersion");
    });

    it("malformed JSON → VALIDATION_ERROR", async () => {
      const text = json(requestFor("generate-signature-jws", ek(), "EC-256", cfg));
      failure(await runPlugin("describe-key", text.slice(0, 40)), "VALIDATION_ERROR", /JSON/);
      failure(await runPlugin("generate-signature", text.slice(0, text.length - 1)), "VALIDATION_ERROR", /JSON/);
      failure(await runPlugin("describe-key", "[1,2]"), "VALIDATION_ERROR");
    });

    it("empty stdin → VALIDATION_ERROR for describe-key and generate-signature", async () => {
      failure(await runPlugin("describe-key", ""), "VALIDATION_ERROR");
      failure(await runPlugin("generate-signature", ""), "VALIDATION_ERROR");
    });

    it("unreachable endpoint → ERROR naming it, within the retry budget", async () => {
      const endpoint = `127.0.0.1:${await closedPort()}`;
      const r = await runPlugin("describe-key", json(requestFor("describe-key", ek(), "EC-256", { endpoint, ca_file: f.tls.caFile })));
      failure(r, "ERROR", endpoint);
      assert.ok(r.ms < 15_000, `took ${r.ms} ms`);
      const g = await runPlugin("generate-signature", json(requestFor("generate-signature-cose", ek(), "EC-256", { endpoint, ca_file: f.tls.caFile })));
      failure(g, "ERROR", endpoint);
      assert.ok(g.ms < 15_000, `took ${g.ms} ms`);
    });

    it("a server certificate from another CA → ERROR mentioning TLS", async () => {
      const r = await runPlugin("generate-signature", json(requestFor("generate-signature-jws", ek(), "EC-256", { endpoint: cfg.endpoint as string, ca_file: otherCaFile })));
      failure(r, "ERROR", "TLS", cfg.endpoint as string);
    });

    it("a server_name the certificate does not hold → ERROR mentioning TLS", async () => {
      const r = await runPlugin("describe-key", json(requestFor("describe-key", ek(), "EC-256", { ...cfg, server_name: "not-this-server.example" })));
      failure(r, "ERROR", "TLS");
    });

    it("server_name=localhost (in the server certificate) works", async () => {
      const out = success(await runPlugin("describe-key", json(requestFor("describe-key", ek(), "EC-256", { ...cfg, server_name: "localhost" }))));
      assert.equal(out.keySpec, "EC-256");
    });

    it("timeout=1ms → TIMEOUT naming the pluginConfig timeout (the plugin's own deadline)", async () => {
      failure(
        await runPlugin("generate-signature", json(requestFor("generate-signature-jws", keyIdOf("RSA-4096"), "RSA-4096", { ...cfg, timeout: "1ms" }))),
        "TIMEOUT",
        "no answer within the 1 ms timeout (pluginConfig timeout)",
      );
    });

    // The service's own limit (limits.maxDeadlineSeconds, here 0) ends the call long before the
    // plugin's 30 s: a longer pluginConfig timeout would not help, and the service's words do.
    it("a DEADLINE_EXCEEDED the service answers before the plugin's timeout → TIMEOUT with the service's message and request id", async () => {
      const capped = await startTestServer(f, { maxDeadlineMs: 0 });
      try {
        const c = { endpoint: `127.0.0.1:${capped.port}`, ca_file: f.tls.caFile };
        // Sign: a call that takes the HSM a moment, so the service's 0 ms limit always passes first.
        const r = await runPlugin("generate-signature", json(requestFor("generate-signature-jws", keyIdOf("RSA-4096"), "RSA-4096", c)));
        const m = failure(
          r,
          "TIMEOUT",
          /^signing with key "test-rsa-4096" at hsm-signer .* failed \(DEADLINE_EXCEEDED\): the service gave up before the plugin's 30000 ms timeout \(pluginConfig timeout\): the deadline passed .*\[request [0-9a-f]{16}\]$/,
        );
        assert.doesNotMatch(m, /no answer within/);
        assert.ok(r.ms < 10_000, `took ${r.ms} ms`);
      } finally {
        await capped.close(1000);
      }
    });

    it('a secret-like pluginConfig key ("password") → VALIDATION_ERROR mentioning secrets', async () => {
      failure(await runPlugin("describe-key", json(requestFor("describe-key", ek(), "EC-256", { ...cfg, password: "hunter2" }))), "VALIDATION_ERROR", "password", /secret/i);
    });

    it("hashAlgorithm that does not go with keySpec → VALIDATION_ERROR", async () => {
      const req = requestFor("generate-signature-jws", keyIdOf("RSA-2048"), "RSA-2048", cfg);
      req.hashAlgorithm = "SHA-512";
      failure(await runPlugin("generate-signature", json(req)), "VALIDATION_ERROR", "SHA-512");
    });

    it("payload that is not padded standard base64 → VALIDATION_ERROR", async () => {
      const req = requestFor("generate-signature-jws", ek(), "EC-256", cfg);
      const bytes = Buffer.concat([Buffer.from([0xfb, 0xff, 0xfe, 0xfb]), Buffer.from(req.payload as string, "base64")]);
      const url = bytes.toString("base64url");
      assert.ok(/[-_]/.test(url));
      failure(await runPlugin("generate-signature", json({ ...req, payload: url })), "VALIDATION_ERROR", "payload");
      const unpadded = Buffer.from("abcd").toString("base64").replace(/=+$/, "");
      failure(await runPlugin("generate-signature", json({ ...req, payload: unpadded })), "VALIDATION_ERROR", "payload");
    });

    it("unknown command, extra arguments or no command → exit 1 with a JSON error", async () => {
      for (const argv of [["sign"], ["generate-envelope"], [], ["describe-key", "extra"]]) {
        const r = await runPlugin(undefined, json(requestFor("describe-key", ek(), "EC-256", cfg)), undefined, { argv });
        assert.equal(r.code, 1, `argv ${argv.join(" ")}`);
        const code = (JSON.parse(r.stderr) as { errorCode: string }).errorCode;
        assert.ok(ERROR_CODES.includes(code), code);
        failure(r, code, "get-plugin-metadata");
      }
    });
  });

  describe("against a fake hsm_signer.v1 service (what the real server cannot be made to send)", () => {
    interface FakeCall {
      path: string;
      headers: http2.IncomingHttpHeaders;
      body: Buffer;
    }
    interface FakeReply {
      status: number;
      message?: string;
      body?: Buffer;
      extra?: Record<string, string>;
      /** Answer this long after the request, not at once. */
      afterMs?: number;
    }
    const proto = protobuf.loadSync(join(PROJECT_ROOT, "proto/hsm_signer/v1/signer.proto"));
    const msg = (name: string, v: Record<string, unknown>): Buffer => {
      const t = proto.lookupType(`hsm_signer.v1.${name}`);
      return Buffer.from(t.encode(t.fromObject(v)).finish());
    };
    let fake: http2.Http2SecureServer;
    let fakeEndpoint: string;
    let calls: FakeCall[] = [];
    let reply: (c: FakeCall) => FakeReply = () => ({ status: 12, message: "not set" });

    before(async () => {
      fake = http2.createSecureServer({ key: f.tls.serverKey, cert: f.tls.serverCert });
      fake.on("stream", (stream, headers) => {
        const chunks: Buffer[] = [];
        stream.on("data", (c: Buffer) => chunks.push(c));
        stream.on("end", () => {
          const frame = Buffer.concat(chunks);
          const call = { path: String(headers[":path"]), headers, body: frame.subarray(5, 5 + frame.readUInt32BE(1)) };
          calls.push(call);
          const r = reply(call);
          const answer = (): void => {
            if (stream.closed) return;
            if (r.status !== 0) {
              stream.respond({ ":status": 200, "content-type": "application/grpc", "grpc-status": String(r.status), "grpc-message": r.message ?? "", ...r.extra }, { endStream: true });
              return;
            }
            const body = r.body ?? Buffer.alloc(0);
            const out = Buffer.alloc(5 + body.length);
            out.writeUInt32BE(body.length, 1);
            body.copy(out, 5);
            stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
            stream.on("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
            stream.end(out);
          };
          if (r.afterMs === undefined) answer();
          else setTimeout(answer, r.afterMs);
        });
      });
      await new Promise<void>((res) => fake.listen(0, "127.0.0.1", res));
      fakeEndpoint = `127.0.0.1:${(fake.address() as { port: number }).port}`;
    });
    after(async () => {
      await new Promise<void>((res) => fake.close(() => res()));
    });
    beforeEach(() => {
      calls = [];
    });

    const fakeCfg = (): Record<string, string> => ({ endpoint: fakeEndpoint, ca_file: f.tls.caFile });
    const signReq = (spec: KeySpec = "EC-256", c: Record<string, string> = fakeCfg()): string => json(requestFor("generate-signature-jws", "fake-key", spec, c));
    const leafAndRoot = (): Buffer[] => [f.tls.serverCert, f.tls.ca].map((p) => Buffer.from(new X509Certificate(p).raw));
    const okSign = (o: Record<string, unknown> = {}): FakeReply => ({
      status: 0,
      body: msg("SignResponse", {
        keyId: "fake-key",
        signature: Buffer.alloc(64, 1),
        signingAlgorithm: "ECDSA-SHA-256",
        keySpec: "EC-256",
        certificateChain: leafAndRoot(),
        keyVersion: 1,
        requestId: "r1",
        ...o,
      }),
    });

    it("sends a well-formed gRPC Sign call with the decoded payload and the bearer token from token_file", async () => {
      reply = () => okSign();
      const tokenFile = join(tmp, "token");
      writeFileSync(tokenFile, " t0ken.value \n");
      const req = requestFor("generate-signature-cose", "fake-key", "EC-256", { ...fakeCfg(), token_file: tokenFile });
      const out = success(await runPlugin("generate-signature", json(req)));
      assert.equal(out.signature, Buffer.alloc(64, 1).toString("base64"));
      assert.deepEqual(
        out.certificateChain,
        leafAndRoot().map((c) => c.toString("base64")),
      );
      assert.equal(calls.length, 1);
      const c = calls[0] as FakeCall;
      assert.equal(c.path, "/hsm_signer.v1.Signer/Sign");
      assert.equal(c.headers["content-type"], "application/grpc");
      assert.equal(c.headers.te, "trailers");
      assert.equal(c.headers.authorization, "Bearer t0ken.value");
      assert.match(String(c.headers["grpc-timeout"]), /^\d+m$/);
      const t = proto.lookupType("hsm_signer.v1.SignRequest");
      const sent = t.toObject(t.decode(c.body), { oneofs: true, bytes: Buffer, defaults: true }) as Record<string, unknown>;
      assert.equal(sent.keyId, "fake-key");
      assert.equal(sent.input, "payload");
      assert.ok((sent.payload as Buffer).equals(Buffer.from(req.payload as string, "base64")), "the service gets the decoded bytes, not base64");
      assert.equal(sent.hashAlgorithm, "SHA-256");
      assert.equal(sent.keySpec, "EC-256");
    });

    // node:http2 drops a header holding a line break without a word: such a token made the call
    // go out anonymous, and one outside ASCII went out mangled.
    it("a token_file of two lines or with characters outside ASCII → VALIDATION_ERROR naming token_file, nothing sent, the token never shown", async () => {
      reply = () => okSign();
      for (const [name, content, where] of [
        ["token-two-lines", "SECRET-LINE-ONE\nSECRET-LINE-TWO\n", "holds 2 lines"],
        ["token-unicode", "SECRET-é€-token", "a character outside ASCII at character 8"],
      ] as const) {
        const tokenFile = join(tmp, name);
        writeFileSync(tokenFile, content);
        for (const [cmd, req] of [
          ["describe-key", requestFor("describe-key", "fake-key", "EC-256", { ...fakeCfg(), token_file: tokenFile })],
          ["generate-signature", requestFor("generate-signature-jws", "fake-key", "EC-256", { ...fakeCfg(), token_file: tokenFile })],
        ] as const) {
          const r = await runPlugin(cmd, json(req));
          failure(r, "VALIDATION_ERROR", "token_file", tokenFile, where);
          assert.doesNotMatch(r.stderr, /SECRET/, `${cmd}: the token must not be shown`);
        }
      }
      assert.equal(calls.length, 0, "no call goes out, anonymous or not");
    });

    it("token_env: the bearer token comes from the named environment variable; no token, no header", async () => {
      reply = () => ({ status: 0, body: msg("DescribeKeyResponse", { key: { keyId: "fake-key", keySpec: "EC-521" } }) });
      const r = await runPlugin("describe-key", json(requestFor("describe-key", "fake-key", "EC-521", { ...fakeCfg(), token_env: "HSM_SIGNER_E2E_TOKEN" })), {
        ...process.env,
        HSM_SIGNER_E2E_TOKEN: "from-env",
      });
      assert.deepEqual(success(r), { keyId: "fake-key", keySpec: "EC-521" });
      assert.equal(calls[0]?.headers.authorization, "Bearer from-env");
      assert.equal(calls[0]?.path, "/hsm_signer.v1.Signer/DescribeKey");
      success(await runPlugin("describe-key", json(requestFor("describe-key", "fake-key", "EC-521", fakeCfg()))));
      assert.equal(calls[1]?.headers.authorization, undefined);
    });

    it("UNAUTHENTICATED / PERMISSION_DENIED → ACCESS_DENIED with the percent-decoded service message, not retried", async () => {
      for (const status of [16, 7]) {
        calls = [];
        reply = () => ({ status, message: "token expired: caller%20%22ci%22" });
        failure(await runPlugin("generate-signature", signReq()), "ACCESS_DENIED", 'token expired: caller "ci"', fakeEndpoint);
        assert.equal(calls.length, 1, "auth failures are not retried");
      }
    });

    it("INVALID_ARGUMENT → VALIDATION_ERROR, not retried", async () => {
      reply = () => ({ status: 3, message: "payload too large" });
      failure(await runPlugin("generate-signature", signReq()), "VALIDATION_ERROR", "payload too large");
      assert.equal(calls.length, 1);
    });

    it("RESOURCE_EXHAUSTED is retried after retry-after-ms, then THROTTLED", async () => {
      reply = () => ({ status: 8, message: "rate limited", extra: { "retry-after-ms": "50" } });
      const r = await runPlugin("generate-signature", signReq());
      failure(r, "THROTTLED", "rate limited");
      assert.ok(calls.length > 1 && calls.length <= 4, `${calls.length} attempts`);
    });

    // gRPC's own message-size refusal (grpc-js: "Received message larger than max") comes without
    // retry-after-ms: it is not a rate limit, and the same call would meet it again.
    it("RESOURCE_EXHAUSTED without retry-after-ms → ERROR, not retried", async () => {
      reply = () => ({ status: 8, message: "Received message larger than max (5000130 vs. 4194304)" });
      const r = await runPlugin("generate-signature", signReq());
      failure(r, "ERROR", "larger than max");
      assert.equal(calls.length, 1, "not retried");
    });

    it("a 5 MB keyId → VALIDATION_ERROR naming the limit, nothing sent, a short message", async () => {
      reply = () => okSign();
      const keyId = "k".repeat(5_000_000);
      for (const [cmd, name] of [
        ["describe-key", "describe-key"],
        ["generate-signature", "generate-signature-jws"],
      ] as const) {
        const m = failure(await runPlugin(cmd, json(requestFor(name, keyId, "EC-256", fakeCfg()))), "VALIDATION_ERROR", "keyId", "128");
        assert.ok(m.length <= 1000, `${m.length} characters`);
      }
      assert.equal(calls.length, 0, "nothing goes to the service");
    });

    it("a long message from the service is cut to 1000 characters, saying so", async () => {
      reply = () => ({ status: 3, message: `refused: ${"x".repeat(20_000)}` });
      const m = failure(await runPlugin("generate-signature", signReq()), "VALIDATION_ERROR", "refused", /cut to 1000/);
      assert.ok(m.length <= 1000, `${m.length} characters`);
    });

    it("UNAVAILABLE is retried, then ERROR; a success on a retry is a success", async () => {
      reply = () => ({ status: 14, message: "hsm busy" });
      failure(await runPlugin("generate-signature", signReq()), "ERROR", "hsm busy");
      assert.ok(calls.length > 1 && calls.length <= 4, `${calls.length} attempts`);
      calls = [];
      reply = () => (calls.length < 2 ? { status: 14, message: "hsm busy" } : okSign());
      success(await runPlugin("generate-signature", signReq()));
      assert.equal(calls.length, 2);
    });

    // What the real service does when the plugin's deadline (grpc-timeout) is the one that passes:
    // it answers DEADLINE_EXCEEDED a moment before it, so the answer beats the plugin's own timer.
    it("a DEADLINE_EXCEEDED the service answers as the plugin's timeout runs out → TIMEOUT naming the pluginConfig timeout and the service's message", async () => {
      reply = (c) => ({
        status: 4,
        message: "the deadline passed before the answer was ready [request 0123456789abcdef]",
        afterMs: Math.max(0, Number.parseInt(String(c.headers["grpc-timeout"]), 10) - 300),
      });
      const r = await runPlugin("generate-signature", signReq("EC-256", { ...fakeCfg(), timeout: "3s" }));
      failure(r, "TIMEOUT", "the plugin's 3000 ms timeout (pluginConfig timeout) ran out at the service: the deadline passed before the answer was ready [request 0123456789abcdef]");
      assert.equal(calls.length, 1, "not retried");
    });

    it("a signature of the wrong length → ERROR", async () => {
      reply = () => okSign({ signature: Buffer.alloc(72, 1) });
      failure(await runPlugin("generate-signature", signReq()), "ERROR", "72");
    });

    it("an empty certificate chain → ERROR", async () => {
      reply = () => okSign({ certificateChain: [] });
      failure(await runPlugin("generate-signature", signReq()), "ERROR", /chain/);
    });

    it("a key spec at the service other than the request's → VALIDATION_ERROR", async () => {
      reply = () => okSign({ keySpec: "EC-384", signature: Buffer.alloc(96, 1), signingAlgorithm: "ECDSA-SHA-384" });
      failure(await runPlugin("generate-signature", signReq()), "VALIDATION_ERROR", "EC-384");
    });

    it("describe-key: an unknown key spec or no key from the service → ERROR", async () => {
      reply = () => ({ status: 0, body: msg("DescribeKeyResponse", { key: { keyId: "fake-key", keySpec: "RSA-1024" } }) });
      failure(await runPlugin("describe-key", json(requestFor("describe-key", "fake-key", "EC-256", fakeCfg()))), "ERROR", "RSA-1024");
      reply = () => ({ status: 0, body: Buffer.alloc(0) });
      failure(await runPlugin("describe-key", json(requestFor("describe-key", "fake-key", "EC-256", fakeCfg()))), "ERROR");
    });

    // A grpc-message that is not valid percent-encoding (a proxy's text) must not crash the plugin.
    it("a grpc-message with a bare % still gives one JSON error", async () => {
      reply = () => ({ status: 13, message: "disk 100% full" });
      failure(await runPlugin("generate-signature", signReq()), "ERROR", "100");
    });
  });

  describe("production configurations: intermediate CAs, odd settings, huge inputs (issue 11 §3)", () => {
    /** stderr on failure is exactly one JSON object and nothing else, whatever the configuration. */
    const oneJsonObject = (r: PluginResult): Record<string, unknown> => {
      assert.equal(r.timedOut, false, "plugin was killed after 20 s");
      assert.equal(r.code, 1, `exit ${r.code}; stderr: ${clip(r.stderr)}`);
      const e = JSON.parse(r.stderr) as unknown;
      assert.ok(typeof e === "object" && e !== null && !Array.isArray(e), `stderr: ${clip(r.stderr)}`);
      return e as Record<string, unknown>;
    };

    describe("a service certificate from an intermediate CA, only the root in ca_file, the server sending the intermediates", () => {
      let pkiDir: string;
      let root: OpensslCa;
      const servers: RunningServer[] = [];
      const SERVER_EXT = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1";

      before(() => {
        pkiDir = join(tmp, "pki");
        root = OpensslCa.root(pkiDir, { subject: "/O=Example Corp/CN=real-root" });
      });
      after(async () => {
        for (const s of servers) await s.close(1000);
      });

      /** The real hsm-signer gRPC server, its certificate file holding the leaf and then `sent` intermediates. */
      async function serverWithChain(intermediates: OpensslCa[], sent: OpensslCa[]): Promise<RunningServer> {
        const issuer = intermediates[intermediates.length - 1] as OpensslCa;
        const leaf = issuer.leaf({ subject: "/O=Example Corp/CN=localhost", extensions: SERVER_EXT });
        const cert = Buffer.concat([Buffer.from(new X509Certificate(leaf.der).toString()), ...sent.map((c) => Buffer.from(c.certPem))]);
        const s = await startTestServer({ ...f, tls: { ...f.tls, serverCert: cert, serverKey: Buffer.from(leaf.keyPem) } });
        servers.push(s);
        return s;
      }

      for (const depth of [1, 2]) {
        it(`root → ${depth === 1 ? "intermediate" : "int1 → int2"} → server: describe-key and a verifiable signature`, async () => {
          const chain: OpensslCa[] = [];
          for (let i = 0; i < depth; i++) chain.push((chain[i - 1] ?? root).intermediate({ subject: `/O=Example Corp/CN=real-intermediate-${i + 1}` }));
          const s = await serverWithChain(chain, [...chain].reverse());
          const c = { endpoint: `127.0.0.1:${s.port}`, ca_file: root.certFile };
          assert.deepEqual(success(await runPlugin("describe-key", json(requestFor("describe-key", keyIdOf("EC-256"), "EC-256", c)))), { keyId: keyIdOf("EC-256"), keySpec: "EC-256" });
          const req = requestFor("generate-signature-jws", keyIdOf("EC-256"), "EC-256", { ...c, server_name: "localhost" });
          const out = success(await runPlugin("generate-signature", json(req)));
          const leaf = certsOf(out.certificateChain)[0] as X509Certificate;
          assert.ok(verifyNotarySignature(Buffer.from(req.payload as string, "base64"), Buffer.from(out.signature as string, "base64"), leaf.raw, "EC-256"));
        });
      }

      it("control: the same server without its intermediate in the certificate file is refused, naming where the chain stopped", async () => {
        const int = root.intermediate({ subject: "/O=Example Corp/CN=real-intermediate" });
        const s = await serverWithChain([int], []);
        const r = await runPlugin("describe-key", json(requestFor("describe-key", keyIdOf("EC-256"), "EC-256", { endpoint: `127.0.0.1:${s.port}`, ca_file: root.certFile })));
        failure(r, "ERROR", "not issued by a CA in ca_file", "real-intermediate");
      });

      it("hsm-signer serve with tls.certFile holding leaf + intermediates sends them (the service as a process)", async function () {
        this.timeout(120_000);
        const int1 = root.intermediate({ subject: "/O=Example Corp/CN=svc-int-1" });
        const int2 = int1.intermediate({ subject: "/O=Example Corp/CN=svc-int-2" });
        const leaf = int2.leaf({ subject: "/O=Example Corp/CN=localhost", extensions: SERVER_EXT });
        const tlsDir = join(tmp, "chain-tls");
        mkdirSync(tlsDir, { recursive: true });
        writeFileSync(join(tlsDir, "server.pem"), new X509Certificate(leaf.der).toString() + int2.certPem + int1.certPem);
        writeFileSync(join(tlsDir, "server-key.pem"), leaf.keyPem, { mode: 0o600 });
        const svc = await startServiceProcess({
          name: "chain-svc",
          dir: tmp,
          token: f.token,
          tls: { ...f.tls, dir: tlsDir },
          policy: 'rules:\n  - name: tests\n    match: { mtls: "*" }\n    keys: ["*"]\n',
        });
        try {
          const c = { endpoint: `127.0.0.1:${svc.port}`, ca_file: root.certFile, client_cert_file: f.tls.clientCertFile, client_key_file: f.tls.clientKeyFile };
          assert.deepEqual(success(await runPlugin("describe-key", json(requestFor("describe-key", keyIdOf("EC-384"), "EC-384", c)))), { keyId: keyIdOf("EC-384"), keySpec: "EC-384" });
        } finally {
          await svc.stop();
        }
      });
    });

    describe("nothing but the one JSON object ever reaches stderr", () => {
      it("server_name=127.0.0.1 (an IP address, with ca_file): signs, and stderr stays empty (no DEP0123)", async () => {
        const req = requestFor("generate-signature-jws", keyIdOf("EC-256"), "EC-256", { ...cfg, server_name: "127.0.0.1" });
        success(await runPlugin("generate-signature", json(req)));
        success(await runPlugin("describe-key", json(requestFor("describe-key", keyIdOf("EC-256"), "EC-256", { ...cfg, server_name: "127.0.0.1" }))));
      });

      it("server_name=127.0.0.1 under NODE_OPTIONS=--throw-deprecation --trace-warnings --pending-deprecation: still signs", async () => {
        const env = { ...process.env, NODE_OPTIONS: "--throw-deprecation --trace-warnings --trace-deprecation --pending-deprecation" };
        success(await runPlugin("describe-key", json(requestFor("describe-key", keyIdOf("EC-256"), "EC-256", { ...cfg, server_name: "127.0.0.1" })), env));
      });

      it("odd configurations fail with exactly one JSON object on stderr", async () => {
        const port = await closedPort();
        const runs: [string, Record<string, string>, NodeJS.ProcessEnv?][] = [
          ["server_name an IP the certificate lacks", { ...cfg, server_name: "127.0.0.2" }],
          ["server_name an IP, no ca_file (system roots)", { endpoint: cfg.endpoint as string, server_name: "127.0.0.1" }],
          ["server_name an IPv6 address", { ...cfg, server_name: "::1" }],
          ["an IPv6 endpoint nobody listens on", { endpoint: `[::1]:${port}`, ca_file: f.tls.caFile, server_name: "::1" }],
          ["NODE_TLS_REJECT_UNAUTHORIZED=0 without ca_file", { endpoint: cfg.endpoint as string }, { ...process.env, NODE_TLS_REJECT_UNAUTHORIZED: "0" }],
          ["NODE_OPTIONS with warnings on", { ...cfg, server_name: "127.0.0.2" }, { ...process.env, NODE_OPTIONS: "--trace-warnings --trace-deprecation --pending-deprecation --trace-uncaught" }],
          ["a ca_file that is not PEM", { ...cfg, ca_file: f.tls.clientKeyFile }],
          ["a timeout of 1ms with server_name an IP", { ...cfg, server_name: "127.0.0.1", timeout: "1ms" }],
        ];
        for (const [what, c, env] of runs) {
          const r = await runPlugin("describe-key", json(requestFor("describe-key", keyIdOf("EC-256"), "EC-256", c)), env);
          const e = oneJsonObject(r);
          assert.ok(typeof e.errorMessage === "string" && e.errorMessage.length > 0, `${what}: ${r.stderr}`);
          assert.equal(r.stdout, "", what);
        }
      });

      it("NODE_TLS_REJECT_UNAUTHORIZED=0 does not turn off the service's certificate check", async () => {
        const r = await runPlugin("describe-key", json(requestFor("describe-key", keyIdOf("EC-256"), "EC-256", { endpoint: cfg.endpoint as string })), {
          ...process.env,
          NODE_TLS_REJECT_UNAUTHORIZED: "0",
        });
        failure(r, "ERROR", "TLS");
      });
    });

    describe("pluginConfig files that are not regular files, or too large", () => {
      const bad: Record<string, () => string> = {
        "a FIFO": () => {
          const p = join(tmp, `fifo-${Math.random().toString(16).slice(2)}`);
          execFileSync("mkfifo", [p]);
          return p;
        },
        "/dev/zero": () => "/dev/zero",
        "/dev/urandom": () => "/dev/urandom",
        "a 2 MiB file": () => {
          const p = join(tmp, "big.pem");
          writeFileSync(p, Buffer.alloc(2 * 1024 * 1024, 0x41));
          return p;
        },
        "a directory": () => tmp,
      };
      for (const key of ["ca_file", "client_cert_file", "client_key_file", "token_file"]) {
        it(`${key}: VALIDATION_ERROR naming ${key}, well within the timeout, for ${Object.keys(bad).join(", ")}`, async () => {
          for (const [what, make] of Object.entries(bad)) {
            const c: Record<string, string> = { ...cfg, timeout: "3s", client_cert_file: f.tls.clientCertFile, client_key_file: f.tls.clientKeyFile, [key]: make() };
            const r = await runPlugin("describe-key", json(requestFor("describe-key", keyIdOf("EC-256"), "EC-256", c)));
            failure(r, "VALIDATION_ERROR", key, c[key] as string);
            assert.ok(r.ms < 10_000, `${what}: took ${r.ms} ms`);
          }
        });
      }
    });

    describe("huge inputs", () => {
      it("a 4 MiB payload → VALIDATION_ERROR naming the limit (not a stack overflow)", async () => {
        const req = requestFor("generate-signature-jws", keyIdOf("EC-256"), "EC-256", cfg);
        for (const size of [4 * 1024 * 1024, 1024 * 1024 + 1]) {
          const m = failure(await runPlugin("generate-signature", json({ ...req, payload: randomBytes(size).toString("base64") })), "VALIDATION_ERROR", "payload", "1048576");
          assert.doesNotMatch(m, /call stack/);
        }
      });

      it("a payload of exactly 1 MiB is signed", async function () {
        const req = requestFor("generate-signature-jws", keyIdOf("EC-256"), "EC-256", cfg);
        const payload = randomBytes(1024 * 1024);
        const out = success(await runPlugin("generate-signature", json({ ...req, payload: payload.toString("base64") })));
        const leaf = certsOf(out.certificateChain)[0] as X509Certificate;
        assert.ok(verifyNotarySignature(payload, Buffer.from(out.signature as string, "base64"), leaf.raw, "EC-256"));
      });

      it("a 5 MB keyId against the real service → VALIDATION_ERROR at once (not THROTTLED and retried), a short message", async () => {
        const r = await runPlugin("generate-signature", json(requestFor("generate-signature-jws", "k".repeat(5_000_000), "EC-256", cfg)));
        const m = failure(r, "VALIDATION_ERROR", "keyId");
        assert.ok(m.length <= 1000, `${m.length} characters`);
      });

      it("a 3 MB keySpec or hashAlgorithm → VALIDATION_ERROR of at most 1000 characters", async () => {
        const req = requestFor("generate-signature-jws", keyIdOf("EC-256"), "EC-256", cfg);
        for (const field of ["keySpec", "hashAlgorithm", "contractVersion"]) {
          const r = await runPlugin("generate-signature", json({ ...req, [field]: "x".repeat(3_000_000) }));
          const e = oneJsonObject(r);
          assert.ok(String(e.errorMessage).length <= 1000, `${field}: ${String(e.errorMessage).length} characters`);
          assert.match(String(e.errorMessage), field === "contractVersion" ? /contract version/ : new RegExp(field));
        }
      });
    });
  });

  describe("installation and TLS set-up problems", () => {
    // tls.connect throws synchronously on a key that does not match its certificate.
    it("a client key that does not match client_cert_file gives a useful error", async () => {
      const c = { endpoint: `127.0.0.1:${mtlsServer.port}`, ca_file: f.tls.caFile, client_cert_file: f.tls.clientCertFile, client_key_file: join(tmp, "other-ca-key.pem") };
      const r = await runPlugin("describe-key", json(requestFor("describe-key", keyIdOf("EC-256"), "EC-256", c)));
      const m = failure(r, (JSON.parse(r.stderr) as { errorCode: string }).errorCode, /key/i);
      assert.doesNotMatch(m, /before initialization/);
    });

    // The bundle is CommonJS in an extension-less file: below a "type":"module" package.json Node
    // runs it as ESM, where the banner supplies require for the built-ins.
    it('works when installed below a package.json with "type":"module"', async () => {
      const dir = join(tmp, "esm-scope/plugins/hsm-signer");
      mkdirSync(dir, { recursive: true });
      writeFileSync(join(tmp, "esm-scope/package.json"), '{"type":"module"}\n');
      writeFileSync(join(dir, "notation-hsm-signer"), readFileSync(PLUGIN_PATH), { mode: 0o755 });
      success(await runPlugin("get-plugin-metadata", "{}", undefined, { executable: join(dir, "notation-hsm-signer") }));
    });
  });

  describe("packaging", () => {
    it("package-plugin.mjs makes a tar.gz with one executable notation-hsm-signer and a matching .sha256", async function () {
      this.timeout(60_000);
      execFileSync(process.execPath, [join(PROJECT_ROOT, "scripts/package-plugin.mjs")], { stdio: "ignore" });
      const archive = join(PROJECT_ROOT, `dist/notation-hsm-signer_${PKG_VERSION}.tar.gz`);
      assert.ok(existsSync(archive));
      const listing = execFileSync("tar", ["-tvzf", archive], { encoding: "utf8" }).trim().split("\n");
      assert.equal(listing.length, 1, listing.join("\n"));
      const line = listing[0] as string;
      assert.match(line, /^-..x/, `not a regular file with u+x: ${line}`);
      assert.equal(line.split(/\s+/).pop(), "notation-hsm-signer");

      const sum = createHash("sha256").update(readFileSync(archive)).digest("hex");
      const sumFile = readFileSync(`${archive}.sha256`, "utf8");
      assert.match(sumFile, /^[0-9a-f]{64} {2}\S+\n?$/);
      assert.equal(sumFile.slice(0, 64), sum);
      assert.equal(sumFile.trim().split(/\s+/)[1], `notation-hsm-signer_${PKG_VERSION}.tar.gz`);

      // What notation plugin install does with it: flatten into plugins/<name>/ and run
      // get-plugin-metadata from there; the name must equal the directory name.
      const dir = join(tmp, "plugins/hsm-signer");
      mkdirSync(dir, { recursive: true });
      execFileSync("tar", ["-xzf", archive, "-C", dir]);
      const installed = join(dir, "notation-hsm-signer");
      assert.ok(statSync(installed).mode & 0o100);
      const r = await runPlugin("get-plugin-metadata", "{}", undefined, { executable: installed });
      assert.equal(success(r).name, "hsm-signer");
    });
  });
  describe("standalone package (Node single executable, for hosts without Node)", function () {
    this.timeout(300_000);
    let exe: string;
    const STANDALONE = `dist/notation-hsm-signer_${PKG_VERSION}_linux_${process.arch === "x64" ? "amd64" : process.arch}.tar.gz`;
    /** The one executable of a package, as notation plugin install takes it out (ustar: a 512-byte header, then the file). */
    const unpack = (gz: Buffer, to: string): void => {
      const tar = gunzipSync(gz);
      assert.equal(tar.subarray(0, 100).toString("latin1").replace(/\0+$/, ""), "notation-hsm-signer");
      const size = Number.parseInt(tar.subarray(124, 136).toString("latin1"), 8);
      writeFileSync(to, tar.subarray(512, 512 + size), { mode: 0o755 });
    };
    const packStandalone = (): Buffer => {
      execFileSync(process.execPath, [join(PROJECT_ROOT, "scripts/package-plugin.mjs"), "--standalone"], { stdio: "ignore", timeout: 240_000 });
      const gz = readFileSync(join(PROJECT_ROOT, STANDALONE));
      assert.equal(readFileSync(join(PROJECT_ROOT, `${STANDALONE}.sha256`), "utf8").split(" ")[0], createHash("sha256").update(gz).digest("hex"));
      return gz;
    };

    before(function () {
      // A Node built without single-executable support (some distributions' packages) lacks the fuse.
      if (!readFileSync(process.execPath).includes("NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2")) {
        console.log(`      (skipped: ${process.execPath} has no single-executable fuse)`);
        this.skip();
      }
      const gz = packStandalone();
      exe = join(tmp, "standalone", "notation-hsm-signer");
      mkdirSync(join(tmp, "standalone"));
      unpack(gz, exe);
    });

    it("signs and describes with no node on PATH, answering as the bundle does", async () => {
      const env = { PATH: "/nonexistent" };
      const meta = success(await runPlugin("get-plugin-metadata", "{}", env, { executable: exe }));
      assert.deepEqual(meta, success(await runPlugin("get-plugin-metadata", "{}")));
      const keyId = keyIdOf("EC-256");
      assert.deepEqual(success(await runPlugin("describe-key", json(requestFor("describe-key", keyId, "EC-256", cfg)), env, { executable: exe })), { keyId, keySpec: "EC-256" });
      const req = requestFor("generate-signature-jws", keyId, "EC-256", cfg);
      const out = success(await runPlugin("generate-signature", json(req), env, { executable: exe }));
      const leaf = certsOf(out.certificateChain)[0] as X509Certificate;
      assert.equal(verifyNotarySignature(Buffer.from(req.payload as string, "base64"), Buffer.from(out.signature as string, "base64"), leaf.raw, "EC-256"), true);
      // Its errors are the plugin's too: a JSON error on stderr and exit 1.
      failure(await runPlugin("describe-key", "{ not json", env, { executable: exe }), "VALIDATION_ERROR");
    });

    it("packaging again with the same Node gives the same bytes", () => {
      const first = createHash("sha256")
        .update(readFileSync(join(PROJECT_ROOT, STANDALONE)))
        .digest("hex");
      assert.equal(createHash("sha256").update(packStandalone()).digest("hex"), first);
    });
  });
});
