import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { ADMIN_USAGE } from "../admin/admin-args.js";
import { SignerError } from "../errors/index.js";
import { need, UsageError } from "./cli-args.js";
import { isAuditStoreCommand } from "./audit-store-args.js";

// Each command loads only what it needs (dynamic imports), so that quick commands such as the
// custodian ones start in a fraction of the time the service needs to load.

interface LocalCommand {
  /** "serve", "config check": the words that name the command. */
  path: string;
  /** Its usage lines: one that starts with `path` is another form of the command, the others continue the line before. */
  synopsis: string[];
  about: string[];
}

/** The service-side commands; the custodian ones (slots, keys, certs) live in admin/admin-args.ts. */
const LOCAL_COMMANDS: LocalCommand[] = [
  { path: "serve", synopsis: ["serve --config FILE"], about: ["run the signing service"] },
  {
    path: "config check",
    synopsis: ["config check --config FILE"],
    about: [
      "validate a configuration and what it names (policy, PIN, PKCS#11 module,",
      "TLS and JWKS files, audit directory or database settings; no connection to the database)",
      "as serve would; every problem at once",
    ],
  },
  {
    path: "test-chain",
    synopsis: ["test-chain --config FILE --key-id ID --key-spec SPEC [--root-key-id ID] [--root-key-spec SPEC]", "[--org O] [--state ST] [--country C] [--days N] [--root-out FILE]"],
    about: ["create (or reuse) a root CA key and a signing key in the HSM", "with a code-signing chain on the token; write the root as PEM"],
  },
  {
    path: "audit verify",
    synopsis: ["audit verify (--dir DIR | FILE...)", "audit verify (--dir DIR | --config FILE | --database) --cert FILE [--replica ID] [--json]"],
    about: [
      "check the audit hash chain (files: the first form); with --cert (required for the database)",
      "also the HSM-signed checkpoints: names each edited, inserted, deleted, reordered record,",
      "cut tail, removed chain, re-hashed chain, forged checkpoint, and records not yet checkpointed",
    ],
  },
  {
    path: "audit search",
    synopsis: [
      "audit search (--dir DIR | FILE...) [--artifact sha256:...] [--key-id GLOB] [--identity GLOB] [--from TIME] [--to TIME] [--json]",
      "audit search (--config FILE | --database) [the same filters] [--replica ID] [--limit N] [--json]",
    ],
    about: ['find audit records ("who signed sha256:...?") in files, or across replicas in the database'],
  },
  {
    path: "audit export",
    synopsis: ["audit export (--config FILE | --database) --replica ID --out DIR"],
    about: ["write a replica's chain and checkpoints as files to verify offline"],
  },
  {
    path: "audit migrate",
    synopsis: ["audit migrate (--config FILE | --database) [--grant-to ROLE]"],
    about: [
      "create or migrate the audit schema (as its owner); --grant-to: then grant ROLE (the",
      "service's) SELECT, INSERT on audit_records, audit_checkpoints, audit_replicas and SELECT on",
      "audit_schema_version, nothing else; --database: the connection string in",
      "$HSM_SIGNER_AUDIT_DATABASE_URL or the PG* variables",
    ],
  },
  {
    path: "token init",
    synopsis: ["token init --module LIB --label LABEL --so-pin-file FILE --pin-file FILE [--if-missing]"],
    about: ["initialize a token (SoftHSM, development); PINs from files"],
  },
  { path: "version", synopsis: ["version"], about: ["print the version"] },
];

const ABOUT_COLUMN = 38;
const PIN_NOTE = "The HSM user PIN comes from hsm.pinFile or the environment variable in hsm.pinEnv (default HSM_SIGNER_PIN).";

/** A usage line that starts another form of the command (not a continuation of the line before). */
const isForm = (c: LocalCommand, line: string): boolean => line.startsWith(`${c.path} `);

function synopsisOf(c: LocalCommand): string {
  const [first = "", ...more] = c.synopsis;
  const lines = [`  ${first}`, ...more.map((l) => (isForm(c, l) ? `  ${l}` : `             ${l}`))];
  const about = [...c.about];
  if (lines.length === 1 && first.length + 2 < ABOUT_COLUMN) lines[0] = `${(lines[0] as string).padEnd(ABOUT_COLUMN)}${about.shift() ?? ""}`;
  return [...lines, ...about.map((a) => `${" ".repeat(ABOUT_COLUMN)}${a}`)].join("\n");
}

/** `hsm-signer --help`: every command. */
const USAGE = `usage: hsm-signer <command> [options]   (hsm-signer <command> --help: one command)

commands:
${LOCAL_COMMANDS.map(synopsisOf).join("\n")}

${PIN_NOTE}

${ADMIN_USAGE}`;

/** What a command line that names no command gets (exit 2): the command names, not 70 lines of options. */
const OVERVIEW = `usage: hsm-signer <command> [options]
commands: serve, config check, test-chain, audit verify|search|export|migrate, token init, version,
          slots, keys list|generate|rotate|disable|enable|destroy|test-chain|notation-setup,
          certs csr|import|chain
hsm-signer <command> --help prints one command's usage; hsm-signer --help prints them all.`;

/** One command: its synopsis, then what it does. */
function usageOf(c: LocalCommand): string {
  const [first = "", ...more] = c.synopsis;
  const pin = ["serve", "config check", "test-chain"].includes(c.path) ? `\n\n${PIN_NOTE}` : "";
  return [`usage: hsm-signer ${first}`, ...more.map((l) => (isForm(c, l) ? `       hsm-signer ${l}` : `         ${l}`)), "", ...c.about].join("\n") + pin;
}

/** The usage of every "audit ..." (or "config ...", "token ...") command; undefined for a word that names none. */
function familyUsage(cmd: string | undefined): string | undefined {
  const family = LOCAL_COMMANDS.filter((c) => c.path.startsWith(`${cmd} `));
  return family.length ? `usage:\n${family.map(synopsisOf).join("\n")}` : undefined;
}

function commandOf(cmd: string | undefined, sub: string | undefined): LocalCommand | undefined {
  return LOCAL_COMMANDS.find((c) => c.path === cmd) ?? LOCAL_COMMANDS.find((c) => c.path === `${cmd} ${sub}`);
}

const isHelp = (a: string): boolean => a === "--help" || a === "-h";
const ADMIN_FAMILIES = new Set(["slots", "keys", "certs"]);

/** A usage error of one command: its message and that command's usage only. */
class CommandUsageError extends Error {
  constructor(
    message: string,
    readonly usage: string,
  ) {
    super(message);
  }
}

export async function run(argv: string[]): Promise<number> {
  const [cmd, sub, ...rest] = argv;
  // The KeyAdmin client's close() ends its connection, a handshake under way included: the
  // process ends by itself once the answer is out.
  if (cmd !== undefined && ADMIN_FAMILIES.has(cmd)) return (await import("../admin/index.js")).runAdminCommand(argv);
  if (cmd === undefined) {
    console.error(OVERVIEW);
    return 2;
  }
  if (cmd === "help" || isHelp(cmd)) {
    if (sub !== undefined && ADMIN_FAMILIES.has(sub)) return (await import("../admin/index.js")).runAdminCommand([...argv.slice(1), "--help"]);
    const named = commandOf(sub, rest[0]);
    const text = sub === undefined ? USAGE : named ? usageOf(named) : familyUsage(sub);
    if (text === undefined) {
      console.error(`hsm-signer: unknown command "${sub}"\n\n${OVERVIEW}`);
      return 2;
    }
    console.log(text);
    return 0;
  }
  const command = commandOf(cmd === "--version" ? "version" : cmd, sub);
  const usage = command ? usageOf(command) : familyUsage(cmd);
  try {
    if (!command) {
      if (usage === undefined) throw new CommandUsageError(`unknown command "${cmd}"`, OVERVIEW);
      if (sub !== undefined && isHelp(sub)) {
        console.log(usage);
        return 0;
      }
      throw new CommandUsageError(sub === undefined ? `"${cmd}" needs a subcommand` : `unknown command "${cmd} ${sub}"`, usage);
    }
    const args = argv.slice(command.path.split(" ").length);
    if (args.some(isHelp)) {
      console.log(usage);
      return 0;
    }
    return await dispatch(command.path, args);
  } catch (e) {
    if (e instanceof CommandUsageError) {
      console.error(`hsm-signer: ${e.message}\n\n${e.usage}`);
      return 2;
    }
    if (e instanceof UsageError || (e as { code?: string }).code?.startsWith("ERR_PARSE_ARGS_")) {
      console.error(`hsm-signer: ${(e as Error).message}\n\n${usage ?? OVERVIEW}`);
      return 2;
    }
    if (e instanceof SignerError) {
      console.error(`hsm-signer: ${e.message}`);
      return 1;
    }
    console.error(`hsm-signer: unexpected failure: ${(e as Error).message}`);
    return 1;
  }
}

async function dispatch(path: string, args: string[]): Promise<number> {
  switch (path) {
    case "serve": {
      const { values } = parseArgs({ args, options: { config: { type: "string" } } });
      await (await import("./serve.js")).serve(need(values.config, "--config"));
      return -1; // keeps running
    }
    case "config check": {
      const { values } = parseArgs({ args, options: { config: { type: "string" } } });
      const file = need(values.config, "--config");
      const checked = (await import("./config-check.js")).checkConfig(file);
      console.log(`configuration is valid (checked: ${checked.join(", ")})`);
      return 0;
    }
    case "test-chain":
      await (await import("./serve.js")).testChain(args);
      return 0;
    case "audit verify":
    case "audit search":
    case "audit export":
    case "audit migrate": {
      // The database, checkpoints and export (audit-pg-command.ts); files alone: audit-command.ts.
      const sub = path.slice("audit ".length);
      if (isAuditStoreCommand(sub, args)) return await (await import("./audit-pg-command.js")).auditStoreCommand(sub, args);
      return await (await import("./audit-command.js")).auditCommand(sub, args);
    }
    case "token init":
      (await import("./token-command.js")).tokenInit(args);
      return 0;
    case "version":
      parseArgs({ args, options: {} });
      console.log(JSON.parse(readFileSync(new URL("../../../package.json", import.meta.url), "utf8")).version);
      return 0;
    default:
      throw new UsageError(`unknown command "${path}"`);
  }
}

run(process.argv.slice(2)).then(
  (code) => {
    if (code >= 0) process.exitCode = code;
  },
  (e: unknown) => {
    console.error(`hsm-signer: ${(e as Error).message}`);
    process.exitCode = 1;
  },
);
