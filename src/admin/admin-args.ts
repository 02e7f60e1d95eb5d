import { parseArgs, type ParseArgsConfig } from "node:util";
import { isKeySpec, KEY_SPECS, type KeySpec } from "../signing/key-spec.js";
import { DEFAULT_WARN_DAYS } from "./admin-format.js";
import { STORE_NAME_PATTERN } from "./notation-setup.js";

/** Where KeyAdmin listens when neither --endpoint nor HSM_SIGNER_ADMIN_ENDPOINT says. */
export const DEFAULT_ADMIN_ENDPOINT = "127.0.0.1:9443";
export const DEFAULT_ADMIN_TIMEOUT_SECONDS = 30;
const MAX_TIMEOUT_SECONDS = 3600;
const MAX_VALIDITY_DAYS = 3650;
const MAX_UINT32 = 0xffffffff;

export const ADMIN_ENV = {
  endpoint: "HSM_SIGNER_ADMIN_ENDPOINT",
  ca: "HSM_SIGNER_ADMIN_CA",
  cert: "HSM_SIGNER_ADMIN_CERT",
  key: "HSM_SIGNER_ADMIN_KEY",
} as const;

/** A bad command line: exit 2 with the message and the usage of that command. */
export class AdminUsageError extends Error {
  constructor(
    message: string,
    readonly usage: string,
  ) {
    super(message);
    this.name = "AdminUsageError";
  }
}

export interface ConnectionOptions {
  endpoint: string;
  caFile: string | undefined;
  certFile: string;
  keyFile: string;
  serverName: string | undefined;
  timeoutMs: number;
}

export type AdminCommand =
  | { kind: "slots" }
  | { kind: "keys-list"; keyId: string | undefined; warnDays: number | undefined }
  | { kind: "keys-generate"; keyId: string; keySpec: KeySpec; tokenLabel: string | undefined }
  | { kind: "keys-rotate"; keyId: string; keySpec: KeySpec | undefined }
  | { kind: "keys-set-state"; keyId: string; version: number; enabled: boolean; reason: string | undefined }
  | { kind: "keys-destroy"; keyId: string; version: number; confirm: string; destroyCertificate: boolean; acknowledgeSigned: boolean }
  | {
      kind: "keys-test-chain";
      keyId: string;
      keySpec: KeySpec;
      rootKeyId: string | undefined;
      rootKeySpec: KeySpec | undefined;
      organization: string | undefined;
      state: string | undefined;
      country: string | undefined;
      validityDays: number | undefined;
      rootOut: string | undefined;
    }
  | {
      kind: "keys-notation-setup";
      keyId: string;
      store: string;
      notationDir: string | undefined;
      /** The signing endpoint written into the plugin config (not KeyAdmin's). */
      pluginEndpoint: string;
      caFile: string | undefined;
      clientCertFile: string | undefined;
      clientKeyFile: string | undefined;
      keyName: string;
    }
  | { kind: "certs-csr"; keyId: string; version: number; subject: string; out: string | undefined }
  | { kind: "certs-import"; keyId: string; version: number; strictOrder: boolean; files: string[] }
  | { kind: "certs-chain"; keyId: string; version: number; out: string | undefined };

export type ParsedAdminArgs = { help: true; usage: string } | { help: false; command: AdminCommand; connection: ConnectionOptions; json: boolean };

type Values = Record<string, string | boolean | undefined>;
type OptionSpec = NonNullable<ParseArgsConfig["options"]>;

interface CommandSpec {
  path: string;
  /** Lines of the command's synopsis and of what it does, laid out by usageOf(). */
  synopsis: string[];
  about: string[];
  options: OptionSpec;
  positionals?: boolean;
  /** notation-setup uses --endpoint for the plugin; KeyAdmin's address then comes from --admin-endpoint. */
  endpointIsPlugin?: boolean;
  build(v: Values, positionals: string[], usage: string): AdminCommand;
}

const str = { type: "string" } as const;
const bool = { type: "boolean" } as const;

const CONNECTION_OPTIONS: OptionSpec = {
  "endpoint": str,
  "admin-endpoint": str,
  "ca": str,
  "cert": str,
  "key": str,
  "server-name": str,
  "timeout": str,
  "json": bool,
  "help": { type: "boolean", short: "h" },
};

const SPEC_LIST = KEY_SPECS.join(", ");
const ENDPOINT_PATTERN = /^(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})$/;

function s(v: Values, name: string): string | undefined {
  const x = v[name];
  return typeof x === "string" ? x : undefined;
}

function need(v: Values, name: string, usage: string): string {
  const x = s(v, name);
  if (x === undefined || x === "") throw new AdminUsageError(`--${name} is required`, usage);
  return x;
}

function keySpec(x: string | undefined, flag: string, usage: string): KeySpec | undefined {
  if (x === undefined) return undefined;
  if (!isKeySpec(x)) throw new AdminUsageError(`${flag} must be one of ${SPEC_LIST}, not "${x}"`, usage);
  return x;
}

function integer(x: string | undefined, flag: string, min: number, max: number, usage: string): number | undefined {
  if (x === undefined) return undefined;
  const n = Number(x);
  if (!/^\d+$/.test(x) || !Number.isSafeInteger(n) || n < min || n > max) throw new AdminUsageError(`${flag} must be an integer from ${min} to ${max}, not "${x}"`, usage);
  return n;
}

/** --version N (1 and up); absent: 0, which KeyAdmin reads as "the current/newest version". */
function version(v: Values, usage: string): number {
  return integer(s(v, "version"), "--version", 1, MAX_UINT32, usage) ?? 0;
}

export function isEndpoint(x: string): boolean {
  const port = ENDPOINT_PATTERN.exec(x)?.[1];
  return port !== undefined && Number(port) >= 1 && Number(port) <= 65535;
}

const COMMANDS: CommandSpec[] = [
  {
    path: "slots",
    synopsis: ["slots"],
    about: ["slots and tokens of the HSM: label, serial, model, flags,", "mechanisms, free memory, the token this service manages"],
    options: {},
    build: () => ({ kind: "slots" }),
  },
  {
    path: "keys list",
    synopsis: ["keys list [--key-id ID] [--warn-days N]"],
    about: ["every key and version: state, spec, role, certificate, days", `to expiry; flags certificates expiring within N days (default ${DEFAULT_WARN_DAYS})`],
    options: { "key-id": str, "warn-days": str },
    build: (v, _p, u) => ({ kind: "keys-list", keyId: s(v, "key-id") || undefined, warnDays: integer(s(v, "warn-days"), "--warn-days", 1, MAX_VALIDITY_DAYS, u) }),
  },
  {
    path: "keys generate",
    synopsis: ["keys generate --key-id ID --key-spec SPEC [--token LABEL]"],
    about: ["a new key (version 1) on the token;", `SPEC: ${SPEC_LIST}`],
    options: { "key-id": str, "key-spec": str, "token": str },
    build: (v, _p, u) => ({ kind: "keys-generate", keyId: need(v, "key-id", u), keySpec: keySpec(need(v, "key-spec", u), "--key-spec", u) as KeySpec, tokenLabel: s(v, "token") || undefined }),
  },
  {
    path: "keys rotate",
    synopsis: ["keys rotate --key-id ID [--key-spec SPEC]"],
    about: ["a new version of the key; signing moves to it once it has a chain"],
    options: { "key-id": str, "key-spec": str },
    build: (v, _p, u) => ({ kind: "keys-rotate", keyId: need(v, "key-id", u), keySpec: keySpec(s(v, "key-spec"), "--key-spec", u) }),
  },
  {
    path: "keys disable",
    synopsis: ["keys disable --key-id ID [--version N] [--reason TEXT]"],
    about: ["refuse signing with the key (or with one version)"],
    options: { "key-id": str, "version": str, "reason": str },
    build: (v, _p, u) => ({ kind: "keys-set-state", keyId: need(v, "key-id", u), version: version(v, u), enabled: false, reason: s(v, "reason") || undefined }),
  },
  {
    path: "keys enable",
    synopsis: ["keys enable --key-id ID [--version N]"],
    about: ["allow signing again"],
    options: { "key-id": str, "version": str },
    build: (v, _p, u) => ({ kind: "keys-set-state", keyId: need(v, "key-id", u), version: version(v, u), enabled: true, reason: undefined }),
  },
  {
    path: "keys destroy",
    synopsis: ["keys destroy --key-id ID --version N --confirm ID@vN", "[--destroy-certificate] [--acknowledge-signed]"],
    about: ["destroy the key pair of a disabled version; its certificate is kept", "unless --destroy-certificate (with --acknowledge-signed if it signed)"],
    options: { "key-id": str, "version": str, "confirm": str, "destroy-certificate": bool, "acknowledge-signed": bool },
    build: (v, _p, u) => {
      const keyId = need(v, "key-id", u);
      const n = integer(need(v, "version", u), "--version", 1, MAX_UINT32, u) as number;
      const confirm = need(v, "confirm", u);
      const expected = `${keyId}@v${n}`;
      if (confirm !== expected) throw new AdminUsageError(`--confirm must be exactly "${expected}" to destroy that version, not "${confirm}"`, u);
      if (v["acknowledge-signed"] && !v["destroy-certificate"]) throw new AdminUsageError("--acknowledge-signed only applies with --destroy-certificate", u);
      return { kind: "keys-destroy", keyId, version: n, confirm, destroyCertificate: v["destroy-certificate"] === true, acknowledgeSigned: v["acknowledge-signed"] === true };
    },
  },
  {
    path: "keys test-chain",
    synopsis: ["keys test-chain --key-id ID --key-spec SPEC [--root-key-id ID] [--root-key-spec SPEC]", "[--org O] [--state ST] [--country C] [--days N] [--root-out FILE]"],
    about: ["a test root CA key and a signing key with a chain on the token", "(like notation cert generate-test); --root-out writes the root as PEM"],
    options: { "key-id": str, "key-spec": str, "root-key-id": str, "root-key-spec": str, "org": str, "state": str, "country": str, "days": str, "root-out": str },
    build: (v, _p, u) => ({
      kind: "keys-test-chain",
      keyId: need(v, "key-id", u),
      keySpec: keySpec(need(v, "key-spec", u), "--key-spec", u) as KeySpec,
      rootKeyId: s(v, "root-key-id") || undefined,
      rootKeySpec: keySpec(s(v, "root-key-spec"), "--root-key-spec", u),
      organization: s(v, "org"),
      state: s(v, "state"),
      country: s(v, "country"),
      validityDays: integer(s(v, "days"), "--days", 1, MAX_VALIDITY_DAYS, u),
      rootOut: s(v, "root-out") || undefined,
    }),
  },
  {
    path: "keys notation-setup",
    synopsis: [
      "keys notation-setup --key-id ID --store NAME --endpoint HOST:PORT [--notation-dir DIR]",
      "[--ca-file FILE] [--client-cert-file FILE --client-key-file FILE] [--key-name NAME]",
      "[--admin-endpoint HOST:PORT]",
    ],
    about: [
      "write the key's root certificate to DIR/truststore/x509/ca/NAME/ID-root.crt",
      "(DIR: notation's config dir) and print notation key add, cert add and a",
      "trust policy; --endpoint, --ca-file, --client-*-file are what the plugin",
      "uses to reach the signing service; KeyAdmin is --admin-endpoint here",
    ],
    options: { "key-id": str, "store": str, "notation-dir": str, "ca-file": str, "client-cert-file": str, "client-key-file": str, "key-name": str },
    endpointIsPlugin: true,
    build: (v, _p, u) => {
      const keyId = need(v, "key-id", u);
      const store = need(v, "store", u);
      if (!STORE_NAME_PATTERN.test(store)) throw new AdminUsageError(`--store "${store}" must match [a-zA-Z0-9_.-]+ (notation's trust store names)`, u);
      const pluginEndpoint = need(v, "endpoint", u);
      if (!isEndpoint(pluginEndpoint)) throw new AdminUsageError(`--endpoint "${pluginEndpoint}" is not host:port with a port from 1 to 65535`, u);
      const clientCertFile = s(v, "client-cert-file") || undefined;
      const clientKeyFile = s(v, "client-key-file") || undefined;
      if ((clientCertFile === undefined) !== (clientKeyFile === undefined)) throw new AdminUsageError("--client-cert-file and --client-key-file go together", u);
      return {
        kind: "keys-notation-setup",
        keyId,
        store,
        notationDir: s(v, "notation-dir") || undefined,
        pluginEndpoint,
        caFile: s(v, "ca-file") || undefined,
        clientCertFile,
        clientKeyFile,
        keyName: s(v, "key-name") || keyId,
      };
    },
  },
  {
    path: "certs csr",
    synopsis: ["certs csr --key-id ID [--version N] --subject DN [--out FILE]"],
    about: [
      "a PKCS#10 request signed by the HSM key, as PEM; DN needs C, ST and O,",
      'e.g. "CN=release, O=Example, ST=WA, C=US" (any order: the request holds',
      "them in the order C, ST, L, O, OU, CN, as test-chain leaves do, so that",
      "openssl shows C=US, ST=WA, O=Example, CN=release and notation shows",
      "CN=release, O=Example, ST=WA, C=US)",
    ],
    options: { "key-id": str, "version": str, "subject": str, "out": str },
    build: (v, _p, u) => ({ kind: "certs-csr", keyId: need(v, "key-id", u), version: version(v, u), subject: need(v, "subject", u), out: s(v, "out") || undefined }),
  },
  {
    path: "certs import",
    synopsis: ["certs import --key-id ID [--version N] [--strict-order] FILE..."],
    about: ["check a chain (PEM or DER files, any order) against the key and the", "Notary Project rules, then store it on the token"],
    options: { "key-id": str, "version": str, "strict-order": bool },
    positionals: true,
    build: (v, p, u) => {
      if (p.length === 0) throw new AdminUsageError("give the certificate files to import", u);
      return { kind: "certs-import", keyId: need(v, "key-id", u), version: version(v, u), strictOrder: v["strict-order"] === true, files: p };
    },
  },
  {
    path: "certs chain",
    synopsis: ["certs chain --key-id ID [--version N] [--out FILE]"],
    about: ["the stored chain, leaf first, as PEM"],
    options: { "key-id": str, "version": str, "out": str },
    build: (v, _p, u) => ({ kind: "certs-chain", keyId: need(v, "key-id", u), version: version(v, u), out: s(v, "out") || undefined }),
  },
];

const CONNECTION_USAGE = `connection options of these commands (flags win over the environment):
  --endpoint HOST:PORT     KeyAdmin address (${ADMIN_ENV.endpoint}; default ${DEFAULT_ADMIN_ENDPOINT});
                           --admin-endpoint is the same (in notation-setup, --endpoint is the plugin's)
  --ca FILE                PEM CA bundle for KeyAdmin's certificate (${ADMIN_ENV.ca}; default: system roots)
  --cert FILE --key FILE   client certificate and private key (PEM files) for mTLS, required
                           (${ADMIN_ENV.cert}, ${ADMIN_ENV.key})
  --server-name NAME       TLS name to expect when it differs from the endpoint's host
  --timeout SECONDS        deadline of the whole command, connecting included (default ${DEFAULT_ADMIN_TIMEOUT_SECONDS})
  --json                   print the response as JSON (certificates as PEM, other bytes as base64)`;

/** Column of the descriptions, as in the main usage of src/bin/hsm-signer.ts. */
const ABOUT_COLUMN = 38;

/** "  synopsis   about" when the synopsis fits before the column, else the about lines below it. */
function usageOf(spec: CommandSpec): string {
  const pad = " ".repeat(ABOUT_COLUMN);
  const [first = "", ...more] = spec.synopsis;
  const lines = [`  ${first}`, ...more.map((l) => `             ${l}`)];
  const about = [...spec.about];
  const last = lines.length - 1;
  if (lines.length === 1 && (lines[last] as string).length + 2 <= ABOUT_COLUMN) lines[last] = `${(lines[last] as string).padEnd(ABOUT_COLUMN)}${about.shift() ?? ""}`;
  return [...lines, ...about.map((a) => `${pad}${a}`)].join("\n");
}

/** Usage of the key custodian commands, to append to the main usage. */
export const ADMIN_USAGE = `key custodian commands (a client of the KeyAdmin service):
${COMMANDS.map(usageOf).join("\n")}

${CONNECTION_USAGE}`;

function commandUsage(spec: CommandSpec): string {
  return `usage: hsm-signer ${usageOf(spec).trimStart()}\n\n${CONNECTION_USAGE}`;
}

/** Usage of every "keys ..." (or "certs ...") command; all of them for anything else. */
function familyUsage(first: string | undefined): string {
  const family = COMMANDS.filter((c) => c.path.startsWith(`${first} `));
  return family.length ? `usage:\n${family.map(usageOf).join("\n")}\n\n${CONNECTION_USAGE}` : ADMIN_USAGE;
}

/** For a mistake: the synopses of the "keys ..." (or "certs ...") commands, without the descriptions and options. */
function familySynopses(first: string | undefined): string {
  const family = COMMANDS.filter((c) => c.path.startsWith(`${first} `));
  if (!family.length) return ADMIN_USAGE;
  return `usage:\n${family.map((c) => `  hsm-signer ${c.synopsis.join(" ")}`).join("\n")}\n\nhsm-signer ${first} <command> --help: one command's options`;
}

/** Splits argv into the command's spec and its arguments: "slots ...", "keys list ...". */
function findCommand(argv: string[]): { spec: CommandSpec; args: string[] } {
  const [first, second] = argv;
  const one = COMMANDS.find((c) => c.path === first);
  if (one) return { spec: one, args: argv.slice(1) };
  const two = COMMANDS.find((c) => c.path === `${first} ${second}`);
  if (two) return { spec: two, args: argv.slice(2) };
  const usage = familySynopses(first);
  if (second === undefined) throw new AdminUsageError(`${first ?? "a command"} needs a subcommand`, usage);
  throw new AdminUsageError(`unknown command "${argv.slice(0, 2).join(" ")}"`, usage);
}

function connectionOf(v: Values, env: NodeJS.ProcessEnv, spec: CommandSpec, usage: string): ConnectionOptions {
  const flagEndpoint = s(v, "admin-endpoint") ?? (spec.endpointIsPlugin ? undefined : s(v, "endpoint"));
  const endpoint = flagEndpoint || env[ADMIN_ENV.endpoint] || DEFAULT_ADMIN_ENDPOINT;
  if (!isEndpoint(endpoint)) throw new AdminUsageError(`KeyAdmin endpoint "${endpoint}" is not host:port with a port from 1 to 65535`, usage);
  const certFile = s(v, "cert") || env[ADMIN_ENV.cert];
  const keyFile = s(v, "key") || env[ADMIN_ENV.key];
  if (!certFile || !keyFile) {
    throw new AdminUsageError(`KeyAdmin is mTLS only: give the client certificate and key files with --cert FILE and --key FILE (or ${ADMIN_ENV.cert} and ${ADMIN_ENV.key})`, usage);
  }
  const t = s(v, "timeout");
  let timeoutMs = DEFAULT_ADMIN_TIMEOUT_SECONDS * 1000;
  if (t !== undefined) {
    const n = Number(t);
    // Below 0.001 it would round to a 0 ms budget: every call would fail "within 0s".
    if (!/^\d+(\.\d+)?$/.test(t) || n < 0.001 || n > MAX_TIMEOUT_SECONDS) throw new AdminUsageError(`--timeout must be a number of seconds from 0.001 up to ${MAX_TIMEOUT_SECONDS}, not "${t}"`, usage);
    timeoutMs = Math.round(n * 1000);
  }
  return { endpoint, caFile: s(v, "ca") || env[ADMIN_ENV.ca] || undefined, certFile, keyFile, serverName: s(v, "server-name") || undefined, timeoutMs };
}

/**
 * Parses `slots|keys|certs ...` (argv from the command word on). Pure: the environment is an
 * argument, and nothing is read or connected. Throws AdminUsageError.
 */
export function parseAdminArgs(argv: string[], env: NodeJS.ProcessEnv): ParsedAdminArgs {
  const familyHelp = argv[1] === "--help" || argv[1] === "-h" || argv[1] === "help";
  if (familyHelp && !COMMANDS.some((c) => c.path === argv[0])) return { help: true, usage: familyUsage(argv[0]) };
  const { spec, args } = findCommand(argv);
  const usage = commandUsage(spec);
  let parsed: { values: Values; positionals: string[] };
  try {
    const options = { ...CONNECTION_OPTIONS, ...spec.options };
    parsed = parseArgs({ args, options, allowPositionals: spec.positionals === true, strict: true }) as { values: Values; positionals: string[] };
  } catch (e) {
    // "--help" next to a mistake still answers with the usage.
    if (args.some((a) => a === "--help" || a === "-h")) return { help: true, usage };
    throw new AdminUsageError((e as Error).message, usage);
  }
  const v = parsed.values;
  if (v.help) return { help: true, usage };
  if (spec.endpointIsPlugin === undefined && s(v, "admin-endpoint") !== undefined && s(v, "endpoint") !== undefined) {
    throw new AdminUsageError("give --endpoint or --admin-endpoint, not both", usage);
  }
  const command = spec.build(v, parsed.positionals, usage);
  return { help: false, command, connection: connectionOf(v, env, spec, usage), json: v.json === true };
}
