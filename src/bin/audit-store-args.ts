// Kept apart from audit-pg-command.ts so that the command line's usage does not load pg.
const DATABASE_URL_ENV = "HSM_SIGNER_AUDIT_DATABASE_URL";

export const AUDIT_STORE_USAGE = `  audit verify (--dir DIR | --config FILE | --database) --cert FILE [--replica ID] [--json]
                                      check chains and their HSM-signed checkpoints; names each
                                      edited, inserted, deleted, reordered record, cut tail,
                                      removed chain, re-hashed chain, forged checkpoint
  audit search (--config FILE | --database) [--artifact sha256:...] [--key-id ID] [--identity ID]
               [--from TIME] [--to TIME] [--replica ID] [--json]
                                      search the audit database across replicas
  audit export (--config FILE | --database) --replica ID --out DIR
                                      write a replica's chain and checkpoints as files to verify offline
  audit migrate (--config FILE | --database)
                                      create or migrate the audit schema (as its owner)
  The database: audit.postgres of the service configuration (--config), or with --database the
  connection string in $${DATABASE_URL_ENV} or the PG* environment variables.`;

/** True when an `audit` command line is for this module (the database, checkpoints, export). */
export function isAuditStoreCommand(sub: string | undefined, args: string[]): boolean {
  if (sub === "export" || sub === "migrate") return true;
  return args.some((a) => /^--(config|database|cert)(=|$)/.test(a));
}
