import { createHash } from "node:crypto";
import pg from "pg";
import { SignerError } from "../errors/index.js";
import { GENESIS_HASH, hashLine, type AuditLogStats, type AuditReceipt, type AuditRecordInput } from "./audit-log.js";
import { CommitGate, artifactDigestOf, recoveredRecord, retryDelayMs, serializeRecord, type AuditLine, type AuditStore } from "./audit-store.js";

/** The schema version this code writes and reads; `audit migrate` (or the service) brings a database to it. */
export const AUDIT_SCHEMA_VERSION = 1;

/**
 * The migrations, in order: migration i brings the schema from version i to i + 1. Each runs in
 * one transaction under an advisory lock, so that replicas starting together migrate once.
 */
const MIGRATIONS: readonly string[] = [
  `CREATE TABLE audit_replicas (
     replica_id text PRIMARY KEY,
     first_seen timestamptz NOT NULL DEFAULT now()
   );
   CREATE TABLE audit_records (
     replica_id text NOT NULL REFERENCES audit_replicas (replica_id),
     seq bigint NOT NULL CHECK (seq >= 1),
     time timestamptz NOT NULL,
     line text NOT NULL,
     method text,
     identity text,
     key_id text,
     artifact_digest text,
     result text,
     PRIMARY KEY (replica_id, seq)
   );
   CREATE INDEX audit_records_artifact_digest ON audit_records (artifact_digest) WHERE artifact_digest IS NOT NULL;
   CREATE INDEX audit_records_key_time ON audit_records (key_id, time);
   CREATE INDEX audit_records_identity_time ON audit_records (identity, time);
   CREATE INDEX audit_records_time ON audit_records (time);
   CREATE TABLE audit_checkpoints (
     replica_id text NOT NULL,
     seq bigint NOT NULL,
     hash text NOT NULL,
     time timestamptz NOT NULL,
     key_id text NOT NULL,
     statement text NOT NULL,
     signature text NOT NULL,
     PRIMARY KEY (replica_id, seq)
   );`,
];

/**
 * What the service's role needs on the schema, and nothing more (README "Roles and GRANTs"): it
 * adds records, checkpoints and its replica's row, and reads them; it never updates or deletes.
 */
export const SERVICE_ROLE_PRIVILEGES: readonly { privileges: string; tables: string }[] = [
  { privileges: "SELECT, INSERT", tables: "audit_records, audit_checkpoints, audit_replicas" },
  { privileges: "SELECT", tables: "audit_schema_version" },
];

/** PostgreSQL's longest role name in bytes; a longer one is truncated, and could name another role. */
const MAX_ROLE_NAME_BYTES = 63;

/**
 * Why `role` cannot be given the service's privileges, or undefined. Refused: an empty name, a
 * NUL, a name longer than PostgreSQL keeps, "public" in any case (PostgreSQL reads a quoted
 * "public" as PUBLIC: every role) and the predefined pg_* roles.
 */
export function serviceRoleProblem(role: string): string | undefined {
  if (role === "") return "the role name is empty";
  if (role.includes("\0")) return "the role name holds a NUL character";
  if (Buffer.byteLength(role, "utf8") > MAX_ROLE_NAME_BYTES) return `the role name is longer than ${MAX_ROLE_NAME_BYTES} bytes (PostgreSQL would cut it)`;
  if (role.toLowerCase() === "public") return '"public" is every role; name the service\'s own role';
  if (role.toLowerCase().startsWith("pg_")) return `${role} is a predefined PostgreSQL role (pg_*); name the service's own role`;
  return undefined;
}

/**
 * Grants the service's role exactly SERVICE_ROLE_PRIVILEGES (idempotent), in one transaction; the
 * schema must exist (migrateSchema first). The name is quoted as an identifier, never pasted.
 */
export async function grantServiceRole(client: pg.ClientBase, role: string): Promise<void> {
  const problem = serviceRoleProblem(role);
  if (problem) throw new SignerError("INVALID_ARGUMENT", problem);
  const grantee = client.escapeIdentifier(role);
  await client.query("BEGIN");
  try {
    for (const g of SERVICE_ROLE_PRIVILEGES) await client.query(`GRANT ${g.privileges} ON ${g.tables} TO ${grantee}`);
    await client.query("COMMIT");
  } catch (e) {
    await client.query("ROLLBACK").catch(() => undefined);
    throw e;
  }
}

/** Any fixed number: the advisory lock that serializes migrations. */
const MIGRATION_LOCK = 7_262_019_231;
/** Rows per statement of a group commit; more wait for the next one. */
const MAX_BATCH = 1000;
/** Appends waiting beyond this are refused at once: a database this far behind is as good as down. */
const DEFAULT_MAX_QUEUE = 20_000;
/** An idle store checks its connection after this long without a statement (SELECT 1). */
export const DEFAULT_IDLE_CHECK_MS = 5_000;

export interface PostgresAuditOptions {
  /** node-postgres connection settings (host, port, database, user, password, ssl...). */
  connection: pg.ClientConfig;
  /** This replica's chain (audit_records.replica_id). */
  replicaId: string;
  /** Connect, and each statement, must finish within this (default 10 s): a hung database fails the store instead of freezing it. */
  timeoutMs?: number;
  /** How long open() waits for another process holding this replica id to let go (default 60 s). */
  lockWaitMs?: number;
  /** Create or migrate the schema when it is behind (default true; needs the schema owner's rights). */
  migrate?: boolean;
  maxQueue?: number;
  /** As AuditLogOptions.retry: recover by itself, then append an AuditLog.Recovered record. */
  retry?: { minMs: number; maxMs: number; onRecovered?: () => void; onFailed?: (e: SignerError, nextAttemptMs: number) => void };
  /** Called after each group commit with its duration and the number of records it made durable. */
  onCommit?: (seconds: number, records: number) => void;
  /** As AuditLogOptions.commitDelayMs: a commit waits this long at most for the records of calls that have started. */
  commitDelayMs?: number;
  /**
   * After this long without a statement, SELECT 1 checks the connection (default
   * DEFAULT_IDLE_CHECK_MS; 0: never): a connection lost while idle (a partition, a failover) fails
   * the store, and /readyz, within this plus timeoutMs instead of at the next call.
   */
  idleCheckMs?: number;
}

/** The searchable columns of a record, taken at append (the caller may change its record afterwards). */
interface Columns {
  method: string;
  identity: string;
  keyId: string | null;
  artifactDigest: string | null;
  result: string;
}

interface Pending {
  seq: number;
  line: string;
  time: Date;
  columns: Columns;
  receipt: AuditReceipt;
  resolve: (r: AuditReceipt) => void;
  reject: (e: unknown) => void;
}

/** The advisory lock key of a replica id (a 64-bit slice of its SHA-256). */
export function replicaLockKey(replicaId: string): string {
  return createHash("sha256").update(`hsm-signer-audit-replica:${replicaId}`).digest().readBigInt64BE(0).toString();
}

/** The schema version of a database (0: no schema yet). */
export async function schemaVersion(client: pg.ClientBase): Promise<number> {
  const exists = await client.query<{ t: string | null }>("SELECT to_regclass('audit_schema_version')::text AS t");
  if (!exists.rows[0]?.t) return 0;
  const r = await client.query<{ v: number | null }>("SELECT max(version) AS v FROM audit_schema_version");
  return r.rows[0]?.v ?? 0;
}

/** Brings the schema to AUDIT_SCHEMA_VERSION (no-op when it is there); returns the versions applied. */
export async function migrateSchema(client: pg.ClientBase): Promise<number[]> {
  const applied: number[] = [];
  // Up to date: nothing to do, and nothing that needs more than SELECT (the service's role).
  if ((await schemaVersion(client)) === AUDIT_SCHEMA_VERSION) return applied;
  await client.query("BEGIN");
  try {
    await client.query("SELECT pg_advisory_xact_lock($1)", [MIGRATION_LOCK]);
    await client.query("CREATE TABLE IF NOT EXISTS audit_schema_version (version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())");
    let v = await schemaVersion(client);
    if (v > AUDIT_SCHEMA_VERSION) throw new SignerError("CONFIG_INVALID", `the audit database has schema version ${v}, newer than this hsm-signer (${AUDIT_SCHEMA_VERSION})`);
    while (v < AUDIT_SCHEMA_VERSION) {
      await client.query(MIGRATIONS[v] as string);
      v++;
      await client.query("INSERT INTO audit_schema_version (version) VALUES ($1)", [v]);
      applied.push(v);
    }
    await client.query("COMMIT");
  } catch (e) {
    await client.query("ROLLBACK").catch(() => undefined);
    throw e;
  }
  return applied;
}

/**
 * The audit in PostgreSQL: each replica appends to its own hash chain (replica_id, seq), with the
 * same JSON lines as the file log. An append resolves only once its record is committed; appends
 * made while a commit is in flight go together in the next single INSERT (group commit).
 *
 * One replica id, one writer: the store holds a session advisory lock on its replica id on the
 * connection it writes with, taken before it reads where the chain ends. A second process with
 * the same replica id waits for the lock (open() gives up after lockWaitMs); a process whose
 * connection is lost loses the lock with it, and takes it again before it writes another record.
 * The primary key (replica_id, seq) makes a fork impossible even so: two records with one seq
 * cannot both commit.
 *
 * Fails closed as the file log does: a failed or timed-out statement, or a lost connection, rejects
 * the batch and every queued append with AUDIT_UNAVAILABLE, the store turns unhealthy, and (with
 * `retry`) reconnects by itself with backoff; the chain resumes from the last committed record.
 */
export class PostgresAuditStore implements AuditStore {
  readonly replicaId: string;
  private readonly o: PostgresAuditOptions;
  private readonly timeoutMs: number;
  private readonly maxQueue: number;
  private client: pg.Client | undefined;
  private assigned = { sequence: 0, hash: GENESIS_HASH };
  private durableSequence = 0;
  private queue: Pending[] = [];
  private flushing: Promise<void> | undefined;
  private failure: SignerError | undefined;
  private closed = false;
  private recovering: Promise<void> | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private retryAttempts = 0;
  private retrying = false;
  /** This replica has its row in audit_replicas. */
  private registered = false;
  /** The last record this process knows committed. */
  private durable: { sequence: number; hash: string } | undefined;
  /** Records this process committed that the database it reconnected to lacks (connect()), until recorded. */
  private missing: { fromSeq: number; toSeq: number } | undefined;
  /** The server process (pg_backend_pid) of the last connection that held this replica's lock. */
  private session: number | undefined;
  /** Group commit's wait for the records of calls that have started. */
  private readonly gate: CommitGate;
  /** When the last statement finished (Date.now()), and the idle check's timer and whether it waits for an answer. */
  private lastActivity = Date.now();
  private idleTimer: NodeJS.Timeout | undefined;
  private checking = false;

  private constructor(o: PostgresAuditOptions) {
    this.o = o;
    this.replicaId = o.replicaId;
    this.timeoutMs = o.timeoutMs ?? 10_000;
    this.maxQueue = o.maxQueue ?? DEFAULT_MAX_QUEUE;
    this.gate = new CommitGate(o.commitDelayMs);
  }

  /** Connects, migrates if allowed, takes this replica's chain (waiting for another holder) and reads where it ends. */
  static async open(o: PostgresAuditOptions): Promise<PostgresAuditStore> {
    if (!o.replicaId || o.replicaId.length > 200) throw new SignerError("CONFIG_INVALID", "the audit replica id must be 1 to 200 characters");
    const store = new PostgresAuditStore(o);
    try {
      await store.connect(o.lockWaitMs ?? 60_000, o.migrate !== false);
    } catch (e) {
      // Never used: no retry of it may reconnect later and hold this replica's lock.
      store.closed = true;
      if (store.retryTimer) clearTimeout(store.retryTimer);
      store.dropClient();
      throw asUnavailable(e, "opened");
    }
    store.startIdleCheck();
    return store;
  }

  get healthy(): boolean {
    return this.failure === undefined && !this.closed;
  }

  get stats(): AuditLogStats {
    return { sequence: this.durableSequence, queueDepth: this.queue.length, healthy: this.healthy };
  }

  /** A call has started and will append its record: a commit may wait for it (commitDelayMs). */
  expect(): void {
    this.gate.expect();
  }

  append(record: AuditRecordInput): Promise<AuditReceipt> {
    this.gate.arrived();
    if (this.failure) return Promise.reject(this.failure);
    if (this.closed) return Promise.reject(new SignerError("AUDIT_UNAVAILABLE", "the audit store cannot be written: closed"));
    if (this.queue.length >= this.maxQueue) return Promise.reject(new SignerError("AUDIT_UNAVAILABLE", "the audit database is too far behind: too many records wait"));
    const seq = this.assigned.sequence + 1;
    const time = new Date();
    let line: string;
    try {
      line = serializeRecord(seq, this.assigned.hash, time, record);
    } catch (e) {
      return Promise.reject(new SignerError("INTERNAL", "the audit record cannot be serialized", { cause: e }));
    }
    const receipt: AuditReceipt = { sequence: seq, lineHash: hashLine(line) };
    this.assigned = { sequence: seq, hash: receipt.lineHash };
    return new Promise<AuditReceipt>((resolve, reject) => {
      const columns: Columns = {
        method: record.method,
        identity: record.identity,
        keyId: record.keyId ?? null,
        artifactDigest: artifactDigestOf(record as AuditLine)?.toLowerCase() ?? null,
        result: record.result,
      };
      this.queue.push({ seq, line, time, columns, receipt, resolve, reject });
      this.flushing ??= this.flush();
    });
  }

  /** Stores a signed checkpoint of this replica's chain (see checkpoints.ts). */
  async appendCheckpoint(cp: { seq: number; hash: string; time: string; keyId: string; statement: string; signature: string }): Promise<void> {
    const client = this.client;
    if (!client || this.failure) throw this.failure ?? new SignerError("AUDIT_UNAVAILABLE", "the audit store cannot be written: closed");
    await client.query("INSERT INTO audit_checkpoints (replica_id, seq, hash, time, key_id, statement, signature) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING", [
      this.replicaId,
      cp.seq,
      cp.hash,
      cp.time,
      cp.keyId,
      cp.statement,
      cp.signature,
    ]);
  }

  /** After a failure: reconnects, takes the lock again and resyncs the chain from the database. */
  recover(): Promise<void> {
    this.recovering ??= this.recoverOnce().finally(() => {
      this.recovering = undefined;
    });
    return this.recovering;
  }

  private async recoverOnce(): Promise<void> {
    if (this.closed) throw new SignerError("AUDIT_UNAVAILABLE", "the audit store cannot be written: closed");
    await this.flushing;
    if (!this.failure) return;
    this.dropClient();
    try {
      // Another process may hold this replica id now (a replacement): then this one stays failed.
      await this.connect(0, false);
    } catch (e) {
      this.dropClient();
      throw asUnavailable(e, "recovered");
    }
    if (this.closed) {
      this.dropClient();
      throw new SignerError("AUDIT_UNAVAILABLE", "the audit store cannot be written: closed");
    }
    this.failure = undefined;
  }

  /** Commits what is queued (those appends resolve), then disconnects, which releases the lock. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.gate.close();
    if (this.idleTimer) clearInterval(this.idleTimer);
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    while (this.flushing) await this.flushing;
    const client = this.client;
    this.client = undefined;
    // A hung server must not hold up a shutdown: the connection goes with the process anyway.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([client?.end().catch(() => undefined), new Promise((res) => (timer = setTimeout(res, this.timeoutMs)))]);
    clearTimeout(timer);
  }

  private async connect(lockWaitMs: number, migrate: boolean): Promise<void> {
    const client = new pg.Client({
      ...this.o.connection,
      connectionTimeoutMillis: this.timeoutMs,
      query_timeout: this.timeoutMs,
      statement_timeout: this.timeoutMs,
      application_name: "hsm-signer-audit",
      keepAlive: true,
    });
    // A connection lost while idle is reported here; without a listener it would crash the process.
    client.on("error", (e) => {
      if (this.client === client) this.fail(e, []);
    });
    this.client = client;
    await client.connect();
    // A record must be durable once its commit returns: never an asynchronous commit, which a
    // database's or role's default (synchronous_commit = off) would make, and a crash of the
    // server then lose. The durable levels it may name (local, remote_write, on, remote_apply) stay.
    await client.query("SELECT set_config('synchronous_commit', 'on', false) WHERE current_setting('synchronous_commit') = 'off'");
    if (migrate) await migrateSchema(client);
    const v = await schemaVersion(client);
    if (v !== AUDIT_SCHEMA_VERSION) {
      throw new SignerError("CONFIG_INVALID", `the audit database has schema version ${v}, this hsm-signer needs ${AUDIT_SCHEMA_VERSION}: run hsm-signer audit migrate as the schema owner`);
    }
    const key = replicaLockKey(this.replicaId);
    let deadline = Date.now() + lockWaitMs;
    let ended = false;
    for (;;) {
      const r = await client.query<{ ok: boolean; pid: number }>("SELECT pg_try_advisory_lock($1::bigint) AS ok, pg_backend_pid() AS pid", [key]);
      if (r.rows[0]?.ok) {
        this.session = r.rows[0].pid;
        break;
      }
      // The holder may be this store's own session, of the connection it lost: after a network
      // partition its close never reached the server, which keeps the session (and the lock)
      // until TCP keepalive notices, two hours by default. It is ours, and no longer used: it is
      // ended (its open transaction, if any, rolled back), and the lock taken once it is gone.
      if (!ended && this.session !== undefined && (await this.endLostSession(client, key, this.session))) {
        ended = true;
        deadline = Math.max(deadline, Date.now() + this.timeoutMs);
      }
      if (Date.now() >= deadline) throw new SignerError("AUDIT_UNAVAILABLE", `another process writes the audit chain of replica "${this.replicaId}"`);
      await new Promise((res) => setTimeout(res, Math.min(ended ? 50 : 500, Math.max(1, deadline - Date.now()))));
    }
    // The registry row comes with the first record (writeBatch), not before: a registered replica
    // without records is what a removed chain looks like to `audit verify`.
    const registered = await client.query("SELECT 1 FROM audit_replicas WHERE replica_id = $1", [this.replicaId]);
    this.registered = (registered.rowCount ?? 0) > 0;
    const tail = await client.query<{ seq: string; line: string }>("SELECT seq::text AS seq, line FROM audit_records WHERE replica_id = $1 ORDER BY audit_records.seq DESC LIMIT 1", [this.replicaId]);
    const row = tail.rows[0];
    const stored = row ? { sequence: Number(row.seq), hash: hashLine(row.line) } : { sequence: 0, hash: GENESIS_HASH };
    const mine = this.durable;
    if (mine && stored.sequence < mine.sequence) {
      // The database lacks records this process committed, whose calls were answered (a failover
      // to a standby that had not received them, a restore). Continuing from its end would give
      // their sequence numbers (their callers' receipts) to other records and hide the loss: the
      // chain goes on from the last committed record instead, so the missing ones are a gap that
      // `audit verify` reports, and the AuditLog.Recovered record names them.
      this.missing = { fromSeq: stored.sequence + 1, toSeq: mine.sequence };
      this.assigned = mine;
    } else this.assigned = stored;
    this.durableSequence = this.assigned.sequence;
    this.durable = this.assigned;
    this.lastActivity = Date.now();
  }

  /**
   * Ends the server session `pid` if it is the one holding this replica's lock (advisory lock
   * `key`: pg_locks shows a bigint key as classid, the high 32 bits, and objid, the low ones);
   * whether it did. The service's role may end its own sessions.
   */
  private async endLostSession(client: pg.Client, key: string, pid: number): Promise<boolean> {
    const k = BigInt.asUintN(64, BigInt(key));
    const r = await client.query<{ ended: boolean }>(
      "SELECT pg_terminate_backend(pid) AS ended FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid = $1 AND classid::bigint = $2 AND objid::bigint = $3 AND objsubid = 1",
      [pid, String(k >> 32n), String(k & 0xffffffffn)],
    );
    return r.rows[0]?.ended === true;
  }

  private startIdleCheck(): void {
    const every = this.o.idleCheckMs ?? DEFAULT_IDLE_CHECK_MS;
    if (!(every > 0)) return;
    this.idleTimer = setInterval(() => void this.checkIdle(every), every);
    this.idleTimer.unref();
  }

  /**
   * A connection that died while idle says nothing until the next statement: the server went away
   * without a FIN (a partition, a failover behind a virtual IP), and the TCP keepalive takes hours.
   * SELECT 1, bounded by timeoutMs, finds it; the store then fails, as a failed write would, and
   * recovers by itself (retry).
   */
  private async checkIdle(every: number): Promise<void> {
    const client = this.client;
    if (!client || this.closed || this.failure || this.flushing || this.checking || Date.now() - this.lastActivity < every) return;
    this.checking = true;
    try {
      await client.query("SELECT 1");
      this.lastActivity = Date.now();
    } catch (e) {
      if (this.client === client && !this.closed) this.fail(e, []);
    } finally {
      this.checking = false;
    }
  }

  /** Forgets the connection without waiting for it: a hung server must not hang us too. */
  private dropClient(): void {
    const client = this.client;
    this.client = undefined;
    if (client) void client.end().catch(() => undefined);
  }

  private async flush(): Promise<void> {
    // Appends made in the same turn of the event loop join the first batch.
    await Promise.resolve();
    try {
      while (this.queue.length > 0 && this.failure === undefined) {
        await this.gate.gather();
        await this.writeBatch(this.queue.splice(0, MAX_BATCH));
      }
    } finally {
      this.flushing = undefined;
    }
  }

  /** One INSERT of many rows: one transaction, all or nothing. */
  private async writeBatch(batch: Pending[]): Promise<void> {
    const client = this.client;
    const started = process.hrtime.bigint();
    try {
      if (!client) throw new Error("not connected");
      const col = <T>(f: (p: Pending) => T): T[] => batch.map(f);
      // The first batch of a new replica registers it in the same statement (one transaction).
      const register = this.registered ? "" : "WITH registered AS (INSERT INTO audit_replicas (replica_id) VALUES ($1) ON CONFLICT DO NOTHING) ";
      await client.query({
        // A named statement: PostgreSQL parses and plans it once per connection, not per batch
        // (at RSA-3072 rates most batches hold one record, and planning was much of their cost).
        name: this.registered ? "hsm-signer-audit-append" : "hsm-signer-audit-append-register",
        text: `${register}INSERT INTO audit_records (replica_id, seq, time, line, method, identity, key_id, artifact_digest, result)
         SELECT $1, * FROM unnest($2::bigint[], $3::timestamptz[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[])`,
        values: [
          this.replicaId,
          col((p) => p.seq),
          col((p) => p.time.toISOString()),
          col((p) => p.line),
          col((p) => p.columns.method),
          col((p) => p.columns.identity),
          col((p) => p.columns.keyId),
          col((p) => p.columns.artifactDigest),
          col((p) => p.columns.result),
        ],
      });
    } catch (e) {
      this.fail(e, batch);
      return;
    }
    const last = batch[batch.length - 1]!;
    this.lastActivity = Date.now();
    this.durableSequence = last.seq;
    this.durable = { sequence: last.seq, hash: last.receipt.lineHash };
    this.registered = true;
    try {
      this.o.onCommit?.(Number(process.hrtime.bigint() - started) / 1e9, batch.length);
    } catch {
      // A metrics hook must never decide whether the audit works.
    }
    for (const p of batch) p.resolve(p.receipt);
  }

  private fail(e: unknown, pending: Pending[]): void {
    const first = this.failure === undefined;
    this.failure ??= new SignerError("AUDIT_UNAVAILABLE", `the audit database cannot be written: ${errorText(e)}`, { cause: e });
    for (const p of pending) p.reject(this.failure);
    for (const p of this.queue.splice(0, this.queue.length)) p.reject(this.failure);
    // The connection's state is unknown after a failure (a timed-out COMMIT may have committed):
    // it goes, and recovery reads where the chain really ends.
    this.dropClient();
    if (first && !this.retrying) this.scheduleRecovery();
  }

  private scheduleRecovery(): void {
    const r = this.o.retry;
    if (!r || this.closed || this.retryTimer) return;
    const ms = retryDelayMs(r, this.retryAttempts);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      void this.retryOnce(r, ms);
    }, ms);
    this.retryTimer.unref();
  }

  private async retryOnce(r: NonNullable<PostgresAuditOptions["retry"]>, waitedMs: number): Promise<void> {
    const failure = this.failure;
    if (!failure || this.closed) return;
    this.retrying = true;
    try {
      await this.recover();
      const missing = this.missing;
      await this.append(
        missing
          ? { ...recoveredRecord(failure, waitedMs), missingRecords: { ...missing, reason: "committed and answered, but not in the database reconnected to" } }
          : recoveredRecord(failure, waitedMs),
      );
      if (this.missing === missing) this.missing = undefined;
      this.retryAttempts = 0;
      if (!this.closed) r.onRecovered?.();
    } catch (e) {
      if (this.closed) return;
      this.retryAttempts++;
      r.onFailed?.(asUnavailable(e, "recovered"), retryDelayMs(r, this.retryAttempts));
      this.scheduleRecovery();
    } finally {
      this.retrying = false;
    }
  }
}

function errorText(e: unknown): string {
  const code = (e as { code?: unknown } | undefined)?.code;
  const msg = e instanceof Error ? e.message : "unknown error";
  return typeof code === "string" ? `${code} ${msg}` : msg;
}

function asUnavailable(e: unknown, what: "opened" | "recovered"): SignerError {
  if (e instanceof SignerError) return e;
  return new SignerError("AUDIT_UNAVAILABLE", `the audit database cannot be ${what}: ${errorText(e)}`, { cause: e });
}
