export {
  AuditLog,
  DEFAULT_MAX_FILE_BYTES,
  DEFAULT_WRITE_TIMEOUT_MS,
  GENESIS_HASH,
  AUDIT_FILE_PATTERN,
  auditFileName,
  listAuditFiles,
  auditFilesIn,
  hashLine,
  type AuditLogOptions,
  type AuditLogStats,
  type AuditRecordInput,
  type AuditReceipt,
  type TornLine,
} from "./audit-log.js";
export { verifyAuditFiles, searchAudit, type AuditVerifyResult, type AuditRepair, type AuditQuery } from "./verify.js";
export { auditDirProblem, LOCK_FILE_NAME } from "./audit-dir.js";
export { DEFAULT_COMMIT_DELAY_MS, MAX_COMMIT_DELAY_MS } from "./audit-store.js";
