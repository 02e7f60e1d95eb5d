import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { ADMIN_USAGE } from "../admin/admin-args.js";
import { SignerError } from "../errors/index.js";
import { need, UsageError } from "./cli-args.js";
import { AUDIT_STORE_USAGE, isAuditStoreCommand } from "./audit-store-args.js";

// Each command loads only what it needs (dynamic imports), so that quick commands such as the
// custodian ones start in a fraction of the time the service needs to load.

const USAGE = `usage: hsm-signer <command> [options]

commands:
  serve --config FILE                 run the signing service
  config check --config FILE          validate a configuration and exit
  test-chain --config FILE --key-id ID --key-spec SPEC [--root-key-id ID] [--root-key-spec SPEC]
             [--org O] [--state ST] [--country C] [--days N] [--root-out FILE]
                                      create (or reuse) a root CA key and a signing key in the HSM
                                      with a code-signing chain on the token; write the root as PEM
  audit verify (--dir DIR | FILE...)  check the audit hash chain; names the first bad record
  audit search (--dir DIR | FILE...) [--artifact sha256:...] [--key ID] [--identity ID]
               [--from TIME] [--to TIME] [--json]
                                      find audit records ("who signed sha256:...?")
${AUDIT_STORE_USAGE}
  token init --module LIB --label LABEL --so-pin-file FILE --pin-file FILE [--if-missing]
                                      initialize a token (SoftHSM, development); PINs from files
  version

The HSM user PIN comes from hsm.pinFile or the environment variable in hsm.pinEnv (default HSM_SIGNER_PIN).

${ADMIN_USAGE}`;

export async function run(argv: string[]): Promise<number> {
  const [cmd, sub, ...rest] = argv;
  try {
    switch (cmd) {
      case "serve": {
        const { values } = parseArgs({ args: argv.slice(1), options: { config: { type: "string" } } });
        await (await import("./serve.js")).serve(need(values.config, "--config"));
        return -1; // keeps running
      }
      case "config": {
        if (sub !== "check") throw new UsageError("usage: hsm-signer config check --config FILE");
        const { values } = parseArgs({ args: rest, options: { config: { type: "string" } } });
        (await import("./config.js")).loadConfig(need(values.config, "--config"));
        console.log("configuration is valid");
        return 0;
      }
      case "test-chain":
        await (await import("./serve.js")).testChain(argv.slice(1));
        return 0;
      case "audit":
        // The database, checkpoints and export (audit-pg-command.ts); files alone: audit-command.ts.
        if (isAuditStoreCommand(sub, rest)) return await (await import("./audit-pg-command.js")).auditStoreCommand(sub, rest);
        return await (await import("./audit-command.js")).auditCommand(sub, rest);
      case "token":
        if (sub !== "init") throw new UsageError("usage: hsm-signer token init ...");
        (await import("./token-command.js")).tokenInit(rest);
        return 0;
      case "slots":
      case "keys":
      case "certs":
        return await (await import("../admin/index.js")).runAdminCommand(argv);
      case "version":
      case "--version":
        console.log(JSON.parse(readFileSync(new URL("../../../package.json", import.meta.url), "utf8")).version);
        return 0;
      case undefined:
      case "help":
      case "--help":
        console.log(USAGE);
        return cmd === undefined ? 2 : 0;
      default:
        throw new UsageError(`unknown command "${cmd}"`);
    }
  } catch (e) {
    if (e instanceof UsageError || (e as { code?: string }).code === "ERR_PARSE_ARGS_UNKNOWN_OPTION") {
      console.error(`hsm-signer: ${(e as Error).message}\n\n${USAGE}`);
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

run(process.argv.slice(2)).then(
  (code) => {
    if (code >= 0) process.exitCode = code;
  },
  (e: unknown) => {
    console.error(`hsm-signer: ${(e as Error).message}`);
    process.exitCode = 1;
  },
);
