import type { AuditStore } from "../audit/audit-store.js";
import { CheckpointingStore, FileCheckpointSink, type CheckpointAlgorithm, type CheckpointSink } from "../audit/checkpoints.js";
import { PostgresAuditStore } from "../audit/postgres-store.js";
import { SignerError } from "../errors/index.js";
import type { Logger } from "../log/index.js";
import type { KeyRecord, KeyStore } from "../signing/ports.js";
import { keyRefusal } from "../signing/signing-service.js";
import { postgresConnection } from "./audit-cluster-config.js";
import type { Config } from "./config.js";

/** Retries of a failed audit store: soon at first, then at most this often (as for the file log in serve.ts). */
const RETRY_MIN_MS = 1_000;
const RETRY_MAX_MS = 30_000;

const ALG_OF_SPEC: Record<string, CheckpointAlgorithm> = { "EC-256": "ES256", "EC-384": "ES384", "EC-521": "ES512" };

/**
 * The PostgreSQL audit store of audit.postgres, or undefined when none is configured (the file
 * log is the store then). With a database, it is the record of truth and the local files are not
 * written.
 */
export async function openPostgresAudit(config: Readonly<Config>, logger: Logger, onCommit: (seconds: number, records: number) => void): Promise<PostgresAuditStore | undefined> {
  const c = config.audit.postgres;
  if (!c) return undefined;
  const replica = config.audit.replicaId;
  const store = await PostgresAuditStore.open({
    connection: postgresConnection(c),
    replicaId: replica,
    timeoutMs: c.timeoutMs,
    lockWaitMs: c.lockWaitMs,
    migrate: c.migrate,
    onCommit,
    commitDelayMs: config.audit.commitDelayMs,
    retry: {
      minMs: RETRY_MIN_MS,
      maxMs: RETRY_MAX_MS,
      onRecovered: () => logger.info("audit database writable again; requests are accepted", { replica }),
      onFailed: (e, nextAttemptMs) => logger.warn("audit database still cannot be written; requests fail until it can", { replica, error: e.message, nextAttemptMs }),
    },
  });
  logger.info("audit records go to PostgreSQL", { replica, sequence: store.stats.sequence });
  return store;
}

/**
 * Why the audit key may not sign a checkpoint, as the Signer refuses a key for a signature: a
 * custodian disabled it (revoked, perhaps compromised), or it cannot be trusted (its private key
 * may have existed outside the HSM, or it has no complete certificate chain for verifiers).
 * Whoever holds a copy of the key could forge checkpoints, and `audit verify` trusts them.
 */
function cannotSignCheckpoints(key: KeyRecord): SignerError | undefined {
  const refused = keyRefusal(key);
  return refused && new SignerError(refused.code, `the audit key "${key.keyId}": ${refused.message}`);
}

/**
 * Wraps the store so that the audit key (audit.checkpoints.keyId, an EC key in the HSM) signs
 * checkpoints of its chain; the store itself when no key is configured. The key must exist now:
 * a service that was told to protect its audit with checkpoints does not start without them.
 */
export async function withCheckpoints(store: AuditStore, config: Readonly<Config>, keys: KeyStore, logger: Logger): Promise<AuditStore> {
  const c = config.audit.checkpoints;
  if (!c) return store;
  const first = await keys.getKey(c.keyId).catch((e: unknown) => {
    throw new SignerError("CONFIG_INVALID", `audit.checkpoints.keyId: ${(e as Error).message}`);
  });
  const alg = ALG_OF_SPEC[first.spec];
  if (!alg) throw new SignerError("CONFIG_INVALID", `audit.checkpoints.keyId: "${c.keyId}" is ${first.spec}; checkpoints are signed with an EC key (EC-256, EC-384 or EC-521)`);
  const refused = cannotSignCheckpoints(first);
  if (refused) throw new SignerError("CONFIG_INVALID", `audit.checkpoints.keyId: ${refused.message}`);
  const sink: CheckpointSink = store instanceof PostgresAuditStore ? { write: (cp) => store.appendCheckpoint(cp) } : new FileCheckpointSink(config.audit.dir);
  let failing = false;
  return new CheckpointingStore(store, {
    replicaId: config.audit.replicaId,
    everyRecords: c.everyRecords,
    everyMs: c.everyMs,
    sink,
    signer: {
      keyId: c.keyId,
      alg,
      // The current version each time: a key disabled or rotated by a custodian is noticed.
      signDigest: async (digest) => {
        const key = await keys.getKey(c.keyId);
        if (ALG_OF_SPEC[key.spec] !== alg) throw new SignerError("KEY_UNUSABLE", `the audit key "${c.keyId}" is now ${key.spec}`);
        const problem = cannotSignCheckpoints(key);
        if (problem) throw problem;
        return keys.signDigest(key, key.info.hash, digest);
      },
    },
    onCheckpoint: (cp) => {
      if (failing) logger.info("audit checkpoints are made again", { seq: cp.seq });
      failing = false;
      logger.debug("audit checkpoint", { replica: cp.replica, seq: cp.seq });
    },
    onError: (e) => {
      failing = true;
      logger.warn("an audit checkpoint could not be made; records since the last one are not protected against truncation yet", { error: (e as Error).message });
    },
  });
}

/**
 * The key store the Signer API sees: the audit key is not there. A caller allowed to sign with it
 * could sign a forged checkpoint, so it signs checkpoints and nothing else.
 */
export function withoutAuditKey(keys: KeyStore, config: Readonly<Config>): KeyStore {
  const reserved = config.audit.checkpoints?.keyId;
  if (!reserved) return keys;
  const hidden = (): SignerError => new SignerError("KEY_NOT_FOUND", `key "${reserved}" is reserved for audit checkpoints`);
  return {
    getKey: async (keyId, version) => {
      if (keyId === reserved) throw hidden();
      return keys.getKey(keyId, version);
    },
    listKeys: async () => (await keys.listKeys()).filter((k) => k.keyId !== reserved),
    signDigest: async (key, hash, digest, deadline) => {
      if (key.keyId === reserved) throw hidden();
      return keys.signDigest(key, hash, digest, deadline);
    },
  };
}
