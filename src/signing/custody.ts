import type { KeySpec } from "./key-spec.js";
import type { KeyRecord } from "./ports.js";

/*
 * The custody port: what the KeyAdmin service (server/key-admin-server.ts) needs of the key
 * custody that hsm/ implements (KeyCustody, Pkcs11KeyStore) and bin/serve.ts wires. The server
 * edge never imports hsm/; tests of the service can give it any object of these shapes.
 */

export interface TokenDetails {
  label: string;
  serialNumber: string;
  manufacturer: string;
  model: string;
  flags: string[];
  mechanisms: string[];
  freePublicMemory: number;
  totalPublicMemory: number;
  freePrivateMemory: number;
  totalPrivateMemory: number;
  managed: boolean;
}

export interface SlotDetails {
  slotId: string;
  description: string;
  manufacturer: string;
  tokenPresent: boolean;
  token: TokenDetails | undefined;
}

export interface TestChainParams {
  keyId: string;
  keySpec: KeySpec;
  /** Label of the root CA key; default `${keyId}-root-ca`. */
  rootKeyId?: string;
  rootKeySpec?: KeySpec;
  organization?: string;
  state?: string;
  country?: string;
  validityDays?: number;
}

export interface TestChainResult {
  chain: Buffer[];
  root: Buffer;
  created: { rootKey: boolean; rootCertificate: boolean; key: boolean; leafCertificate: boolean };
}

/** One version of a key as a custodian sees it. */
export interface CustodyVersion {
  record: KeyRecord;
  /** CKA_ID (or the store's own object id), lowercase hex. */
  idHex: string;
  state: "enabled" | "disabled" | "destroyed";
  created: string | undefined;
  disabled: { reason: string } | undefined;
  hasSigned: boolean;
}

/** A key id with all its versions (ascending), its custodian state and its current version. */
export interface CustodyKey {
  keyId: string;
  state: { disabled?: { reason: string } | undefined } | undefined;
  versions: CustodyVersion[];
  current: CustodyVersion | undefined;
}

/** Changes a custodian makes: each runs to its end and says what it did. */
export interface KeyCustodian {
  listSlots(): SlotDetails[];
  generateKey(keyId: string, spec: KeySpec, tokenLabel?: string): Promise<CustodyKey>;
  rotateKey(keyId: string, spec?: KeySpec): Promise<{ view: CustodyKey; version: number }>;
  createCsr(keyId: string, version: number, subject: string): Promise<{ pem: string; version: number }>;
  importChain(keyId: string, version: number, inputs: Buffer[], strictOrder: boolean): Promise<{ version: number; chain: Buffer[]; stored: number }>;
  createTestChain(p: TestChainParams): Promise<TestChainResult>;
  setState(keyId: string, version: number, enabled: boolean, reason: string): Promise<CustodyKey>;
  destroyVersion(keyId: string, version: number, o: { confirm: string; destroyCertificate: boolean; acknowledgeSigned: boolean }): Promise<{ view: CustodyKey; destroyed: string[] }>;
}

/** What a custodian reads: the keys with every version. */
export interface KeyInventory {
  getKey(keyId: string, version?: number): Promise<KeyRecord>;
  view(keyId: string): Promise<CustodyKey>;
  inventory(): CustodyKey[];
  refreshIfChanged(): Promise<void>;
}
