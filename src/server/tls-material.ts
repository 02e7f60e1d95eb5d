import { createPrivateKey, X509Certificate } from "node:crypto";
import { createSecureContext } from "node:tls";
import { SignerError } from "../errors/index.js";
import { MAX_CRL_FILE_BYTES, readRegular } from "../fs/regular-file.js";
import { ReloadTrigger } from "../fs/reload-trigger.js";
import type { Logger } from "../log/index.js";
import { crlSignedBy, parseCrls, subjectDer, type Crl } from "../tls/crl.js";
import { casWithoutIssuer, parseCaBundle } from "../tls/peer-certificate.js";

/** The files of one TLS listener, with the names of the settings that name them (for messages). */
export interface TlsFiles {
  /** "tls" or "admin": the configuration section, e.g. tls.certFile. */
  section: string;
  certFile: string;
  keyFile: string;
  clientCaFile?: string | undefined;
  clientCrlFile?: string | undefined;
}

/** What a listener's secure context is made of, read and checked (loadTlsMaterial). */
export interface TlsMaterial {
  cert: Buffer;
  key: Buffer;
  clientCa: Buffer | undefined;
  /** One PEM CRL each: Node reads only the first CRL of a PEM string, so a bundle is split. */
  crl: Buffer[] | undefined;
  /** The listener certificate's notAfter. */
  certNotAfter: Date;
  /** The earliest nextUpdate of the CRLs (undefined: no CRL, or none says). */
  crlNextUpdate: Date | undefined;
  /** What is wrong but does not stop the material from being used (a CRL past its nextUpdate). */
  warnings: string[];
}

function read(setting: string, path: string, maxBytes?: number): Buffer {
  const r = readRegular(setting, path, maxBytes);
  if (typeof r === "string") throw new SignerError("CONFIG_INVALID", r);
  return r;
}

/**
 * Reads and checks a listener's certificate, key, client CAs and CRLs, so that what is handed to
 * node:tls works: the key is the certificate's, Node accepts every part, and each CA of the
 * client CA bundle has a CRL whose signature it made. That last rule is OpenSSL's: with any CRL
 * loaded, Node checks every certificate of a client's chain against its issuer's CRL, and refuses
 * every client of a CA that has none (UNABLE_TO_GET_CRL). A CRL past its nextUpdate makes OpenSSL
 * refuse every client of its CA: a warning, since an older CRL would be no better.
 * Throws CONFIG_INVALID naming the setting and the problem.
 */
export function loadTlsMaterial(f: TlsFiles, now = new Date()): TlsMaterial {
  const s = f.section;
  const cert = read(`${s}.certFile`, f.certFile);
  const key = read(`${s}.keyFile`, f.keyFile);
  const clientCa = f.clientCaFile ? read(`${s}.clientCaFile`, f.clientCaFile) : undefined;
  const crlBytes = f.clientCrlFile ? read(`${s}.clientCrlFile`, f.clientCrlFile, MAX_CRL_FILE_BYTES) : undefined;
  const invalid = (message: string, cause?: unknown): SignerError => new SignerError("CONFIG_INVALID", message, { cause });

  let leaf: X509Certificate;
  try {
    leaf = new X509Certificate(cert);
  } catch (e) {
    throw invalid(`${s}.certFile: ${f.certFile} holds no certificate Node can read (${(e as Error).message})`, e);
  }
  try {
    if (!leaf.checkPrivateKey(createPrivateKey(key))) throw invalid(`${s}.keyFile: ${f.keyFile} is not the key of the certificate in ${s}.certFile`);
  } catch (e) {
    if (e instanceof SignerError) throw e;
    throw invalid(`${s}.keyFile: ${f.keyFile} holds no private key Node can read (${(e as Error).message})`, e);
  }

  let cas: X509Certificate[] = [];
  if (clientCa) {
    try {
      cas = parseCaBundle(clientCa);
    } catch (e) {
      throw invalid(`${s}.clientCaFile: ${f.clientCaFile} holds a certificate Node cannot read (${(e as Error).message})`, e);
    }
  }

  const warnings: string[] = [];
  let crl: Buffer[] | undefined;
  let crlNextUpdate: Date | undefined;
  if (crlBytes) {
    if (!clientCa) throw invalid(`${s}.clientCrlFile: needs ${s}.clientCaFile (the CAs whose revocations it lists)`);
    let crls: Crl[];
    try {
      crls = parseCrls(crlBytes);
    } catch (e) {
      throw invalid(`${s}.clientCrlFile: ${f.clientCrlFile}: ${(e as Error).message}`, e);
    }
    if (crls.length === 0) throw invalid(`${s}.clientCrlFile: ${f.clientCrlFile} holds no CRL (PEM "X509 CRL" blocks or one DER CRL)`);
    // An intermediate CA trusted on its own (tls-listener.ts, partial chains): with CRLs, OpenSSL
    // checks its own revocation too, against its issuer's CRL, which it cannot verify without the
    // issuer's certificate; every client would be refused (UNABLE_TO_GET_CRL, CRL_SIGNATURE_FAILURE).
    const alone = casWithoutIssuer(cas)[0];
    if (alone)
      throw invalid(
        `${s}.clientCrlFile: ${s}.clientCaFile holds "${alone.subject.replace(/\n/g, ", ")}" without its issuer (trusted on its own); with CRLs OpenSSL also checks that CA's own revocation, which needs its issuer, so every client would be refused: add the issuer to ${s}.clientCaFile (and its CRL to ${s}.clientCrlFile), or leave ${s}.clientCrlFile out`,
      );
    for (const ca of cas) {
      const subject = subjectDer(ca);
      const own = crls.filter((c) => c.issuer.equals(subject));
      const name = ca.subject.replace(/\n/g, ", ");
      if (own.length === 0)
        throw invalid(
          `${s}.clientCrlFile: no CRL from "${name}" of ${s}.clientCaFile; with CRLs, every certificate of a client's chain is checked, and a CA without a CRL would have every client it issued refused`,
        );
      if (own.every((c) => crlSignedBy(c, ca) === false)) throw invalid(`${s}.clientCrlFile: the CRL from "${name}" is not signed by that CA of ${s}.clientCaFile`);
    }
    for (const c of crls) {
      const next = c.nextUpdate;
      if (next === undefined) continue;
      if (crlNextUpdate === undefined || next < crlNextUpdate) crlNextUpdate = next;
      if (next < now) warnings.push(`a CRL in ${s}.clientCrlFile is past its nextUpdate (${next.toISOString()}): every client certificate its CA issued is refused until a newer CRL is loaded`);
    }
    crl = crls.map((c) => c.pem);
  }
  try {
    createSecureContext({ cert, key, ca: clientCa, crl });
  } catch (e) {
    throw invalid(`${s}: Node refuses the TLS material (${(e as Error).message})`, e);
  }
  if (new Date(leaf.validTo) < now) warnings.push(`the certificate in ${s}.certFile expired on ${new Date(leaf.validTo).toISOString()}`);
  return { cert, key, clientCa, crl, certNotAfter: new Date(leaf.validTo), crlNextUpdate, warnings };
}

/** Whether two loads read the same bytes (a file event that changed nothing). */
export function sameTlsMaterial(a: TlsMaterial, b: TlsMaterial): boolean {
  const same = (x: Buffer | undefined, y: Buffer | undefined): boolean => (x === undefined ? y === undefined : y !== undefined && x.equals(y));
  const crls = (x: Buffer[] | undefined, y: Buffer[] | undefined): boolean => (x ?? []).length === (y ?? []).length && (x ?? []).every((c, i) => same(c, y?.[i]));
  return same(a.cert, b.cert) && same(a.key, b.key) && same(a.clientCa, b.clientCa) && crls(a.crl, b.crl);
}

export interface TlsMaterialWatchOptions {
  /** Hands new material to the listener (RunningServer.setTlsMaterial); a throw rejects it. */
  apply: (m: TlsMaterial) => void;
  logger: Logger;
  /** After each load applied (also the first, at watch()). */
  onApplied?: (m: TlsMaterial) => void;
  /** Each reload: applied, or rejected (the previous material stays). */
  onReload?: (result: "applied" | "rejected") => void;
}

/**
 * A listener's TLS material, reloaded on SIGHUP and when one of its files changes: a renewed
 * certificate (cert-manager, a Kubernetes Secret), a new client CA, a fresh CRL take effect for
 * the connections that arrive from then on, without a restart. Material that does not load
 * (loadTlsMaterial) is logged with its problem and the previous material stays in force.
 */
export class TlsMaterialWatch {
  private readonly trigger: ReloadTrigger;

  constructor(
    private readonly files: TlsFiles,
    private current: TlsMaterial,
    private readonly o: TlsMaterialWatchOptions,
  ) {
    const paths = [files.certFile, files.keyFile, files.clientCaFile, files.clientCrlFile].filter((p): p is string => p !== undefined);
    this.trigger = new ReloadTrigger(paths, {
      reload: (force) => this.load(force),
      onError: (e) => this.o.logger.error("TLS material reload failed", { listener: files.section, error: e }),
      onWatchError: (dir, e) => this.o.logger.warn("TLS file watch failed; reload with SIGHUP", { listener: files.section, dir, error: e }),
    });
  }

  /** Logs what is in force (and its warnings), then reloads on SIGHUP and file changes. */
  watch(): void {
    this.report(this.current, "TLS material in force");
    this.trigger.start();
  }

  /** Re-reads the files now. true: the new material is in force (or nothing changed); false: rejected, logged. */
  reload(): Promise<boolean> {
    return this.trigger.run(() => this.load(true));
  }

  close(): void {
    this.trigger.close();
  }

  private async load(force: boolean): Promise<boolean> {
    let next: TlsMaterial;
    try {
      next = loadTlsMaterial(this.files);
      if (!force && sameTlsMaterial(next, this.current)) return true;
      this.o.apply(next);
    } catch (e) {
      this.o.logger.error(`${this.files.section} TLS material rejected, the previous one stays in force: ${(e as Error).message}`, { listener: this.files.section });
      this.o.onReload?.("rejected");
      return false;
    }
    this.current = next;
    this.o.onReload?.("applied");
    this.report(next, "TLS material reloaded");
    return true;
  }

  private report(m: TlsMaterial, message: string): void {
    this.o.logger.info(message, {
      listener: this.files.section,
      certNotAfter: m.certNotAfter.toISOString(),
      clientCrls: m.crl?.length ?? 0,
      crlNextUpdate: m.crlNextUpdate?.toISOString(),
    });
    for (const w of m.warnings) this.o.logger.warn(w, { listener: this.files.section });
    this.o.onApplied?.(m);
  }
}
