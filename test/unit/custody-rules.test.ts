import assert from "node:assert/strict";
import { createPublicKey } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { isSignerError, type ErrorCode } from "../../src/errors/index.js";
import {
  chainToImport,
  checkBasedOn,
  checkCsrSubject,
  checkDestroyConfirmation,
  checkManagedToken,
  checkNewKeyId,
  generationOf,
  nextVersion,
  pickVersion,
  rotationSpec,
  stateOf,
  versionForCsr,
  versionToDestroy,
  withDestroyed,
  withEnabled,
  withNewVersion,
  type DestroyOptions,
} from "../../src/signing/custody-rules.js";
import { keySpecInfo, type KeySpec } from "../../src/signing/key-spec.js";
import type { KeyState, KeyView, VersionView } from "../../src/signing/key-versions.js";
import { OpensslCa } from "../helpers/openssl-ca.js";

const AT = "2026-02-03T04:05:06.000Z";

function fails(code: ErrorCode, message: RegExp | string): (e: unknown) => boolean {
  return (e: unknown) => isSignerError(e) && e.code === code && (typeof message === "string" ? e.message === message : message.test(e.message));
}

/** A version as the key store shows it; only what the rules read matters. */
function version(n: number, o: Partial<Omit<VersionView, "record">> & { spec?: KeySpec } = {}): VersionView {
  const spec = o.spec ?? "EC-256";
  const record = { keyId: "k", version: n, spec, info: keySpecInfo(spec), chain: [], certificate: undefined, unusableReason: undefined, disabledReason: undefined, current: false };
  return { record, handle: Buffer.from(`h${n}`), spki: undefined, idHex: `0${n}`, state: "enabled", problem: undefined, created: undefined, disabled: undefined, hasSigned: false, ...o };
}

function view(versions: VersionView[], state?: KeyState): KeyView {
  return { keyId: "k", state, versions, current: undefined };
}

const managed = (versions: KeyState["versions"], disabled?: KeyState["disabled"]): KeyState => ({ schema: 1, keyId: "k", generation: 7, versions, ...(disabled ? { disabled } : {}) });

describe("custody rules (src/signing/custody-rules.ts): whether a custodian's change is allowed, and what it writes", () => {
  describe("generate and rotate", () => {
    it("checkManagedToken: no label asked is fine without looking; the managed token's label is fine; another is FAILED_PRECONDITION", () => {
      checkManagedToken(undefined, () => assert.fail("the managed label is read only when a label was asked for"));
      checkManagedToken("", () => assert.fail("an empty label asks for nothing"));
      checkManagedToken("signing", () => "signing");
      assert.throws(
        () => checkManagedToken("other", () => "signing"),
        fails("FAILED_PRECONDITION", 'this service is logged in to token "signing" only; run a service for token "other" to manage its keys'),
      );
    });

    it("checkBasedOn: a change made from another generation than the token's is refused (another replica changed the key)", () => {
      checkBasedOn("k", 0, 0);
      checkBasedOn("k", 5, 5);
      assert.throws(
        () => checkBasedOn("k", 6, 5),
        fails("FAILED_PRECONDITION", 'key "k" was changed on the token meanwhile (by another replica?): its state is at generation 6, this change was made from 5; nothing was changed, try again'),
      );
      assert.throws(() => checkBasedOn("k", 1, 0), fails("FAILED_PRECONDITION", /generation 1, this change was made from 0/), "a key that got a state object meanwhile");
    });

    it("checkNewKeyId: an existing key id is ALREADY_EXISTS (rotate it instead)", () => {
      checkNewKeyId("k", undefined);
      assert.throws(() => checkNewKeyId("k", view([version(1)])), fails("ALREADY_EXISTS", /^key "k" already exists on the token; rotate it/));
    });

    it("stateOf and generationOf: a managed key's state (a copy), or the implicit one of a key hsm-signer has not managed yet", () => {
      const st = managed([{ version: 1, id: "01", disabled: { at: AT, reason: "x" } }], { at: AT, reason: "whole" });
      const v = view([version(1)], st);
      const copy = stateOf(v);
      assert.deepEqual(copy, { keyId: "k", disabled: { at: AT, reason: "whole" }, versions: [{ version: 1, id: "01", disabled: { at: AT, reason: "x" } }] });
      (copy.versions[0] as { destroyed?: string }).destroyed = AT;
      assert.equal(st.versions[0]?.destroyed, undefined, "editing the copy leaves the view alone");
      assert.equal(generationOf(v), 7);

      const unmanaged = view([version(1, { idHex: "aa", spec: "RSA-2048" })]);
      assert.deepEqual(stateOf(unmanaged), { keyId: "k", versions: [{ version: 1, id: "aa", spec: "RSA-2048" }] });
      assert.equal(generationOf(unmanaged), 0);
    });

    it("stateOf: several key pairs under one label without a state are not adopted (a change would make them usable, even a disable)", () => {
      const twoPairs = view([version(1, { idHex: "aa" }), version(2, { idHex: "bb" })]);
      const refused = fails("FAILED_PRECONDITION", /^2 private keys on the token carry the label "k" and hsm-signer has no record of which is which/);
      assert.throws(() => stateOf(twoPairs), refused);
      assert.throws(() => withEnabled(twoPairs, 1, false, "x", AT), refused);
    });

    it("nextVersion: one past the highest ever recorded, destroyed versions included (numbers are never reused)", () => {
      assert.equal(nextVersion({ keyId: "k", versions: [] }), 1);
      assert.equal(
        nextVersion({
          keyId: "k",
          versions: [
            { version: 3, id: "03", destroyed: AT },
            { version: 1, id: "01" },
          ],
        }),
        4,
      );
    });

    it("withNewVersion appends the generated key pair without touching the base; rotationSpec keeps the newest version's spec by default", () => {
      const base = { keyId: "k", versions: [{ version: 1, id: "01" }] };
      assert.deepEqual(withNewVersion(base, 2, "02", "EC-384", AT), {
        keyId: "k",
        versions: [
          { version: 1, id: "01" },
          { version: 2, id: "02", spec: "EC-384", created: AT },
        ],
      });
      assert.equal(base.versions.length, 1);
      const v = view([version(1, { spec: "EC-256" }), version(2, { spec: "RSA-3072" })]);
      assert.equal(rotationSpec(v, undefined), "RSA-3072");
      assert.equal(rotationSpec(v, "EC-521"), "EC-521");
    });
  });

  describe("disable and enable", () => {
    const st = managed([
      { version: 1, id: "01", destroyed: AT },
      { version: 2, id: "02" },
    ]);
    const v = view([version(1, { state: "destroyed", handle: undefined }), version(2)], st);

    it("version 0 is the whole key: disabled with when and why, enabled again without", () => {
      assert.deepEqual(withEnabled(v, 0, false, "incident", AT).disabled, { at: AT, reason: "incident" });
      const disabledKey = view(v.versions, managed(st.versions, { at: AT, reason: "incident" }));
      assert.equal(withEnabled(disabledKey, 0, true, "", AT).disabled, undefined);
    });

    it("one version: recorded on its entry; the view's state is not changed", () => {
      const next = withEnabled(v, 2, false, "rotated", AT);
      assert.deepEqual(next.versions[1], { version: 2, id: "02", disabled: { at: AT, reason: "rotated" } });
      assert.equal(next.disabled, undefined);
      assert.equal(st.versions[1]?.disabled, undefined);
    });

    it("an unknown version is KEY_NOT_FOUND, a destroyed one FAILED_PRECONDITION", () => {
      assert.throws(() => withEnabled(v, 3, false, "x", AT), fails("KEY_NOT_FOUND", 'key "k" has no version 3'));
      assert.throws(() => withEnabled(v, 1, true, "", AT), fails("FAILED_PRECONDITION", 'version 1 of key "k" was destroyed'));
    });
  });

  describe("destroy", () => {
    const keep: DestroyOptions = { destroyCertificate: false, acknowledgeSigned: false };
    const never = (): Promise<boolean> => assert.fail("the token is not asked");

    it("checkDestroyConfirmation: exactly <key id>@v<version>", () => {
      checkDestroyConfirmation("k", 2, "k@v2");
      for (const wrong of ["", "k@v1", "k@2", " k@v2"])
        assert.throws(() => checkDestroyConfirmation("k", 2, wrong), fails("INVALID_ARGUMENT", 'destroying a key version cannot be undone: confirm with exactly "k@v2"'));
    });

    it("an unknown version is KEY_NOT_FOUND; an enabled one must be disabled first, unless the whole key is", async () => {
      const v = view([version(1)]);
      await assert.rejects(versionToDestroy(v, 2, keep, never), fails("KEY_NOT_FOUND", 'key "k" has no version 2'));
      await assert.rejects(versionToDestroy(v, 1, keep, never), fails("FAILED_PRECONDITION", 'version 1 of key "k" is enabled; disable it first'));
      const keyDisabled = view([version(1)], managed([{ version: 1, id: "01" }], { at: AT, reason: "x" }));
      assert.equal((await versionToDestroy(keyDisabled, 1, keep, never)).record.version, 1);
      assert.equal((await versionToDestroy(view([version(1, { state: "disabled" })]), 1, keep, never)).record.version, 1);
    });

    it("a destroyed version again: only to finish a destroy whose key pair is still there, or to remove the certificate", async () => {
      const v = view([version(1, { state: "destroyed", handle: undefined })]);
      const asked: string[] = [];
      const left =
        (answer: boolean) =>
        (x: VersionView): Promise<boolean> => {
          asked.push(x.idHex);
          return Promise.resolve(answer);
        };
      await assert.rejects(versionToDestroy(v, 1, keep, left(false)), fails("FAILED_PRECONDITION", 'version 1 of key "k" is already destroyed'));
      assert.equal((await versionToDestroy(v, 1, keep, left(true))).record.version, 1);
      assert.deepEqual(asked, ["01", "01"], "the token is asked about this version's key pair");
      assert.equal((await versionToDestroy(v, 1, { destroyCertificate: true, acknowledgeSigned: false }, never)).record.version, 1);
    });

    it("the certificate of a version that has signed goes only when acknowledged", async () => {
      const v = view([version(1, { state: "disabled", hasSigned: true })]);
      await assert.rejects(
        versionToDestroy(v, 1, { destroyCertificate: true, acknowledgeSigned: false }, never),
        fails("FAILED_PRECONDITION", /^version 1 of key "k" has signed; its certificate is the last record/),
      );
      assert.equal((await versionToDestroy(v, 1, { destroyCertificate: true, acknowledgeSigned: true }, never)).record.version, 1);
      assert.equal((await versionToDestroy(v, 1, keep, never)).record.version, 1, "keeping the certificate needs no acknowledgement");
    });

    it("a key pair the state does not record (a rotation that stopped before its record): destroyed without a disable, then recorded as destroyed", async () => {
      const st = managed([{ version: 1, id: "01" }]);
      const v = view([version(1), version(2, { idHex: "0f" })], st);
      assert.equal((await versionToDestroy(v, 2, keep, never)).record.version, 2);
      await assert.rejects(versionToDestroy(v, 1, keep, never), fails("FAILED_PRECONDITION", 'version 1 of key "k" is enabled; disable it first'));
      assert.deepEqual(withDestroyed(v, 2, AT).versions, [
        { version: 1, id: "01" },
        { version: 2, id: "0f", spec: "EC-256", destroyed: AT },
      ]);
      assert.equal(st.versions.length, 1, "the view's state is not changed");
    });

    it("withDestroyed records the time once: a retried destroy keeps the first", () => {
      const st = managed([
        { version: 1, id: "01" },
        { version: 2, id: "02", destroyed: "2020-01-01T00:00:00.000Z" },
      ]);
      const v = view([version(1), version(2)], st);
      assert.equal(withDestroyed(v, 1, AT).versions[0]?.destroyed, AT);
      assert.equal(withDestroyed(v, 2, AT).versions[1]?.destroyed, "2020-01-01T00:00:00.000Z");
      assert.equal(st.versions[0]?.destroyed, undefined, "the view's state is not changed");
    });
  });

  describe("CSR", () => {
    it("pickVersion and versionForCsr: a named version or the newest; a destroyed one has no key to sign a CSR", () => {
      const v = view([version(1), version(2, { state: "destroyed", handle: undefined })]);
      assert.equal(pickVersion(v, 0).record.version, 2, "the newest, even when it cannot sign");
      assert.equal(pickVersion(v, 1).record.version, 1);
      assert.throws(() => pickVersion(v, 5), fails("KEY_NOT_FOUND", 'key "k" has no version 5'));
      assert.equal(versionForCsr(v, 1).handle.toString(), "h1");
      assert.throws(() => versionForCsr(v, 0), fails("FAILED_PRECONDITION", 'version 2 of key "k" was destroyed'));
      const disabled = version(1);
      disabled.record.disabledReason = 'key "k" is disabled by a custodian: compromised';
      assert.throws(() => versionForCsr(view([disabled]), 1), fails("KEY_DISABLED", 'key "k" is disabled by a custodian: compromised'));
      const cannotSign = view([version(1, { problem: 'the private key of key "k" may not sign (CKA_SIGN is false); generate a key pair for signing' })]);
      assert.throws(
        () => versionForCsr(cannotSign, 1),
        fails("FAILED_PRECONDITION", 'no CSR for version 1 of key "k": the private key of key "k" may not sign (CKA_SIGN is false); generate a key pair for signing'),
      );
    });

    it("checkCsrSubject: a subject notation trust policies can name (C, ST and O; no duplicates)", () => {
      checkCsrSubject("CN=release, O=Example, ST=WA, C=US");
      assert.throws(() => checkCsrSubject("CN=release"), fails("INVALID_ARGUMENT", /^subject "CN=release" cannot name a notation identity: it lacks C, ST, O/));
      assert.throws(() => checkCsrSubject("CN=a, CN=b, O=Ex, ST=WA, C=US"), fails("INVALID_ARGUMENT", /CN appears more than once/));
    });

    it("checkCsrSubject: only attribute types notation can match, and text that encodes (else INVALID_ARGUMENT, not an internal error)", () => {
      checkCsrSubject("CN=release, OU=Build, O=Example, L=Seattle, ST=WA, C=US, SERIALNUMBER=42, STREET=1 Main St, POSTALCODE=98101");
      const odd = /it has (.+), which notation cannot match in a trust policy; use only C, O, OU, CN, L, ST, SERIALNUMBER, STREET, POSTALCODE \(in capitals\)$/;
      assert.throws(() => checkCsrSubject("C=US, ST=WA, O=x, FOO=bar"), fails("INVALID_ARGUMENT", /^subject "C=US, ST=WA, O=x, FOO=bar" cannot name a notation identity: it has FOO, which/));
      for (const [subject, types] of [
        ["C=US, ST=WA, O=x, 1.2.3.4=bar", "1.2.3.4"],
        ["C=US, ST=WA, O=x, E=a@example.com, DC=example", "E, DC"],
        ["c=US, st=WA, o=x", "c, st, o"],
      ] as const) {
        assert.throws(
          () => checkCsrSubject(subject),
          (e: unknown) => isSignerError(e) && e.code === "INVALID_ARGUMENT" && odd.exec(e.message)?.[1] === types,
          subject,
        );
      }
      assert.throws(() => checkCsrSubject("C=US, ST=WA, O=x\uD800"), fails("INVALID_ARGUMENT", /^subject ".*" cannot be encoded in a certificate: it holds text that is not valid Unicode$/));
    });
  });

  describe("chain import (openssl-made chains)", function () {
    this.timeout(60_000);
    let dir: string;
    let root: OpensslCa;
    let inter: OpensslCa;
    let leaf: Buffer;
    let spki: Buffer;
    let otherSpki: Buffer;

    before(() => {
      dir = mkdtempSync(join(tmpdir(), "custody-rules-"));
      const subj = (cn: string): string => `/C=US/ST=WA/O=Acme/CN=${cn}`;
      root = OpensslCa.root(dir, { subject: subj("Root") });
      inter = root.intermediate({ subject: subj("Inter") });
      const made = inter.leaf({ subject: subj("release") });
      leaf = made.der;
      spki = createPublicKey(made.keyPem).export({ type: "spki", format: "der" });
      otherSpki = createPublicKey(inter.leaf({ subject: subj("other") }).keyPem).export({ type: "spki", format: "der" });
    });

    after(() => rmSync(dir, { recursive: true, force: true }));

    it("the version that holds the leaf's key, and the chain put in order, leaf first", () => {
      const v = view([version(1, { spki: otherSpki }), version(2, { spki })]);
      const { target, chain } = chainToImport(v, 0, [root.certDer, leaf, inter.certDer], false);
      assert.equal(target.record.version, 2, "found among the versions whose key pair is there");
      assert.deepEqual(chain, [leaf, inter.certDer, root.certDer]);
      assert.equal(chainToImport(v, 2, [leaf, inter.certDer, root.certDer], true).target.record.version, 2);
    });

    it("no version that holds the leaf's key (the named one, or a destroyed one): CHAIN_INVALID", () => {
      const v = view([version(1, { spki: otherSpki }), version(2, { spki, state: "destroyed", handle: undefined })]);
      assert.throws(() => chainToImport(v, 1, [leaf, inter.certDer, root.certDer], false), fails("CHAIN_INVALID", /^the chain for key "k" was rejected:\n.*key "k" version 1/s));
      assert.throws(() => chainToImport(v, 0, [leaf, inter.certDer, root.certDer], false), fails("CHAIN_INVALID", /any version of key "k"/));
      assert.throws(() => chainToImport(v, 3, [leaf], false), fails("KEY_NOT_FOUND", 'key "k" has no version 3'));
      // Named, the destroyed version that holds the leaf's key is named as destroyed, not as another key.
      assert.throws(
        () => chainToImport(v, 2, [leaf, inter.certDer, root.certDer], false),
        fails("FAILED_PRECONDITION", 'version 2 of key "k" was destroyed; a chain is imported for a version whose key pair is on the token'),
      );
    });

    it("strict order: a chain that does not start with the leaf is refused", () => {
      const v = view([version(1, { spki })]);
      assert.throws(() => chainToImport(v, 1, [inter.certDer, leaf, root.certDer], true), fails("CHAIN_INVALID", /with strict order the leaf comes first/));
    });

    it("a chain that breaks the code-signing rules (here: the intermediate is missing) is refused with its problems", () => {
      const v = view([version(1, { spki })]);
      assert.throws(
        () => chainToImport(v, 1, [leaf, root.certDer], false),
        (e: unknown) => isSignerError(e) && e.code === "CHAIN_INVALID" && e.message.startsWith('the chain for key "k" was rejected:\n'),
      );
    });
  });
});
