import { closeSync, constants, fstatSync, openSync, readSync } from "node:fs";
import { isKeySpec, type KeySpec } from "../signing/key-spec.js";
import { PluginError } from "./contract.js";

/** pluginConfig keys (README, "notation plugin configuration"). Values are paths and names, never secrets. */
export const CONFIG_KEYS = ["endpoint", "ca_file", "client_cert_file", "client_key_file", "server_name", "timeout", "token_file", "token_env", "key_spec"] as const;
export const DEFAULT_TIMEOUT_MS = 30_000;
const SECRET_LIKE = /token$|pin|password|secret|private_key$|^key$/i;

export interface PluginSettings {
  endpoint: string;
  ca: Buffer | undefined;
  cert: Buffer | undefined;
  key: Buffer | undefined;
  serverName: string | undefined;
  timeoutMs: number;
  /** Bearer token read from token_file or token_env; never from pluginConfig itself. */
  token: string | undefined;
  /** The key's spec, when configured: describe-key then answers without a network call. */
  keySpec: KeySpec | undefined;
}

/** "30", "30s", "1500ms", "2m" → milliseconds. */
export function parseDuration(v: string): number | undefined {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m)?$/.exec(v.trim());
  if (!m?.[1]) return undefined;
  const n = Number(m[1]);
  const unit = m[2] ?? "s";
  return Math.round(unit === "ms" ? n : unit === "m" ? n * 60_000 : n * 1000);
}

/** The largest file a pluginConfig path may name: CA bundles, a certificate and key, a token are far smaller. */
export const MAX_CONFIG_FILE_BYTES = 1024 * 1024;

/**
 * Reads a file named by pluginConfig: a regular file of at most MAX_CONFIG_FILE_BYTES, and
 * nothing else. Opened non-blocking and checked with fstat on the open descriptor (no race
 * with a path swapped in between), so a FIFO with no writer, /dev/zero, /dev/urandom or a
 * terminal is refused at once instead of hanging past the timeout or growing without bound.
 */
function readConfigFile(key: string, path: string): Buffer {
  const refuse = (why: string): PluginError => new PluginError("VALIDATION_ERROR", `pluginConfig ${key}: cannot read ${path}: ${why}`);
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
  } catch (e) {
    throw refuse((e as NodeJS.ErrnoException).code ?? (e as Error).message);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile())
      throw refuse(`not a regular file (${st.isDirectory() ? "a directory" : st.isFIFO() ? "a FIFO" : st.isCharacterDevice() ? "a character device" : st.isSocket() ? "a socket" : "a device"})`);
    if (st.size > MAX_CONFIG_FILE_BYTES) throw refuse(`${st.size} bytes; the limit is ${MAX_CONFIG_FILE_BYTES} bytes (1 MiB)`);
    // Read to the end, whatever fstat said (a file that grows meanwhile), but never past the limit.
    const buf = Buffer.allocUnsafe(MAX_CONFIG_FILE_BYTES + 1);
    let n = 0;
    for (let r = -1; r !== 0; n += r) {
      if (n > MAX_CONFIG_FILE_BYTES) throw refuse(`larger than the limit of ${MAX_CONFIG_FILE_BYTES} bytes (1 MiB)`);
      r = readSync(fd, buf, n, buf.length - n, null);
    }
    return Buffer.from(buf.subarray(0, n));
  } catch (e) {
    if (e instanceof PluginError) throw e;
    throw refuse((e as NodeJS.ErrnoException).code ?? (e as Error).message);
  } finally {
    closeSync(fd);
  }
}

export function parsePluginConfig(cfg: Record<string, unknown> | undefined, env: NodeJS.ProcessEnv = process.env): PluginSettings {
  const c = cfg ?? {};
  for (const [k, v] of Object.entries(c)) {
    if (!(CONFIG_KEYS as readonly string[]).includes(k)) {
      const hint = SECRET_LIKE.test(k) ? " Never put secrets in pluginConfig (notation prints it with --debug): use token_file or token_env." : "";
      throw new PluginError("VALIDATION_ERROR", `unknown pluginConfig key "${k}"; known keys: ${CONFIG_KEYS.join(", ")}.${hint}`);
    }
    if (typeof v !== "string") throw new PluginError("VALIDATION_ERROR", `pluginConfig ${k} must be a string`);
  }
  const get = (k: (typeof CONFIG_KEYS)[number]): string | undefined => {
    const v = c[k] as string | undefined;
    return v === undefined || v === "" ? undefined : v;
  };
  const endpoint = get("endpoint");
  if (!endpoint)
    throw new PluginError("VALIDATION_ERROR", 'pluginConfig "endpoint" is required (host:port of the hsm-signer service); add it with notation key add --plugin-config endpoint=HOST:PORT');
  const port = /^(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(endpoint)?.[1];
  if (!port || Number(port) < 1 || Number(port) > 65535) throw new PluginError("VALIDATION_ERROR", `pluginConfig endpoint "${endpoint}" is not host:port with a port from 1 to 65535`);
  const certFile = get("client_cert_file");
  const keyFile = get("client_key_file");
  if ((certFile === undefined) !== (keyFile === undefined)) throw new PluginError("VALIDATION_ERROR", "pluginConfig client_cert_file and client_key_file go together");
  let timeoutMs = DEFAULT_TIMEOUT_MS;
  const t = get("timeout");
  if (t !== undefined) {
    const ms = parseDuration(t);
    if (ms === undefined || ms <= 0 || ms > 600_000) throw new PluginError("VALIDATION_ERROR", `pluginConfig timeout "${t}" must be a duration such as 30s, between 1ms and 10m`);
    timeoutMs = ms;
  }
  let token: string | undefined;
  const tokenFile = get("token_file");
  const tokenEnv = get("token_env");
  if (tokenFile && tokenEnv) throw new PluginError("VALIDATION_ERROR", "pluginConfig token_file and token_env exclude each other");
  if (tokenFile) token = readConfigFile("token_file", tokenFile).toString("utf8").trim();
  if (tokenEnv) {
    token = env[tokenEnv]?.trim();
    if (!token) throw new PluginError("VALIDATION_ERROR", `pluginConfig token_env names ${tokenEnv}, which is not set in the environment`);
  }
  const keySpec = get("key_spec");
  if (keySpec !== undefined && !isKeySpec(keySpec)) throw new PluginError("VALIDATION_ERROR", `pluginConfig key_spec "${keySpec}" is not one of RSA-2048, RSA-3072, RSA-4096, EC-256, EC-384, EC-521`);
  const caFile = get("ca_file");
  return {
    endpoint,
    ca: caFile ? readConfigFile("ca_file", caFile) : undefined,
    cert: certFile ? readConfigFile("client_cert_file", certFile) : undefined,
    key: keyFile ? readConfigFile("client_key_file", keyFile) : undefined,
    serverName: get("server_name"),
    timeoutMs,
    token: token || undefined,
    keySpec,
  };
}
