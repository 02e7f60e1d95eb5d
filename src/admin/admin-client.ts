import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import type { TokenDetails } from "../signing/custody.js";

/** proto/ at the project root, three levels above dist/src/admin/ (as PROTO_DIR in server/grpc-common.ts). */
const KEY_ADMIN_PROTO = resolve(dirname(fileURLToPath(import.meta.url)), "../../../proto/hsm_signer/v1/key_admin.proto");

// Messages of hsm_signer.v1.KeyAdmin as @grpc/proto-loader hands them over (keepCase false,
// longs Number, enums String, defaults true): camelCase fields, bytes as Buffer, unset messages null.

/** The token of a slot, as the service describes it (the same shape on both sides). */
export type { TokenDetails };

export interface SlotInfo {
  slotId: number;
  description: string;
  manufacturer: string;
  tokenPresent: boolean;
  token: TokenDetails | null;
}

export interface ListSlotsResponse {
  slots: SlotInfo[];
}

export interface KeyVersionInfo {
  version: number;
  state: string;
  keySpec: string;
  current: boolean;
  objectId: string;
  certificateSubject: string;
  certificateIssuer: string;
  notBefore: string;
  notAfter: string;
  daysUntilExpiry: number;
  expiringSoon: boolean;
  expired: boolean;
  chainLength: number;
  problem: string;
  hasSigned: boolean;
  created: string;
  role: string;
  disabledReason: string;
}

export interface InventoryKey {
  keyId: string;
  state: string;
  currentVersion: number;
  versions: KeyVersionInfo[];
  disabledReason: string;
}

export interface KeyVersionResponse {
  key: InventoryKey | null;
  keyVersion: number;
}

export interface CreateCsrResponse {
  csrPem: string;
  keyVersion: number;
}

export interface ImportCertificateChainResponse {
  keyId: string;
  keyVersion: number;
  certificateChain: Buffer[];
  stored: number;
}

export interface CreateTestChainResponse {
  certificateChain: Buffer[];
  created: string[];
  keyVersion: number;
}

export interface DestroyKeyVersionResponse {
  key: InventoryKey | null;
  destroyed: string[];
}

export interface GetInventoryResponse {
  keys: InventoryKey[];
}

export interface GetCertificateChainResponse {
  keyId: string;
  keyVersion: number;
  certificateChain: Buffer[];
  leafSubject: string;
}

export interface GenerateKeyRequest {
  tokenLabel?: string;
  keyId: string;
  keySpec: string;
}
export interface RotateKeyRequest {
  keyId: string;
  keySpec?: string;
}
export interface CreateCsrRequest {
  keyId: string;
  keyVersion?: number;
  subject: string;
}
export interface ImportCertificateChainRequest {
  keyId: string;
  keyVersion?: number;
  certificates: Buffer[];
  strictOrder?: boolean;
}
export interface CreateTestChainRequest {
  keyId: string;
  keySpec: string;
  rootKeyId?: string;
  rootKeySpec?: string;
  organization?: string;
  state?: string;
  country?: string;
  validityDays?: number;
}
export interface SetKeyStateRequest {
  keyId: string;
  keyVersion?: number;
  enabled: boolean;
  reason?: string;
}
export interface DestroyKeyVersionRequest {
  keyId: string;
  keyVersion: number;
  confirm: string;
  destroyCertificate?: boolean;
  acknowledgeSigned?: boolean;
}
export interface GetInventoryRequest {
  keyId?: string;
  expiryWarningDays?: number;
}
export interface GetCertificateChainRequest {
  keyId: string;
  keyVersion?: number;
}

export interface AdminClientOptions {
  /** host:port of the KeyAdmin listener. */
  endpoint: string;
  /** PEM CA bundle for the server certificate; undefined: the system roots. */
  ca: Buffer | undefined;
  /** Client certificate and key (PEM): KeyAdmin is mTLS only. */
  cert: Buffer;
  key: Buffer;
  /** TLS name to expect when it differs from the endpoint's host. */
  serverName: string | undefined;
  /** Budget of the whole command: every call made through this client ends by construction time + timeoutMs. */
  timeoutMs: number;
}

/**
 * A KeyAdmin call that failed: the server's status and message, or the channel's own failure
 * (unreachable endpoint, TLS, deadline). The message is what the command line prints.
 */
export class KeyAdminCallError extends Error {
  readonly status: grpc.status;
  constructor(status: grpc.status, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "KeyAdminCallError";
    this.status = status;
  }
}

/** grpc-js's own words when no transport could be had (load-balancer-pick-first.js, resolver-dns.js). */
const CHANNEL_FAILURE = /No connection established|Name resolution failed|Connection dropped|ECONNREFUSED|ECONNRESET|ENOTFOUND|EHOSTUNREACH|ETIMEDOUT/;

/** OpenSSL's words when KeyAdmin's certificate does not chain to a trusted CA. */
const UNTRUSTED_SERVER = /self[- ]signed certificate|unable to verify the first certificate|unable to get local issuer certificate|unable to get issuer certificate/i;

/** Where to give KeyAdmin's CA: the flag and the variable (admin-args.ts reads both). */
const CA_HINT = "--ca FILE or HSM_SIGNER_ADMIN_CA";

/**
 * Turns a grpc-js error into what a custodian reads: the server's message as-is, the endpoint
 * when the channel failed, and where to give the CA when KeyAdmin's certificate is not trusted.
 */
export function describeCallError(e: grpc.ServiceError, endpoint: string, timeoutMs: number, caGiven = true): KeyAdminCallError {
  // grpc-js ends channel failures with an often empty "Resolution note: ".
  const details = (e.details || e.message).replace(/\.?\s*Resolution note:\s*$/, "");
  if (e.code === grpc.status.UNAVAILABLE && UNTRUSTED_SERVER.test(details)) {
    const hint = caGiven
      ? `the CA bundle given (${CA_HINT}) does not hold the CA that issued KeyAdmin's certificate, or the server does not send its intermediates`
      : `KeyAdmin's certificate is checked against the system roots; give the CA that issued it with ${CA_HINT}`;
    return new KeyAdminCallError(e.code, `cannot reach KeyAdmin at ${endpoint}: ${details} (${hint})`, { cause: e });
  }
  if (e.code === grpc.status.UNAVAILABLE && CHANNEL_FAILURE.test(details)) {
    return new KeyAdminCallError(e.code, `cannot reach KeyAdmin at ${endpoint}: ${details}`, { cause: e });
  }
  if (e.code === grpc.status.DEADLINE_EXCEEDED) {
    return new KeyAdminCallError(e.code, `KeyAdmin at ${endpoint} did not answer within ${timeoutMs / 1000}s (--timeout, the budget of the whole command): ${details}`, { cause: e });
  }
  if (e.code === grpc.status.UNAVAILABLE) {
    return new KeyAdminCallError(e.code, `KeyAdmin at ${endpoint} is unavailable: ${details}`, { cause: e });
  }
  return new KeyAdminCallError(e.code, details, { cause: e });
}

type UnaryMethod = (request: unknown, options: grpc.CallOptions, callback: (err: grpc.ServiceError | null, response?: unknown) => void) => grpc.ClientUnaryCall;

let serviceConstructor: grpc.ServiceClientConstructor | undefined;

function keyAdminConstructor(): grpc.ServiceClientConstructor {
  if (!serviceConstructor) {
    const def = protoLoader.loadSync(KEY_ADMIN_PROTO, { keepCase: false, longs: Number, enums: String, defaults: true, oneofs: true });
    const v1 = (grpc.loadPackageDefinition(def).hsm_signer as grpc.GrpcObject).v1 as grpc.GrpcObject;
    serviceConstructor = v1.KeyAdmin as grpc.ServiceClientConstructor;
  }
  return serviceConstructor;
}

/** A client of hsm_signer.v1.KeyAdmin over mTLS; close() it when done so the process can exit. */
export class KeyAdminClient {
  private readonly client: grpc.Client;
  /** One deadline for every call: --timeout bounds the command, not each of its calls. */
  private readonly deadline: number;

  constructor(private readonly options: AdminClientOptions) {
    this.deadline = Date.now() + options.timeoutMs;
    const Ctor = keyAdminConstructor();
    const channelOptions: grpc.ChannelOptions = {};
    if (options.serverName) {
      channelOptions["grpc.ssl_target_name_override"] = options.serverName;
      channelOptions["grpc.default_authority"] = options.serverName;
    }
    this.client = new Ctor(options.endpoint, grpc.credentials.createSsl(options.ca ?? null, options.key, options.cert), channelOptions);
  }

  get endpoint(): string {
    return this.options.endpoint;
  }

  close(): void {
    this.client.close();
  }

  listSlots(): Promise<ListSlotsResponse> {
    return this.call("ListSlots", {});
  }
  generateKey(r: GenerateKeyRequest): Promise<KeyVersionResponse> {
    return this.call("GenerateKey", r);
  }
  rotateKey(r: RotateKeyRequest): Promise<KeyVersionResponse> {
    return this.call("RotateKey", r);
  }
  createCsr(r: CreateCsrRequest): Promise<CreateCsrResponse> {
    return this.call("CreateCsr", r);
  }
  importCertificateChain(r: ImportCertificateChainRequest): Promise<ImportCertificateChainResponse> {
    return this.call("ImportCertificateChain", r);
  }
  createTestChain(r: CreateTestChainRequest): Promise<CreateTestChainResponse> {
    return this.call("CreateTestChain", r);
  }
  setKeyState(r: SetKeyStateRequest): Promise<KeyVersionResponse> {
    return this.call("SetKeyState", r);
  }
  destroyKeyVersion(r: DestroyKeyVersionRequest): Promise<DestroyKeyVersionResponse> {
    return this.call("DestroyKeyVersion", r);
  }
  getInventory(r: GetInventoryRequest): Promise<GetInventoryResponse> {
    return this.call("GetInventory", r);
  }
  getCertificateChain(r: GetCertificateChainRequest): Promise<GetCertificateChainResponse> {
    return this.call("GetCertificateChain", r);
  }

  private call<Res>(method: string, request: object): Promise<Res> {
    const fn = (this.client as unknown as Record<string, UnaryMethod>)[method];
    if (!fn) return Promise.reject(new Error(`KeyAdmin has no method ${method}`));
    return new Promise<Res>((resolvePromise, reject) => {
      fn.call(this.client, request, { deadline: this.deadline }, (err, response) => {
        if (err) reject(describeCallError(err, this.options.endpoint, this.options.timeoutMs, this.options.ca !== undefined));
        else resolvePromise(response as Res);
      });
    });
  }
}
