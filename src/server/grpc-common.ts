// The gRPC edge's shared pieces, one file per idea: the service definitions from src/gen/, the
// listener (TLS, shutdown), the running-handler count, and the unary handler every RPC goes through.
export { serviceDefinition, type ServiceHandlers } from "./service-definitions.js";
export { bindServer, isLoopbackAddress, newGrpcServer, type RunningServer, type TlsOptions } from "./bind-server.js";
export { EarlyAnswers, methodNames } from "./early-answers.js";
export { InFlight } from "./in-flight.js";
export { DEFAULT_MAX_DEADLINE_MS, unaryHandler, type CallContext, type MethodOptions, type UnaryHandler, type UnaryOptions } from "./unary-handler.js";
export { auditKeyId, auditText, quotedValue } from "../signing/signing-service.js";
export type { AuditSink } from "../signing/ports.js";
