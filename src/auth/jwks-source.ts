import { createPublicKey, type JsonWebKey, type KeyObject } from "node:crypto";
import { get as httpsGet } from "node:https";
import { rootCertificates } from "node:tls";
import type { FetchImplementation, JSONWebKeySet } from "jose";
import { readRegularFile, regularFileProblem } from "../fs/regular-file.js";

/** A JWKS is a few kilobytes; refusing more bounds what a misbehaving issuer can make us hold. */
const JWKS_MAX_BYTES = 1024 * 1024;

/** The key types a JWS signature is verified with (RFC 7518 §6, RFC 8037); the others (oct, AKP, ...) are left alone. */
const SIGNATURE_KEY_TYPES: readonly string[] = ["RSA", "EC", "OKP"];
/** jose refuses RS* and PS* with a shorter modulus when a token comes (RFC 7518 §3.3). */
const MIN_RSA_BITS = 2048;

/** Why a JWKS member of a signature key type is of no use for verifying, or undefined when it is usable. */
function signatureKeyProblem(k: Record<string, unknown>): string | undefined {
  // A private member in a JWKS is a mistake that may have published a secret; jose would refuse it at the first token.
  if (k.d !== undefined) return "is a private key (a JWKS holds public keys only)";
  let key: KeyObject;
  try {
    key = createPublicKey({ key: k as JsonWebKey, format: "jwk" });
  } catch (e) {
    return `is not a public key Node can read (${(e as Error).message})`;
  }
  const bits = key.asymmetricKeyDetails?.modulusLength;
  if (k.kty === "RSA" && (bits === undefined || bits < MIN_RSA_BITS)) return `is an RSA key of ${bits ?? "unknown"} bits (at least ${MIN_RSA_BITS} are needed)`;
  return undefined;
}

/**
 * A JWKS document: JSON with a non-empty "keys" list of objects, each RSA, EC or OKP key meant for
 * signatures (no "use", or "sig") a public key Node can read (RSA of at least 2048 bits), and at
 * least one such key. Throws saying what is wrong, so that a file or an issuer answer whose keys
 * could verify no token is refused when it is loaded, and the keys in use stay, rather than
 * replacing them and refusing every token.
 */
export function parseJwks(text: string): JSONWebKeySet {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw new Error("not valid JSON");
  }
  const keys = (v as { keys?: unknown } | null)?.keys;
  if (!Array.isArray(keys)) throw new Error('not a JWKS (no "keys" list)');
  if (keys.length === 0) throw new Error("the JWKS has no keys");
  if (!keys.every((k) => typeof k === "object" && k !== null && !Array.isArray(k))) throw new Error("a JWKS key is not an object");
  let usable = 0;
  for (const [i, k] of (keys as Record<string, unknown>[]).entries()) {
    const name = `key ${i + 1}${typeof k.kid === "string" ? ` (kid ${shownValue(k.kid)})` : ""}`;
    if (typeof k.kty !== "string") throw new Error(`${name} has no "kty"`);
    if (!SIGNATURE_KEY_TYPES.includes(k.kty) || (k.use !== undefined && k.use !== "sig")) continue;
    // X25519 and X448 are OKP keys for key agreement, not signatures.
    if (k.kty === "OKP" && k.crv !== "Ed25519" && k.crv !== "Ed448") continue;
    const problem = signatureKeyProblem(k);
    if (problem !== undefined) throw new Error(`${name} ${problem}`);
    usable++;
  }
  if (usable === 0) throw new Error(`the JWKS has no ${SIGNATURE_KEY_TYPES.join(", ")} key for signatures`);
  return v as JSONWebKeySet;
}

/** A kid for a message: bounded (an issuer chooses it). */
function shownValue(s: string): string {
  const q = JSON.stringify(s);
  return q.length > 66 ? `${q.slice(0, 63)}...` : q;
}

/** A file's text: a regular file of at most 1 MiB (readRegularFile), as `config check` requires, so that a FIFO never hangs a start or a reload. */
function readSmallFile(file: string): string {
  const r = readRegularFile(file);
  if (Buffer.isBuffer(r)) return r.toString("utf8");
  throw Object.assign(new Error(regularFileProblem(file, r)), r.kind === "unreadable" ? { code: r.code } : {});
}

export function readJwksFile(file: string): Promise<JSONWebKeySet> {
  return Promise.resolve().then(() => parseJwks(readSmallFile(file)));
}

/** The CAs for a JWKS URL with an extra CA (PEM file): Node's `ca` replaces the system roots, so keep them and the extra CA only adds. */
export function withSystemRoots(caFile: string): Promise<string[]> {
  return Promise.resolve().then(() => [...rootCertificates, readSmallFile(caFile)]);
}

/**
 * The fetch jose's createRemoteJWKSet uses (its `customFetch`): node:https rather than the global
 * fetch so that an extra CA can be passed as `ca`, and no redirects are followed. It answers only a
 * JWKS document (parseJwks); anything else is refused here with the reason the operator reads
 * (HTTP status, size, JSON, shape), where jose would say less or, for an empty key list, accept it.
 * `signal` is jose's timeout (timeoutDuration); `closed` aborts the fetch when the service stops.
 */
export function httpsJwksFetch(ca: string[] | undefined, timeoutMs: number, closed: AbortSignal): FetchImplementation {
  return (url, { signal }) =>
    new Promise((resolve, reject) => {
      const fail = (e: Error): void => reject(signal.aborted ? new Error(`no answer within ${timeoutMs} ms`) : e);
      const req = httpsGet(url, { ca, signal: AbortSignal.any([signal, closed]), headers: { accept: "application/json" } }, (res) => {
        if (res.statusCode !== 200) {
          res.resume();
          reject(new Error(`HTTP status ${res.statusCode ?? "unknown"}`));
          return;
        }
        const chunks: Buffer[] = [];
        let size = 0;
        res.on("data", (c: Buffer) => {
          size += c.length;
          if (size > JWKS_MAX_BYTES) req.destroy(new Error(`larger than ${JWKS_MAX_BYTES} bytes`));
          else chunks.push(c);
        });
        res.on("error", fail);
        res.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          try {
            parseJwks(text);
          } catch (e) {
            reject(e as Error);
            return;
          }
          resolve(new Response(text, { status: 200, headers: { "content-type": "application/json" } }));
        });
      });
      req.on("error", fail);
    });
}
