import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { status as grpcStatus } from "@grpc/grpc-js";
import { Status } from "../../src/client/grpc-http2-client.js";
import { PluginError } from "../../src/plugin/contract.js";
import { DEFAULT_TIMEOUT_MS, MAX_CONFIG_FILE_BYTES, parsePluginConfig, type PluginSettings } from "../../src/plugin/plugin-config.js";
import { isPaddedBase64 } from "../../src/plugin/commands.js";
import { boundMessage, MAX_ERROR_MESSAGE_LENGTH } from "../../src/plugin/contract.js";
import { pluginCodeOf } from "../../src/plugin/remote-signer.js";

/** Asserts that fn throws a PluginError with this code whose message mentions every string given. */
function rejects(fn: () => unknown, code: string, ...mentions: (string | RegExp)[]): string {
  let caught: unknown;
  try {
    fn();
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof PluginError, `expected a PluginError, got ${String(caught)}`);
  assert.equal(caught.errorCode, code, caught.message);
  for (const m of mentions) {
    if (typeof m === "string") assert.ok(caught.message.includes(m), `message should mention ${JSON.stringify(m)}: ${caught.message}`);
    else assert.match(caught.message, m);
  }
  return caught.message;
}

describe("plugin pluginConfig parsing (parsePluginConfig)", () => {
  let dir: string;
  const EP = { endpoint: "signer.example.com:8443" };
  const parse = (c: Record<string, unknown> | undefined, env: NodeJS.ProcessEnv = {}): PluginSettings => parsePluginConfig(c, env);

  before(() => {
    dir = mkdtempSync(join(tmpdir(), "hsm-signer-plugin-config-"));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  const file = (name: string, content: string): string => {
    const p = join(dir, name);
    writeFileSync(p, content);
    return p;
  };

  describe("endpoint", () => {
    it("is required", () => {
      rejects(() => parse(undefined), "VALIDATION_ERROR", "endpoint");
      rejects(() => parse({}), "VALIDATION_ERROR", "endpoint");
      rejects(() => parse({ endpoint: "" }), "VALIDATION_ERROR", "endpoint");
      rejects(() => parse({ ca_file: "/x" }), "VALIDATION_ERROR", "endpoint");
    });

    it("accepts host:port, IPv4:port and [IPv6]:port", () => {
      for (const endpoint of ["signer.example.com:8443", "localhost:1", "127.0.0.1:50051", "[::1]:8443", "[2001:db8::1]:443", "a-b.c:65535"]) {
        assert.equal(parse({ endpoint }).endpoint, endpoint);
      }
    });

    it("rejects anything else, naming the value", () => {
      for (const endpoint of [
        "signer.example.com",
        "signer.example.com:",
        ":8443",
        "https://signer.example.com:8443",
        "signer.example.com:https",
        "host:123456",
        "a b:1",
        "::1:8443",
        "host:8443/path",
      ]) {
        rejects(() => parse({ endpoint }), "VALIDATION_ERROR", endpoint);
      }
    });
  });

  it("endpoint ports outside 1..65535 are rejected", () => {
    for (const endpoint of ["host:0", "host:65536", "host:99999"]) rejects(() => parse({ endpoint }), "VALIDATION_ERROR", endpoint);
  });

  describe("keys", () => {
    it("unknown keys are rejected and named, with the list of known keys", () => {
      const msg = rejects(() => parse({ ...EP, endpiont: "x" }), "VALIDATION_ERROR", '"endpiont"', "ca_file", "token_file");
      assert.doesNotMatch(msg, /secret/i, "a plain typo gets no secrets hint");
      rejects(() => parse({ ...EP, insecure: "true" }), "VALIDATION_ERROR", "insecure");
    });

    it("secret-like names get the secrets hint", () => {
      for (const k of ["password", "pin", "PIN", "user_pin", "token", "api_token", "client_secret", "secret", "private_key", "key"]) {
        rejects(() => parse({ ...EP, [k]: "s3cr3t" }), "VALIDATION_ERROR", `"${k}"`, /secrets/i, "token_file");
      }
    });

    it("values must be strings", () => {
      rejects(() => parse({ ...EP, timeout: 30 }), "VALIDATION_ERROR", "timeout");
      rejects(() => parse({ endpoint: ["a:1"] }), "VALIDATION_ERROR", "endpoint");
    });

    it("a minimal config gets the defaults", () => {
      assert.deepEqual(parse(EP), {
        endpoint: EP.endpoint,
        ca: undefined,
        cert: undefined,
        key: undefined,
        serverName: undefined,
        timeoutMs: DEFAULT_TIMEOUT_MS,
        token: undefined,
        keySpec: undefined,
      });
      assert.equal(DEFAULT_TIMEOUT_MS, 30_000);
    });

    it("key_spec is checked and passed on", () => {
      assert.equal(parse({ ...EP, key_spec: "EC-384" }).keySpec, "EC-384");
      assert.throws(() => parse({ ...EP, key_spec: "EC-192" }), /key_spec "EC-192"/);
    });

    it("server_name is passed on", () => {
      assert.equal(parse({ ...EP, server_name: "hsm-signer.internal" }).serverName, "hsm-signer.internal");
    });
  });

  describe("files", () => {
    it("ca_file is read", () => {
      const p = file("ca.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n");
      assert.equal(parse({ ...EP, ca_file: p }).ca?.toString(), "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n");
    });

    it("an unreadable ca_file → VALIDATION_ERROR naming the path", () => {
      const missing = join(dir, "no-such-ca.pem");
      rejects(() => parse({ ...EP, ca_file: missing }), "VALIDATION_ERROR", missing, "ca_file");
      rejects(() => parse({ ...EP, ca_file: dir }), "VALIDATION_ERROR", dir); // a directory
      if (process.getuid?.() !== 0) {
        const locked = file("locked.pem", "x");
        chmodSync(locked, 0o000);
        rejects(() => parse({ ...EP, ca_file: locked }), "VALIDATION_ERROR", locked);
      }
    });

    it("only regular files of at most 1 MiB: a FIFO, /dev/zero, /dev/urandom, a larger file are refused at once, naming the setting", () => {
      const fifo = join(dir, "fifo");
      execFileSync("mkfifo", [fifo]);
      const big = file("big.pem", "A".repeat(MAX_CONFIG_FILE_BYTES + 1));
      const exact = file("exact.pem", "A".repeat(MAX_CONFIG_FILE_BYTES));
      const cert = file("pair-cert.pem", "CERT");
      const key = file("pair-key.pem", "KEY");
      for (const k of ["ca_file", "client_cert_file", "client_key_file", "token_file"]) {
        const cfg = (p: string): Record<string, string> => ({ ...EP, client_cert_file: cert, client_key_file: key, [k]: p });
        rejects(() => parse(cfg(fifo)), "VALIDATION_ERROR", k, fifo, "FIFO");
        rejects(() => parse(cfg("/dev/zero")), "VALIDATION_ERROR", k, "/dev/zero", "character device");
        rejects(() => parse(cfg("/dev/urandom")), "VALIDATION_ERROR", k, "/dev/urandom", "not a regular file");
        rejects(() => parse(cfg(big)), "VALIDATION_ERROR", k, big, "1 MiB");
        assert.doesNotThrow(() => parse(cfg(exact)), `${k}: a file of exactly 1 MiB`);
      }
      assert.equal(parse({ ...EP, ca_file: exact }).ca?.length, MAX_CONFIG_FILE_BYTES);
    });

    it("client_cert_file and client_key_file go together", () => {
      const cert = file("client.pem", "CERT");
      const key = file("client-key.pem", "KEY");
      rejects(() => parse({ ...EP, client_cert_file: cert }), "VALIDATION_ERROR", "client_cert_file", "client_key_file");
      rejects(() => parse({ ...EP, client_key_file: key }), "VALIDATION_ERROR", "client_cert_file", "client_key_file");
      const s = parse({ ...EP, client_cert_file: cert, client_key_file: key });
      assert.equal(s.cert?.toString(), "CERT");
      assert.equal(s.key?.toString(), "KEY");
      rejects(() => parse({ ...EP, client_cert_file: cert, client_key_file: join(dir, "nope-key.pem") }), "VALIDATION_ERROR", join(dir, "nope-key.pem"));
    });
  });

  describe("timeout", () => {
    const cases: [string, number][] = [
      ["30", 30_000],
      ["30s", 30_000],
      ["1500ms", 1500],
      ["2m", 120_000],
      ["1ms", 1],
      ["0.5s", 500],
      ["10m", 600_000],
    ];
    for (const [v, ms] of cases) {
      it(`"${v}" → ${ms} ms`, () => assert.equal(parse({ ...EP, timeout: v }).timeoutMs, ms));
    }

    it("bad values are rejected, naming the value", () => {
      for (const v of ["abc", "30x", "-1", "0", "0s", "0ms", "1h", "11m", "600001ms", "1.2.3", "s", "30 s", "1e3"]) {
        rejects(() => parse({ ...EP, timeout: v }), "VALIDATION_ERROR", `"${v}"`);
      }
    });
  });

  describe("token_file / token_env", () => {
    it("token_file is read and trimmed", () => {
      assert.equal(parse({ ...EP, token_file: file("token", "  eyJ.token.sig \n") }).token, "eyJ.token.sig");
    });

    it("an unreadable token_file → VALIDATION_ERROR naming the path", () => {
      const missing = join(dir, "no-token");
      rejects(() => parse({ ...EP, token_file: missing }), "VALIDATION_ERROR", missing, "token_file");
    });

    it("a token_file that is not one line of RFC 6750 token characters → VALIDATION_ERROR naming token_file, the path and where, never the token", () => {
      const cases: [string, string, (string | RegExp)[]][] = [
        ["two lines", "SECRETLINE1\nSECRETLINE2\n", ["holds 2 lines"]],
        ["CRLF lines", "SECRETLINE1\r\nSECRETLINE2\r\nSECRETLINE3", ["holds 3 lines"]],
        ["a blank line between", "SECRETLINE1\n\nSECRETLINE2", ["holds 3 lines"]],
        ["characters outside ASCII", "SECRET-é€-token", ["a character outside ASCII at character 8;"]],
        ["an inner space", "SECRET token", ["a space or tab at character 7;"]],
        ["an inner tab, after leading spaces", "  SECRET\ttoken\n", ["a space or tab at character 7 (after 2 leading whitespace characters)"]],
        ["a control character", "SECRET\u0000token", ["a control character at character 7;"]],
        ["a DEL", "SECRET\u007ftoken", ["a control character at character 7;"]],
        ["a comma", "SECRET,token", ["not allow in a token at character 7;"]],
        ["a quote", 'SECRET"token', ["not allow in a token at character 7;"]],
        ["an = before the end", "SECRET==token", ["an = (allowed only as padding at the end) at character 7;"]],
        ["only =", "==", ["at character 1;"]],
      ];
      for (const [what, content, mentions] of cases) {
        const p = file(`bad-token-${what.replace(/\W+/g, "-")}`, content);
        const m = rejects(() => parse({ ...EP, token_file: p }), "VALIDATION_ERROR", "token_file", p, "RFC 6750", ...mentions);
        assert.doesNotMatch(m, /SECRET/, `${what}: the token must not be echoed`);
      }
    });

    it("a token of every RFC 6750 token character, with = padding, is taken as it is", () => {
      const t = "AZaz09-._~+/x==";
      assert.equal(parse({ ...EP, token_file: file("b64token", `${t}\n`) }).token, t);
      assert.equal(parse({ ...EP, token_file: file("jwt", "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJjaSJ9.c2ln\r\n") }).token, "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJjaSJ9.c2ln");
    });

    it("token_env holding more than one line or other characters → VALIDATION_ERROR naming the variable, never its value", () => {
      const m1 = rejects(() => parse({ ...EP, token_env: "HSM_SIGNER_TOKEN" }, { HSM_SIGNER_TOKEN: "SECRETLINE1\nSECRETLINE2" }), "VALIDATION_ERROR", "token_env", "HSM_SIGNER_TOKEN", "holds 2 lines");
      const m2 = rejects(() => parse({ ...EP, token_env: "HSM_SIGNER_TOKEN" }, { HSM_SIGNER_TOKEN: "SECRET€" }), "VALIDATION_ERROR", "HSM_SIGNER_TOKEN", "outside ASCII at character 7");
      for (const m of [m1, m2]) assert.doesNotMatch(m, /SECRET/);
    });

    it("an empty token_file gives no token", () => {
      assert.equal(parse({ ...EP, token_file: file("empty-token", "\n") }).token, undefined);
    });

    it("token_env reads the named variable, trimmed", () => {
      assert.equal(parse({ ...EP, token_env: "HSM_SIGNER_TOKEN" }, { HSM_SIGNER_TOKEN: " abc.def \n" }).token, "abc.def");
    });

    it("token_env naming a missing or empty variable → VALIDATION_ERROR naming it", () => {
      rejects(() => parse({ ...EP, token_env: "HSM_SIGNER_TOKEN" }, {}), "VALIDATION_ERROR", "HSM_SIGNER_TOKEN");
      rejects(() => parse({ ...EP, token_env: "HSM_SIGNER_TOKEN" }, { HSM_SIGNER_TOKEN: "  " }), "VALIDATION_ERROR", "HSM_SIGNER_TOKEN");
    });

    it("a token_env value that is no variable's name (the token pasted there) is not echoed", () => {
      const m = rejects(() => parse({ ...EP, token_env: "eyJhbGciOiJFUzI1NiJ9.SECRET.sig" }, {}), "VALIDATION_ERROR", "token_env", "give the NAME of the variable");
      assert.doesNotMatch(m, /SECRET/);
    });

    it("uses the env passed in, not process.env by accident", () => {
      const name = "HSM_SIGNER_UNIT_TEST_ONLY_IN_PROCESS_ENV";
      process.env[name] = "from-process";
      try {
        rejects(() => parse({ ...EP, token_env: name }, {}), "VALIDATION_ERROR", name);
        assert.equal(parsePluginConfig({ ...EP, token_env: name }).token, "from-process");
      } finally {
        delete process.env[name];
      }
    });

    it("token_file and token_env together → VALIDATION_ERROR", () => {
      rejects(() => parse({ ...EP, token_file: file("t2", "x"), token_env: "T" }, { T: "y" }), "VALIDATION_ERROR", "token_file", "token_env");
    });
  });
});

describe("gRPC status → notation error code (pluginCodeOf, protocol §4)", () => {
  // Numbers from grpc/doc/statuscodes.md, written out so a renumbered Status constant is caught.
  const TABLE: [number, string, string][] = [
    [0, "OK", "ERROR"],
    [1, "CANCELLED", "ERROR"],
    [2, "UNKNOWN", "ERROR"],
    [3, "INVALID_ARGUMENT", "VALIDATION_ERROR"],
    [4, "DEADLINE_EXCEEDED", "TIMEOUT"],
    [5, "NOT_FOUND", "VALIDATION_ERROR"],
    [6, "ALREADY_EXISTS", "ERROR"],
    [7, "PERMISSION_DENIED", "ACCESS_DENIED"],
    [8, "RESOURCE_EXHAUSTED", "THROTTLED"],
    [9, "FAILED_PRECONDITION", "VALIDATION_ERROR"],
    [10, "ABORTED", "ERROR"],
    [11, "OUT_OF_RANGE", "ERROR"],
    [12, "UNIMPLEMENTED", "ERROR"],
    [13, "INTERNAL", "ERROR"],
    [14, "UNAVAILABLE", "ERROR"],
    [15, "DATA_LOSS", "ERROR"],
    [16, "UNAUTHENTICATED", "ACCESS_DENIED"],
  ];

  for (const [n, name, code] of TABLE) {
    it(`${n} ${name} → ${code}`, () => {
      assert.equal(pluginCodeOf(n), code);
      assert.equal(Status[name as keyof typeof Status], n, "the client's Status constant");
      assert.equal(grpcStatus[name as keyof typeof grpcStatus], n, "@grpc/grpc-js agrees");
    });
  }

  it("the client's Status table has exactly the 17 codes", () => {
    assert.deepEqual(
      Object.values(Status).sort((a, b) => a - b),
      TABLE.map(([n]) => n),
    );
  });

  it("codes outside the table → ERROR", () => {
    for (const n of [17, 99, -1]) assert.equal(pluginCodeOf(n), "ERROR");
  });
});

describe("plugin request checks", () => {
  it("isPaddedBase64 agrees with padded standard base64, on 5 MiB as well (no regular-expression stack)", () => {
    for (const n of [0, 1, 2, 3, 4, 5, 100]) assert.equal(isPaddedBase64(Buffer.alloc(n, 0xfb).toString("base64")), true, `${n} bytes`);
    for (const bad of ["a", "ab=", "abc", "ab=c", "a===", "====", "ab-_", "YWJj ", "YW\nJj", Buffer.from([0xfb, 0xff]).toString("base64url")])
      assert.equal(isPaddedBase64(bad), false, JSON.stringify(bad));
    assert.equal(isPaddedBase64(Buffer.alloc(5 * 1024 * 1024, 7).toString("base64")), true);
  });

  it("boundMessage keeps short messages and cuts long ones to the limit, saying so", () => {
    assert.equal(boundMessage("short"), "short");
    const exact = "y".repeat(MAX_ERROR_MESSAGE_LENGTH);
    assert.equal(boundMessage(exact), exact);
    const cut = boundMessage("x".repeat(5_000_130));
    assert.ok(cut.length <= MAX_ERROR_MESSAGE_LENGTH);
    assert.match(cut, /5000130 characters, cut to 1000/);
  });
});
