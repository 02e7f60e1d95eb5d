import { SignerError } from "../errors/index.js";
import { digest as hashBytes, HASH_LENGTHS, isHashAlgorithm, isKeySpec, type HashAlgorithm } from "./key-spec.js";
import { parseNotaryPayload } from "./notary-payload.js";
import type { AuditFacts, Authorization, Authorizer, Caller, KeyRecord, KeyStore, SignerMethod } from "./ports.js";

/** Largest payload the service hashes itself; Notary signing inputs are a few KiB. */
export const MAX_PAYLOAD_BYTES = 1024 * 1024;
export const MAX_KEY_ID_LENGTH = 128;
const KEY_ID_PATTERN = /^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$/;
/** Longest caller-given key id the audit copies as given; longer ones are cut (the request is refused anyway). */
const AUDIT_KEY_ID_MAX = 128;

export interface SignRequest {
  keyId: string;
  payload?: Buffer | undefined;
  digest?: Buffer | undefined;
  hashAlgorithm?: string | undefined;
  keySpec?: string | undefined;
  keyVersion?: number | undefined;
  /** Milliseconds since the epoch after which the caller has given up. */
  deadline?: number | undefined;
}

export interface SignResult {
  key: KeyRecord;
  hash: HashAlgorithm;
  /** The digest that was signed (of the payload with the key's hash, or the caller's). */
  digest: Buffer;
  signature: Buffer;
  facts: AuditFacts;
}

/** DescribeKey and GetCertificateChain: a key id and, optionally, a version (0 or none: the current one). */
export interface KeyRequest {
  keyId: string;
  keyVersion?: number | undefined;
}

export interface SigningServiceOptions<C extends Caller> {
  keys: KeyStore;
  /** Who may use which key; every call is authorized before a key is looked up. */
  authorizer: Authorizer<C>;
  maxPayloadBytes?: number | undefined;
}

export function validateKeyId(keyId: string | undefined): string {
  if (!keyId) throw new SignerError("INVALID_ARGUMENT", "key_id is required");
  if (keyId.length > MAX_KEY_ID_LENGTH) throw new SignerError("INVALID_ARGUMENT", `key_id is longer than ${MAX_KEY_ID_LENGTH} characters`);
  if (!KEY_ID_PATTERN.test(keyId)) throw new SignerError("INVALID_ARGUMENT", "key_id must be printable ASCII without leading or trailing spaces");
  return keyId;
}

/** A caller's text as an audit line copies it: at most `max` characters, then how many more there were. */
export function auditText(text: string, max: number): string {
  return text.length <= max ? text : `${text.slice(0, max)}...(${text.length - max} more characters)`;
}

/** The longest part of a caller's value that a message quotes back, for fields whose right values are short names (hash_algorithm, key_spec). */
export const QUOTED_VALUE_MAX = 64;

/** A caller's value as an error message quotes it: cut, so that a huge value cannot make the answer's trailers huge. */
export function quotedValue(v: string): string {
  return JSON.stringify(auditText(v, QUOTED_VALUE_MAX));
}

/**
 * The key id as the audit records it. It is copied before the request is validated, so that a
 * refused request names what it asked for; a caller cannot make an audit line large with it.
 */
export function auditKeyId(keyId: string): string {
  return auditText(keyId, AUDIT_KEY_ID_MAX);
}

/**
 * Why a key version may sign nothing at all, not even a CSR or a certificate for the service:
 * a custodian disabled it or its key ("compromised"), and the disable must hold for every use.
 */
export function disabledRefusal(key: KeyRecord): SignerError | undefined {
  return key.disabledReason ? new SignerError("KEY_DISABLED", key.disabledReason) : undefined;
}

/** Why a key may not sign anything now: a custodian disabled it, or it is unusable (KeyRecord's reasons). */
export function keyRefusal(key: KeyRecord): SignerError | undefined {
  const disabled = disabledRefusal(key);
  if (disabled) return disabled;
  if (key.unusableReason) return new SignerError("KEY_UNUSABLE", key.unusableReason);
  return undefined;
}

/**
 * Why a key's certificate chain cannot vouch for a signature made `at` (its certificate, or one
 * of its CA certificates, expired or not yet valid), or undefined. A verifier checks every
 * certificate of the chain at signing time (notation does, and then refuses the whole
 * signature), so the service does not sign with a key it would not accept.
 */
export function certificateOutsideValidity(key: KeyRecord, at: Date): string | undefined {
  const c = key.certificate;
  if (!c) return undefined;
  const version = `key "${key.keyId}" version ${key.version}`;
  if (at > c.notAfter) return `the certificate of ${version} expired at ${c.notAfter.toISOString()}: a custodian must rotate the key or import a renewed certificate`;
  if (at < c.notBefore) return `the certificate of ${version} is not valid before ${c.notBefore.toISOString()}`;
  const v = key.issuersValidity;
  if (v && at > v.until) {
    return `the CA certificate "${v.untilSubject}" in the chain of ${version} expired at ${v.until.toISOString()}: a custodian must import the chain again with the renewed CA certificate (hsm-signer certs import) or rotate the key`;
  }
  if (v && at < v.from) return `the CA certificate "${v.fromSubject}" in the chain of ${version} is not valid before ${v.from.toISOString()}`;
  return undefined;
}

/**
 * The domain core: the whole sequence of each Signer call (validate, authorize, resolve the key,
 * hash, sign), behind its ports. Each call fills the AuditFacts it is given as it learns them, so
 * that the edge can record a call however it ends; it is the only writer of those facts.
 */
export class SigningService<C extends Caller = Caller> {
  private readonly keys: KeyStore;
  private readonly authorizer: Authorizer<C>;
  private readonly maxPayloadBytes: number;

  constructor(o: SigningServiceOptions<C>) {
    this.keys = o.keys;
    this.authorizer = o.authorizer;
    this.maxPayloadBytes = o.maxPayloadBytes ?? MAX_PAYLOAD_BYTES;
  }

  /**
   * Shape first (INVALID_ARGUMENT says what is wrong), then the policy, then the key: a caller
   * the policy refuses learns nothing about the key. The payload is hashed once when the key's
   * hash is SHA-256 (the audit's digest is the signed digest); other keys hash it with their own.
   */
  async sign(request: SignRequest, caller: C, facts: AuditFacts = {}): Promise<SignResult> {
    facts.keyId = auditKeyId(request.keyId);
    if (request.keyVersion) facts.keyVersion = request.keyVersion;
    this.validate(request);
    const sha256 = this.describePayload(request, facts);
    const authorization = this.authorize(caller, "Sign", request.keyId, facts);
    const key = await this.resolve(request);
    facts.keyVersion = key.version;
    if (!key.current && !authorization.allowOldVersions) {
      facts.decision = "deny";
      throw new SignerError("PERMISSION_DENIED", `${caller.id} may sign only with the current version of key "${key.keyId}", not version ${key.version} (the policy rule must set allowOldVersions)`);
    }
    const hash = key.info.hash;
    const d = request.digest ?? (hash === "SHA-256" && sha256 ? sha256 : hashBytes(hash, request.payload as Buffer));
    if (request.deadline !== undefined && Date.now() >= request.deadline) {
      throw new SignerError("DEADLINE_EXCEEDED", "the deadline passed before signing started");
    }
    const signature = await this.keys.signDigest(key, hash, d, request.deadline);
    return { key, hash, digest: d, signature, facts };
  }

  /** DescribeKey: any version of a key the caller may use, usable or not. */
  async describeKey(request: KeyRequest, caller: C, facts: AuditFacts = {}): Promise<KeyRecord> {
    facts.keyId = auditKeyId(request.keyId);
    this.authorize(caller, "DescribeKey", validateKeyId(request.keyId), facts);
    return this.keys.getKey(request.keyId, request.keyVersion || undefined);
  }

  /** GetCertificateChain: the chain of a key version, leaf first; KEY_UNUSABLE when it has none. */
  async certificateChain(request: KeyRequest, caller: C, facts: AuditFacts = {}): Promise<KeyRecord> {
    facts.keyId = auditKeyId(request.keyId);
    this.authorize(caller, "GetCertificateChain", validateKeyId(request.keyId), facts);
    const key = await this.keys.getKey(request.keyId, request.keyVersion || undefined);
    if (key.chain.length === 0) throw new SignerError("KEY_UNUSABLE", key.unusableReason ?? `key "${request.keyId}" has no certificate`);
    return key;
  }

  /**
   * ListKeys: only keys that can sign (CA keys, keys without a complete chain and keys whose
   * certificate has expired or is not yet valid are not offered), and only those the caller may use.
   */
  async listKeys(caller: C, facts: AuditFacts = {}): Promise<KeyRecord[]> {
    this.authorize(caller, "ListKeys", undefined, facts);
    const keys = await this.keys.listKeys();
    const now = new Date();
    return keys.filter((k) => !k.unusableReason && !k.disabledReason && !certificateOutsideValidity(k, now) && this.authorizer.mayUseKey(caller, k.keyId));
  }

  /** Checks the shape of a request before anything else is looked up. */
  private validate(input: SignRequest): void {
    validateKeyId(input.keyId);
    const hasPayload = input.payload !== undefined;
    const hasDigest = input.digest !== undefined;
    if (hasPayload === hasDigest) throw new SignerError("INVALID_ARGUMENT", "exactly one of payload or digest is required");
    if (hasPayload && (input.payload as Buffer).length > this.maxPayloadBytes) {
      throw new SignerError("PAYLOAD_TOO_LARGE", `payload is ${(input.payload as Buffer).length} bytes; the limit is ${this.maxPayloadBytes} bytes (send a digest instead)`);
    }
    if (hasDigest && !input.hashAlgorithm) throw new SignerError("INVALID_ARGUMENT", "hash_algorithm is required with digest");
    if (input.hashAlgorithm && !isHashAlgorithm(input.hashAlgorithm)) {
      throw new SignerError("INVALID_ARGUMENT", `hash_algorithm ${quotedValue(input.hashAlgorithm)} is not one of SHA-256, SHA-384, SHA-512`);
    }
    if (hasDigest && input.hashAlgorithm && isHashAlgorithm(input.hashAlgorithm)) {
      const want = HASH_LENGTHS[input.hashAlgorithm];
      const got = (input.digest as Buffer).length;
      if (got !== want) throw new SignerError("INVALID_ARGUMENT", `digest is ${got} bytes but a ${input.hashAlgorithm} digest is ${want} bytes`);
    }
    if (input.keySpec && !isKeySpec(input.keySpec)) {
      throw new SignerError("INVALID_ARGUMENT", `key_spec ${quotedValue(input.keySpec)} is not one of RSA-2048, RSA-3072, RSA-4096, EC-256, EC-384, EC-521`);
    }
  }

  /**
   * What the audit records of a payload: its SHA-256 and, for a Notary signing input, the
   * artifact; of a digest, the digest. Returns the payload's SHA-256, which signs for SHA-256 keys.
   */
  private describePayload(request: SignRequest, facts: AuditFacts): Buffer | undefined {
    if (request.payload) {
      const sha256 = hashBytes("SHA-256", request.payload);
      facts.payloadDigest = `sha256:${sha256.toString("hex")}`;
      const p = parseNotaryPayload(request.payload);
      facts.payloadKind = p.kind;
      if (p.artifact) facts.artifact = p.artifact;
      return sha256;
    }
    if (request.digest) {
      facts.payloadDigest = `${(request.hashAlgorithm ?? "unknown").toLowerCase().replace("-", "")}:${request.digest.toString("hex")}`;
      facts.payloadKind = "digest";
    }
    return undefined;
  }

  /** Asks the Authorizer, records its decision and rule, and throws its refusal. */
  private authorize(caller: C, method: SignerMethod, keyId: string | undefined, facts: AuditFacts): Authorization {
    const a = this.authorizer.authorize(caller, method, keyId);
    facts.decision = a.decision;
    if (a.rule) facts.rule = a.rule;
    if (a.refusal) throw a.refusal;
    if (a.decision !== "allow") throw new SignerError("PERMISSION_DENIED", `${caller.id} may not call ${method}`);
    return a;
  }

  /** Looks up a key and checks that the request fits it. */
  private async resolve(input: SignRequest): Promise<KeyRecord> {
    const key = await this.keys.getKey(input.keyId, input.keyVersion || undefined);
    if (input.keySpec && input.keySpec !== key.spec) {
      // With notation the request's key_spec is the key's pluginConfig key_spec, which goes stale when a key is rotated to another spec.
      throw new SignerError(
        "INVALID_ARGUMENT",
        `key "${key.keyId}" is ${key.spec}, not ${input.keySpec} (the request's key_spec); with notation, update the key_spec plugin config: notation key delete NAME, then notation key add again with --plugin-config key_spec=${key.spec} (or without key_spec)`,
      );
    }
    if (input.hashAlgorithm && input.hashAlgorithm !== key.info.hash) {
      throw new SignerError("INVALID_ARGUMENT", `hash_algorithm ${input.hashAlgorithm} does not fit key "${key.keyId}" (${key.spec} signs ${key.info.hash} digests)`);
    }
    const refused = keyRefusal(key);
    if (refused) throw refused;
    const outside = certificateOutsideValidity(key, new Date());
    if (outside) throw new SignerError("KEY_UNUSABLE", outside);
    return key;
  }
}
