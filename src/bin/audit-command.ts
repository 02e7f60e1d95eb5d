import { parseArgs } from "node:util";
import { auditFilesIn, searchAudit, verifyAuditFiles } from "../audit/index.js";
import { auditSearchText, dateFlag, fieldText, LineOutput, noAuditFiles, noAuditRecords, refuseKeyFlag, UsageError } from "./cli-args.js";

export async function auditCommand(sub: string | undefined, args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args,
    allowPositionals: true,
    options: {
      "dir": { type: "string" },
      "artifact": { type: "string" },
      "key-id": { type: "string" },
      // Elsewhere in the CLI --key is a private-key file (mTLS); here it is refused, never reinterpreted.
      "key": { type: "string" },
      "identity": { type: "string" },
      "from": { type: "string" },
      "to": { type: "string" },
      "json": { type: "boolean" },
      // Options of the database form (audit-pg-command.ts): named here to say why they do not apply.
      "replica": { type: "string" },
      "limit": { type: "string" },
    },
  });
  refuseKeyFlag(values.key);
  if (values.replica !== undefined) {
    throw new UsageError(
      sub === "verify"
        ? "--replica applies to the checkpoints (--cert FILE) or the audit database (--config FILE, --database)"
        : "--replica applies to the audit database (--config FILE or --database); audit files (--dir, FILE...) hold one replica's chain",
    );
  }
  if (values.limit !== undefined) throw new UsageError("--limit applies to audit search over the audit database (--config FILE or --database)");
  const files = values.dir ? auditFilesIn(values.dir) : positionals;
  if (values.dir !== undefined && files.length === 0) throw noAuditFiles(values.dir, sub === "search" ? "search" : "verify");
  if (files.length === 0) throw new UsageError("give audit files, or --dir DIR");
  if (sub === "verify") {
    const r = await verifyAuditFiles(files);
    if (r.ok && r.lines === 0) throw noAuditRecords(values.dir ?? files.join(", "));
    if (r.ok) {
      console.log(`OK: ${r.lines} records in ${files.length} file(s), hash chain intact`);
      for (const p of r.repairs ?? []) {
        console.log(`repaired: ${p.file}:${p.line} (seq ${p.seq}) records that the writer cut ${p.cutBytes} bytes (a torn last line) from ${p.repairedFile} at start-up`);
      }
      return 0;
    }
    console.log(`FAILED at ${r.firstBad?.file}:${r.firstBad?.line}: ${r.firstBad?.reason}`);
    return 1;
  }
  if (sub === "search") {
    // --key-id and --identity are globs, as in the policy: `*` any run of characters, `?` one.
    const q = { artifactDigest: values.artifact, keyId: values["key-id"], identity: values.identity, from: dateFlag(values.from, "--from"), to: dateFlag(values.to, "--to") };
    const out = new LineOutput();
    let n = 0;
    for await (const r of searchAudit(files, q)) {
      n++;
      // The reader is gone (| head): the search stops.
      if (!(await out.line(auditSearchText(r, `#${fieldText(r.seq)}`, values.json)))) return 0;
    }
    if (!values.json) await out.line(`${n} record(s)`);
    return 0;
  }
  throw new UsageError("usage: hsm-signer audit verify|search ...");
}
