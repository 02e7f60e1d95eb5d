export {
  SignerMetrics,
  RPC_METHODS,
  OTHER,
  REQUEST_DURATION_BUCKETS,
  FSYNC_DURATION_BUCKETS,
  LINES_PER_FSYNC_BUCKETS,
  type SignerMetricsOptions,
  type SessionPoolGauges,
  type AuditGauges,
  type CertificateExpiry,
} from "./metrics.js";
export { startOpsServer, parseListen, type OpsServerOptions, type RunningOpsServer, type Readiness } from "./http-server.js";
