import type { HashAlgorithm, KeySpec, KeySpecInfo } from "./key-spec.js";

/** What a caller may learn about a key's leaf certificate. */
export interface CertificateSummary {
  subject: string;
  issuer: string;
  notBefore: Date;
  notAfter: Date;
  /** Lowercase hex SHA-256 of the DER. */
  sha256: string;
  isCa: boolean;
}

export interface KeyRecord {
  keyId: string;
  version: number;
  spec: KeySpec;
  info: KeySpecInfo;
  /** DER certificates, leaf first, root last; empty when the key has no certificate. */
  chain: Buffer[];
  certificate: CertificateSummary | undefined;
  /** Why this key cannot sign artifacts (no certificate, incomplete chain, CA key...), if it cannot. */
  unusableReason: string | undefined;
  /** Set when a custodian disabled the key or this version: signing is refused with this message. */
  disabledReason: string | undefined;
  /** True for the version that signs when the caller names none (the newest enabled, usable one). */
  current: boolean;
}

/** The port the signing core needs from a key store (the HSM adapter provides one). */
export interface KeyStore {
  /** The key, or a KEY_NOT_FOUND SignerError. */
  getKey(keyId: string, version?: number): Promise<KeyRecord>;
  listKeys(): Promise<KeyRecord[]>;
  /** Signs a digest made with the key spec's hash; returns the raw signature (PSS, or ECDSA r||s). */
  signDigest(key: KeyRecord, hash: HashAlgorithm, digest: Buffer, deadline?: number): Promise<Buffer>;
}
