import { readFileSync } from "node:fs";
import { auditFilesIn } from "../../src/audit/index.js";

/** Every record of the audit files in `dir`, in order, parsed (a test's view of what the service wrote). */
export function auditRecordsIn<T = Record<string, unknown>>(dir: string): T[] {
  return auditFilesIn(dir).flatMap((f) =>
    readFileSync(f, "utf8")
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l) as T),
  );
}
