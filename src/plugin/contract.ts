/** Notary Project plugin contract 1.0 (notation-plugin-protocol.md §2, §4). */
export const PLUGIN_NAME = "hsm-signer";
export const CONTRACT_VERSION = "1.0";
export const CAPABILITY_RAW = "SIGNATURE_GENERATOR.RAW";

declare const __PLUGIN_VERSION__: string | undefined;
export const PLUGIN_VERSION: string = typeof __PLUGIN_VERSION__ === "string" ? __PLUGIN_VERSION__ : "0.0.0-dev";

export type PluginErrorCode = "VALIDATION_ERROR" | "UNSUPPORTED_CONTRACT_VERSION" | "ACCESS_DENIED" | "TIMEOUT" | "THROTTLED" | "ERROR";

export class PluginError extends Error {
  constructor(
    readonly errorCode: PluginErrorCode,
    message: string,
  ) {
    super(message);
    this.name = "PluginError";
  }
}
