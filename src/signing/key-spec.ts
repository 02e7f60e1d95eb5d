import { createHash } from "node:crypto";

/** Notary Project key specs (notation-plugin-protocol.md §3). Nothing else is signed. */
export const KEY_SPECS = ["RSA-2048", "RSA-3072", "RSA-4096", "EC-256", "EC-384", "EC-521"] as const;
export type KeySpec = (typeof KEY_SPECS)[number];
export type HashAlgorithm = "SHA-256" | "SHA-384" | "SHA-512";
export type SigningAlgorithm = "RSASSA-PSS-SHA-256" | "RSASSA-PSS-SHA-384" | "RSASSA-PSS-SHA-512" | "ECDSA-SHA-256" | "ECDSA-SHA-384" | "ECDSA-SHA-512";
export type NamedCurve = "P-256" | "P-384" | "P-521";

export interface KeySpecInfo {
  spec: KeySpec;
  kty: "RSA" | "EC";
  /** RSA modulus bits, or the curve's field size in bits. */
  bits: number;
  curve?: NamedCurve;
  hash: HashAlgorithm;
  signingAlgorithm: SigningAlgorithm;
  /** Length of the hash output in bytes; also the PSS salt length. */
  hashLength: number;
  /** Length of the raw signature in bytes (RSA: k; ECDSA: r||s). */
  signatureLength: number;
}

const TABLE: Record<KeySpec, KeySpecInfo> = {
  "RSA-2048": { spec: "RSA-2048", kty: "RSA", bits: 2048, hash: "SHA-256", signingAlgorithm: "RSASSA-PSS-SHA-256", hashLength: 32, signatureLength: 256 },
  "RSA-3072": { spec: "RSA-3072", kty: "RSA", bits: 3072, hash: "SHA-384", signingAlgorithm: "RSASSA-PSS-SHA-384", hashLength: 48, signatureLength: 384 },
  "RSA-4096": { spec: "RSA-4096", kty: "RSA", bits: 4096, hash: "SHA-512", signingAlgorithm: "RSASSA-PSS-SHA-512", hashLength: 64, signatureLength: 512 },
  "EC-256": { spec: "EC-256", kty: "EC", bits: 256, curve: "P-256", hash: "SHA-256", signingAlgorithm: "ECDSA-SHA-256", hashLength: 32, signatureLength: 64 },
  "EC-384": { spec: "EC-384", kty: "EC", bits: 384, curve: "P-384", hash: "SHA-384", signingAlgorithm: "ECDSA-SHA-384", hashLength: 48, signatureLength: 96 },
  "EC-521": { spec: "EC-521", kty: "EC", bits: 521, curve: "P-521", hash: "SHA-512", signingAlgorithm: "ECDSA-SHA-512", hashLength: 64, signatureLength: 132 },
};

export const HASH_LENGTHS: Record<HashAlgorithm, number> = { "SHA-256": 32, "SHA-384": 48, "SHA-512": 64 };

export function isKeySpec(s: string): s is KeySpec {
  return (KEY_SPECS as readonly string[]).includes(s);
}

export function isHashAlgorithm(s: string): s is HashAlgorithm {
  return s === "SHA-256" || s === "SHA-384" || s === "SHA-512";
}

export function keySpecInfo(spec: KeySpec): KeySpecInfo {
  return TABLE[spec];
}

/** The key spec of an RSA modulus size or an EC curve, or undefined when Notation does not allow it. */
export function keySpecFor(kty: "RSA" | "EC", sizeOrCurve: number | string): KeySpec | undefined {
  const found = Object.values(TABLE).find((i) => i.kty === kty && (kty === "RSA" ? i.bits === sizeOrCurve : i.curve === sizeOrCurve));
  return found?.spec;
}

export function digest(hash: HashAlgorithm, data: Uint8Array): Buffer {
  return createHash(hash.replace("-", "").toLowerCase()).update(data).digest();
}
