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

/** The longest errorMessage the plugin writes; notation shows it to a person. */
export const MAX_ERROR_MESSAGE_LENGTH = 1000;

/** An errorMessage within MAX_ERROR_MESSAGE_LENGTH: a longer one is cut, saying how much was cut. */
export function boundMessage(message: string): string {
  if (message.length <= MAX_ERROR_MESSAGE_LENGTH) return message;
  const note = ` ... (${message.length} characters, cut to ${MAX_ERROR_MESSAGE_LENGTH})`;
  return message.slice(0, MAX_ERROR_MESSAGE_LENGTH - note.length) + note;
}

/** A request value as quoted in an error message: a long one is shortened. */
export function shown(v: string, max = 64): string {
  return v.length <= max ? v : `${v.slice(0, max)}... (${v.length} characters)`;
}

/** The one JSON error object of a failed command (protocol §4). */
export function errorJson(errorCode: string, message: string): string {
  return JSON.stringify({ errorCode, errorMessage: boundMessage(message) });
}
