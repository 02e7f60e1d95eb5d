import { performance } from "node:perf_hooks";
import { SignerError } from "../errors/index.js";
import type { HashAlgorithm } from "../signing/key-spec.js";
import { keyViews, publicKeyOf, selectVersion, signableVersion, type KeyView, type VersionView } from "../signing/key-versions.js";
import type { KeyRecord, KeyStore } from "../signing/ports.js";
import { disabledRefusal } from "../signing/signing-service.js";
import { digestSigningMechanism } from "./mechanisms.js";
import { markSigned, readTokenState } from "./key-state.js";
import { translatePkcs11Error } from "./pkcs11-errors.js";
import type { HsmReader } from "./hsm-reader.js";
import type { SessionPool } from "./session-pool.js";
import type { SignThreads } from "./sign-threads.js";
import { scanToken, tokenFingerprint } from "./token-scan.js";

/** How often the token is checked for keys, certificates and states that custodians changed. */
export const DEFAULT_KEY_REFRESH_MS = 2_000;
/** A lookup of an unknown key rescans the token at most this often. */
const MISS_RESCAN_MS = 1_000;

export interface Pkcs11KeyStoreOptions {
  refreshIntervalMs?: number;
  /** Called after each HSM signature with its duration (metrics). */
  onSign?: (keySpec: string, seconds: number) => void;
  /** The thread the polls and scans read the token on (hsm-reader.ts); without one they read it on the event loop. */
  reader?: HsmReader;
}

/**
 * A KeyStore over one PKCS#11 token. Keys are private key objects found by CKA_LABEL (the key
 * id); each key's certificate is the CKO_CERTIFICATE with the same CKA_ID, and its chain is
 * completed from the other certificates on the token. Keys made by other tools work the same.
 *
 * A key id may have several versions: key pairs with the same label and different CKA_IDs, in
 * the order kept by the key's state object (key-state.ts). The scan reads the objects
 * (token-scan.ts); the rules of signing/key-versions.ts make versions of them. The token is
 * polled for changes (custodians on any replica) and rescanned when something changed.
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
    const reader = this.options.reader;
    const scan: Promise<void> = this.pool
      .use(async (s) => {
        const { scan: found, fingerprint } = reader ? await reader.scan(s.handle) : scanToken(s);
        return { views: keyViews(found), signed: found.signed, fingerprint };
      })
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
    const reader = this.options.reader;
    const now = await this.pool.use((s) => (reader ? reader.fingerprint(s.handle) : tokenFingerprint(s, readTokenState(s))));
    if (now !== this.fingerprint) await this.refresh();
  }

  async getKey(keyId: string, version?: number): Promise<KeyRecord> {
    const v = selectVersion(await this.view(keyId), version);
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
    const records = [...this.views.values()].flatMap((view) => selectVersion(view)?.record ?? []);
    return Promise.resolve(records.sort((a, b) => a.keyId.localeCompare(b.keyId)));
  }

  /** Every key with all its versions, for custodians. */
  inventory(): KeyView[] {
    return [...this.views.values()].sort((a, b) => a.keyId.localeCompare(b.keyId));
  }

  /** The token's public key of a key version, as DER SubjectPublicKeyInfo (from its public key object or certificate). */
  publicKeySpki(keyId: string, version?: number): Buffer | undefined {
    return publicKeyOf(selectVersion(this.views.get(keyId), version));
  }

  /** Signs an artifact digest; the version's first signature is recorded on the token before it is made. */
  async signDigest(key: KeyRecord, hash: HashAlgorithm, digest: Buffer, deadline?: number): Promise<Buffer> {
    const v = this.signable(key);
    if (!this.signed.has(v.idHex)) await this.markSigned(v, deadline);
    return this.signWithHandle(key, v.handle, hash, digest, deadline);
  }

  /** Signs for the service itself (a CSR's self-signature): not an artifact signature, so not marked. */
  async signInternal(key: KeyRecord, hash: HashAlgorithm, digest: Buffer): Promise<Buffer> {
    return this.signWithHandle(key, this.signable(key).handle, hash, digest, undefined);
  }

  /**
   * The version's key pair as the token holds it now. A version disabled since `key` was read
   * signs nothing, whoever asks (Sign, a CSR, a test chain's root, a checkpoint): KEY_DISABLED.
   */
  private signable(key: KeyRecord): VersionView & { handle: Buffer } {
    const v = signableVersion(this.views.get(key.keyId), key);
    const disabled = disabledRefusal(v.record);
    if (disabled) throw disabled;
    return v;
  }

  /**
   * Concurrent first signatures of a version share one marking, which waits (in the ObjectGate)
   * until the deadline of the caller that started it. When that deadline ends it, a caller whose
   * own deadline is later tries again with its own, rather than failing with another's.
   */
  private async markSigned(v: VersionView, deadline: number | undefined): Promise<void> {
    for (;;) {
      let p = this.marking.get(v.idHex);
      const own = p === undefined;
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
      try {
        return await p;
      } catch (e) {
        if (own || !(e instanceof SignerError && e.code === "DEADLINE_EXCEEDED")) throw e;
        if (this.signed.has(v.idHex)) return;
      }
    }
  }

  private async signWithHandle(key: KeyRecord, handle: Buffer, hash: HashAlgorithm, digest: Buffer, deadline: number | undefined): Promise<Buffer> {
    const mech = digestSigningMechanism(key.info, hash, digest.length);
    const session = await this.pool.acquire(deadline);
    let failed = false;
    const started = performance.now();
    try {
      const signature = await this.threads.sign(session.handle, handle, mech, digest, key.info.signatureLength + 16, deadline);
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
}
