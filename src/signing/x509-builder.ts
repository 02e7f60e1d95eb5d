import "reflect-metadata";
import { randomBytes, webcrypto } from "node:crypto";
import * as x509 from "@peculiar/x509";
import { SignerError } from "../errors/index.js";
import { GO_NAME_EXTRA } from "./distinguished-name.js";
import { digest as hashBytes, keySpecInfo, type HashAlgorithm, type KeySpec } from "./key-spec.js";

/** A key that signs digests somewhere else (the HSM): what a certificate or CSR signer needs. */
export interface DigestSigningKey {
  spec: KeySpec;
  /** DER SubjectPublicKeyInfo. */
  spki: Buffer;
  signDigest(hash: HashAlgorithm, digest: Buffer): Promise<Buffer>;
}

/** Backdating of notBefore, so a verifier whose clock runs behind accepts a fresh certificate. */
export const NOT_BEFORE_BACKDATE_MS = 10 * 60 * 1000;

const REMOTE = Symbol("remote-key");
type RemoteCryptoKey = webcrypto.CryptoKey & { [REMOTE]: DigestSigningKey };

/**
 * A WebCrypto for @peculiar/x509 whose sign() hashes locally and has a DigestSigningKey sign the
 * digest; everything else is Node's WebCrypto. ECDSA signatures come back raw r||s, as
 * WebCrypto's do, and @peculiar/x509 re-encodes them as DER.
 */
function remoteCrypto(): webcrypto.Crypto {
  const subtle = webcrypto.subtle;
  const proxy = new Proxy(subtle, {
    get(target, prop, receiver) {
      if (prop === "sign") {
        return async (alg: { hash?: string | { name: string } }, key: webcrypto.CryptoKey, data: ArrayBuffer | ArrayBufferView) => {
          const remote = (key as Partial<RemoteCryptoKey>)[REMOTE];
          if (!remote) return target.sign(alg as webcrypto.AlgorithmIdentifier, key, data);
          const hash = (typeof alg.hash === "string" ? alg.hash : alg.hash?.name) as HashAlgorithm;
          const bytes = Buffer.from(data instanceof ArrayBuffer ? new Uint8Array(data) : new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
          const sig = await remote.signDigest(hash, hashBytes(hash, bytes));
          return sig.buffer.slice(sig.byteOffset, sig.byteOffset + sig.byteLength);
        };
      }
      const v = Reflect.get(target, prop, receiver) as unknown;
      return typeof v === "function" ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
  return { subtle: proxy, getRandomValues: webcrypto.getRandomValues.bind(webcrypto), randomUUID: webcrypto.randomUUID.bind(webcrypto) } as unknown as webcrypto.Crypto;
}

function signingParams(key: DigestSigningKey): { signingKey: webcrypto.CryptoKey; signingAlgorithm: Record<string, unknown> } {
  const info = keySpecInfo(key.spec);
  const keyAlg = info.kty === "EC" ? { name: "ECDSA", namedCurve: info.curve } : { name: "RSA-PSS" };
  const signingKey = { type: "private", extractable: false, usages: ["sign"], algorithm: keyAlg, [REMOTE]: key } as unknown as webcrypto.CryptoKey;
  const signingAlgorithm = info.kty === "EC" ? { name: "ECDSA", hash: info.hash } : { name: "RSA-PSS", hash: info.hash, saltLength: info.hashLength };
  return { signingKey, signingAlgorithm };
}

/** A positive DER INTEGER serial of 16 bytes (Go rejects negative serials; RFC 5280 allows 20 bytes). */
export function newSerialHex(): string {
  const b = randomBytes(16);
  b[0] = ((b[0] as number) & 0x7f) | 0x01;
  return b.toString("hex");
}

/**
 * Checks that a subject can be encoded in a certificate or CSR, and throws INVALID_ARGUMENT
 * naming `what` when it cannot (@peculiar/x509 throws a URIError for text that is not valid
 * Unicode, such as a lone surrogate): callers check before they write or sign anything.
 */
export function checkEncodableSubject(subject: string, what: string): void {
  try {
    new x509.Name(subject, GO_NAME_EXTRA).toArrayBuffer();
  } catch (e) {
    const why = e instanceof URIError ? "it holds text that is not valid Unicode" : (e as Error).message;
    throw new SignerError("INVALID_ARGUMENT", `${what} "${subject}" cannot be encoded in a certificate: ${why}`, { cause: e });
  }
}

async function publicKeyOf(spki: Buffer): Promise<x509.PublicKey> {
  return new x509.PublicKey(spki);
}

export interface RootParams {
  subject: string;
  key: DigestSigningKey;
  validityDays: number;
  now?: Date;
}

/** A self-signed CA: critical basicConstraints CA:true, critical keyUsage keyCertSign|cRLSign. */
export async function createRootCertificate(p: RootParams): Promise<Buffer> {
  const crypto = remoteCrypto();
  const now = p.now ?? new Date();
  const notBefore = new Date(now.getTime() - NOT_BEFORE_BACKDATE_MS);
  const publicKey = await publicKeyOf(p.key.spki);
  const cert = await x509.X509CertificateGenerator.create(
    {
      serialNumber: newSerialHex(),
      subject: p.subject,
      issuer: p.subject,
      notBefore,
      notAfter: new Date(now.getTime() + p.validityDays * 86400_000),
      publicKey,
      ...signingParams(p.key),
      extensions: [
        new x509.BasicConstraintsExtension(true, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        await x509.SubjectKeyIdentifierExtension.create(publicKey, false, crypto),
      ],
    },
    crypto,
  );
  return Buffer.from(cert.rawData);
}

export interface LeafParams {
  subject: string;
  spki: Buffer;
  issuerCertificate: Buffer;
  issuerKey: DigestSigningKey;
  validityDays: number;
  now?: Date;
}

/** A code-signing leaf (notation-plugin-protocol.md §5.3): critical keyUsage digitalSignature, EKU codeSigning, CA:false. */
export async function createLeafCertificate(p: LeafParams): Promise<Buffer> {
  const crypto = remoteCrypto();
  const now = p.now ?? new Date();
  const issuer = new x509.X509Certificate(p.issuerCertificate);
  const notAfter = new Date(Math.min(now.getTime() + p.validityDays * 86400_000, issuer.notAfter.getTime()));
  const publicKey = await publicKeyOf(p.spki);
  const cert = await x509.X509CertificateGenerator.create(
    {
      serialNumber: newSerialHex(),
      subject: p.subject,
      issuer: issuer.subjectName,
      notBefore: new Date(now.getTime() - NOT_BEFORE_BACKDATE_MS),
      notAfter,
      publicKey,
      ...signingParams(p.issuerKey),
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.codeSigning], false),
        await x509.SubjectKeyIdentifierExtension.create(publicKey, false, crypto),
        await x509.AuthorityKeyIdentifierExtension.create(issuer, false, crypto),
      ],
    },
    crypto,
  );
  return Buffer.from(cert.rawData);
}

export interface CsrParams {
  subject: string;
  key: DigestSigningKey;
}

/**
 * A PKCS#10 request signed by the HSM key, asking for what a code-signing CA should issue
 * (notation-plugin-protocol.md §5.3): critical keyUsage digitalSignature, EKU codeSigning,
 * critical basicConstraints CA:false.
 */
export async function createCsr(p: CsrParams): Promise<string> {
  const crypto = remoteCrypto();
  const info = keySpecInfo(p.key.spec);
  const importAlg = info.kty === "EC" ? { name: "ECDSA", namedCurve: info.curve } : { name: "RSA-PSS", hash: info.hash };
  const publicKey = await webcrypto.subtle.importKey("spki", p.key.spki, importAlg, true, ["verify"]);
  const { signingKey, signingAlgorithm } = signingParams(p.key);
  const csr = await x509.Pkcs10CertificateRequestGenerator.create(
    {
      // SERIALNUMBER, STREET and POSTALCODE, which notation names, by their OIDs.
      name: new x509.Name(p.subject, GO_NAME_EXTRA),
      keys: { publicKey, privateKey: signingKey },
      signingAlgorithm: signingAlgorithm as unknown as x509.Pkcs10CertificateRequestCreateParams["signingAlgorithm"],
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.codeSigning], false),
        await x509.SubjectKeyIdentifierExtension.create(publicKey, false, crypto),
      ],
    },
    crypto,
  );
  return csr.toString("pem") + "\n";
}

export { toPem } from "./pem.js";
