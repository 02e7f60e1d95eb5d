import { SignerError } from "../errors/index.js";
import { digest as hashBytes, HASH_LENGTHS, isHashAlgorithm, isKeySpec, type HashAlgorithm } from "./key-spec.js";
import type { KeyRecord, KeyStore } from "./ports.js";

/** Largest payload the service hashes itself; Notary signing inputs are a few KiB. */
export const MAX_PAYLOAD_BYTES = 1024 * 1024;
export const MAX_KEY_ID_LENGTH = 128;
const KEY_ID_PATTERN = /^[\x21-\x7e]([\x20-\x7e]*[\x21-\x7e])?$/;

export interface SignInput {
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
  digest: Buffer;
  signature: Buffer;
}

export function validateKeyId(keyId: string | undefined): string {
  if (!keyId) throw new SignerError("INVALID_ARGUMENT", "key_id is required");
  if (keyId.length > MAX_KEY_ID_LENGTH) throw new SignerError("INVALID_ARGUMENT", `key_id is longer than ${MAX_KEY_ID_LENGTH} characters`);
  if (!KEY_ID_PATTERN.test(keyId)) throw new SignerError("INVALID_ARGUMENT", "key_id must be printable ASCII without leading or trailing spaces");
  return keyId;
}

/** The domain core: validates requests, hashes payloads and asks the key store to sign. */
export class SigningService {
  constructor(
    private readonly keys: KeyStore,
    private readonly maxPayloadBytes = MAX_PAYLOAD_BYTES,
  ) {}

  /** Checks the shape of a request before anything else is looked up. */
  validate(input: SignInput): void {
    validateKeyId(input.keyId);
    const hasPayload = input.payload !== undefined;
    const hasDigest = input.digest !== undefined;
    if (hasPayload === hasDigest) throw new SignerError("INVALID_ARGUMENT", "exactly one of payload or digest is required");
    if (hasPayload && (input.payload as Buffer).length > this.maxPayloadBytes) {
      throw new SignerError("PAYLOAD_TOO_LARGE", `payload is ${(input.payload as Buffer).length} bytes; the limit is ${this.maxPayloadBytes} bytes (send a digest instead)`);
    }
    if (hasDigest && !input.hashAlgorithm) throw new SignerError("INVALID_ARGUMENT", "hash_algorithm is required with digest");
    if (input.hashAlgorithm && !isHashAlgorithm(input.hashAlgorithm)) {
      throw new SignerError("INVALID_ARGUMENT", `hash_algorithm "${input.hashAlgorithm}" is not one of SHA-256, SHA-384, SHA-512`);
    }
    if (hasDigest && input.hashAlgorithm && isHashAlgorithm(input.hashAlgorithm)) {
      const want = HASH_LENGTHS[input.hashAlgorithm];
      const got = (input.digest as Buffer).length;
      if (got !== want) throw new SignerError("INVALID_ARGUMENT", `digest is ${got} bytes but a ${input.hashAlgorithm} digest is ${want} bytes`);
    }
    if (input.keySpec && !isKeySpec(input.keySpec)) {
      throw new SignerError("INVALID_ARGUMENT", `key_spec "${input.keySpec}" is not one of RSA-2048, RSA-3072, RSA-4096, EC-256, EC-384, EC-521`);
    }
  }

  /** Looks up a key and checks that the request fits it. */
  async resolve(input: SignInput): Promise<KeyRecord> {
    const key = await this.keys.getKey(input.keyId, input.keyVersion);
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
    if (key.disabledReason) throw new SignerError("KEY_DISABLED", key.disabledReason);
    if (key.unusableReason) throw new SignerError("KEY_UNUSABLE", key.unusableReason);
    return key;
  }

  /** Hashes (for a payload) and signs with an already resolved key. */
  async signWith(key: KeyRecord, input: SignInput): Promise<SignResult> {
    const hash = key.info.hash;
    const d = input.digest ?? hashBytes(hash, input.payload as Buffer);
    if (input.deadline !== undefined && Date.now() >= input.deadline) {
      throw new SignerError("DEADLINE_EXCEEDED", "the deadline passed before signing started");
    }
    const signature = await this.keys.signDigest(key, hash, d, input.deadline);
    return { key, hash, digest: d, signature };
  }

  async sign(input: SignInput): Promise<SignResult> {
    this.validate(input);
    return this.signWith(await this.resolve(input), input);
  }

  async describe(keyId: string, version?: number): Promise<KeyRecord> {
    return this.keys.getKey(validateKeyId(keyId), version);
  }

  async chain(keyId: string, version?: number): Promise<KeyRecord> {
    const key = await this.describe(keyId, version);
    if (key.chain.length === 0) throw new SignerError("KEY_UNUSABLE", key.unusableReason ?? `key "${keyId}" has no certificate`);
    return key;
  }

  list(): Promise<KeyRecord[]> {
    return this.keys.listKeys();
  }
}
