import { isHashAlgorithm, isKeySpec, keySpecInfo } from "../signing/key-spec.js";
import { CAPABILITY_RAW, CONTRACT_VERSION, PLUGIN_NAME, PLUGIN_VERSION, PluginError, shown } from "./contract.js";
import { parsePluginConfig } from "./plugin-config.js";

/** get-plugin-metadata: static, no network, no gRPC (§2.1). */
export function getPluginMetadata(): Record<string, unknown> {
  return {
    name: PLUGIN_NAME,
    description: "Signs with keys held in an HSM through the hsm-signer service",
    version: PLUGIN_VERSION,
    url: "https://github.com/hsm-signer/hsm-signer",
    supportedContractVersions: [CONTRACT_VERSION],
    capabilities: [CAPABILITY_RAW],
  };
}

function requireString(req: Record<string, unknown>, field: string): string {
  const v = req[field];
  if (typeof v !== "string" || v === "") throw new PluginError("VALIDATION_ERROR", `request field "${field}" is required and must be a non-empty string`);
  return v;
}

function checkContract(req: Record<string, unknown>): void {
  const v = req.contractVersion;
  if (typeof v !== "string" || v === "") throw new PluginError("VALIDATION_ERROR", 'request field "contractVersion" is required');
  if (v !== CONTRACT_VERSION) throw new PluginError("UNSUPPORTED_CONTRACT_VERSION", `contract version "${shown(v)}" is not supported; this plugin supports "${CONTRACT_VERSION}"`);
}

function pluginConfigOf(req: Record<string, unknown>): Record<string, unknown> | undefined {
  const c = req.pluginConfig;
  if (c === undefined || c === null) return undefined;
  if (typeof c !== "object" || Array.isArray(c)) throw new PluginError("VALIDATION_ERROR", 'request field "pluginConfig" must be an object');
  return c as Record<string, unknown>;
}

/** The service's key id limit (signing: MAX_KEY_ID_LENGTH), checked here so that no huge id goes out or comes back in a message. */
export const MAX_KEY_ID_LENGTH = 128;
/** The largest payload the service can be configured to accept (limits.maxPayloadBytes is at most 1 MiB). */
export const MAX_PAYLOAD_BYTES = 1024 * 1024;
/** Its length in padded base64. */
const MAX_PAYLOAD_BASE64 = 4 * Math.ceil(MAX_PAYLOAD_BYTES / 3);

function requireKeyId(req: Record<string, unknown>): string {
  const keyId = requireString(req, "keyId");
  if (keyId.length > MAX_KEY_ID_LENGTH) throw new PluginError("VALIDATION_ERROR", `request field "keyId" is ${keyId.length} characters long; key ids have at most ${MAX_KEY_ID_LENGTH}`);
  return keyId;
}

/** A-Z a-z 0-9 + / */
function isBase64Char(c: number): boolean {
  return (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || (c >= 48 && c <= 57) || c === 43 || c === 47;
}

/**
 * Padded standard base64, as Go's StdEncoding writes it, checked in one loop: a regular
 * expression with a repeated group overflows the stack on a few MiB of input.
 */
export function isPaddedBase64(s: string): boolean {
  if (s.length % 4 !== 0) return false;
  const pad = s.endsWith("==") ? 2 : s.endsWith("=") ? 1 : 0;
  for (let i = 0; i < s.length - pad; i++) if (!isBase64Char(s.charCodeAt(i))) return false;
  return true;
}

/** describe-key (§2.2): keyId echoed byte for byte, keySpec from the service. */
export async function describeKey(raw: Record<string, unknown>): Promise<Record<string, unknown>> {
  checkContract(raw);
  const keyId = requireKeyId(raw);
  const settings = parsePluginConfig(pluginConfigOf(raw));
  // A configured key_spec saves one TLS connection per signature; generate-signature still sends
  // it to the service, which refuses a key of another spec, so a stale value cannot sign.
  if (settings.keySpec) return { keyId, keySpec: settings.keySpec };
  const { RemoteSigner } = await import("./remote-signer.js");
  const info = await new RemoteSigner(settings).describeKey(keyId);
  if (!isKeySpec(info.keySpec)) throw new PluginError("ERROR", `the service described key "${keyId}" with an unknown key spec "${info.keySpec}"`);
  return { keyId, keySpec: info.keySpec };
}

/** generate-signature (§2.3): sign the decoded payload, return the raw signature and the chain leaf→root. */
export async function generateSignature(raw: Record<string, unknown>): Promise<Record<string, unknown>> {
  checkContract(raw);
  const keyId = requireKeyId(raw);
  const keySpec = requireString(raw, "keySpec");
  const hashAlgorithm = requireString(raw, "hashAlgorithm");
  const payloadB64 = requireString(raw, "payload");
  if (!isKeySpec(keySpec)) throw new PluginError("VALIDATION_ERROR", `keySpec "${shown(keySpec)}" is not one of RSA-2048, RSA-3072, RSA-4096, EC-256, EC-384, EC-521`);
  if (!isHashAlgorithm(hashAlgorithm)) throw new PluginError("VALIDATION_ERROR", `hashAlgorithm "${shown(hashAlgorithm)}" is not one of SHA-256, SHA-384, SHA-512`);
  const info = keySpecInfo(keySpec);
  if (info.hash !== hashAlgorithm) throw new PluginError("VALIDATION_ERROR", `hashAlgorithm ${hashAlgorithm} does not go with keySpec ${keySpec} (which uses ${info.hash})`);
  // The length first, before any work on the text: notation's payloads are a few kB.
  if (payloadB64.length > MAX_PAYLOAD_BASE64) {
    throw new PluginError(
      "VALIDATION_ERROR",
      `request field "payload" is ${payloadB64.length} base64 characters (about ${Math.floor((payloadB64.length * 3) / 4)} bytes); the limit is ${MAX_PAYLOAD_BYTES} bytes (1 MiB)`,
    );
  }
  if (!isPaddedBase64(payloadB64)) throw new PluginError("VALIDATION_ERROR", 'request field "payload" is not padded standard base64');
  const payload = Buffer.from(payloadB64, "base64");
  const settings = parsePluginConfig(pluginConfigOf(raw));
  const { RemoteSigner } = await import("./remote-signer.js");
  const r = await new RemoteSigner(settings).sign(keyId, keySpec, hashAlgorithm, payload);
  if (r.keySpec !== keySpec) throw new PluginError("VALIDATION_ERROR", `key "${keyId}" is ${r.keySpec} at the service, not ${keySpec}; run notation sign again`);
  if (r.signature.length !== info.signatureLength)
    throw new PluginError("ERROR", `the service returned a ${r.signature.length}-byte signature; ${keySpec} signatures are ${info.signatureLength} bytes`);
  if (r.certificateChain.length === 0) throw new PluginError("ERROR", `the service returned no certificate chain for key "${keyId}"`);
  return {
    keyId,
    signature: r.signature.toString("base64"),
    signingAlgorithm: info.signingAlgorithm,
    certificateChain: r.certificateChain.map((c) => c.toString("base64")),
  };
}
