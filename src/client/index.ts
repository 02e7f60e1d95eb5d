export { GrpcHttp2Channel, GrpcCallError, Status, STATUS_NAMES, withRetries, type ChannelOptions, type CallOptions, type RetryOptions } from "./grpc-http2-client.js";
export { callGenerated, type GeneratedMethod } from "./generated-method.js";
export { KeyAdminClient, type KeyAdminClientOptions } from "./key-admin-client.js";
export type * from "./key-admin-client.js";
