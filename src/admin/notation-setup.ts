import { join, posix, win32 } from "node:path";

/** Trust store names notation accepts (notation-plugin-protocol.md §6.1). */
export const STORE_NAME_PATTERN = /^[a-zA-Z0-9_.-]+$/;

/**
 * notation's config directory {CFG} (notation-plugin-protocol.md §1.1): NOTATION_CONFIG as a
 * whole, else Go's os.UserConfigDir() + "/notation", else "./.notation" when Go cannot work the
 * user config dir out (unset HOME, relative XDG_CONFIG_HOME).
 */
export function defaultNotationDir(env: NodeJS.ProcessEnv, platform: NodeJS.Platform = process.platform): string {
  if (env.NOTATION_CONFIG) return env.NOTATION_CONFIG;
  const fallback = ".notation";
  if (platform === "win32") return env.APPDATA ? win32.join(env.APPDATA, "notation") : fallback;
  if (platform === "darwin") return env.HOME ? posix.join(env.HOME, "Library", "Application Support", "notation") : fallback;
  const xdg = env.XDG_CONFIG_HOME;
  if (xdg) return posix.isAbsolute(xdg) ? posix.join(xdg, "notation") : fallback;
  return env.HOME ? posix.join(env.HOME, ".config", "notation") : fallback;
}

/** A name safe as one path component and as a policy name: anything outside [A-Za-z0-9_.-] becomes "_". */
export function safeFileName(s: string): string {
  const n = s.replace(/[^A-Za-z0-9_.-]/g, "_");
  return n === "." || n === ".." ? n.replace(/\./g, "_") : n;
}

/** `<notation-dir>/truststore/x509/ca/<store>/<key-id>-root.crt` (§6.1; the code says truststore). */
export function trustStoreRootPath(notationDir: string, store: string, keyId: string): string {
  return join(notationDir, "truststore", "x509", "ca", store, `${safeFileName(keyId)}-root.crt`);
}

export { parseDn, subjectIdentityProblems, type DnAttribute } from "../signing/distinguished-name.js";

export interface TrustPolicyDocument {
  version: "1.0";
  trustPolicies: {
    name: string;
    registryScopes: string[];
    signatureVerification: { level: "strict" };
    trustStores: string[];
    trustedIdentities: string[];
  }[];
}

/** One strict statement trusting the store's root for this leaf subject; registryScopes ["*"] is a placeholder. */
export function trustPolicyFor(keyId: string, store: string, leafSubject: string): TrustPolicyDocument {
  return {
    version: "1.0",
    trustPolicies: [
      {
        name: `hsm-signer-${safeFileName(keyId)}`,
        registryScopes: ["*"],
        signatureVerification: { level: "strict" },
        trustStores: [`ca:${store}`],
        trustedIdentities: [`x509.subject: ${leafSubject}`],
      },
    ],
  };
}

/** POSIX shell quoting for the commands we print: bare when safe, else single quotes. */
export function shellQuote(s: string): string {
  if (/^[A-Za-z0-9_@%+=:,./-]+$/.test(s)) return s;
  return `'${s.replace(/'/g, `'\\''`)}'`;
}

export interface NotationKeyAddInput {
  keyName: string;
  keyId: string;
  /** The signing service (hsm_signer.v1.Signer) the plugin calls, not KeyAdmin. */
  endpoint: string;
  caFile?: string | undefined;
  clientCertFile?: string | undefined;
  clientKeyFile?: string | undefined;
  keySpec?: string | undefined;
}

/** `notation key add` with our plugin's pluginConfig keys (src/plugin/plugin-config.ts CONFIG_KEYS). */
export function notationKeyAddCommand(o: NotationKeyAddInput): string {
  const cfg: [string, string | undefined][] = [
    ["endpoint", o.endpoint],
    ["ca_file", o.caFile],
    ["client_cert_file", o.clientCertFile],
    ["client_key_file", o.clientKeyFile],
    ["key_spec", o.keySpec],
  ];
  const parts = [`notation key add --plugin hsm-signer --id ${shellQuote(o.keyId)}`];
  for (const [k, v] of cfg) if (v) parts.push(`--plugin-config ${shellQuote(`${k}=${v}`)}`);
  parts.push(shellQuote(o.keyName));
  return parts.join(" \\\n    ");
}

export function notationCertAddCommand(store: string, rootFile: string): string {
  return `notation cert add --type ca --store ${shellQuote(store)} ${shellQuote(rootFile)}`;
}
