import { createLocalJWKSet, createRemoteJWKSet, customFetch, type JWTVerifyGetKey, type RemoteJWKSet } from "jose";
import type { Logger } from "../log/index.js";
import { unauthenticated } from "./caller-identity.js";
import { httpsJwksFetch, readJwksFile } from "./jwks-source.js";

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

export function jwksTiming(t: JwksTiming | undefined): Required<JwksTiming> {
  return {
    refreshIntervalMs: t?.refreshIntervalMs ?? JWKS_REFRESH_INTERVAL_MS,
    unknownKidCooldownMs: t?.unknownKidCooldownMs ?? JWKS_UNKNOWN_KID_COOLDOWN_MS,
    fetchTimeoutMs: t?.fetchTimeoutMs ?? JWKS_FETCH_TIMEOUT_MS,
  };
}

/**
 * The keys of one issuer. A failed refresh keeps the previous keys, so a briefly unreachable
 * issuer does not lock its callers out.
 */
export interface Jwks {
  /** For jwtVerify; always the latest keys. */
  readonly key: JWTVerifyGetKey;
  /** Loads the keys now (one load at a time); throws "JWKS <where>: <why>", keeping the old keys, when that fails. */
  refresh(): Promise<void>;
  /** A token names a key we do not have. true: the keys were refreshed and verification may be retried. */
  refreshForUnknownKey(): Promise<boolean>;
  /** Starts the periodic refresh, if the source has one. */
  start(): void;
  stop(): void;
}

/** The keys in a file, read at start-up and on reload() only (SIGHUP, Authenticator.watch): files change when the operator says so. */
export class FileJwks implements Jwks {
  private getKey: JWTVerifyGetKey | undefined;
  private inflight: Promise<void> | undefined;

  constructor(
    private readonly file: string,
    private readonly logger: Logger,
  ) {}

  readonly key: JWTVerifyGetKey = (header, token) => {
    if (!this.getKey) throw unauthenticated("the issuer's keys are not loaded");
    return this.getKey(header, token);
  };

  refresh(): Promise<void> {
    this.inflight ??= this.load().finally(() => (this.inflight = undefined));
    return this.inflight;
  }

  refreshForUnknownKey(): Promise<boolean> {
    return Promise.resolve(false);
  }

  start(): void {
    // No periodic refresh: see the class comment.
  }

  stop(): void {
    // Nothing started.
  }

  private async load(): Promise<void> {
    let keys: number;
    try {
      const jwks = await readJwksFile(this.file);
      this.getKey = createLocalJWKSet(jwks);
      keys = jwks.keys.length;
    } catch (e) {
      throw new Error(`JWKS ${this.file}: ${(e as Error).message}`, { cause: e });
    }
    this.logger.debug("JWKS loaded", { jwks: this.file, keys });
  }
}

/**
 * The keys at an https URL, through jose's createRemoteJWKSet: it fetches them (one fetch at a
 * time, within timeoutDuration, over httpsJwksFetch) and swaps them in when a fetch succeeds. Two
 * of its options are switched off, and this class does their work, because jose's way would
 * change what callers see:
 * - cacheMaxAge Infinity, and a timer refreshes instead: jose refetches keys older than
 *   cacheMaxAge when a token comes, and refuses the token when that fetch fails, so an issuer
 *   that is briefly unreachable would lock its callers out.
 * - cooldownDuration Infinity, and refreshForUnknownKey() refetches for an unknown kid instead:
 *   jose's cooldown counts from the last successful fetch, so while the issuer fails every token
 *   with a made-up kid would cause another fetch; here there is at most one per cooldown, failed
 *   or not. And jose refuses the token with the fetch error, where the token's reason is that no
 *   key matches it.
 */
export class RemoteJwks implements Jwks {
  private readonly remote: RemoteJWKSet;
  private lastAttempt = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly url: string,
    ca: string[] | undefined,
    private readonly timing: Required<JwksTiming>,
    closed: AbortSignal,
    private readonly logger: Logger,
  ) {
    this.remote = createRemoteJWKSet(new URL(url), {
      timeoutDuration: timing.fetchTimeoutMs,
      cacheMaxAge: Infinity,
      cooldownDuration: Infinity,
      [customFetch]: httpsJwksFetch(ca, timing.fetchTimeoutMs, closed),
    });
  }

  readonly key: JWTVerifyGetKey = (header, token) => this.remote(header, token);

  async refresh(): Promise<void> {
    // A refresh that joins the fetch in flight (jose shares it) is not a new attempt.
    if (!this.remote.reloading) this.lastAttempt = Date.now();
    try {
      await this.remote.reload();
    } catch (e) {
      throw new Error(`JWKS ${this.url}: ${(e as Error).message}`, { cause: e });
    }
    this.logger.debug("JWKS loaded", { jwks: this.url, keys: this.remote.jwks()?.keys.length });
  }

  start(): void {
    this.timer = setInterval(() => {
      this.refresh().catch((e: unknown) => this.logger.warn("JWKS refresh failed; the cached keys stay in use", { jwks: this.url, error: (e as Error).message }));
    }, this.timing.refreshIntervalMs);
    this.timer.unref();
  }

  /**
   * The issuer may have rotated. Fetch again, but at most once per cooldown so that tokens with
   * made-up kids cannot make us hammer the issuer; a token that comes while a fetch is in flight
   * waits for it.
   */
  async refreshForUnknownKey(): Promise<boolean> {
    if (!this.remote.reloading && Date.now() - this.lastAttempt < this.timing.unknownKidCooldownMs) return false;
    try {
      await this.refresh();
      return true;
    } catch (e) {
      this.logger.warn("JWKS refresh for an unknown key failed; the cached keys stay in use", { jwks: this.url, error: (e as Error).message });
      return false;
    }
  }

  stop(): void {
    clearInterval(this.timer);
  }
}
