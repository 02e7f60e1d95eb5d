import type { SignerError } from "../errors/index.js";
import type { HashAlgorithm, KeySpec, KeySpecInfo } from "./key-spec.js";
import type { NotaryArtifact, NotaryPayloadKind } from "./notary-payload.js";

/** What a caller may learn about a key's leaf certificate. */
export interface CertificateSummary {
  subject: string;
  issuer: string;
  notBefore: Date;
  notAfter: Date;
  /** Lowercase hex SHA-256 of the DER. */
  sha256: string;
  isCa: boolean;
}

/** The span in which a chain's issuers are all valid, and the certificates that bound it (subjects). */
export interface IssuersValidity {
  from: Date;
  fromSubject: string;
  until: Date;
  untilSubject: string;
}

export interface KeyRecord {
  keyId: string;
  version: number;
  spec: KeySpec;
  info: KeySpecInfo;
  /** DER certificates, leaf first, root last; empty when the key has no certificate. */
  chain: Buffer[];
  certificate: CertificateSummary | undefined;
  /** When every CA certificate of `chain` is valid (absent when the chain is the leaf alone). */
  issuersValidity?: IssuersValidity;
  /** Why this key cannot sign artifacts (no certificate, incomplete chain, CA key...), if it cannot. */
  unusableReason: string | undefined;
  /** Set when a custodian disabled the key or this version: signing is refused with this message. */
  disabledReason: string | undefined;
  /** True for the version that signs when the caller names none (the newest enabled, usable one). */
  current: boolean;
}

/** The port the signing core needs from a key store (the HSM adapter provides one). */
export interface KeyStore {
  /** The key, or a KEY_NOT_FOUND SignerError. */
  getKey(keyId: string, version?: number): Promise<KeyRecord>;
  listKeys(): Promise<KeyRecord[]>;
  /** Signs a digest made with the key spec's hash; returns the raw signature (PSS, or ECDSA r||s). */
  signDigest(key: KeyRecord, hash: HashAlgorithm, digest: Buffer, deadline?: number): Promise<Buffer>;
}

/**
 * Who is calling, as far as the core cares: a name to put in messages. The server edge's caller
 * identity (mTLS, JWT, anonymous) carries more; the core passes it to the Authorizer untouched.
 */
export interface Caller {
  readonly id: string;
}

/**
 * The Signer calls the core serves; an Authorizer decides each of them per caller and key, and a
 * policy rule names them. The wire contract's SignerDefinition has the same methods
 * (test/unit/wire-contract.test.ts checks it).
 */
export const SIGNER_METHODS = ["Sign", "DescribeKey", "GetCertificateChain", "ListKeys"] as const;
export type SignerMethod = (typeof SIGNER_METHODS)[number];

/** An Authorizer's answer for one call. */
export interface Authorization {
  decision: "allow" | "deny";
  /** The policy rule that decided, when one did (it is recorded on a rate-limited call too). */
  rule?: string | undefined;
  /** When allowed: whether a version other than the key's current one may be used. */
  allowOldVersions: boolean;
  /** Set when the call is refused (PERMISSION_DENIED, RATE_LIMITED): the error the caller gets. */
  refusal?: SignerError | undefined;
}

/** The port that decides who may do what, deny by default (auth/ and the server edge provide one). */
export interface Authorizer<C extends Caller = Caller> {
  authorize(caller: C, method: SignerMethod, keyId: string | undefined): Authorization;
  /** Whether a key may be shown to the caller (ListKeys lists only those). */
  mayUseKey(caller: C, keyId: string): boolean;
}

/** What a payload is: a Notary signing input (JWS or COSE), other bytes, or a digest the caller made. */
export type PayloadKind = NotaryPayloadKind | "digest";

/**
 * What the core learns of a call that the audit records. The core fills it as it learns each fact,
 * so that a call that fails or ends early (deadline, cancellation) is recorded with what was
 * known by then; nothing else writes it, the edge only copies it into its audit event.
 */
export interface AuditFacts {
  /** The key id as asked for (cut short when very long: the audit line stays small). */
  keyId?: string;
  /** The version asked for, then the version the key store resolved. */
  keyVersion?: number;
  /** "sha256:<hex>" of the payload, or "<hash>:<hex>" of the digest the caller sent. */
  payloadDigest?: string;
  payloadKind?: PayloadKind;
  artifact?: NotaryArtifact;
  decision?: "allow" | "deny";
  rule?: string;
}

/** One request as the audit sees it. Never put payload bytes, tokens or PINs here. */
export interface AuditEvent extends Omit<AuditFacts, "decision"> {
  requestId: string;
  peer: string;
  identity: string;
  method: string;
  decision: "allow" | "deny" | "none";
  /** "OK" or an error code. */
  result: string;
  latencyMs: number;
  [k: string]: unknown;
}

/** Proof handed to the caller: which line records its request, and that line's hash. */
export interface AuditReceipt {
  sequence: number;
  /** Lowercase hex SHA-256 of the line's UTF-8 text without the trailing newline. */
  lineHash: string;
}

/** The port every answered call goes through: a durable append that yields a receipt (audit/ provides one). */
export interface AuditSink {
  append(event: AuditEvent): Promise<AuditReceipt>;
  /**
   * A call has started and will append its one line: a hint that lets a store's group commit
   * wait a moment for that line rather than make it durable alone (AuditLog, commitDelayMs).
   */
  expect?(): void;
}
