export {
  AuditLog,
  DEFAULT_MAX_FILE_BYTES,
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
export { verifyAuditFiles, searchAudit, type AuditVerifyResult, type AuditQuery } from "./verify.js";
