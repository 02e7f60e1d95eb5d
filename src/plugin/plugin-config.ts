import { MAX_SETTING_FILE_BYTES, readRegularFile } from "../fs/regular-file.js";
import * as v from "valibot";
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

/** The largest file a pluginConfig path may name (readRegularFile's limit). */
export const MAX_CONFIG_FILE_BYTES = MAX_SETTING_FILE_BYTES;

/**
 * Reads a file named by pluginConfig: a regular file of at most MAX_CONFIG_FILE_BYTES, and
 * nothing else (readRegularFile), so a FIFO with no writer, /dev/zero, /dev/urandom or a terminal
 * is refused at once instead of hanging past the timeout or growing without bound.
 */
function readConfigFile(key: string, path: string): Buffer {
  const r = readRegularFile(path);
  if (Buffer.isBuffer(r)) return r;
  const why =
    r.kind === "unreadable"
      ? r.code
      : r.kind === "not-regular"
        ? `not a regular file (${r.what})`
        : r.size !== undefined
          ? `${r.size} bytes; the limit is ${MAX_CONFIG_FILE_BYTES} bytes (1 MiB)`
          : `larger than the limit of ${MAX_CONFIG_FILE_BYTES} bytes (1 MiB)`;
  throw new PluginError("VALIDATION_ERROR", `pluginConfig ${key}: cannot read ${path}: ${why}`);
}

/** RFC 6750 §2.1 b64token, what `Authorization: Bearer` carries: 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"=". */
const B64TOKEN = /^[A-Za-z0-9\-._~+/]+=*$/;
const B64TOKEN_CHAR = /^[A-Za-z0-9\-._~+/]$/;
const BEARER_RULE = "a bearer token is one line of A-Z a-z 0-9 - . _ ~ + / with = only at the end (RFC 6750)";

/** What a character that cannot be in a token is, without showing it (it may be part of a secret). */
function kindOf(ch: string): string {
  const cp = ch.codePointAt(0) ?? 0;
  if (ch === " " || ch === "\t") return "a space or tab";
  if (cp < 0x20 || cp === 0x7f) return "a control character";
  if (cp > 0x7f) return "a character outside ASCII";
  if (ch === "=") return "an = (allowed only as padding at the end)";
  return "a character RFC 6750 does not allow in a token";
}

/**
 * The bearer token in a token_file's or token_env's text: its ends trimmed (a file usually ends
 * in a newline), then one line of RFC 6750 token characters; "" when there is none. Anything
 * else is refused rather than sent: node:http2 drops a header holding a line break without a
 * word (the call then goes out anonymous) and sends other characters mangled. The problem says
 * where, never what: the text is a secret even when it is not a token.
 */
function bearerTokenOf(text: string): { token: string } | { problem: string } {
  const token = text.trim();
  if (token === "" || B64TOKEN.test(token)) return { token };
  const lines = token.split(/\r\n|\r|\n/).length;
  if (lines > 1) return { problem: `holds ${lines} lines; ${BEARER_RULE}` };
  // The first character out of place (an "=" followed by more is one), counted in characters
  // from 1 after any leading whitespace.
  const chars = [...token];
  let i = 0;
  while (i < chars.length && B64TOKEN_CHAR.test(chars[i] ?? "")) i++;
  const skipped = text.length - text.trimStart().length;
  return { problem: `has ${kindOf(chars[i] ?? "")} at character ${i + 1}${skipped > 0 ? ` (after ${skipped} leading whitespace characters)` : ""}; ${BEARER_RULE}` };
}

const SECRETS_HINT = " Never put secrets in pluginConfig (notation prints it with --debug): use token_file or token_env.";

type ConfigKey = (typeof CONFIG_KEYS)[number];

function endpointProblem(endpoint: string): string | undefined {
  const port = /^(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/.exec(endpoint)?.[1];
  return port && Number(port) >= 1 && Number(port) <= 65535 ? undefined : `pluginConfig endpoint "${endpoint}" is not host:port with a port from 1 to 65535`;
}

function timeoutProblem(t: string): string | undefined {
  const ms = parseDuration(t);
  return ms !== undefined && ms > 0 && ms <= 600_000 ? undefined : `pluginConfig timeout "${t}" must be a duration such as 30s, between 1ms and 10m`;
}

function keySpecProblem(spec: string): string | undefined {
  return isKeySpec(spec) ? undefined : `pluginConfig key_spec "${spec}" is not one of RSA-2048, RSA-3072, RSA-4096, EC-256, EC-384, EC-521`;
}

/** A string value; when not "" (unset, as notation writes it), what `problem` says of it. */
function value(k: ConfigKey, problem: (s: string) => string | undefined = () => undefined) {
  return v.optional(
    v.custom<string>(
      (x) => typeof x === "string" && (x === "" || problem(x) === undefined),
      (issue) => (typeof issue.input === "string" ? (problem(issue.input) ?? "") : `pluginConfig ${k} must be a string`),
    ),
  );
}

const ENTRIES = {
  ...(Object.fromEntries(CONFIG_KEYS.map((k) => [k, value(k)])) as Record<ConfigKey, ReturnType<typeof value>>),
  endpoint: value("endpoint", endpointProblem),
  timeout: value("timeout", timeoutProblem),
  key_spec: value("key_spec", keySpecProblem),
};

/**
 * pluginConfig's schema: known keys, string values, each checked; the rules between keys run on
 * what is there, so that every problem is listed at once.
 */
const pluginConfigSchema = v.pipe(
  v.looseObject(ENTRIES),
  v.rawCheck(({ dataset, addIssue }) => {
    const c = dataset.value as Partial<Record<string, unknown>>;
    const set = (k: ConfigKey): boolean => c[k] !== undefined && c[k] !== "";
    const problem = (message: string): void => addIssue({ message });
    for (const k of Object.keys(c)) {
      if (!Object.hasOwn(ENTRIES, k)) problem(`unknown pluginConfig key "${k}"; known keys: ${CONFIG_KEYS.join(", ")}.${SECRET_LIKE.test(k) ? SECRETS_HINT : ""}`);
    }
    if (!set("endpoint")) problem('pluginConfig "endpoint" is required (host:port of the hsm-signer service); add it with notation key add --plugin-config endpoint=HOST:PORT');
    if (set("client_cert_file") !== set("client_key_file")) problem("pluginConfig client_cert_file and client_key_file go together");
    if (set("token_file") && set("token_env")) problem("pluginConfig token_file and token_env exclude each other");
  }),
);

/** One VALIDATION_ERROR naming every problem (notation shows one message). */
function invalid(problems: string[]): PluginError {
  return new PluginError("VALIDATION_ERROR", problems.length === 1 ? (problems[0] ?? "") : `${problems.length} problems: ${problems.join("; ")}`);
}

/** The settings from notation's pluginConfig, every problem at once; the files it names are read now. The result is frozen. */
export function parsePluginConfig(cfg: Record<string, unknown> | undefined, env: NodeJS.ProcessEnv = process.env): PluginSettings {
  const r = v.safeParse(pluginConfigSchema, cfg ?? {});
  // Unknown keys first (most often a typo, which may explain what follows), as in the service's configuration.
  const unknownFirst = (a: string, b: string): number => Number(b.startsWith("unknown ")) - Number(a.startsWith("unknown "));
  const problems = r.success ? [] : r.issues.map((i) => i.message).sort(unknownFirst);
  // What parsed so far: the files named are read even when something else is wrong, to list their problems too.
  const c = r.output as Partial<Record<string, unknown>>;
  const get = (k: ConfigKey): string | undefined => {
    const x = c[k];
    return typeof x === "string" && x !== "" ? x : undefined;
  };
  const read = (k: ConfigKey): Buffer | undefined => {
    const path = get(k);
    if (path === undefined) return undefined;
    try {
      return readConfigFile(k, path);
    } catch (e) {
      problems.push((e as Error).message);
      return undefined;
    }
  };
  const bearer = (text: string, source: string): string | undefined => {
    const t = bearerTokenOf(text);
    if ("token" in t) return t.token;
    problems.push(`pluginConfig ${source} ${t.problem}`);
    return undefined;
  };
  const tokenFile = get("token_file");
  const tokenText = tokenFile === undefined ? undefined : read("token_file")?.toString("utf8");
  let token = tokenText === undefined ? undefined : bearer(tokenText, `token_file ${tokenFile ?? ""}`);
  const tokenEnv = get("token_env");
  if (tokenEnv) {
    const text = env[tokenEnv];
    if (!text?.trim()) {
      // A value that is no variable's name may be the token itself, pasted in the wrong place: never shown.
      problems.push(
        /^[A-Z_][A-Z0-9_]{0,63}$/.test(tokenEnv)
          ? `pluginConfig token_env names ${tokenEnv}, which is not set in the environment`
          : "pluginConfig token_env is not the name of a set environment variable, nor does it look like one (upper-case letters, digits and _): it may be the token itself, so it is not shown; give the NAME of the variable that holds the token",
      );
    } else token = bearer(text, `token_env: ${tokenEnv}`);
  }
  const settings: PluginSettings = {
    endpoint: get("endpoint") ?? "",
    ca: read("ca_file"),
    cert: read("client_cert_file"),
    key: read("client_key_file"),
    serverName: get("server_name"),
    timeoutMs: get("timeout") === undefined ? DEFAULT_TIMEOUT_MS : (parseDuration(get("timeout") ?? "") ?? DEFAULT_TIMEOUT_MS),
    token: token || undefined,
    keySpec: get("key_spec") as KeySpec | undefined,
  };
  if (problems.length > 0) throw invalid(problems);
  return Object.freeze(settings);
}
