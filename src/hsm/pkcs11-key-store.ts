import { createHash, createPublicKey, X509Certificate } from "node:crypto";
import { performance } from "node:perf_hooks";
import { CertificateType, ObjectClass, KeyType, type ITemplate, type Session } from "graphene-pk11";
import { SignerError } from "../errors/index.js";
import { keySpecFor, keySpecInfo, type HashAlgorithm, type KeySpec } from "../signing/key-spec.js";
import type { CertificateSummary, KeyRecord, KeyStore } from "../signing/ports.js";
import { buildChain, keySpecOfCertificate, spkiOfCertificate, summarize } from "../signing/certificates.js";
import { curveOfEcParams, digestSigningMechanism } from "./mechanisms.js";
import { markSigned, readTokenState, type Disabled, type KeyState, type TokenState, type VersionState } from "./key-state.js";
import { translatePkcs11Error } from "./pkcs11-errors.js";
import type { SessionPool } from "./session-pool.js";
import type { SignThreads } from "./sign-threads.js";

/** How often the token is checked for keys, certificates and states that custodians changed. */
export const DEFAULT_KEY_REFRESH_MS = 2_000;
/** A lookup of an unknown key rescans the token at most this often. */
const MISS_RESCAN_MS = 1_000;

export interface Pkcs11KeyStoreOptions {
  refreshIntervalMs?: number;
  /** Called after each HSM signature with its duration (metrics). */
  onSign?: (keySpec: string, seconds: number) => void;
}

/** One version of a key as the token holds it. */
export interface VersionView {
  record: KeyRecord;
  /** Private key handle; undefined once the version's key pair is destroyed. */
  handle: Buffer | undefined;
  /** DER SubjectPublicKeyInfo from the token's public key object, when there is one. */
  spki: Buffer | undefined;
  /** CKA_ID, lowercase hex. */
  idHex: string;
  state: "enabled" | "disabled" | "destroyed";
  created: string | undefined;
  disabled: Disabled | undefined;
  hasSigned: boolean;
}

/** A key id with all its versions (ascending), its custodian state and its current version. */
export interface KeyView {
  keyId: string;
  /** The state object on the token; undefined for keys hsm-signer has not managed yet. */
  state: KeyState | undefined;
  versions: VersionView[];
  current: VersionView | undefined;
}

interface RawCert {
  id: Buffer;
  label: string;
  der: Buffer;
  summary: CertificateSummary;
}

interface RawPrivateKey {
  handle: Buffer;
  id: Buffer;
  spec: KeySpec | undefined;
  /** Why the key may have existed outside the HSM (it was extractable or not sensitive at some time). */
  exposed: string | undefined;
}

function spkiFromPublicObject(keyType: number, a: Record<string, unknown>): Buffer | undefined {
  try {
    if (keyType === KeyType.RSA && a.modulus instanceof Buffer && a.publicExponent instanceof Buffer) {
      return createPublicKey({ key: { kty: "RSA", n: a.modulus.toString("base64url"), e: a.publicExponent.toString("base64url") }, format: "jwk" }).export({ type: "spki", format: "der" });
    }
    if (keyType === KeyType.EC && a.paramsECDSA instanceof Buffer && a.pointEC instanceof Buffer) {
      const curve = curveOfEcParams(a.paramsECDSA);
      if (!curve) return undefined;
      const point = unwrapEcPoint(a.pointEC);
      const n = (point.length - 1) / 2;
      return createPublicKey({ key: { kty: "EC", crv: curve, x: point.subarray(1, 1 + n).toString("base64url"), y: point.subarray(1 + n).toString("base64url") }, format: "jwk" }).export({
        type: "spki",
        format: "der",
      });
    }
  } catch {
    return undefined;
  }
  return undefined;
}

/** CKA_EC_POINT is a DER OCTET STRING around the uncompressed point on most tokens, raw on a few. */
function unwrapEcPoint(p: Buffer): Buffer {
  if (p[0] === 0x04 && p[1] === p.length - 2) return p.subarray(2);
  if (p[0] === 0x04 && p[1] === 0x81 && p[2] === p.length - 3) return p.subarray(3);
  return p; // raw 04||X||Y
}

/**
 * A KeyStore over one PKCS#11 token. Keys are private key objects found by CKA_LABEL (the key
 * id); each key's certificate is the CKO_CERTIFICATE with the same CKA_ID, and its chain is
 * completed from the other certificates on the token. Keys made by other tools work the same.
 *
 * A key id may have several versions: key pairs with the same label and different CKA_IDs, in
 * the order kept by the key's state object (key-state.ts). Without a state object a single key
 * pair is version 1. The token is polled for changes (custodians on any replica) and rescanned
 * when something changed.
 */
export class Pkcs11KeyStore implements KeyStore {
  private views = new Map<string, KeyView>();
  private signed = new Set<string>();
  private marking = new Map<string, Promise<void>>();
  private fingerprint = "";
  private lastScan = 0;
  private scanning: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;
  private polling: Promise<void> | undefined;

  constructor(
    private readonly pool: SessionPool,
    private readonly threads: SignThreads,
    private readonly options: Pkcs11KeyStoreOptions = {},
  ) {}

  async start(): Promise<void> {
    await this.refresh();
    const every = this.options.refreshIntervalMs ?? DEFAULT_KEY_REFRESH_MS;
    if (every > 0) {
      this.timer = setInterval(() => {
        // One poll at a time: behind a long object operation (a key generation) polls would pile up.
        this.polling ??= this.refreshIfChanged()
          .catch(() => undefined) // a failed poll keeps the last view
          .finally(() => {
            this.polling = undefined;
          });
      }, every);
      this.timer.unref();
    }
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
  }

  /**
   * Rescans the token for keys, certificates and states; concurrent callers share one scan.
   * `afterRecovery`: the scan the pool makes once the HSM is back (onRecovered). It always
   * replaces the view: handles from before a re-initialization may name other objects now, and
   * the pool, still recovering, cannot vouch for a token that looks emptier than before.
   */
  refresh(o: { afterRecovery?: boolean } = {}): Promise<void> {
    // After a recovery, a new scan starts now: the pool admits it only while onRecovered() runs.
    if (this.scanning && !o.afterRecovery) return this.scanning;
    const scan: Promise<void> = this.pool
      .use((s) => this.scan(s))
      .then(({ views, signed, fingerprint }) => {
        // A token that went away can look empty before the pool notices: keep the last view then.
        if (!o.afterRecovery && views.size < this.views.size && !this.pool.check()) return;
        this.views = views;
        this.signed = signed;
        this.fingerprint = fingerprint;
        this.lastScan = Date.now();
      })
      .finally(() => {
        if (this.scanning === scan) this.scanning = undefined;
      });
    this.scanning = scan;
    return scan;
  }

  /** A cheap look at the token (object handles and state objects); a full rescan only when it changed. */
  async refreshIfChanged(): Promise<void> {
    if (!this.pool.healthy) return; // the pool reloads the keys itself when it recovers
    const now = await this.pool.use((s) => tokenFingerprint(s, readTokenState(s)));
    if (now !== this.fingerprint) await this.refresh();
  }

  async getKey(keyId: string, version?: number): Promise<KeyRecord> {
    const v = versionOf(await this.view(keyId), version);
    if (!v) throw new SignerError("KEY_NOT_FOUND", `key "${keyId}" has no version ${version}`);
    return v.record;
  }

  /** The key with every version; KEY_NOT_FOUND when the token has no such key id. */
  async view(keyId: string): Promise<KeyView> {
    let view = this.views.get(keyId);
    if (!view && Date.now() - this.lastScan > MISS_RESCAN_MS) {
      await this.refresh();
      view = this.views.get(keyId);
    }
    if (!view || view.versions.length === 0) throw new SignerError("KEY_NOT_FOUND", `key "${keyId}" was not found on the token`);
    return view;
  }

  /** The current version of each key (or its newest, when none can sign), by key id. */
  listKeys(): Promise<KeyRecord[]> {
    const records = [...this.views.values()].flatMap((view) => versionOf(view)?.record ?? []);
    return Promise.resolve(records.sort((a, b) => a.keyId.localeCompare(b.keyId)));
  }

  /** Every key with all its versions, for custodians. */
  inventory(): KeyView[] {
    return [...this.views.values()].sort((a, b) => a.keyId.localeCompare(b.keyId));
  }

  /** The token's public key of a key version, as DER SubjectPublicKeyInfo (from its public key object or certificate). */
  publicKeySpki(keyId: string, version?: number): Buffer | undefined {
    const v = versionOf(this.views.get(keyId), version);
    return v?.spki ?? (v?.record.chain[0] ? spkiOfCertificate(v.record.chain[0]) : undefined);
  }

  /** Signs an artifact digest; the version's first signature is recorded on the token before it is made. */
  async signDigest(key: KeyRecord, hash: HashAlgorithm, digest: Buffer, deadline?: number): Promise<Buffer> {
    const v = this.signable(key);
    if (!this.signed.has(v.idHex)) await this.markSigned(v, deadline);
    return this.signWithHandle(key, v.handle as Buffer, hash, digest, deadline);
  }

  /** Signs for the service itself (a CSR's self-signature): not an artifact signature, so not marked. */
  signInternal(key: KeyRecord, hash: HashAlgorithm, digest: Buffer): Promise<Buffer> {
    return this.signWithHandle(key, this.signable(key).handle as Buffer, hash, digest, undefined);
  }

  private signable(key: KeyRecord): VersionView {
    const v = versionOf(this.views.get(key.keyId), key.version);
    if (!v || !v.handle || v.record.spec !== key.spec) throw new SignerError("KEY_NOT_FOUND", `key "${key.keyId}" version ${key.version} is no longer on the token`);
    return v;
  }

  private markSigned(v: VersionView, deadline: number | undefined): Promise<void> {
    let p = this.marking.get(v.idHex);
    if (!p) {
      p = this.pool
        .use((s) => markSigned(s, v.idHex, v.record.keyId, v.record.version), deadline)
        .then(() => {
          this.signed.add(v.idHex);
          v.hasSigned = true;
        })
        .finally(() => this.marking.delete(v.idHex));
      this.marking.set(v.idHex, p);
    }
    return p;
  }

  private async signWithHandle(key: KeyRecord, handle: Buffer, hash: HashAlgorithm, digest: Buffer, deadline: number | undefined): Promise<Buffer> {
    const mech = digestSigningMechanism(key.info, hash, digest.length);
    const session = await this.pool.acquire(deadline);
    let failed = false;
    const started = performance.now();
    try {
      const signature = await this.threads.sign(session.handle, handle, mech, digest, key.info.signatureLength + 16);
      this.options.onSign?.(key.spec, (performance.now() - started) / 1000);
      return signature;
    } catch (err) {
      failed = true;
      throw translatePkcs11Error(err, `signing with key "${key.keyId}"`);
    } finally {
      // After a failure the session may hold an unfinished operation: replace it rather than reuse it.
      this.pool.release(session, failed);
    }
  }

  private scan(session: Session): { views: Map<string, KeyView>; signed: Set<string>; fingerprint: string } {
    const tokenState = readTokenState(session);
    const certs = readCertificates(session);
    const publics = readPublicKeys(session);
    const byLabel = readPrivateKeys(session);
    const views = new Map<string, KeyView>();
    for (const keyId of new Set([...byLabel.keys(), ...tokenState.keys.keys()])) {
      const view = this.viewOf(keyId, tokenState.keys.get(keyId), byLabel.get(keyId) ?? [], publics, certs, tokenState.signed);
      if (view.versions.length > 0) views.set(keyId, view);
    }
    return { views, signed: tokenState.signed, fingerprint: tokenFingerprint(session, tokenState) };
  }

  private viewOf(keyId: string, state: KeyState | undefined, privs: RawPrivateKey[], publics: Map<string, Buffer>, certs: RawCert[], signed: Set<string>): KeyView {
    const slots: { version: number; id: Buffer; priv: RawPrivateKey | undefined; vs: VersionState | undefined; problem?: string }[] = [];
    if (state) {
      for (const vs of state.versions) slots.push({ version: vs.version, id: Buffer.from(vs.id, "hex"), priv: privs.find((p) => p.id.toString("hex") === vs.id), vs });
      let n = Math.max(0, ...state.versions.map((v) => v.version));
      for (const p of privs.filter((p) => !state.versions.some((v) => v.id === p.id.toString("hex")))) {
        slots.push({
          version: ++n,
          id: p.id,
          priv: p,
          vs: undefined,
          problem: `a private key labelled "${keyId}" (CKA_ID ${p.id.toString("hex")}) is not a version hsm-signer made; remove it or give it another label`,
        });
      }
    } else {
      const dup = privs.length > 1 ? `${privs.length} private keys on the token carry the label "${keyId}"; give each key a unique label` : undefined;
      privs.forEach((p, i) => slots.push({ version: i + 1, id: p.id, priv: p, vs: undefined, problem: dup }));
    }
    const versions: VersionView[] = [];
    for (const s of slots) {
      const idHex = s.id.toString("hex");
      const spki = publics.get(idHex);
      const ownCert = certs.find((c) => c.id.equals(s.id));
      const spec = s.priv?.spec ?? s.vs?.spec ?? (ownCert ? keySpecOfCertificate(ownCert.der) : undefined);
      if (!spec) continue; // not a Notation key spec: not offered at all
      const record = this.recordFor(keyId, s.version, spec, s.id, spki, certs);
      const destroyed = !s.priv || s.vs?.destroyed !== undefined;
      if (destroyed) record.unusableReason = `version ${s.version} of key "${keyId}" was destroyed`;
      else if (s.priv?.exposed)
        record.unusableReason = `the private key of key "${keyId}" ${s.priv.exposed}, so copies of it may exist outside the HSM; hsm-signer signs only with keys that never left it: generate a new key in the HSM`;
      else if (s.problem) record.unusableReason = s.problem;
      const disabled = s.vs?.disabled;
      if (state?.disabled) record.disabledReason = disabledMessage(`key "${keyId}"`, state.disabled);
      else if (disabled) record.disabledReason = disabledMessage(`version ${s.version} of key "${keyId}"`, disabled);
      versions.push({
        record,
        handle: destroyed ? undefined : s.priv?.handle,
        spki,
        idHex,
        state: destroyed ? "destroyed" : disabled ? "disabled" : "enabled",
        created: s.vs?.created,
        disabled,
        hasSigned: signed.has(idHex),
      });
    }
    versions.sort((a, b) => a.record.version - b.record.version);
    const current = [...versions].reverse().find((v) => !v.record.unusableReason && !v.record.disabledReason);
    if (current) current.record.current = true;
    return { keyId, state, versions, current };
  }

  private recordFor(keyId: string, version: number, spec: KeySpec, id: Buffer, spki: Buffer | undefined, certs: RawCert[]): KeyRecord {
    const record: KeyRecord = { keyId, version, spec, info: keySpecInfo(spec), chain: [], certificate: undefined, unusableReason: undefined, disabledReason: undefined, current: false };
    const own = id.length > 0 ? certs.filter((c) => c.id.equals(id)) : [];
    // Prefer a non-CA certificate with the latest notAfter when a key has several.
    const candidates = own
      .map((c) => ({ c, s: c.summary }))
      .filter(({ c }) => !spki || spkiOfCertificate(c.der).equals(spki))
      .sort((x, y) => Number(x.s.isCa) - Number(y.s.isCa) || y.s.notAfter.getTime() - x.s.notAfter.getTime());
    const leaf = candidates[0];
    if (!leaf) {
      record.unusableReason =
        own.length > 0
          ? `the certificate with the CKA_ID of key "${keyId}" does not hold the key's public key`
          : `key "${keyId}" has no certificate on the token (a CKO_CERTIFICATE with the same CKA_ID)`;
      return record;
    }
    record.certificate = leaf.s;
    const certSpec = keySpecOfCertificate(leaf.c.der);
    if (certSpec !== spec) {
      record.unusableReason = `the certificate of key "${keyId}" holds a ${certSpec ?? "unsupported"} key but the HSM key is ${spec}`;
      return record;
    }
    const { chain, problem } = buildChain(
      leaf.c.der,
      certs.map((c) => c.der),
    );
    record.chain = chain;
    if (leaf.s.isCa) record.unusableReason = `key "${keyId}" is a CA key; CA keys do not sign artifacts`;
    else if (problem) record.unusableReason = `the certificate chain of key "${keyId}" is incomplete: ${problem}`;
    return record;
  }
}

function disabledMessage(what: string, d: Disabled): string {
  return `${what} is disabled by a custodian${d.reason ? `: ${d.reason}` : ""}`;
}

/** A named version, or by default the current one (the newest when none can sign). */
function versionOf(view: KeyView | undefined, version?: number): VersionView | undefined {
  if (!view) return undefined;
  return version ? view.versions.find((x) => x.record.version === version) : (view.current ?? view.versions[view.versions.length - 1]);
}

/**
 * The X.509 certificate objects that parse. Another tool may store attribute or WTLS certificates,
 * or bytes that are no certificate at all; one such object must not stop every key (the whole
 * scan, the service's start, or each rescan after an HSM recovery), so it is left out.
 */
function readCertificates(session: Session): RawCert[] {
  const certs: RawCert[] = [];
  const found = session.find({ class: ObjectClass.CERTIFICATE });
  for (let i = 0; i < found.length; i++) {
    const a = found.items(i).getAttribute({ id: null, label: null, value: null, certType: null } as unknown as ITemplate) as { id?: Buffer; label?: string; value?: Buffer; certType?: number };
    if (!a.value || a.value.length === 0 || (a.certType !== undefined && a.certType !== CertificateType.X_509)) continue;
    let summary: CertificateSummary;
    try {
      // Its public key too: a certificate for an algorithm OpenSSL does not know parses, but
      // reading its key throws, and chain building and key matching read it.
      void new X509Certificate(a.value).publicKey;
      summary = summarize(a.value);
    } catch {
      continue;
    }
    certs.push({ id: a.id ?? Buffer.alloc(0), label: a.label ?? "", der: a.value, summary });
  }
  return certs;
}

/** DER SubjectPublicKeyInfo of each public key object, by CKA_ID hex. */
function readPublicKeys(session: Session): Map<string, Buffer> {
  const publics = new Map<string, Buffer>();
  const found = session.find({ class: ObjectClass.PUBLIC_KEY });
  for (let i = 0; i < found.length; i++) {
    const o = found.items(i);
    const t = o.getAttribute({ id: null, keyType: null }) as { id?: Buffer; keyType?: number };
    if (!t.id || t.keyType === undefined) continue;
    const more = t.keyType === KeyType.RSA ? o.getAttribute({ modulus: null, publicExponent: null }) : t.keyType === KeyType.EC ? o.getAttribute({ paramsECDSA: null, pointEC: null }) : {};
    const spki = spkiFromPublicObject(t.keyType, more as Record<string, unknown>);
    if (spki) publics.set(t.id.toString("hex"), spki);
  }
  return publics;
}

/** Private keys by CKA_LABEL, with their key spec (undefined when Notation does not allow the key). */
function readPrivateKeys(session: Session): Map<string, RawPrivateKey[]> {
  const byLabel = new Map<string, RawPrivateKey[]>();
  const found = session.find({ class: ObjectClass.PRIVATE_KEY });
  for (let i = 0; i < found.length; i++) {
    const o = found.items(i);
    const a = o.getAttribute({ label: null, id: null, keyType: null }) as { label?: string; id?: Buffer; keyType?: number };
    if (!a.label) continue;
    let spec: KeySpec | undefined;
    if (a.keyType === KeyType.RSA) {
      const { modulus } = o.getAttribute({ modulus: null }) as { modulus?: Buffer };
      spec = keySpecFor("RSA", modulus ? bitLength(modulus) : 0);
    } else if (a.keyType === KeyType.EC) {
      // graphene reads CKA_EC_PARAMS back under the name paramsECDSA.
      const { paramsECDSA } = o.getAttribute({ paramsECDSA: null }) as { paramsECDSA?: Buffer };
      const curve = paramsECDSA ? curveOfEcParams(paramsECDSA) : undefined;
      spec = curve ? keySpecFor("EC", curve) : undefined;
    }
    const list = byLabel.get(a.label) ?? [];
    list.push({ handle: o.handle, id: a.id ?? Buffer.alloc(0), spec, exposed: exposure(o) });
    byLabel.set(a.label, list);
  }
  return byLabel;
}

/**
 * A key made in the HSM as sensitive and not extractable has CKA_ALWAYS_SENSITIVE and
 * CKA_NEVER_EXTRACTABLE set (hsm-signer's keys and pkcs11-tool --keypairgen's alike); a key that
 * was imported, or could be exported at some time, has not. A module that cannot report these
 * attributes is trusted.
 */
function exposure(o: { getAttribute(t: ITemplate): ITemplate }): string | undefined {
  let a: { alwaysSensitive?: boolean; neverExtractable?: boolean };
  try {
    a = o.getAttribute({ alwaysSensitive: null, neverExtractable: null } as unknown as ITemplate) as typeof a;
  } catch {
    return undefined;
  }
  if (a.neverExtractable === false) return "was extractable at some time (CKA_NEVER_EXTRACTABLE is false)";
  if (a.alwaysSensitive === false) return "was not sensitive at some time (CKA_ALWAYS_SENSITIVE is false)";
  return undefined;
}

/** Changes when any key, certificate or state object is added, removed or replaced. */
function tokenFingerprint(session: Session, state: TokenState): string {
  const h = createHash("sha256").update(state.fingerprint);
  for (const cls of [ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY, ObjectClass.CERTIFICATE]) {
    const found = session.find({ class: cls });
    for (let i = 0; i < found.length; i++) h.update(found.items(i).handle);
    h.update("|");
  }
  return h.digest("hex");
}

function bitLength(n: Buffer): number {
  let i = 0;
  while (i < n.length && n[i] === 0) i++;
  if (i === n.length) return 0;
  return (n.length - i - 1) * 8 + (32 - Math.clz32(n[i] as number));
}
