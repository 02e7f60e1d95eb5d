import { readFile } from "node:fs/promises";
import { get as httpsGet } from "node:https";
import { createLocalJWKSet, type JSONWebKeySet, type JWTVerifyGetKey } from "jose";
import type { Logger } from "../log/index.js";
import { unauthenticated } from "./caller-identity.js";

/** How often and how patiently JWKS URLs are fetched; the defaults suit production. */
export interface JwksTiming {
  refreshIntervalMs?: number;
  /** Least time between two fetches caused by a token whose key is unknown. */
  unknownKidCooldownMs?: number;
  fetchTimeoutMs?: number;
}

export const JWKS_REFRESH_INTERVAL_MS = 5 * 60_000;
export const JWKS_UNKNOWN_KID_COOLDOWN_MS = 30_000;
export const JWKS_FETCH_TIMEOUT_MS = 5_000;
/** A JWKS is a few kilobytes; refusing more bounds what a misbehaving issuer can make us hold. */
const JWKS_MAX_BYTES = 1024 * 1024;

/** The keys of one issuer. */
export interface Jwks {
  /** For jwtVerify; always the latest keys. */
  readonly key: JWTVerifyGetKey;
  /** Loads the keys now; throws, keeping the old keys, when that fails. */
  refresh(): Promise<void>;
  /** A token names a key we do not have. true: the keys were refreshed and verification may be retried. */
  refreshForUnknownKey(): Promise<boolean>;
  /** Starts the periodic refresh, if the source has one. */
  start(): void;
  stop(): void;
}

/** Where a JWKS comes from: a file (re-read on reload) or an https URL. */
export interface JwksLoader {
  readonly remote: boolean;
  readonly where: string;
  load(signal: AbortSignal): Promise<unknown>;
}

export class FileJwksLoader implements JwksLoader {
  readonly remote = false;
  constructor(readonly where: string) {}

  async load(): Promise<unknown> {
    const text = await readFile(this.where, "utf8");
    try {
      return JSON.parse(text);
    } catch {
      throw new Error("not valid JSON");
    }
  }
}

/** node:https rather than fetch so that an extra CA can be passed as `ca`. No redirects are followed. */
export class HttpsJwksLoader implements JwksLoader {
  readonly remote = true;
  constructor(
    readonly where: string,
    private readonly ca: string[] | undefined,
    private readonly timeoutMs: number,
  ) {}

  load(signal: AbortSignal): Promise<unknown> {
    const timeout = AbortSignal.timeout(this.timeoutMs);
    const both = AbortSignal.any([signal, timeout]);
    return new Promise((resolve, reject) => {
      const fail = (e: Error): void => reject(timeout.aborted ? new Error(`no answer within ${this.timeoutMs} ms`) : e);
      const req = httpsGet(this.where, { ca: this.ca, signal: both, headers: { accept: "application/json" } }, (res) => {
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
          try {
            resolve(JSON.parse(Buffer.concat(chunks).toString("utf8")));
          } catch {
            reject(new Error("not valid JSON"));
          }
        });
      });
      req.on("error", fail);
    });
  }
}

function asJwks(v: unknown): JSONWebKeySet {
  const keys = (v as { keys?: unknown } | null)?.keys;
  if (!Array.isArray(keys)) throw new Error('not a JWKS (no "keys" list)');
  if (keys.length === 0) throw new Error("the JWKS has no keys");
  if (!keys.every((k) => typeof k === "object" && k !== null && !Array.isArray(k))) throw new Error("a JWKS key is not an object");
  return v as JSONWebKeySet;
}

/**
 * The cached keys of one issuer. A failed refresh keeps the previous keys, so a briefly
 * unreachable issuer does not lock its callers out.
 */
export class KeySet implements Jwks {
  private getKey: JWTVerifyGetKey | undefined;
  private lastAttempt = 0;
  private inflight: Promise<void> | undefined;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly loader: JwksLoader,
    private readonly timing: Required<JwksTiming>,
    private readonly abort: AbortSignal,
    private readonly logger: Logger,
  ) {}

  /** For jwtVerify; always the latest keys. */
  readonly key: JWTVerifyGetKey = (header, token) => {
    if (!this.getKey) throw unauthenticated("the issuer's keys are not loaded");
    return this.getKey(header, token);
  };

  /** Loads the keys now (one fetch at a time); throws, keeping the old keys, when that fails. */
  refresh(): Promise<void> {
    this.inflight ??= this.fetch().finally(() => (this.inflight = undefined));
    return this.inflight;
  }

  /** Periodic refresh, for URLs only: files change when the operator says so (reload). */
  start(): void {
    if (!this.loader.remote) return;
    this.timer = setInterval(() => {
      this.refresh().catch((e: unknown) => this.logger.warn("JWKS refresh failed; the cached keys stay in use", { jwks: this.loader.where, error: (e as Error).message }));
    }, this.timing.refreshIntervalMs);
    this.timer.unref();
  }

  /**
   * A token names a key we do not have: the issuer may have rotated. Fetch again, but at most
   * once per cooldown so that tokens with made-up kids cannot make us hammer the issuer.
   * true: the keys were refreshed and verification may be retried.
   */
  async refreshForUnknownKey(): Promise<boolean> {
    if (!this.loader.remote) return false;
    if (!this.inflight && Date.now() - this.lastAttempt < this.timing.unknownKidCooldownMs) return false;
    try {
      await this.refresh();
      return true;
    } catch (e) {
      this.logger.warn("JWKS refresh for an unknown key failed; the cached keys stay in use", { jwks: this.loader.where, error: (e as Error).message });
      return false;
    }
  }

  stop(): void {
    clearInterval(this.timer);
  }

  private async fetch(): Promise<void> {
    this.lastAttempt = Date.now();
    let jwks: JSONWebKeySet;
    try {
      jwks = asJwks(await this.loader.load(this.abort));
      this.getKey = createLocalJWKSet(jwks);
    } catch (e) {
      throw new Error(`JWKS ${this.loader.where}: ${(e as Error).message}`, { cause: e });
    }
    this.logger.debug("JWKS loaded", { jwks: this.loader.where, keys: jwks.keys.length });
  }
}
