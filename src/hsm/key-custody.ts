import { ObjectClass, type Module, type Session, type Slot } from "graphene-pk11";
import { SignerError } from "../errors/index.js";
import {
  chainToImport,
  checkCsrSubject,
  checkDestroyConfirmation,
  checkManagedToken,
  checkNewKeyId,
  generationOf,
  nextVersion,
  rotationSpec,
  stateOf,
  versionForCsr,
  versionToDestroy,
  withDestroyed,
  withEnabled,
  withNewVersion,
  type EditableKeyState,
} from "../signing/custody-rules.js";
import type { KeySpec } from "../signing/key-spec.js";
import type { KeyView, VersionView } from "../signing/key-versions.js";
import { createCsr, type DigestSigningKey } from "../signing/x509-builder.js";
import { generateKeyPair, storeCertificate } from "./key-factory.js";
import { assertKeyStateGeneration, writeKeyState } from "./key-state.js";
import type { Pkcs11KeyStore } from "./pkcs11-key-store.js";
import { translatePkcs11Error } from "./pkcs11-errors.js";
import type { SessionPool } from "./session-pool.js";
import type { SlotDetails, TestChainParams, TestChainResult, TokenDetails } from "../signing/custody.js";
import { createTestChain } from "./test-chain.js";

export type { SlotDetails, TokenDetails };

const TOKEN_FLAGS: [number, string][] = [
  [0x1, "RNG"],
  [0x2, "WRITE_PROTECTED"],
  [0x4, "LOGIN_REQUIRED"],
  [0x8, "USER_PIN_INITIALIZED"],
  [0x20, "RESTORE_KEY_NOT_NEEDED"],
  [0x40, "CLOCK_ON_TOKEN"],
  [0x100, "PROTECTED_AUTHENTICATION_PATH"],
  [0x200, "DUAL_CRYPTO_OPERATIONS"],
  [0x400, "TOKEN_INITIALIZED"],
  [0x10000, "USER_PIN_COUNT_LOW"],
  [0x20000, "USER_PIN_FINAL_TRY"],
  [0x40000, "USER_PIN_LOCKED"],
  [0x80000, "USER_PIN_TO_BE_CHANGED"],
  [0x1000000, "ERROR_STATE"],
];

/** The mechanisms hsm-signer uses to generate keys and sign. */
const RELEVANT_MECHANISMS = new Set([
  "RSA_PKCS_KEY_PAIR_GEN",
  "EC_KEY_PAIR_GEN",
  "RSA_PKCS_PSS",
  "SHA256_RSA_PKCS_PSS",
  "SHA384_RSA_PKCS_PSS",
  "SHA512_RSA_PKCS_PSS",
  "ECDSA",
  "ECDSA_SHA256",
  "ECDSA_SHA384",
  "ECDSA_SHA512",
]);

/** CK_UNAVAILABLE_INFORMATION and CK_EFFECTIVELY_INFINITE come through as huge or negative numbers. */
const memory = (n: number): number => (Number.isSafeInteger(n) && n >= 0 ? n : -1);

const now = (): string => new Date().toISOString();

/**
 * Where each attribute goes in an encoded subject, as Go's pkix.Name and test-chain.ts order
 * them (the most general first: C, ST, L, street, postal code, O, OU, CN, serial number).
 */
const RDN_ORDER = ["DC", "C", "ST", "S", "L", "STREET", "POSTALCODE", "O", "OU", "CN", "SERIALNUMBER"];

/** The RDNs of a subject as typed, each with its text as-is (escapes and quotes kept) and its type. */
function splitRdns(subject: string): { type: string; text: string }[] {
  const out: { type: string; text: string }[] = [];
  let start = 0;
  let quoted = false;
  const push = (end: number): void => {
    const text = subject.slice(start, end).trim();
    if (text)
      out.push({
        type: text
          .slice(0, Math.max(0, text.indexOf("=")))
          .trim()
          .toUpperCase(),
        text,
      });
  };
  for (let i = 0; i < subject.length; i++) {
    const c = subject[i];
    if (c === "\\") i++;
    else if (c === '"') quoted = !quoted;
    else if (!quoted && (c === "," || c === ";")) {
      push(i);
      start = i + 1;
    }
  }
  push(subject.length);
  return out;
}

/**
 * The subject with its RDNs in the canonical order, whatever order they were typed in: a CSR
 * for "CN=release, O=Example, ST=WA, C=US" then encodes C, ST, O, CN like a test-chain leaf, and
 * notation (Go, printing the last RDN first) shows both as "CN=release, O=Example, ST=WA, C=US".
 * Attributes outside RDN_ORDER follow, in the order typed.
 */
export function inCanonicalOrder(subject: string): string {
  const rank = (type: string): number => {
    const i = RDN_ORDER.indexOf(type);
    return i < 0 ? RDN_ORDER.length : i;
  };
  return splitRdns(subject)
    .map((r, i) => ({ ...r, i }))
    .sort((a, b) => rank(a.type) - rank(b.type) || a.i - b.i)
    .map((r) => r.text)
    .join(", ");
}

/**
 * What key custodians do to the token: generate and rotate key pairs, disable, enable and
 * destroy versions, make CSRs and store certificate chains. Changes are serialized within the
 * process; state objects carry generations, so replicas on the same token converge (key-state.ts).
 * Every change rescans the key store, so this replica sees it at once and others within a poll.
 * Whether a change is allowed, and what it writes, is decided by signing/custody-rules.ts.
 */
export class KeyCustody {
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly pool: SessionPool,
    private readonly keys: Pkcs11KeyStore,
  ) {}

  private get slot(): Slot {
    return this.pool.slot;
  }

  /**
   * Runs one change at a time. A change rescans the key store when it is done (fresh()); one that
   * failed half-way is rescanned here, so the store never shows a stale token.
   */
  private change<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn).catch(async (e: unknown) => {
      await this.keys.refresh().catch(() => undefined);
      throw e;
    });
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** The key as the token holds it right after a change. */
  private async fresh(keyId: string): Promise<KeyView> {
    await this.keys.refresh();
    return this.keys.view(keyId);
  }

  listSlots(): SlotDetails[] {
    try {
      return this.readSlots();
    } catch (e) {
      // A token gone from under the module (SoftHSM: CKR_GENERAL_ERROR), a network HSM away: the code, not "internal error".
      throw translatePkcs11Error(e, "listing the slots and their tokens");
    }
  }

  private readSlots(): SlotDetails[] {
    const mod: Module = this.slot.module;
    const slots = mod.getSlots(false);
    const managedId = this.slot.handle.toString("hex");
    const out: SlotDetails[] = [];
    for (let i = 0; i < slots.length; i++) {
      const s = slots.items(i);
      const present = (s.flags & 0x1) !== 0;
      out.push({
        slotId: s.handle.readBigUInt64LE(0).toString(),
        description: s.slotDescription.trim(),
        manufacturer: s.manufacturerID.trim(),
        tokenPresent: present,
        token: present ? this.tokenDetails(s, s.handle.toString("hex") === managedId) : undefined,
      });
    }
    return out;
  }

  private tokenDetails(s: Slot, managed: boolean): TokenDetails {
    const t = s.getToken();
    const mechs = s.getMechanisms();
    const mechanisms: string[] = [];
    for (let i = 0; i < mechs.length; i++) {
      const name = mechs.items(i).name;
      if (RELEVANT_MECHANISMS.has(name)) mechanisms.push(name);
    }
    return {
      label: t.label.trim(),
      serialNumber: t.serialNumber.trim(),
      manufacturer: t.manufacturerID.trim(),
      model: t.model.trim(),
      flags: TOKEN_FLAGS.filter(([bit]) => (t.flags & bit) !== 0).map(([, name]) => name),
      mechanisms: mechanisms.sort(),
      freePublicMemory: memory(t.freePublicMemory),
      totalPublicMemory: memory(t.totalPublicMemory),
      freePrivateMemory: memory(t.freePrivateMemory),
      totalPrivateMemory: memory(t.totalPrivateMemory),
      managed,
    };
  }

  private managedLabel(): string {
    return this.slot.getToken().label.trim();
  }

  /** A new key id with version 1. */
  generateKey(keyId: string, spec: KeySpec, tokenLabel?: string): Promise<KeyView> {
    checkManagedToken(tokenLabel, () => this.managedLabel());
    return this.change(async () => {
      checkNewKeyId(keyId, await this.existing(keyId));
      await this.pool.use((s) => this.newVersion(s, keyId, spec, { keyId, versions: [] }, 0));
      return this.fresh(keyId);
    });
  }

  /**
   * The test chain (test-chain.ts), one change among the others: it looks for its keys and makes
   * the missing ones, so two at once (a retry after a client timeout, or a GenerateKey of the
   * same id) would both make a key with the same label, and such a key can never sign.
   */
  createTestChain(p: TestChainParams): Promise<TestChainResult> {
    return this.change(() => createTestChain(this.pool, this.keys, p));
  }

  /** A new version under an existing key id; signing moves to it once it has a usable chain. */
  rotateKey(keyId: string, spec?: KeySpec): Promise<{ view: KeyView; version: number }> {
    return this.change(async () => {
      const view = await this.keys.view(keyId);
      const version = await this.pool.use((s) => this.newVersion(s, keyId, rotationSpec(view, spec), stateOf(view), generationOf(view)));
      return { view: await this.fresh(keyId), version };
    });
  }

  /** Generates the key pair and records it as the next version; the key pair is removed again if the state cannot be saved. */
  private async newVersion(s: Session, keyId: string, spec: KeySpec, base: EditableKeyState, basedOn: number): Promise<number> {
    const version = nextVersion(base);
    // Checked before the generation too, which may take seconds: a refused change costs nothing.
    assertKeyStateGeneration(s, keyId, basedOn);
    const generated = await generateKeyPair(s, keyId, spec, { allowExistingLabel: version > 1 });
    try {
      writeKeyState(s, withNewVersion(base, version, generated.id.toString("hex"), spec, now()), basedOn);
    } catch (e) {
      destroyObjects(s, generated.id, [ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY]);
      throw e;
    }
    return version;
  }

  private async existing(keyId: string): Promise<KeyView | undefined> {
    try {
      return await this.keys.view(keyId);
    } catch (e) {
      if ((e as SignerError).code === "KEY_NOT_FOUND") return undefined;
      throw e;
    }
  }

  /** Disables or enables the whole key (version 0) or one version. */
  setState(keyId: string, version: number, enabled: boolean, reason: string): Promise<KeyView> {
    return this.change(async () => {
      const view = await this.keys.view(keyId);
      const state = withEnabled(view, version, enabled, reason, now());
      await this.pool.use((s) => writeKeyState(s, state, generationOf(view)));
      return this.fresh(keyId);
    });
  }

  /** Destroys a disabled version's key pair (and, when asked, its leaf certificate). */
  destroyVersion(keyId: string, version: number, o: { confirm: string; destroyCertificate: boolean; acknowledgeSigned: boolean }): Promise<{ view: KeyView; destroyed: string[] }> {
    checkDestroyConfirmation(keyId, version, o.confirm);
    return this.change(async () => {
      const view = await this.keys.view(keyId);
      // A destroy that failed half-way (recorded as destroyed, but C_DestroyObject failed) may be retried while its key pair is there.
      const v = await versionToDestroy(view, version, o, (left) => this.pool.use((s) => keyPairLeft(s, Buffer.from(left.idHex, "hex"))));
      const id = Buffer.from(v.idHex, "hex");
      const state = withDestroyed(view, version, now());
      const destroyed = await this.pool.use((s) => {
        writeKeyState(s, state, generationOf(view));
        return destroyObjects(s, id, o.destroyCertificate ? [ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY, ObjectClass.CERTIFICATE] : [ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY]);
      });
      return { view: await this.fresh(keyId), destroyed };
    });
  }

  /** A PKCS#10 request signed by the version's HSM key (default: the newest version). */
  async createCsr(keyId: string, version: number, subject: string): Promise<{ pem: string; version: number }> {
    checkCsrSubject(subject);
    const v = versionForCsr(await this.keys.view(keyId), version);
    const pem = await createCsr({ subject: inCanonicalOrder(subject), key: this.digestSigner(v) });
    return { pem, version: v.record.version };
  }

  private digestSigner(v: VersionView): DigestSigningKey {
    const spki = this.keys.publicKeySpki(v.record.keyId, v.record.version);
    if (!spki) throw new SignerError("KEY_UNUSABLE", `key "${v.record.keyId}" version ${v.record.version} has no public key on the token`);
    return { spec: v.record.spec, spki, signDigest: (hash, digest) => this.keys.signInternal(v.record, hash, digest) };
  }

  /**
   * Checks a chain for a key version and stores it: the leaf must hold the version's public key,
   * the chain must pass every rule of notation-plugin-protocol.md §5; certificates already on the
   * token are not stored twice.
   */
  importChain(keyId: string, version: number, inputs: Buffer[], strictOrder: boolean): Promise<{ version: number; chain: Buffer[]; stored: number }> {
    return this.change(async () => {
      const view = await this.keys.view(keyId);
      const { target, chain } = chainToImport(view, version, inputs, strictOrder);
      const id = Buffer.from(target.idHex, "hex");
      const stored = await this.pool.use((s) => storeChain(s, keyId, id, chain));
      await this.keys.refresh();
      return { version: target.record.version, chain, stored };
    });
  }
}

/**
 * Stores the leaf under the key's CKA_ID unless it is there already, and each CA certificate not
 * yet on the token under its own label. A leaf on the token under another CKA_ID (or none: another
 * tool wrote it without --id) is not the key's certificate, so it is stored again under the key's.
 */
function storeChain(s: Session, keyId: string, id: Buffer, chain: Buffer[]): number {
  const present = new Set<string>();
  const leafPresent = new Set<string>();
  const found = s.find({ class: ObjectClass.CERTIFICATE });
  for (let i = 0; i < found.length; i++) {
    const { value, id: objectId } = found.items(i).getAttribute({ value: null, id: null }) as { value?: Buffer; id?: Buffer };
    if (!value) continue;
    present.add(value.toString("base64"));
    if (objectId?.equals(id)) leafPresent.add(value.toString("base64"));
  }
  let stored = 0;
  chain.forEach((der, i) => {
    if ((i === 0 ? leafPresent : present).has(der.toString("base64"))) return;
    storeCertificate(s, i === 0 ? keyId : `${keyId}-ca-${i}`, i === 0 ? id : Buffer.alloc(0), der);
    stored++;
  });
  return stored;
}

/** Destroys the objects of the given classes that carry this CKA_ID; returns what was destroyed. */
function keyPairLeft(s: Session, id: Buffer): boolean {
  return s.find({ class: ObjectClass.PRIVATE_KEY, id }).length > 0 || s.find({ class: ObjectClass.PUBLIC_KEY, id }).length > 0;
}

function destroyObjects(s: Session, id: Buffer, classes: ObjectClass[]): string[] {
  const names: Record<number, string> = { [ObjectClass.PRIVATE_KEY]: "private key", [ObjectClass.PUBLIC_KEY]: "public key", [ObjectClass.CERTIFICATE]: "certificate" };
  const destroyed: string[] = [];
  try {
    for (const cls of classes) {
      const found = s.find({ class: cls, id });
      for (let i = 0; i < found.length; i++) {
        found.items(i).destroy();
        destroyed.push(names[cls] ?? "object");
      }
    }
  } catch (e) {
    throw translatePkcs11Error(e, "destroying key objects");
  }
  return destroyed;
}
