import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import type { SignerError } from "../../src/errors/index.js";
import type { HashAlgorithm } from "../../src/signing/key-spec.js";
import type { AuditFacts, KeyRecord, KeyStore } from "../../src/signing/ports.js";
import { SigningService, type SignRequest } from "../../src/signing/signing-service.js";
import { tableAuthorizer } from "./memory-key-store.js";
import { requestFor, verifyNotarySignature } from "./notation.js";

/** What a key store under test holds; the optional keys are checked when the store can make them. */
export interface ContractSubject {
  keys: KeyStore;
  /** Usable EC-256 and EC-384 keys with a chain, current version 1 or more. */
  ec256: string;
  ec384: string;
  /** A key whose current version is disabled by a custodian. */
  disabled?: string;
  /** A key whose current version cannot sign (no certificate). */
  unusable?: string;
  /** A key with a usable version older than its current one. */
  rotated?: { keyId: string; oldVersion: number };
}

/** A key store that counts what the core asked of it, whatever store is behind. */
function counting(keys: KeyStore): KeyStore & { lookups: number; signed: { hash: HashAlgorithm; digest: Buffer }[] } {
  const c = {
    lookups: 0,
    signed: [] as { hash: HashAlgorithm; digest: Buffer }[],
    getKey(keyId: string, version?: number): Promise<KeyRecord> {
      c.lookups++;
      return keys.getKey(keyId, version);
    },
    listKeys(): Promise<KeyRecord[]> {
      c.lookups++;
      return keys.listKeys();
    },
    signDigest(key: KeyRecord, hash: HashAlgorithm, digest: Buffer, deadline?: number): Promise<Buffer> {
      c.signed.push({ hash, digest: Buffer.from(digest) });
      return keys.signDigest(key, hash, digest, deadline);
    },
  };
  return c;
}

/** A key id no store under test holds (a policy may still name it). */
const UNKNOWN = "no-such-key-anywhere";
const sha = (alg: string, b: Buffer): Buffer => createHash(alg).update(b).digest();
const jwsPayload = (keyId: string, spec: string): Buffer => Buffer.from(requestFor("generate-signature-jws", keyId, spec, {}).payload as string, "base64");

/**
 * The KeyStore contract and the signing core's sequence on top of it, run against every key store:
 * the in-memory double (test/unit/signing-core.test.ts) and the PKCS#11 key store on SoftHSM
 * (test/integration/key-store-contract.test.ts). Callers: "ci" may use both keys and old versions,
 * "build" only the EC-256 key and current versions, "noisy" is over its rate limit, anyone else
 * is refused (deny by default).
 */
export function keyStoreContract(name: string, subject: () => Promise<ContractSubject>): void {
  describe(`KeyStore contract and the signing sequence: ${name}`, function () {
    this.timeout(60_000);
    let s: ContractSubject;
    let store: ReturnType<typeof counting>;
    let core: SigningService;
    let authorizer: ReturnType<typeof tableAuthorizer>;
    const ci = { id: "ci" };
    const build = { id: "build" };

    before(async () => {
      s = await subject();
      const all = [s.ec256, s.ec384, s.disabled, s.unusable, s.rotated?.keyId].filter((k): k is string => k !== undefined);
      authorizer = tableAuthorizer({ ci: { keys: [...all, UNKNOWN], old: true }, build: { keys: [s.ec256, ...(s.rotated ? [s.rotated.keyId] : [])] }, noisy: { keys: all, limited: true } });
      store = counting(s.keys);
      core = new SigningService({ keys: store, authorizer, maxPayloadBytes: 4096 });
    });

    /** Runs a call that must fail; returns its error and the audit facts it left. */
    async function refused(code: string, run: (facts: AuditFacts) => Promise<unknown>, message?: RegExp): Promise<{ e: SignerError; facts: AuditFacts }> {
      const facts: AuditFacts = {};
      const e = await run(facts).then(
        () => assert.fail(`expected ${code}`),
        (err: SignerError) => err,
      );
      assert.equal(e.code, code, e.message);
      if (message) assert.match(e.message, message);
      return { e, facts };
    }

    describe("the key store", () => {
      it("getKey: the current version with its spec, hash and chain (leaf first)", async () => {
        for (const [id, spec] of [
          [s.ec256, "EC-256"],
          [s.ec384, "EC-384"],
        ] as const) {
          const k = await s.keys.getKey(id);
          assert.equal(k.keyId, id);
          assert.equal(k.spec, spec);
          assert.equal(k.info.spec, spec);
          assert.equal(k.current, true);
          assert.equal(k.unusableReason, undefined);
          assert.equal(k.disabledReason, undefined);
          assert.ok(k.chain.length >= 2, "leaf and root");
          assert.equal(k.certificate?.sha256, sha("sha256", k.chain[0] as Buffer).toString("hex"));
          assert.deepEqual(await s.keys.getKey(id, k.version), k);
        }
      });

      it("getKey: KEY_NOT_FOUND for an unknown key id or version", async () => {
        await assert.rejects(s.keys.getKey(UNKNOWN), (e: SignerError) => e.code === "KEY_NOT_FOUND");
        await assert.rejects(s.keys.getKey(s.ec256, 999), (e: SignerError) => e.code === "KEY_NOT_FOUND" && /999/.test(e.message));
      });

      it("listKeys: one record per key id, sorted, the current version", async () => {
        const keys = await s.keys.listKeys();
        const ids = keys.map((k) => k.keyId);
        assert.deepEqual(
          ids,
          [...ids].sort((a, b) => a.localeCompare(b)),
        );
        assert.equal(new Set(ids).size, ids.length);
        assert.deepEqual(
          keys.find((k) => k.keyId === s.ec256),
          await s.keys.getKey(s.ec256),
        );
      });

      it("signDigest: a raw signature (ECDSA r||s) of the spec's length over the digest, verified by the leaf's public key", async () => {
        for (const id of [s.ec256, s.ec384]) {
          const k = await s.keys.getKey(id);
          const data = randomBytes(100);
          const sig = await s.keys.signDigest(k, k.info.hash, sha(k.info.hash.replace("-", "").toLowerCase(), data));
          assert.equal(sig.length, k.info.signatureLength);
          assert.ok(verifyNotarySignature(data, sig, k.chain[0] as Buffer, k.spec), `${k.spec} signature verifies`);
        }
      });
    });

    describe("sign: validate, authorize, resolve, hash once, sign", () => {
      it("a payload, EC-256: the audit's digest is the signed digest (hashed once), and the signature verifies", async () => {
        const payload = randomBytes(300);
        const before = store.signed.length;
        const r = await core.sign({ keyId: s.ec256, payload }, ci);
        const key = await s.keys.getKey(s.ec256);
        assert.ok(verifyNotarySignature(payload, r.signature, r.key.chain[0] as Buffer, "EC-256"));
        assert.deepEqual(r.digest, sha("sha256", payload));
        assert.deepEqual(store.signed.slice(before), [{ hash: "SHA-256", digest: sha("sha256", payload) }]);
        assert.deepEqual(r.facts, {
          keyId: s.ec256,
          keyVersion: key.version,
          payloadDigest: `sha256:${sha("sha256", payload).toString("hex")}`,
          payloadKind: "other",
          decision: "allow",
          rule: "rule-ci",
        });
      });

      it("a payload, EC-384: signed as a SHA-384 digest; the audit still records its SHA-256", async () => {
        const payload = randomBytes(300);
        const r = await core.sign({ keyId: s.ec384, payload, keySpec: "EC-384" }, ci);
        assert.ok(verifyNotarySignature(payload, r.signature, r.key.chain[0] as Buffer, "EC-384"));
        assert.equal(r.hash, "SHA-384");
        assert.deepEqual(r.digest, sha("sha384", payload));
        assert.equal(r.facts.payloadDigest, `sha256:${sha("sha256", payload).toString("hex")}`);
      });

      it("a Notary signing input: the audit facts name the artifact", async () => {
        const payload = jwsPayload(s.ec256, "EC-256");
        const r = await core.sign({ keyId: s.ec256, payload }, ci);
        assert.equal(r.facts.payloadKind, "notary-jws");
        assert.equal(r.facts.artifact?.digest, "sha256:d7fe34585a19531bacc65a58cf4073b1488568cd2891304e56f035591c62b4bc");
      });

      it("a digest the caller made: signed as given, recorded as <hash>:<hex>", async () => {
        const digest = sha("sha256", randomBytes(20));
        const r = await core.sign({ keyId: s.ec256, digest, hashAlgorithm: "SHA-256" }, build);
        assert.deepEqual(r.digest, digest);
        assert.equal(r.facts.payloadKind, "digest");
        assert.equal(r.facts.payloadDigest, `sha256:${digest.toString("hex")}`);
        assert.equal(r.facts.rule, "rule-build");
      });

      it("a malformed request is INVALID_ARGUMENT (or PAYLOAD_TOO_LARGE) before the policy or the key store is asked", async () => {
        const cases: [string, SignRequest, RegExp][] = [
          ["INVALID_ARGUMENT", { keyId: "", payload: randomBytes(4) }, /key_id is required/],
          ["INVALID_ARGUMENT", { keyId: " padded", payload: randomBytes(4) }, /printable ASCII/],
          ["INVALID_ARGUMENT", { keyId: s.ec256 }, /exactly one of payload or digest/],
          ["INVALID_ARGUMENT", { keyId: s.ec256, payload: randomBytes(4), digest: randomBytes(32), hashAlgorithm: "SHA-256" }, /exactly one/],
          ["INVALID_ARGUMENT", { keyId: s.ec256, digest: randomBytes(32) }, /hash_algorithm is required/],
          ["INVALID_ARGUMENT", { keyId: s.ec256, digest: randomBytes(31), hashAlgorithm: "SHA-256" }, /31 bytes/],
          ["INVALID_ARGUMENT", { keyId: s.ec256, digest: randomBytes(32), hashAlgorithm: "MD5" }, /not one of SHA-256/],
          ["INVALID_ARGUMENT", { keyId: s.ec256, payload: randomBytes(4), keySpec: "EC-255" }, /key_spec "EC-255"/],
          ["PAYLOAD_TOO_LARGE", { keyId: s.ec256, payload: randomBytes(4097) }, /4097 bytes; the limit is 4096/],
        ];
        const asked = authorizer.asked.length;
        const lookups = store.lookups;
        for (const [code, request, message] of cases) {
          const { facts } = await refused(code, (f) => core.sign(request, ci, f), message);
          assert.equal(facts.decision, undefined, "not authorized yet");
          assert.equal(facts.keyId, request.keyId);
        }
        assert.equal(authorizer.asked.length, asked, "the Authorizer was not asked");
        assert.equal(store.lookups, lookups, "the key store was not asked");
      });

      it("deny by default: a caller no rule names is PERMISSION_DENIED, audited as denied, and no key is looked up", async () => {
        const payload = randomBytes(10);
        const lookups = store.lookups;
        const { facts } = await refused("PERMISSION_DENIED", (f) => core.sign({ keyId: s.ec256, payload }, { id: "stranger" }, f), /stranger may not call Sign/);
        assert.deepEqual(facts, { keyId: s.ec256, payloadDigest: `sha256:${sha("sha256", payload).toString("hex")}`, payloadKind: "other", decision: "deny" });
        await refused("PERMISSION_DENIED", (f) => core.sign({ keyId: s.ec384, payload }, build, f));
        assert.equal(store.lookups, lookups);
      });

      it("over the rate limit: RATE_LIMITED with a retry hint, audited as denied by its rule", async () => {
        const { e, facts } = await refused("RATE_LIMITED", (f) => core.sign({ keyId: s.ec256, payload: randomBytes(10) }, { id: "noisy" }, f));
        assert.equal(e.retryAfterMs, 100);
        assert.equal(facts.decision, "deny");
        assert.equal(facts.rule, "rule-noisy");
      });

      it("a key_spec or hash_algorithm that does not fit the key: INVALID_ARGUMENT after the lookup, nothing signed", async () => {
        const signed = store.signed.length;
        const a = await refused("INVALID_ARGUMENT", (f) => core.sign({ keyId: s.ec256, payload: randomBytes(10), keySpec: "EC-384" }, ci, f), /is EC-256, not EC-384/);
        assert.equal(a.facts.decision, "allow");
        await refused("INVALID_ARGUMENT", (f) => core.sign({ keyId: s.ec256, digest: randomBytes(48), hashAlgorithm: "SHA-384" }, ci, f), /does not fit key .*EC-256 signs SHA-256 digests/);
        assert.equal(store.signed.length, signed);
      });

      it("an unknown key or version: KEY_NOT_FOUND, the asked version recorded", async () => {
        const a = await refused("KEY_NOT_FOUND", (f) => core.sign({ keyId: UNKNOWN, payload: randomBytes(10) }, ci, f));
        assert.equal(a.facts.keyId, UNKNOWN);
        assert.equal(a.facts.decision, "allow");
        await refused("PERMISSION_DENIED", (f) => core.sign({ keyId: UNKNOWN, payload: randomBytes(10) }, build, f), undefined);
        const b = await refused("KEY_NOT_FOUND", (f) => core.sign({ keyId: s.ec256, payload: randomBytes(10), keyVersion: 999 }, ci, f), /999/);
        assert.equal(b.facts.keyVersion, 999);
        assert.equal(b.facts.decision, "allow");
      });

      it("a deadline that has passed: DEADLINE_EXCEEDED, and the key store signs nothing", async () => {
        const signed = store.signed.length;
        await refused("DEADLINE_EXCEEDED", (f) => core.sign({ keyId: s.ec256, payload: randomBytes(10), deadline: Date.now() - 1 }, ci, f));
        assert.equal(store.signed.length, signed);
      });

      it("a very long key id is refused, and the audit facts keep it short", async () => {
        const { facts } = await refused("INVALID_ARGUMENT", (f) => core.sign({ keyId: "k".repeat(100_000), payload: randomBytes(10) }, ci, f));
        assert.ok(facts.keyId !== undefined && facts.keyId.length < 200 && facts.keyId.endsWith("(99872 more characters)"));
      });

      it("a disabled key: KEY_DISABLED with the custodian's reason", async function () {
        if (!s.disabled) this.skip();
        const { facts } = await refused("KEY_DISABLED", (f) => core.sign({ keyId: s.disabled as string, payload: randomBytes(10) }, ci, f), /contract: disabled/);
        assert.equal(facts.decision, "allow");
      });

      it("a key that cannot sign (no certificate): KEY_UNUSABLE", async function () {
        if (!s.unusable) this.skip();
        await refused("KEY_UNUSABLE", (f) => core.sign({ keyId: s.unusable as string, payload: randomBytes(10) }, ci, f));
      });

      it("an old version: only for a rule that allows old versions; the refusal is audited as denied, with the version", async function () {
        if (!s.rotated) this.skip();
        const { keyId, oldVersion } = s.rotated as { keyId: string; oldVersion: number };
        const { facts } = await refused("PERMISSION_DENIED", (f) => core.sign({ keyId, payload: randomBytes(10), keyVersion: oldVersion }, build, f), /may sign only with the current version/);
        assert.equal(facts.decision, "deny");
        assert.equal(facts.keyVersion, oldVersion);
        const payload = randomBytes(10);
        const r = await core.sign({ keyId, payload, keyVersion: oldVersion }, ci);
        assert.equal(r.key.version, oldVersion);
        assert.equal(r.facts.keyVersion, oldVersion);
        assert.ok(verifyNotarySignature(payload, r.signature, r.key.chain[0] as Buffer, r.key.spec));
        const current = await core.sign({ keyId, payload }, build);
        assert.ok(current.key.version > oldVersion);
      });
    });

    describe("the read-only calls go through the same Authorizer", () => {
      it("describeKey and certificateChain: allowed keys only; facts name the key and the decision", async () => {
        const facts: AuditFacts = {};
        const k = await core.describeKey({ keyId: s.ec256 }, build, facts);
        assert.equal(k.keyId, s.ec256);
        assert.deepEqual(facts, { keyId: s.ec256, decision: "allow", rule: "rule-build" });
        const c = await core.certificateChain({ keyId: s.ec384 }, ci);
        assert.ok(c.chain.length >= 2);
        const d = await refused("PERMISSION_DENIED", (f) => core.describeKey({ keyId: s.ec384 }, build, f));
        assert.deepEqual(d.facts, { keyId: s.ec384, decision: "deny" });
        await refused("INVALID_ARGUMENT", (f) => core.certificateChain({ keyId: "" }, ci, f), /key_id is required/);
        if (s.unusable) await refused("KEY_UNUSABLE", (f) => core.certificateChain({ keyId: s.unusable as string }, ci, f));
      });

      it("listKeys: the usable keys the caller may use", async () => {
        const ids = (await core.listKeys(build)).map((k) => k.keyId);
        assert.ok(ids.includes(s.ec256));
        assert.ok(!ids.includes(s.ec384), "build may not use the EC-384 key");
        const all = (await core.listKeys(ci)).map((k) => k.keyId);
        for (const id of [s.ec256, s.ec384]) assert.ok(all.includes(id));
        for (const id of [s.disabled, s.unusable]) if (id) assert.ok(!all.includes(id), `${id} cannot sign and is not offered`);
        await refused("PERMISSION_DENIED", (f) => core.listKeys({ id: "stranger" }, f));
      });
    });
  });
}
