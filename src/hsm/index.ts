export { loadModule, finalizeModule, findSlot, listTokens, initToken, type TokenSelector, type TokenInfo } from "./hsm-token.js";
export { SessionPool, DEFAULT_POOL_SIZE, type SessionPoolOptions, type SessionPoolStats } from "./session-pool.js";
export { Pkcs11KeyStore, DEFAULT_KEY_REFRESH_MS, type Pkcs11KeyStoreOptions } from "./pkcs11-key-store.js";
export type { KeyView, VersionView } from "../signing/key-versions.js";
export { KeyCustody, type SlotDetails, type TokenDetails } from "./key-custody.js";
export { generateKeyPair, storeCertificate, privateKeyExists } from "./key-factory.js";
export { createTestChain, TEST_CHAIN_DEFAULTS, type TestChainParams, type TestChainResult } from "./test-chain.js";
export { openHsm, type HsmOptions, type Hsm } from "./open-hsm.js";
export { DEFAULT_ANSWER_HOLD_MS, MAX_ANSWER_HOLD_MS } from "./sign-threads.js";
