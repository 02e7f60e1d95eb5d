export { GrpcHttp2Channel, GrpcCallError, Status, STATUS_NAMES, withRetries, type ChannelOptions, type CallOptions, type RetryOptions } from "./grpc-http2-client.js";
export * from "./messages.js";
