import {
  AdminGetCertificateChainRequest,
  AdminGetCertificateChainResponse,
  CreateCsrRequest,
  CreateCsrResponse,
  CreateTestChainRequest,
  CreateTestChainResponse,
  DestroyKeyVersionRequest,
  DestroyKeyVersionResponse,
  GenerateKeyRequest,
  GetInventoryRequest,
  GetInventoryResponse,
  ImportCertificateChainRequest,
  ImportCertificateChainResponse,
  KeyAdminDefinition,
  KeyVersionResponse,
  ListSlotsRequest,
  ListSlotsResponse,
  RotateKeyRequest,
  SetKeyStateRequest,
} from "../gen/hsm_signer/v1/key_admin.js";
import { callGenerated, type GeneratedMethod } from "./generated-method.js";
import { GrpcHttp2Channel, type ChannelOptions } from "./grpc-http2-client.js";

// The messages of hsm_signer.v1.KeyAdmin are the generated ones (src/gen/, from proto/): the
// command line and the server read the same contract.
export type {
  AdminGetCertificateChainRequest,
  AdminGetCertificateChainResponse,
  CreateCsrRequest,
  CreateCsrResponse,
  CreateTestChainRequest,
  CreateTestChainResponse,
  DestroyKeyVersionRequest,
  DestroyKeyVersionResponse,
  GenerateKeyRequest,
  GetInventoryRequest,
  GetInventoryResponse,
  ImportCertificateChainRequest,
  ImportCertificateChainResponse,
  InventoryKey,
  KeyVersionInfo,
  KeyVersionResponse,
  ListSlotsResponse,
  RotateKeyRequest,
  SetKeyStateRequest,
  SlotInfo,
  TokenDetails,
} from "../gen/hsm_signer/v1/key_admin.js";

export interface KeyAdminClientOptions {
  /** host:port of the KeyAdmin listener. */
  endpoint: string;
  /** PEM CA bundle for the server certificate; undefined: the system roots. */
  ca: Buffer | undefined;
  /** Client certificate and key (PEM): KeyAdmin is mTLS only. */
  cert: Buffer;
  key: Buffer;
  /** TLS name to expect when it differs from the endpoint's host. */
  serverName: string | undefined;
  /** Budget of the whole session: every call made through this client ends by construction time + timeoutMs. */
  timeoutMs: number;
  /** Sent with every call (for example a bearer token as `authorization`). */
  metadata?: Record<string, string>;
  userAgent?: string;
}

/**
 * A client of hsm_signer.v1.KeyAdmin over the shared gRPC channel (node:http2, the
 * `hsm-signer-error-code` trailer decoded into GrpcCallError.errorCode). No call is retried: a
 * key operation whose answer was lost may have happened, and a repeat would be refused or do it
 * twice. close() it when done.
 */
export class KeyAdminClient {
  private readonly channel: GrpcHttp2Channel;
  /** One deadline for every call: the timeout bounds the whole session, not each call. */
  private readonly deadline: number;

  constructor(private readonly options: KeyAdminClientOptions) {
    const channelOptions: ChannelOptions = { endpoint: options.endpoint, cert: options.cert, key: options.key, userAgent: options.userAgent ?? "hsm-signer-admin" };
    if (options.ca) channelOptions.ca = options.ca;
    if (options.serverName) channelOptions.serverName = options.serverName;
    this.channel = new GrpcHttp2Channel(channelOptions);
    this.deadline = Date.now() + options.timeoutMs;
  }

  get endpoint(): string {
    return this.options.endpoint;
  }

  close(): void {
    this.channel.close();
  }

  listSlots(r: ListSlotsRequest = {}): Promise<ListSlotsResponse> {
    return this.call(KeyAdminDefinition.methods.listSlots, r);
  }
  generateKey(r: GenerateKeyRequest): Promise<KeyVersionResponse> {
    return this.call(KeyAdminDefinition.methods.generateKey, r);
  }
  rotateKey(r: RotateKeyRequest): Promise<KeyVersionResponse> {
    return this.call(KeyAdminDefinition.methods.rotateKey, r);
  }
  createCsr(r: CreateCsrRequest): Promise<CreateCsrResponse> {
    return this.call(KeyAdminDefinition.methods.createCsr, r);
  }
  importCertificateChain(r: ImportCertificateChainRequest): Promise<ImportCertificateChainResponse> {
    return this.call(KeyAdminDefinition.methods.importCertificateChain, r);
  }
  createTestChain(r: CreateTestChainRequest): Promise<CreateTestChainResponse> {
    return this.call(KeyAdminDefinition.methods.createTestChain, r);
  }
  setKeyState(r: SetKeyStateRequest): Promise<KeyVersionResponse> {
    return this.call(KeyAdminDefinition.methods.setKeyState, r);
  }
  destroyKeyVersion(r: DestroyKeyVersionRequest): Promise<DestroyKeyVersionResponse> {
    return this.call(KeyAdminDefinition.methods.destroyKeyVersion, r);
  }
  getInventory(r: GetInventoryRequest): Promise<GetInventoryResponse> {
    return this.call(KeyAdminDefinition.methods.getInventory, r);
  }
  getCertificateChain(r: AdminGetCertificateChainRequest): Promise<AdminGetCertificateChainResponse> {
    return this.call(KeyAdminDefinition.methods.getCertificateChain, r);
  }

  private call<Req, Res>(method: GeneratedMethod<Req, Res>, request: Req): Promise<Res> {
    return callGenerated(this.channel, KeyAdminDefinition, method, request, { deadline: this.deadline, ...(this.options.metadata ? { metadata: this.options.metadata } : {}) });
  }
}
