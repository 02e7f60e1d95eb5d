// Kept apart from audit-pg-command.ts so that dispatching a command line does not load pg.

/** True when an `audit` command line is for audit-pg-command.ts (the database, checkpoints, export). */
export function isAuditStoreCommand(sub: string | undefined, args: string[]): boolean {
  if (sub === "export" || sub === "migrate") return true;
  return args.some((a) => /^--(config|database|cert)(=|$)/.test(a));
}
