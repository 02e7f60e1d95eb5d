import { constants, createPublicKey, verify, X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { PROJECT_ROOT } from "./softhsm.js";

/** The requests notation 1.3.2 really sends, committed in the project (test/fixtures/notation-1.3.2-requests). */
export const NOTATION_FIXTURES = join(PROJECT_ROOT, "test/fixtures/notation-1.3.2-requests");

export function notationRequest(name: "describe-key" | "generate-signature-jws" | "generate-signature-cose" | "get-plugin-metadata" | "get-plugin-metadata-plugin-ls"): Record<string, unknown> {
  return JSON.parse(readFileSync(join(NOTATION_FIXTURES, `${name}.json`), "utf8")) as Record<string, unknown>;
}

export type NotarySpec = "RSA-2048" | "RSA-3072" | "RSA-4096" | "EC-256" | "EC-384" | "EC-521";

/** notation-plugin-protocol.md §3: what notation expects of each key spec, written out here rather than taken from src/. */
export const NOTARY_KEY_SPECS: Record<NotarySpec, { hash: string; signingAlgorithm: string; sigLen: number; kty: "rsa" | "ec"; size: number | string }> = {
  "RSA-2048": { hash: "SHA-256", signingAlgorithm: "RSASSA-PSS-SHA-256", sigLen: 256, kty: "rsa", size: 2048 },
  "RSA-3072": { hash: "SHA-384", signingAlgorithm: "RSASSA-PSS-SHA-384", sigLen: 384, kty: "rsa", size: 3072 },
  "RSA-4096": { hash: "SHA-512", signingAlgorithm: "RSASSA-PSS-SHA-512", sigLen: 512, kty: "rsa", size: 4096 },
  "EC-256": { hash: "SHA-256", signingAlgorithm: "ECDSA-SHA-256", sigLen: 64, kty: "ec", size: "prime256v1" },
  "EC-384": { hash: "SHA-384", signingAlgorithm: "ECDSA-SHA-384", sigLen: 96, kty: "ec", size: "secp384r1" },
  "EC-521": { hash: "SHA-512", signingAlgorithm: "ECDSA-SHA-512", sigLen: 132, kty: "ec", size: "secp521r1" },
};

const HASH_OF: Record<string, string> = Object.fromEntries(Object.entries(NOTARY_KEY_SPECS).map(([k, v]) => [k, v.hash]));

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
