import assert from "node:assert/strict";
import { createPublicKey } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { isSignerError } from "../../src/errors/index.js";
import { spkiOfCertificate, summarize } from "../../src/signing/certificates.js";
import type { KeySpec } from "../../src/signing/key-spec.js";
import {
  exposureOf,
  isKeyState,
  keyViews,
  publicKeyOf,
  selectVersion,
  signableVersion,
  supersedes,
  type KeyState,
  type KeyView,
  type ScannedCertificate,
  type ScannedPrivateKey,
  type TokenScan,
} from "../../src/signing/key-versions.js";
import { CA_EXT, OpensslCa } from "../helpers/openssl-ca.js";

const subj = (cn: string): string => `/C=US/ST=WA/O=Acme/CN=${cn}`;
const spkiOf = (keyPem: string): Buffer => createPublicKey(keyPem).export({ type: "spki", format: "der" });
const id = (n: number): Buffer => Buffer.alloc(16, n);
const cert = (der: Buffer, idBytes: Buffer = Buffer.alloc(0), label = ""): ScannedCertificate => ({ id: idBytes, label, der, summary: summarize(der) });
/** A private key object; `spec` null: one Notation does not allow. */
const priv = (idBytes: Buffer, spec: KeySpec | null = "EC-256", exposed?: string): ScannedPrivateKey => ({
  handle: Buffer.from(`h${idBytes.toString("hex")}`),
  id: idBytes,
  spec: spec ?? undefined,
  exposed,
});

/** A scan; without publicKeys, each certificate with a CKA_ID has the public key object of its key under that id (as a key pair and its certificate are). */
function scan(o: Partial<TokenScan>): TokenScan {
  const publicKeys = new Map((o.certificates ?? []).filter((c) => c.id.length > 0).map((c) => [c.id.toString("hex"), spkiOfCertificate(c.der)]));
  return { states: new Map(), signed: new Set(), certificates: [], publicKeys, privateKeys: new Map(), ...o };
}

function state(keyId: string, versions: KeyState["versions"], disabled?: KeyState["disabled"]): KeyState {
  return { schema: 1, keyId, generation: 3, versions, ...(disabled ? { disabled } : {}) };
}

function only(views: Map<string, KeyView>, keyId: string): KeyView {
  const v = views.get(keyId);
  assert.ok(v, `a view of "${keyId}"`);
  return v;
}

const summary = (view: KeyView): object[] =>
  view.versions.map((v) => ({ version: v.record.version, state: v.state, current: v.record.current, unusable: v.record.unusableReason, disabled: v.record.disabledReason }));

describe("key versions (src/signing/key-versions.ts): what a token scan makes of its objects", function () {
  this.timeout(60_000);
  let dir: string;
  let root: OpensslCa;
  let inter: OpensslCa;
  /** Two EC-256 leaves issued by the root, one by the intermediate, one EC-384 by the root, one CA certificate with a key of its own. */
  let leaves: Record<"a" | "b" | "viaInter" | "ec384" | "ca", { der: Buffer; spki: Buffer }>;

  before(() => {
    dir = mkdtempSync(join(tmpdir(), "key-versions-"));
    root = OpensslCa.root(dir, { subject: subj("Root") });
    inter = root.intermediate({ subject: subj("Inter") });
    const leaf = (ca: OpensslCa, cn: string, o: { key?: "ec-256" | "ec-384"; extensions?: string } = {}): { der: Buffer; spki: Buffer } => {
      const made = ca.leaf({ subject: subj(cn), ...o });
      return { der: made.der, spki: spkiOf(made.keyPem) };
    };
    leaves = { a: leaf(root, "a"), b: leaf(root, "b"), viaInter: leaf(inter, "c"), ec384: leaf(root, "d", { key: "ec-384" }), ca: leaf(root, "e", { extensions: CA_EXT }) };
  });

  after(() => rmSync(dir, { recursive: true, force: true }));

  describe("exposureOf", () => {
    it("a key made sensitive and never extractable is trusted, as is one whose module does not say", () => {
      assert.equal(exposureOf({ alwaysSensitive: true, neverExtractable: true }), undefined);
      assert.equal(exposureOf({}), undefined);
    });
    it("a key that was extractable, or not sensitive, at some time may exist outside the HSM", () => {
      assert.equal(exposureOf({ alwaysSensitive: true, neverExtractable: false }), "was extractable at some time (CKA_NEVER_EXTRACTABLE is false)");
      assert.equal(exposureOf({ alwaysSensitive: false, neverExtractable: true }), "was not sensitive at some time (CKA_ALWAYS_SENSITIVE is false)");
      assert.match(exposureOf({ alwaysSensitive: false, neverExtractable: false }) ?? "", /extractable/, "extractable is named first");
    });
    it("a module that reports only the present state: an extractable or not sensitive key is refused too", () => {
      assert.equal(exposureOf({ extractable: true }), "is extractable (CKA_EXTRACTABLE is true)");
      assert.equal(exposureOf({ sensitive: false }), "is not sensitive (CKA_SENSITIVE is false)");
      assert.equal(exposureOf({ sensitive: true, extractable: false }), undefined);
      assert.equal(exposureOf({ extractable: true, neverExtractable: false }), "is extractable (CKA_EXTRACTABLE is true)", "the present state is named first");
    });
  });

  describe("isKeyState", () => {
    it("a state object in the shape the rules read passes; one in another shape is left out", () => {
      const good = {
        schema: 1,
        keyId: "k",
        generation: 2,
        disabled: { at: "2026-01-01T00:00:00Z", reason: "x" },
        versions: [
          { version: 1, id: "0a0b", spec: "EC-256", created: "2026-01-01T00:00:00Z" },
          { version: 2, id: "", destroyed: "2026-01-02T00:00:00Z" },
        ],
      };
      assert.ok(isKeyState(good));
      const bad: unknown[] = [
        null,
        { ...good, schema: 2 },
        { ...good, generation: 1.5 },
        { ...good, versions: {} },
        { ...good, versions: [null] },
        { ...good, versions: [{ version: 1 }] },
        { ...good, versions: [{ version: 0, id: "0a" }] },
        { ...good, versions: [{ version: 1, id: 7 }] },
        { ...good, versions: [{ version: 1, id: "xyz" }] },
        { ...good, versions: [{ version: 1, id: "0a", spec: "RSA-1024" }] },
        { ...good, versions: [{ version: 1, id: "0a", disabled: "yes" }] },
        { ...good, disabled: 1 },
      ];
      for (const b of bad) assert.equal(isKeyState(b), false, JSON.stringify(b));
    });
  });

  describe("supersedes", () => {
    it("the higher generation wins; among equal generations the larger JSON, whichever is read first", () => {
      const g2 = state("k", [{ version: 1, id: "01" }]);
      const g3 = { ...g2, generation: 4 };
      assert.equal(supersedes(g2, undefined), true, "the first one found");
      assert.equal(supersedes(g3, g2), true);
      assert.equal(supersedes(g2, g3), false);
      const a = { ...g2, versions: [{ version: 1, id: "aa" }] };
      const b = { ...g2, versions: [{ version: 1, id: "bb" }] };
      assert.equal(supersedes(b, a), true);
      assert.equal(supersedes(a, b), false, "so two readers finding them in either order agree on b");
      assert.equal(supersedes(a, a), false);
    });
  });

  describe("keyViews", () => {
    it("a single key pair of another tool, with its certificate and the root: version 1, current, chain leaf first", () => {
      const views = keyViews(
        scan({
          privateKeys: new Map([["release", [priv(id(1))]]]),
          publicKeys: new Map([[id(1).toString("hex"), leaves.a.spki]]),
          certificates: [cert(leaves.a.der, id(1), "release"), cert(root.certDer)],
          signed: new Set([id(1).toString("hex")]),
        }),
      );
      const view = only(views, "release");
      assert.deepEqual([...views.keys()], ["release"], "the root certificate alone is no key");
      assert.equal(view.state, undefined);
      assert.deepEqual(summary(view), [{ version: 1, state: "enabled", current: true, unusable: undefined, disabled: undefined }]);
      const v = view.versions[0];
      assert.equal(view.current, v);
      assert.deepEqual(v?.record.chain, [leaves.a.der, root.certDer]);
      assert.equal(v?.record.spec, "EC-256");
      assert.equal(v?.record.info.hash, "SHA-256");
      assert.equal(v?.record.certificate?.subject, "C=US, ST=WA, O=Acme, CN=a");
      assert.equal(v?.hasSigned, true);
      assert.equal(v?.idHex, id(1).toString("hex"));
      assert.deepEqual(v?.handle, priv(id(1)).handle);
    });

    it("a key without a certificate is listed but unusable, and no version is current", () => {
      const view = only(keyViews(scan({ privateKeys: new Map([["k", [priv(id(1))]]]), publicKeys: new Map([[id(1).toString("hex"), leaves.a.spki]]) })), "k");
      assert.deepEqual(summary(view), [
        { version: 1, state: "enabled", current: false, unusable: 'key "k" has no certificate on the token (a CKO_CERTIFICATE with the same CKA_ID)', disabled: undefined },
      ]);
      assert.equal(view.current, undefined);
    });

    it("two key pairs with one label and no state object: each unusable (which one signs would be a guess)", () => {
      const views = keyViews(
        scan({
          privateKeys: new Map([["k", [priv(id(1)), priv(id(2))]]]),
          certificates: [cert(leaves.a.der, id(1)), cert(leaves.b.der, id(2)), cert(root.certDer)],
        }),
      );
      const view = only(views, "k");
      assert.deepEqual(
        view.versions.map((v) => [v.record.version, v.record.unusableReason]),
        [
          [1, '2 private keys on the token carry the label "k"; give each key a unique label'],
          [2, '2 private keys on the token carry the label "k"; give each key a unique label'],
        ],
      );
      assert.equal(view.current, undefined);
    });

    it("two key pairs under other labels with one CKA_ID (pkcs11-tool --id 01 twice): each unusable, whichever public key the id finds", () => {
      const views = keyViews(
        scan({
          privateKeys: new Map([
            ["a", [priv(id(1))]],
            ["b", [priv(id(1))]],
            ["c", [priv(id(2))]],
          ]),
          publicKeys: new Map([
            [id(1).toString("hex"), leaves.a.spki],
            [id(2).toString("hex"), leaves.b.spki],
          ]),
          certificates: [cert(leaves.a.der, id(1)), cert(leaves.b.der, id(2)), cert(root.certDer)],
        }),
      );
      const shared = `2 private keys on the token carry the CKA_ID ${id(1).toString("hex")} (labels "a", "b"), which links a key to its public key and certificate; give each key pair its own CKA_ID`;
      for (const keyId of ["a", "b"]) {
        const view = only(views, keyId);
        assert.equal(view.versions[0]?.record.unusableReason, shared, keyId);
        assert.equal(view.versions[0]?.problem, shared, keyId);
        assert.equal(view.current, undefined, keyId);
      }
      assert.equal(only(views, "c").current?.record.version, 1, "a key with its own CKA_ID is unaffected");
      assert.equal(only(views, "c").versions[0]?.problem, undefined);
    });

    it("versions follow the state object: a destroyed one keeps its number and spec, the newest usable one is current", () => {
      const st = state("k", [
        { version: 1, id: id(1).toString("hex"), spec: "EC-384", destroyed: "2026-01-02T00:00:00Z" },
        { version: 2, id: id(2).toString("hex"), spec: "EC-256", created: "2026-01-01T00:00:00Z" },
      ]);
      const view = only(
        keyViews(
          scan({
            states: new Map([["k", st]]),
            privateKeys: new Map([["k", [priv(id(2))]]]),
            certificates: [cert(leaves.a.der, id(2)), cert(root.certDer)],
          }),
        ),
        "k",
      );
      assert.equal(view.state, st);
      assert.deepEqual(summary(view), [
        { version: 1, state: "destroyed", current: false, unusable: 'version 1 of key "k" was destroyed', disabled: undefined },
        { version: 2, state: "enabled", current: true, unusable: undefined, disabled: undefined },
      ]);
      assert.equal(view.versions[0]?.handle, undefined, "a destroyed version has no handle");
      assert.equal(view.versions[0]?.record.spec, "EC-384", "its spec comes from the state");
      assert.equal(view.versions[1]?.created, "2026-01-01T00:00:00Z");
    });

    it("a disabled newest version: the older enabled one is current; a disabled key has no current version", () => {
      const versions = [
        { version: 1, id: id(1).toString("hex") },
        { version: 2, id: id(2).toString("hex"), disabled: { at: "2026-01-01T00:00:00Z", reason: "rotated" } },
      ];
      const objects = { privateKeys: new Map([["k", [priv(id(1)), priv(id(2))]]]), certificates: [cert(leaves.a.der, id(1)), cert(leaves.b.der, id(2)), cert(root.certDer)] };
      const view = only(keyViews(scan({ ...objects, states: new Map([["k", state("k", versions)]]) })), "k");
      assert.deepEqual(summary(view), [
        { version: 1, state: "enabled", current: true, unusable: undefined, disabled: undefined },
        { version: 2, state: "disabled", current: false, unusable: undefined, disabled: 'version 2 of key "k" is disabled by a custodian: rotated' },
      ]);
      assert.equal(view.versions[1]?.disabled?.reason, "rotated");

      const whole = only(keyViews(scan({ ...objects, states: new Map([["k", state("k", versions, { at: "2026-01-01T00:00:00Z", reason: "" })]]) })), "k");
      assert.deepEqual(
        whole.versions.map((v) => v.record.disabledReason),
        ['key "k" is disabled by a custodian', 'key "k" is disabled by a custodian'],
        "the key's disable wins over a version's, and an empty reason adds nothing",
      );
      assert.equal(whole.current, undefined);
    });

    it("a key pair under a managed key id that hsm-signer did not make: a version after the recorded ones, unusable", () => {
      const st = state("k", [{ version: 4, id: id(1).toString("hex") }]);
      const view = only(
        keyViews(
          scan({ states: new Map([["k", st]]), privateKeys: new Map([["k", [priv(id(1)), priv(id(9))]]]), certificates: [cert(leaves.a.der, id(1)), cert(leaves.b.der, id(9)), cert(root.certDer)] }),
        ),
        "k",
      );
      assert.deepEqual(
        view.versions.map((v) => [v.record.version, v.record.unusableReason]),
        [
          [4, undefined],
          [5, `a private key labelled "k" (CKA_ID ${id(9).toString("hex")}) is not a version hsm-signer made; remove it or give it another label`],
        ],
      );
      assert.equal(view.current?.record.version, 4);
    });

    it("a key that may exist outside the HSM never signs", () => {
      const view = only(
        keyViews(
          scan({
            privateKeys: new Map([["k", [priv(id(1), "EC-256", "was extractable at some time (CKA_NEVER_EXTRACTABLE is false)")]]]),
            certificates: [cert(leaves.a.der, id(1)), cert(root.certDer)],
          }),
        ),
        "k",
      );
      assert.match(view.versions[0]?.record.unusableReason ?? "", /^the private key of key "k" was extractable at some time .*generate a new key in the HSM$/);
      assert.equal(view.current, undefined);
    });

    it("a private key that may not sign (CKA_SIGN false) is unusable; one whose module does not report CKA_SIGN is trusted", () => {
      const withSign = (sign: boolean | undefined): KeyView =>
        only(keyViews(scan({ privateKeys: new Map([["k", [{ ...priv(id(1)), sign }]]]), certificates: [cert(leaves.a.der, id(1)), cert(root.certDer)] })), "k");
      assert.equal(withSign(false).versions[0]?.record.unusableReason, 'the private key of key "k" may not sign (CKA_SIGN is false); generate a key pair for signing');
      assert.equal(withSign(undefined).current?.record.version, 1);
      assert.equal(withSign(true).current?.record.version, 1);
    });

    it("certificate problems: not the key's public key, another key spec, a CA certificate, a chain without its intermediate", () => {
      const reason = (certs: ScannedCertificate[], o: { spki?: Buffer; spec?: KeySpec } = {}): string | undefined => {
        const views = keyViews(
          scan({ privateKeys: new Map([["k", [priv(id(1), o.spec ?? "EC-256")]]]), ...(o.spki ? { publicKeys: new Map([[id(1).toString("hex"), o.spki]]) } : {}), certificates: certs }),
        );
        return views.get("k")?.versions[0]?.record.unusableReason;
      };
      assert.equal(reason([cert(leaves.a.der, id(1)), cert(root.certDer)], { spki: leaves.b.spki }), 'the certificate with the CKA_ID of key "k" does not hold the key\'s public key');
      assert.equal(reason([cert(leaves.a.der, id(1)), cert(root.certDer)], { spec: "EC-384" }), 'the certificate of key "k" holds a EC-256 key but the HSM key is EC-384');
      assert.equal(reason([cert(leaves.ca.der, id(1)), cert(root.certDer)], { spki: leaves.ca.spki }), 'key "k" is a CA key; CA keys do not sign artifacts');
      assert.match(reason([cert(leaves.viaInter.der, id(1)), cert(root.certDer)]) ?? "", /^the certificate chain of key "k" is incomplete: /);
      assert.equal(reason([cert(leaves.viaInter.der, id(1)), cert(inter.certDer), cert(root.certDer)]), undefined, "with its intermediate the chain is complete");
    });

    it("the public key a certificate is checked against: the public key object's, else the private key's own (RSA); without either, unusable", () => {
      const withCert = (o: Partial<TokenScan>): KeyView =>
        only(keyViews(scan({ privateKeys: new Map([["k", [priv(id(1))]]]), certificates: [cert(leaves.a.der, id(1)), cert(root.certDer)], ...o })), "k");
      const noPublic = withCert({ publicKeys: new Map() });
      assert.equal(
        noPublic.versions[0]?.record.unusableReason,
        `key "k" has no public key object on the token (a CKO_PUBLIC_KEY with its CKA_ID ${id(1).toString("hex")}), so no certificate can be checked against its private key; keep the public key of every key pair on the token`,
      );
      assert.equal(noPublic.current, undefined);
      const own = withCert({ publicKeys: new Map(), privateKeys: new Map([["k", [{ ...priv(id(1)), spki: leaves.a.spki }]]]) });
      assert.equal(own.current?.record.version, 1, "the private key's own public key (an RSA key's modulus) is enough");
      assert.deepEqual(own.versions[0]?.spki, leaves.a.spki);
      const other = withCert({ privateKeys: new Map([["k", [{ ...priv(id(1)), spki: leaves.b.spki }]]]) });
      assert.match(other.versions[0]?.record.unusableReason ?? "", /^the public key object with the CKA_ID [0-9a-f]+ of key "k" does not hold the public key of its private key/);
    });

    it("of several certificates with the key's CKA_ID, the one that holds its public key is the leaf", () => {
      const view = only(
        keyViews(
          scan({
            privateKeys: new Map([["k", [priv(id(1))]]]),
            publicKeys: new Map([[id(1).toString("hex"), leaves.b.spki]]),
            certificates: [cert(leaves.a.der, id(1)), cert(leaves.b.der, id(1)), cert(root.certDer)],
          }),
        ),
        "k",
      );
      assert.equal(view.versions[0]?.record.certificate?.subject, "C=US, ST=WA, O=Acme, CN=b");
      assert.equal(view.versions[0]?.record.unusableReason, undefined);
    });

    it("a key Notation cannot use (no key spec from the key, the state or a certificate) is not offered at all", () => {
      const views = keyViews(scan({ privateKeys: new Map([["odd", [priv(id(1), null)]]]) }));
      assert.equal(views.size, 0);
      const fromCert = keyViews(scan({ privateKeys: new Map([["k", [priv(id(1), null)]]]), certificates: [cert(leaves.ec384.der, id(1)), cert(root.certDer)] }));
      assert.equal(fromCert.get("k")?.versions[0]?.record.spec, "EC-384", "the certificate names the spec when the key does not");
    });
  });

  describe("choosing a version", () => {
    let view: KeyView;
    before(() => {
      const st = state("k", [
        { version: 1, id: id(1).toString("hex") },
        { version: 2, id: id(2).toString("hex") },
      ]);
      view = only(keyViews(scan({ states: new Map([["k", st]]), privateKeys: new Map([["k", [priv(id(1)), priv(id(2))]]]), certificates: [cert(leaves.a.der, id(1)), cert(root.certDer)] })), "k");
    });

    it("selectVersion: a named version, else the current one, else the newest; nothing for an unknown key", () => {
      assert.equal(view.current?.record.version, 1, "version 2 has no certificate");
      assert.equal(selectVersion(view)?.record.version, 1);
      assert.equal(selectVersion(view, 2)?.record.version, 2);
      assert.equal(selectVersion(view, 3), undefined);
      assert.equal(selectVersion(undefined), undefined);
      const noneCurrent: KeyView = { ...view, current: undefined };
      assert.equal(selectVersion(noneCurrent)?.record.version, 2);
    });

    it("signableVersion: the version of a record handed out earlier, while its key pair and spec are still the same", () => {
      const record = view.versions[0]?.record;
      assert.ok(record);
      assert.equal(signableVersion(view, record).handle.toString(), `h${id(1).toString("hex")}`);
      const gone = (v: KeyView | undefined, spec: KeySpec = "EC-256"): void =>
        assert.throws(
          () => signableVersion(v, { ...record, spec }),
          (e: unknown) => isSignerError(e) && e.code === "KEY_NOT_FOUND" && e.message === 'key "k" version 1 is no longer on the token',
        );
      gone(undefined);
      gone(view, "EC-384");
      gone({ ...view, versions: view.versions.map((v) => ({ ...v, handle: undefined })) });
    });

    it("publicKeyOf: the token's public key object first, else the certificate's key", () => {
      const v = view.versions[0];
      assert.ok(v);
      assert.deepEqual(publicKeyOf(v), leaves.a.spki, "from the certificate");
      assert.deepEqual(publicKeyOf({ ...v, spki: leaves.b.spki }), leaves.b.spki);
      assert.equal(publicKeyOf(view.versions[1]), undefined, "neither");
      assert.equal(publicKeyOf(undefined), undefined);
    });
  });
});
