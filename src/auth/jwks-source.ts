import { get as httpsGet } from "node:https";
import { rootCertificates } from "node:tls";
import type { FetchImplementation, JSONWebKeySet } from "jose";
import { readRegularFile, regularFileProblem } from "../fs/regular-file.js";

/** A JWKS is a few kilobytes; refusing more bounds what a misbehaving issuer can make us hold. */
const JWKS_MAX_BYTES = 1024 * 1024;

/** A JWKS document: JSON with a non-empty "keys" list of objects; throws saying what is wrong. */
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
  return v as JSONWebKeySet;
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
