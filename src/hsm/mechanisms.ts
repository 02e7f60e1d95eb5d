import pkcs11js from "pkcs11js";
import type { HashAlgorithm, KeySpecInfo } from "../signing/key-spec.js";

const HASH_MECH: Record<HashAlgorithm, { hashAlg: number; mgf: number }> = {
  "SHA-256": { hashAlg: pkcs11js.CKM_SHA256, mgf: pkcs11js.CKG_MGF1_SHA256 },
  "SHA-384": { hashAlg: pkcs11js.CKM_SHA384, mgf: pkcs11js.CKG_MGF1_SHA384 },
  "SHA-512": { hashAlg: pkcs11js.CKM_SHA512, mgf: pkcs11js.CKG_MGF1_SHA512 },
};

/**
 * The single-part mechanism that signs a digest made with `hash`: CKM_RSA_PKCS_PSS (MGF1 with
 * the same hash, salt = hash length) or CKM_ECDSA (raw r||s). SoftHSM 2.6 has no
 * CKM_ECDSA_SHA*, so the service always hashes and signs the digest.
 */
export function digestSigningMechanism(info: KeySpecInfo, hash: HashAlgorithm, saltLength: number): pkcs11js.Mechanism {
  if (info.kty === "EC") return { mechanism: pkcs11js.CKM_ECDSA };
  const h = HASH_MECH[hash];
  const parameter: pkcs11js.RsaPSS = { type: pkcs11js.CK_PARAMS_RSA_PSS, hashAlg: h.hashAlg, mgf: h.mgf, saltLen: saltLength };
  return { mechanism: pkcs11js.CKM_RSA_PKCS_PSS, parameter };
}

/** DER OIDs of the named curves, as CKA_EC_PARAMS holds them. */
export const EC_PARAMS: Record<"P-256" | "P-384" | "P-521", Buffer> = {
  "P-256": Buffer.from("06082a8648ce3d030107", "hex"),
  "P-384": Buffer.from("06052b81040022", "hex"),
  "P-521": Buffer.from("06052b81040023", "hex"),
};

export function curveOfEcParams(params: Buffer): "P-256" | "P-384" | "P-521" | undefined {
  for (const [curve, der] of Object.entries(EC_PARAMS)) if (der.equals(params)) return curve as "P-256" | "P-384" | "P-521";
  return undefined;
}
