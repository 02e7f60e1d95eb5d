import { callGenerated, type GeneratedMethod } from "../client/generated-method.js";
import { GrpcCallError, GrpcHttp2Channel, Status, STATUS_NAMES, withRetries } from "../client/grpc-http2-client.js";
import { SignerDefinition, type KeyInfo, type SignResponse } from "../gen/hsm_signer/v1/signer.js";
import type { ErrorCode } from "../errors/index.js";
import { PLUGIN_NAME, PLUGIN_VERSION, PluginError, type PluginErrorCode } from "./contract.js";
import type { PluginSettings } from "./plugin-config.js";

export const RETRY = { attempts: 4, baseDelayMs: 200 };

/**
 * A DEADLINE_EXCEEDED the service sends this close to the plugin's own deadline is that deadline,
 * passed on in grpc-timeout (the service answers 25 ms before it runs out, unary-handler.ts): the
 * pluginConfig timeout is what ran out. One sent earlier is the service's own limit.
 */
const OWN_DEADLINE_ECHO_MS = 1000;

/**
 * The one place where the service's error codes become notation error codes (README, "Error
 * codes"): exhaustive over the catalog, so a new code that is not mapped does not compile.
 */
export function pluginCodeOfError(code: ErrorCode): PluginErrorCode {
  switch (code) {
    case "INVALID_ARGUMENT":
    case "PAYLOAD_TOO_LARGE":
    case "KEY_NOT_FOUND":
    case "KEY_UNUSABLE":
    case "FAILED_PRECONDITION":
    case "CHAIN_INVALID":
      return "VALIDATION_ERROR";
    case "KEY_DISABLED":
    case "UNAUTHENTICATED":
    case "PERMISSION_DENIED":
      return "ACCESS_DENIED";
    case "RATE_LIMITED":
    case "POOL_EXHAUSTED":
      return "THROTTLED";
    case "DEADLINE_EXCEEDED":
      return "TIMEOUT";
    case "ALREADY_EXISTS":
    case "UNIMPLEMENTED":
    case "HSM_UNAVAILABLE":
    case "HSM_PIN_INCORRECT":
    case "AUDIT_UNAVAILABLE":
    case "CONFIG_INVALID":
    case "INTERNAL":
      return "ERROR";
    default:
      return assertNever(code);
  }
}

function assertNever(x: never): never {
  throw new Error(`unmapped error code ${String(x)}`);
}

/** The fallback for a server that sends no catalog code: from the gRPC status alone. */
export function pluginCodeOf(grpcCode: number): PluginErrorCode {
  switch (grpcCode) {
    case Status.UNAUTHENTICATED:
    case Status.PERMISSION_DENIED:
      return "ACCESS_DENIED";
    case Status.DEADLINE_EXCEEDED:
      return "TIMEOUT";
    case Status.RESOURCE_EXHAUSTED:
      return "THROTTLED";
    case Status.INVALID_ARGUMENT:
    case Status.NOT_FOUND:
    case Status.FAILED_PRECONDITION:
      return "VALIDATION_ERROR";
    default:
      return "ERROR";
  }
}

/** Talks to the hsm-signer service for one plugin command. */
export class RemoteSigner {
  private readonly channel: GrpcHttp2Channel;
  private readonly deadline: number;

  constructor(private readonly s: PluginSettings) {
    this.channel = new GrpcHttp2Channel({ endpoint: s.endpoint, ca: s.ca, cert: s.cert, key: s.key, serverName: s.serverName, userAgent: `notation-${PLUGIN_NAME}/${PLUGIN_VERSION}` });
    this.deadline = Date.now() + s.timeoutMs;
  }

  private async call<Req, Res>(method: GeneratedMethod<Req, Res>, request: Req, what: string): Promise<Res> {
    const metadata = this.s.token ? { authorization: `Bearer ${this.s.token}` } : undefined;
    try {
      return await withRetries(this.deadline, RETRY, () => callGenerated(this.channel, SignerDefinition, method, request, { deadline: this.deadline, metadata }));
    } catch (e) {
      if (e instanceof GrpcCallError) {
        const name = STATUS_NAMES[e.code] ?? String(e.code);
        const detail = e.code === Status.DEADLINE_EXCEEDED ? this.timeoutDetail(e) : e.details;
        // RESOURCE_EXHAUSTED is a rate limit (THROTTLED) when the service says when to come back;
        // without that it is a refusal that the same call meets again, such as gRPC's message size limit.
        const code = e.errorCode !== undefined ? pluginCodeOfError(e.errorCode) : e.code === Status.RESOURCE_EXHAUSTED && e.retryAfterMs === undefined ? "ERROR" : pluginCodeOf(e.code);
        throw new PluginError(code, `${what} at hsm-signer ${this.s.endpoint} failed (${name}): ${detail}`);
      }
      throw new PluginError("ERROR", `${what} at hsm-signer ${this.s.endpoint} failed: ${(e as Error).message}`);
    } finally {
      this.channel.close();
    }
  }

  /**
   * Which deadline passed: the plugin's own (no answer; the pluginConfig timeout is the setting),
   * or the service's, in the service's words with its request id (its limits.maxDeadlineSeconds,
   * an HSM that did not answer), which a longer pluginConfig timeout does not change.
   */
  private timeoutDetail(e: GrpcCallError): string {
    const timeout = `${this.s.timeoutMs} ms timeout (pluginConfig timeout)`;
    if (!e.received) return `no answer within the ${timeout}`;
    if (this.deadline - Date.now() <= OWN_DEADLINE_ECHO_MS) return `the plugin's ${timeout} ran out at the service: ${e.details}`;
    return `the service gave up before the plugin's ${timeout}: ${e.details}`;
  }

  async describeKey(keyId: string): Promise<KeyInfo> {
    const what = `describing key "${keyId}"`;
    const { key: info } = await this.call(SignerDefinition.methods.describeKey, { keyId, keyVersion: 0 }, what);
    if (!info) throw new PluginError("ERROR", `${what} at hsm-signer ${this.s.endpoint}: the service sent no key`);
    return info;
  }

  async sign(keyId: string, keySpec: string, hashAlgorithm: string, payload: Buffer): Promise<SignResponse> {
    return this.call(SignerDefinition.methods.sign, { keyId, payload, digest: undefined, hashAlgorithm, keySpec, keyVersion: 0 }, `signing with key "${keyId}"`);
  }
}
