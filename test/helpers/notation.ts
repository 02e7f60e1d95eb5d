import { constants, createPublicKey, verify, X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { PROJECT_ROOT } from "./softhsm.js";

/** The requests notation 1.3.2 really sends (../shared/fixtures/notation-1.3.2-requests). */
export const NOTATION_FIXTURES = join(PROJECT_ROOT, "../shared/fixtures/notation-1.3.2-requests");

export function notationRequest(name: "describe-key" | "generate-signature-jws" | "generate-signature-cose" | "get-plugin-metadata" | "get-plugin-metadata-plugin-ls"): Record<string, unknown> {
  return JSON.parse(readFileSync(join(NOTATION_FIXTURES, `${name}.json`), "utf8")) as Record<string, unknown>;
}

const HASH_OF: Record<string, string> = { "RSA-2048": "SHA-256", "RSA-3072": "SHA-384", "RSA-4096": "SHA-512", "EC-256": "SHA-256", "EC-384": "SHA-384", "EC-521": "SHA-512" };

/**
 * A notation request re-aimed at one of our keys: the fixture's payload bytes (a JWS signing
 * input or a COSE Sig_structure) with keyId, keySpec, hashAlgorithm and pluginConfig replaced,
 * as notation would send them after our describe-key answer.
 */
export function requestFor(name: "describe-key" | "generate-signature-jws" | "generate-signature-cose", keyId: string, keySpec: string, pluginConfig: Record<string, string>): Record<string, unknown> {
  const r = notationRequest(name);
  r.keyId = keyId;
  r.pluginConfig = pluginConfig;
  if (name !== "describe-key") {
    r.keySpec = keySpec;
    r.hashAlgorithm = HASH_OF[keySpec];
  }
  return r;
}

/**
 * Verifies a raw Notary signature independently of the service: RSASSA-PSS with salt = hash
 * length (what go-cose requires), or ECDSA with IEEE P1363 r||s, against the leaf certificate.
 */
export function verifyNotarySignature(payload: Buffer, signature: Buffer, leafDer: Buffer, keySpec: string): boolean {
  const key = createPublicKey(new X509Certificate(leafDer).publicKey.export({ type: "spki", format: "pem" }));
  const hash = (HASH_OF[keySpec] as string).replace("-", "").toLowerCase();
  if (keySpec.startsWith("RSA")) {
    return verify(hash, payload, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: constants.RSA_PSS_SALTLEN_DIGEST }, signature);
  }
  return verify(hash, payload, { key, dsaEncoding: "ieee-p1363" }, signature);
}
