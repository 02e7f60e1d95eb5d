import assert from "node:assert/strict";
import { mtlsIdentity, type CallerIdentity } from "../../src/auth/identity.js";
import { Policy, PolicyInvalidError, SIGNER_METHODS } from "../../src/auth/policy.js";
import { SignerError } from "../../src/errors/index.js";

const GH = "https://token.actions.githubusercontent.com";

/** A caller named by a URI SAN (mtlsIdentity("dns" | "cn", ...) for the other kinds). */
const mtls = (id: string): CallerIdentity => mtlsIdentity("uri", id);
const jwt = (issuer: string, claims: Record<string, unknown>): CallerIdentity => {
  const sub = typeof claims.sub === "string" ? claims.sub : "someone";
  return { kind: "jwt", id: `${issuer}#${sub}`, subject: sub, issuer, claims: { iss: issuer, sub, ...claims } };
};
const anonymous: CallerIdentity = { kind: "anonymous", id: "anonymous", subject: "anonymous" };

/** The example policy of the issue, with allowAnonymousOnLoopback so that the local-dev rule is valid. */
const EXAMPLE = `
keysPublic: false
allowAnonymousOnLoopback: true
custodians:
  - { mtls: "spiffe://corp/custodian/*" }
  - jwt: { issuer: "${GH}", claims: { repository: "corp/keys", environment: production } }
rateLimits:
  perIdentity: { ratePerSecond: 50, burst: 100 }
  perKey: { ratePerSecond: 200, burst: 400 }
rules:
  - name: ci-release
    match:
      jwt: { issuer: "${GH}", claims: { repository: "corp/app", ref: "refs/tags/*" } }
    keys: ["release-*"]
    methods: ["Sign", "DescribeKey", "GetCertificateChain", "ListKeys"]
    allowOldVersions: false
    rateLimit: { ratePerSecond: 10, burst: 20 }
  - name: build-farm
    match: { mtls: "spiffe://corp/build/*" }
    keys: ["build-*"]
    allowOldVersions: true
  - name: local-dev
    match: { anonymous: true }
    keys: ["dev-?"]
`;

function invalid(text: string): PolicyInvalidError {
  let caught: unknown;
  try {
    Policy.parse(text, "test.yaml");
  } catch (e) {
    caught = e;
  }
  assert.ok(caught instanceof PolicyInvalidError, `expected PolicyInvalidError, got ${String(caught)}`);
  assert.ok(caught instanceof SignerError);
  assert.equal(caught.code, "CONFIG_INVALID");
  assert.ok(caught.message.includes("test.yaml"), caught.message);
  return caught;
}

describe("access policy (Policy)", () => {
  describe("parse", () => {
    it("accepts the documented example, YAML or JSON", () => {
      const p = Policy.parse(EXAMPLE, "example.yaml");
      assert.deepEqual(p.ruleNames, ["ci-release", "build-farm", "local-dev"]);
      assert.equal(p.keysPublic, false);
      assert.equal(p.allowAnonymousOnLoopback, true);
      const json = Policy.parse(JSON.stringify({ keysPublic: true, rules: [{ name: "a", match: { mtls: "x" }, keys: ["*"] }] }), "p.json");
      assert.equal(json.keysPublic, true);
      assert.equal(json.allowAnonymousOnLoopback, false);
    });

    it("lists every problem at once", () => {
      const e = invalid(`
keysPublic: "yes"
colour: blue
rateLimits:
  perIdentity: { ratePerSecond: 0, burst: 1.5 }
custodians:
  - { anonymous: true }
rules:
  - name: a
    match: { mtls: "x", jwt: { issuer: "y" } }
    keys: []
    methods: ["Sign", "Delete"]
  - name: a
    match: { jwt: { claims: { ref: {} } } }
    keys: ["k"]
    allowOldVersions: 1
    rateLimit: { ratePerSecond: -1 }
  - match: { anonymous: true }
    keys: "k*"
    extra: 1
`);
      const expected = [
        "keysPublic: must be true or false",
        "colour: unknown setting",
        "rateLimits.perIdentity.ratePerSecond: must be a number above 0",
        "rateLimits.perIdentity.burst: must be an integer of at least 1",
        "custodians[0]: a custodian cannot be anonymous",
        "rules[0] (a).match: needs exactly one of mtls, jwt, anonymous (found mtls, jwt)",
        "rules[0] (a).keys: must not be empty",
        'rules[0] (a).methods[1]: "Delete" is not one of Sign, DescribeKey, GetCertificateChain, ListKeys',
        "rules[1] (a).match.jwt.issuer: required",
        "rules[1] (a).match.jwt.claims.ref: must be a string (glob), a number, a boolean or a list of them",
        "rules[1] (a).allowOldVersions: must be true or false",
        "rules[1] (a).rateLimit.ratePerSecond: must be a number above 0",
        "rules[1] (a).rateLimit.burst: must be an integer of at least 1",
        "rules[2].extra: unknown setting",
        "rules[2].name: required",
        "rules[2].match: anonymous callers need allowAnonymousOnLoopback: true",
        "rules[2].keys: must be a list",
        'rules: the name "a" is used more than once',
      ];
      for (const p of expected) assert.ok(e.problems.includes(p), `missing problem ${JSON.stringify(p)} in:\n${e.problems.join("\n")}`);
      assert.equal(e.problems.length, expected.length, e.problems.join("\n"));
      assert.ok(e.message.includes(`${expected.length} problem(s)`), e.message);
      for (const p of expected) assert.ok(e.message.includes(p));
    });

    it("a jwt match names at least one claim: an issuer alone would admit all its tokens", () => {
      const e = invalid(`
rules:
  - name: issuer-only
    match: { jwt: { issuer: "${GH}" } }
    keys: ["*"]
  - name: no-claims
    match: [{ mtls: "spiffe://corp/*" }, { jwt: { issuer: "${GH}", claims: {} } }]
    keys: ["*"]
`);
      assert.deepEqual(e.problems, [
        'rules[0] (issuer-only).match.jwt.claims: required: an issuer alone admits every token it issues for this audience (with GitHub Actions: any workflow of any repository); name the claims that pick your callers, e.g. { repository: "corp/app" }, or write { sub: "*" } to admit them all',
        'rules[1] (no-claims).match[1].jwt.claims: must name at least one claim: an issuer alone admits every token it issues for this audience (with GitHub Actions: any workflow of any repository); name the claims that pick your callers, e.g. { repository: "corp/app" }, or write { sub: "*" } to admit them all',
      ]);
      // Every subject of the issuer, said on purpose.
      const all = Policy.parse(`rules:\n  - name: all\n    match: { jwt: { issuer: "${GH}", claims: { sub: "*" } } }\n    keys: ["*"]\n`, "all");
      assert.equal(all.decide(jwt(GH, { repository: "anyone/x" }), "Sign", "k").allow, true);
    });

    it("reports YAML syntax errors and duplicate keys with their line", () => {
      const e = invalid("rules:\n  - name: a\n    name: b\n    keys: [\n");
      assert.ok(e.problems.length >= 2, e.problems.join("\n"));
      assert.ok(e.problems.includes("Map keys must be unique at line 3, column 5"), e.problems.join("\n"));
    });

    it("refuses an empty file, a file without rules and a non-mapping", () => {
      assert.match(invalid("").problems.join(), /empty/);
      assert.match(invalid("# only a comment\n").problems.join(), /empty/);
      assert.deepEqual(invalid("keysPublic: true\n").problems, ["rules: required (a list; an empty list denies every call)"]);
      assert.ok(invalid("- a\n- b\n").problems.includes("policy: must be a mapping"));
      // rules: [] is a deliberate deny-all policy.
      const none = Policy.parse("rules: []\n", "deny.yaml");
      assert.equal(none.decide(mtls("spiffe://corp/build/a"), "Sign", "build-1").allow, false);
    });

    it("requires a key id glob list and a match for each rule", () => {
      const e = invalid("rules:\n  - name: r\n");
      assert.deepEqual(e.problems, ["rules[0] (r).match: required", 'rules[0] (r).keys: required (a list of key id globs, e.g. ["release-*"])']);
    });
  });

  describe("decide", () => {
    const p = Policy.parse(EXAMPLE, "example.yaml");
    const release = jwt(GH, { sub: "repo:corp/app:ref:refs/tags/v1.2.0", repository: "corp/app", ref: "refs/tags/v1.2.0" });

    it("allows a JWT caller whose issuer and claims match, on matching keys only", () => {
      const d = p.decide(release, "Sign", "release-2026");
      assert.deepEqual(d, { allow: true, rule: "ci-release", reason: "allowed by rule ci-release", allowOldVersions: false });
      assert.equal(p.decide(release, "Sign", "build-1").allow, false);
      assert.equal(p.decide(release, "Sign", "prerelease-1").allow, false, "globs are anchored");
    });

    it("needs every listed claim to match (globs, arrays, numbers as strings)", () => {
      assert.equal(p.decide(jwt(GH, { repository: "corp/app", ref: "refs/heads/main" }), "Sign", "release-1").allow, false);
      assert.equal(p.decide(jwt(GH, { repository: "corp/app" }), "Sign", "release-1").allow, false, "a missing claim never matches");
      assert.equal(p.decide(jwt(GH, { repository: "corp/app2", ref: "refs/tags/v1" }), "Sign", "release-1").allow, false);
      assert.equal(p.decide(jwt(GH, { repository: ["other/x", "corp/app"], ref: "refs/tags/v1" }), "Sign", "release-1").allow, true, "any array element");
      assert.equal(p.decide(jwt("https://evil.example", { repository: "corp/app", ref: "refs/tags/v1" }), "Sign", "release-1").allow, false, "issuer");
      const q = Policy.parse(`rules:\n  - name: n\n    match: { jwt: { issuer: "https://i/*", claims: { run_attempt: 1, ok: true, env: [prod, "stag?"] } } }\n    keys: ["*"]\n`, "q");
      assert.equal(q.decide(jwt("https://i/x", { run_attempt: 1, ok: true, env: "stage" }), "Sign", "k").allow, true);
      assert.equal(q.decide(jwt("https://i/x", { run_attempt: "1", ok: "true", env: "prod" }), "Sign", "k").allow, true);
      assert.equal(q.decide(jwt("https://i/x", { run_attempt: 2, ok: true, env: "prod" }), "Sign", "k").allow, false);
      assert.equal(q.decide(jwt("https://i/x", { run_attempt: 1, ok: true, env: "staging" }), "Sign", "k").allow, false);
      assert.equal(q.decide(jwt("https://i/x", { run_attempt: 1, ok: true, env: { v: "prod" } }), "Sign", "k").allow, false, "objects never match");
    });

    it("matches mTLS identities by glob, * spanning slashes", () => {
      assert.equal(p.decide(mtls("spiffe://corp/build/runner-1"), "Sign", "build-x").allow, true);
      assert.equal(p.decide(mtls("spiffe://corp/build/eu/runner-1"), "Sign", "build-x").allow, true);
      assert.equal(p.decide(mtls("spiffe://corp/builder/runner-1"), "Sign", "build-x").allow, false);
      assert.equal(p.decide(mtls("spiffe://corp/build/runner-1"), "Sign", "release-1").allow, false);
      // Identity kinds do not cross: a JWT whose id looks like a SPIFFE id is not an mTLS caller.
      assert.equal(p.decide({ kind: "jwt", id: "spiffe://corp/build/x", subject: "x", issuer: GH, claims: {} }, "Sign", "build-x").allow, false);
      assert.equal(p.decide(mtls("spiffe://corp/build/r"), "Sign", "build-1").allowOldVersions, true);
    });

    it("treats glob metacharacters of other syntaxes literally; ? is one character", () => {
      const q = Policy.parse(`rules:\n  - name: n\n    match: { mtls: "a.b+(c)[d]|^$" }\n    keys: ["k-?", "v1.?"]\n`, "q");
      assert.equal(q.decide(mtls("a.b+(c)[d]|^$"), "Sign", "k-1").allow, true);
      assert.equal(q.decide(mtls("aXb+(c)[d]|^$"), "Sign", "k-1").allow, false);
      assert.equal(q.decide(mtls("a.b+(c)[d]|^$"), "Sign", "k-12").allow, false);
      assert.equal(q.decide(mtls("a.b+(c)[d]|^$"), "Sign", "k-").allow, false);
      assert.equal(q.decide(mtls("a.b+(c)[d]|^$"), "Sign", "v1.0").allow, true);
      assert.equal(q.decide(mtls("a.b+(c)[d]|^$"), "Sign", "v1x0").allow, false);
    });

    it("allows anonymous callers only through an anonymous rule, and only when the policy allows them", () => {
      assert.equal(p.decide(anonymous, "Sign", "dev-1").allow, true);
      assert.equal(p.decide(anonymous, "Sign", "dev-10").allow, false);
      assert.equal(p.decide(anonymous, "Sign", "release-1").allow, false);
      assert.equal(p.decide(mtls("anonymous"), "Sign", "dev-1").allow, false, "an mTLS caller is not anonymous");
      const closed = Policy.parse(`keysPublic: true\nrules:\n  - name: all\n    match: { mtls: "*" }\n    keys: ["*"]\n`, "closed");
      const d = closed.decide(anonymous, "DescribeKey", "dev-1");
      assert.equal(d.allow, false);
      assert.match(d.reason, /anonymous/);
      assert.equal(closed.mayUseKey(anonymous, "dev-1"), false);
    });

    it("denies by default and says why", () => {
      const stranger = mtls("spiffe://other/x");
      for (const m of SIGNER_METHODS) assert.equal(p.decide(stranger, m, m === "ListKeys" ? undefined : "release-1").allow, false, m);
      assert.match(p.decide(stranger, "Sign", "release-1").reason, /no rule matches caller spiffe:\/\/other\/x/);
      assert.match(p.decide(mtls("spiffe://corp/build/a"), "Sign", "release-1").reason, /no rule allows spiffe:\/\/corp\/build\/a Sign on key release-1/);
      assert.match(p.decide(release, "Sign", undefined).reason, /needs a key id/);
      assert.equal(p.decide(release, "Sign", "").allow, false, "an empty key id matches no release-* glob");
      assert.match(p.decide(release, "DeleteKey", "release-1").reason, /unknown method/);
    });

    it("restricts methods per rule (default: all four)", () => {
      const q = Policy.parse(`rules:\n  - name: sign-only\n    match: { mtls: "a" }\n    keys: ["k*"]\n    methods: [Sign]\n  - name: all\n    match: { mtls: "b" }\n    keys: ["k*"]\n`, "q");
      assert.equal(q.decide(mtls("a"), "Sign", "k1").allow, true);
      assert.equal(q.decide(mtls("a"), "DescribeKey", "k1").allow, false);
      assert.equal(q.decide(mtls("a"), "GetCertificateChain", "k1").allow, false);
      assert.equal(q.decide(mtls("a"), "ListKeys", undefined).allow, false);
      for (const m of SIGNER_METHODS) assert.equal(q.decide(mtls("b"), m, m === "ListKeys" ? undefined : "k1").allow, true, m);
    });

    it("reports the first rule, in file order, that allows a call", () => {
      const q = Policy.parse(
        `rules:\n  - name: narrow\n    match: { mtls: "spiffe://corp/ci/*" }\n    keys: ["release-*"]\n    rateLimit: { ratePerSecond: 1, burst: 1 }\n` +
          `  - name: broad\n    match: [{ mtls: "spiffe://corp/*" }, { jwt: { issuer: "${GH}", claims: { sub: "*" } } }]\n    keys: ["*"]\n    allowOldVersions: true\n`,
        "q",
      );
      assert.equal(q.decide(mtls("spiffe://corp/ci/a"), "Sign", "release-1").rule, "narrow");
      assert.equal(q.decide(mtls("spiffe://corp/ci/a"), "Sign", "release-1").allowOldVersions, false);
      assert.equal(q.decide(mtls("spiffe://corp/ci/a"), "Sign", "other").rule, "broad");
      assert.equal(q.decide(mtls("spiffe://corp/dev/a"), "Sign", "release-1").rule, "broad");
      assert.equal(q.decide(jwt(GH, {}), "Sign", "x").rule, "broad", "a list of matchers: any of them");
      const reversed = Policy.parse(
        `rules:\n  - name: broad\n    match: { mtls: "spiffe://corp/*" }\n    keys: ["*"]\n  - name: narrow\n    match: { mtls: "spiffe://corp/ci/*" }\n    keys: ["release-*"]\n`,
        "r",
      );
      assert.equal(reversed.decide(mtls("spiffe://corp/ci/a"), "Sign", "release-1").rule, "broad");
    });

    it("ListKeys (no key id) is allowed when any rule for the caller allows ListKeys", () => {
      assert.deepEqual(p.decide(release, "ListKeys", undefined), { allow: true, rule: "ci-release", reason: "allowed by rule ci-release", allowOldVersions: false });
      assert.equal(p.decide(mtls("spiffe://corp/build/a"), "ListKeys", undefined).allow, true);
    });
  });

  describe("keysPublic", () => {
    const text = (pub: boolean): string => `keysPublic: ${pub}\nrules:\n  - name: r\n    match: { mtls: "spiffe://corp/build/*" }\n    keys: ["build-*"]\n    methods: [Sign]\n`;

    it("opens DescribeKey, GetCertificateChain and ListKeys to any authenticated caller, never Sign", () => {
      const p = Policy.parse(text(true), "pub");
      const anyone = mtls("spiffe://elsewhere/x");
      for (const m of ["DescribeKey", "GetCertificateChain"]) assert.deepEqual(p.decide(anyone, m, "release-1"), { allow: true, reason: "keys are public", allowOldVersions: true });
      assert.equal(p.decide(anyone, "ListKeys", undefined).allow, true);
      assert.equal(p.decide(jwt(GH, {}), "DescribeKey", "x").allow, true);
      assert.equal(p.decide(anyone, "Sign", "build-1").allow, false);
      assert.equal(p.decide(mtls("spiffe://corp/build/a"), "Sign", "build-1").allow, true);
      assert.equal(p.mayUseKey(anyone, "release-1"), true, "ListKeys shows every key when keys are public");
    });

    it("when false, the read-only methods follow the rules like Sign", () => {
      const p = Policy.parse(text(false), "priv");
      assert.equal(p.decide(mtls("spiffe://elsewhere/x"), "DescribeKey", "build-1").allow, false);
      assert.equal(p.decide(mtls("spiffe://corp/build/a"), "DescribeKey", "build-1").allow, false, "the rule only allows Sign");
    });
  });

  describe("mayUseKey (ListKeys filtering)", () => {
    const p = Policy.parse(EXAMPLE, "example.yaml");
    it("is true for keys a rule for this caller covers", () => {
      const build = mtls("spiffe://corp/build/a");
      assert.equal(p.mayUseKey(build, "build-1"), true);
      assert.equal(p.mayUseKey(build, "release-1"), false);
      assert.equal(p.mayUseKey(mtls("spiffe://nobody/x"), "build-1"), false);
      assert.equal(p.mayUseKey(anonymous, "dev-1"), true);
      assert.equal(p.mayUseKey(anonymous, "build-1"), false);
      const ci = jwt(GH, { repository: "corp/app", ref: "refs/tags/v1" });
      assert.deepEqual(
        ["release-1", "build-1", "dev-1", "release-2"].filter((k) => p.mayUseKey(ci, k)),
        ["release-1", "release-2"],
      );
    });
  });

  describe("isCustodian", () => {
    const p = Policy.parse(EXAMPLE, "example.yaml");
    it("matches custodians with the same matcher syntax", () => {
      assert.equal(p.isCustodian(mtls("spiffe://corp/custodian/alice")), true);
      assert.equal(p.isCustodian(mtls("spiffe://corp/build/a")), false);
      assert.equal(p.isCustodian(jwt(GH, { repository: "corp/keys", environment: "production" })), true);
      assert.equal(p.isCustodian(jwt(GH, { repository: "corp/keys", environment: "staging" })), false);
      assert.equal(p.isCustodian(anonymous), false);
      assert.equal(Policy.parse("rules: []\n", "none").isCustodian(mtls("spiffe://corp/custodian/alice")), false);
    });

    it("notes a jwt custodian entry, which KeyAdmin (client certificates only) never meets", () => {
      assert.deepEqual(p.notes, ["custodians[1] names a jwt issuer: KeyAdmin accepts client certificates only, so this entry never matches"]);
      assert.deepEqual(Policy.parse('custodians: [ { mtls: "spiffe://corp/custodian/*" } ]\nrules: []\n', "mtls").notes, []);
    });
  });

  describe("rateLimitsFor", () => {
    const p = Policy.parse(EXAMPLE, "example.yaml");
    it("names the identity's bucket, the key's, and the rule's for this identity", () => {
      const ci = jwt(GH, { sub: "s", repository: "corp/app", ref: "refs/tags/v1" });
      const d = p.decide(ci, "Sign", "release-1");
      const specs = p.rateLimitsFor(ci, "release-1", d.rule);
      assert.deepEqual(
        specs.map((s) => [s.ratePerSecond, s.burst]),
        [
          [50, 100],
          [200, 400],
          [10, 20],
        ],
      );
      assert.equal(new Set(specs.map((s) => s.key)).size, 3);
      // The same identity shares its bucket across keys; another identity has its own; the key bucket is shared.
      const other = mtls("spiffe://corp/build/a");
      const [idA, keyA] = p.rateLimitsFor(ci, "release-2");
      const [idB, keyB] = p.rateLimitsFor(other, "release-1");
      assert.equal(idA?.key, specs[0]?.key);
      assert.notEqual(keyA?.key, specs[1]?.key);
      assert.notEqual(idB?.key, specs[0]?.key);
      assert.equal(keyB?.key, specs[1]?.key);
      // No key (ListKeys): no key bucket; a rule without rateLimit adds nothing.
      assert.equal(p.rateLimitsFor(other, undefined, "build-farm").length, 1);
      assert.deepEqual(Policy.parse("rules: []\n", "none").rateLimitsFor(other, "k"), []);
    });
  });
  describe("mTLS identity kinds (URI SAN, DNS SAN, CN) never mix", () => {
    const policy = `custodians:
  - { mtls: { cn: "alice" } }
  - { mtls: "spiffe://corp/custodian/*" }
rateLimits:
  perIdentity: { ratePerSecond: 1, burst: 1 }
rules:
  - name: spiffe-bare
    match: { mtls: "spiffe://corp/build/*" }
    keys: ["build-*"]
  - name: spiffe-uri
    match: { mtls: { uri: "spiffe://corp/release/*" } }
    keys: ["release-*"]
  - name: by-dns
    match: { mtls: { dns: "runner-*.corp.example" } }
    keys: ["dns-*"]
  - name: by-cn
    match: { mtls: { cn: "legacy-*" } }
    keys: ["legacy-*"]
`;
    const p = Policy.parse(policy, "kinds.yaml");

    it("a bare mtls pattern matches URI SANs only: a CN or DNS SAN spelling the same SPIFFE id is denied", () => {
      const uri = mtlsIdentity("uri", "spiffe://corp/build/a");
      const cn = mtlsIdentity("cn", "spiffe://corp/build/a");
      const dns = mtlsIdentity("dns", "spiffe://corp/build/a");
      assert.equal(p.decide(uri, "Sign", "build-1").rule, "spiffe-bare");
      assert.equal(p.decide(cn, "Sign", "build-1").allow, false);
      assert.equal(p.decide(dns, "Sign", "build-1").allow, false);
      assert.match(p.decide(cn, "Sign", "build-1").reason, /no rule matches caller cn:spiffe:\/\/corp\/build\/a \(mtls, certificate CN\)/);
      assert.equal(p.mayUseKey(cn, "build-1"), false);
      // mtls: { uri: ... } is the same as the bare form.
      assert.equal(p.decide(mtlsIdentity("uri", "spiffe://corp/release/x"), "Sign", "release-1").rule, "spiffe-uri");
      assert.equal(p.decide(mtlsIdentity("cn", "spiffe://corp/release/x"), "Sign", "release-1").allow, false);
      // "*" is any URI SAN, still not a CN.
      const any = Policy.parse(`rules:\n  - name: all\n    match: { mtls: "*" }\n    keys: ["*"]\n`, "any");
      assert.equal(any.decide(mtlsIdentity("uri", "urn:x"), "Sign", "k").allow, true);
      assert.equal(any.decide(mtlsIdentity("cn", "urn:x"), "Sign", "k").allow, false);
      assert.equal(any.decide(mtlsIdentity("dns", "x.example"), "Sign", "k").allow, false);
    });

    it("a DNS SAN matches without case, as DNS names compare (RFC 4343); CNs and URI SANs keep theirs", () => {
      assert.equal(p.decide(mtlsIdentity("dns", "RUNNER-1.Corp.Example"), "Sign", "dns-1").rule, "by-dns");
      assert.equal(p.decide(mtlsIdentity("cn", "LEGACY-7"), "Sign", "legacy-1").allow, false);
      assert.equal(p.isCustodian(mtlsIdentity("uri", "SPIFFE://corp/custodian/alice")), false);
    });

    it("mtls: { dns } and { cn } match their own kind only", () => {
      assert.equal(p.decide(mtlsIdentity("dns", "runner-1.corp.example"), "Sign", "dns-1").rule, "by-dns");
      assert.equal(p.decide(mtlsIdentity("cn", "runner-1.corp.example"), "Sign", "dns-1").allow, false);
      assert.equal(p.decide(mtlsIdentity("uri", "runner-1.corp.example"), "Sign", "dns-1").allow, false);
      assert.equal(p.decide(mtlsIdentity("cn", "legacy-7"), "Sign", "legacy-1").rule, "by-cn");
      assert.equal(p.decide(mtlsIdentity("dns", "legacy-7"), "Sign", "legacy-1").allow, false);
      assert.equal(p.decide(mtlsIdentity("uri", "legacy-7"), "Sign", "legacy-1").allow, false);
      // A URI SAN that reads "cn:legacy-7" is still a URI SAN.
      assert.equal(p.decide(mtlsIdentity("uri", "cn:legacy-7"), "Sign", "legacy-1").allow, false);
      assert.equal(p.isCustodian(mtlsIdentity("cn", "alice")), true);
      assert.equal(p.isCustodian(mtlsIdentity("uri", "alice")), false);
      assert.equal(p.isCustodian(mtlsIdentity("cn", "spiffe://corp/custodian/alice")), false);
      assert.equal(p.isCustodian(mtlsIdentity("uri", "spiffe://corp/custodian/alice")), true);
    });

    it("identities of different kinds with the same value have their own rate-limit buckets", () => {
      const [a] = p.rateLimitsFor(mtlsIdentity("uri", "cn:x"), undefined);
      const [b] = p.rateLimitsFor(mtlsIdentity("cn", "x"), undefined);
      assert.ok(a && b);
      assert.notEqual(a.key, b.key);
    });

    it("refuses kind mistakes: a prefixed bare pattern, several or no kinds, unknown kinds", () => {
      const bad = (match: string): string[] => {
        try {
          Policy.parse(`rules:\n  - name: n\n    match: ${match}\n    keys: ["*"]\n`, "bad");
        } catch (e) {
          assert.ok(e instanceof PolicyInvalidError, String(e));
          return [...e.problems];
        }
        return assert.fail(`accepted ${match}`);
      };
      assert.match(bad(`{ mtls: "cn:build-runner" }`).join("\n"), /would match only a URI SAN .* mtls: \{ cn: "build-runner" \}/);
      assert.match(bad(`{ mtls: "DNS:runner.corp" }`).join("\n"), /mtls: \{ dns: "runner.corp" \}/);
      assert.match(bad(`{ mtls: "uri:spiffe://x/y" }`).join("\n"), /write mtls: "spiffe:\/\/x\/y"/);
      assert.match(bad(`{ mtls: { cn: "a", dns: "b" } }`).join("\n"), /needs exactly one of uri, dns, cn \(found dns, cn\)/);
      assert.match(bad(`{ mtls: {} }`).join("\n"), /needs exactly one of uri, dns, cn/);
      assert.match(bad(`{ mtls: { email: "a@b" } }`).join("\n"), /mtls\.email: unknown setting/);
      assert.match(bad(`{ mtls: { cn: "" } }`).join("\n"), /mtls\.cn: must be a non-empty string/);
      assert.match(bad(`{ mtls: 5 }`).join("\n"), /must be a URI SAN glob or a mapping with one of uri, dns, cn/);
      // A dns: URI SAN (RFC 4501) can still be named, explicitly.
      assert.equal(Policy.parse(`rules:\n  - name: n\n    match: { mtls: { uri: "dns:x" } }\n    keys: ["*"]\n`, "ok").decide(mtlsIdentity("uri", "dns:x"), "Sign", "k").allow, true);
    });
  });
});
