import { status } from "@grpc/grpc-js";
import { assertNever, type ErrorCode } from "../errors/index.js";

/** The one place where catalog codes become gRPC status codes (README, "Error codes"). */
export function grpcStatusOf(code: ErrorCode): status {
  switch (code) {
    case "INVALID_ARGUMENT":
    case "PAYLOAD_TOO_LARGE":
    case "CHAIN_INVALID":
      return status.INVALID_ARGUMENT;
    case "KEY_NOT_FOUND":
      return status.NOT_FOUND;
    case "KEY_UNUSABLE":
    case "FAILED_PRECONDITION":
      return status.FAILED_PRECONDITION;
    case "ALREADY_EXISTS":
      return status.ALREADY_EXISTS;
    case "UNIMPLEMENTED":
      return status.UNIMPLEMENTED;
    case "UNAUTHENTICATED":
      return status.UNAUTHENTICATED;
    case "PERMISSION_DENIED":
    case "KEY_DISABLED":
      return status.PERMISSION_DENIED;
    case "RATE_LIMITED":
    case "POOL_EXHAUSTED":
      return status.RESOURCE_EXHAUSTED;
    case "DEADLINE_EXCEEDED":
      return status.DEADLINE_EXCEEDED;
    case "HSM_UNAVAILABLE":
    case "HSM_PIN_INCORRECT":
    case "AUDIT_UNAVAILABLE":
      return status.UNAVAILABLE;
    case "CONFIG_INVALID":
    case "INTERNAL":
      return status.INTERNAL;
    default:
      return assertNever(code);
  }
}
