import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

/** proto/ at the project root, three levels above dist/src/server/. */
export const PROTO_DIR = resolve(dirname(fileURLToPath(import.meta.url)), "../../../proto");

/** A service of package hsm_signer.v1 from proto/, with the loader options every edge uses. */
export function loadService(protoFile: "signer.proto" | "key_admin.proto", service: "Signer" | "KeyAdmin"): grpc.ServiceDefinition {
  const def = protoLoader.loadSync(resolve(PROTO_DIR, "hsm_signer/v1", protoFile), { keepCase: false, longs: Number, enums: String, defaults: true, oneofs: true });
  const v1 = (grpc.loadPackageDefinition(def).hsm_signer as grpc.GrpcObject).v1 as grpc.GrpcObject;
  const methods = (v1[service] as grpc.ServiceClientConstructor).service;
  // A body that is not the method's message would make grpc-js answer INTERNAL itself, before
  // the handler, so without an audit line. It reaches the handler as a marker instead, and the
  // handler refuses it like any other bad request (INVALID_ARGUMENT, audited).
  return Object.fromEntries(
    Object.entries(methods).map(([name, m]) => {
      const deserialize = m.requestDeserialize;
      return [
        name,
        {
          ...m,
          requestDeserialize: (bytes: Buffer): unknown => {
            try {
              return deserialize(bytes);
            } catch (e) {
              return { [MALFORMED]: `the request body is not a ${m.path.split("/")[2] ?? "valid"} request message: ${e instanceof Error ? e.message : String(e)}` };
            }
          },
        },
      ];
    }),
  ) as grpc.ServiceDefinition;
}

/** Marks a request body that did not decode (see loadService). */
const MALFORMED = Symbol("malformed request");

/** Why a request body did not decode, when it did not (the unary handler refuses it, audited). */
export function malformedReason(request: unknown): string | undefined {
  return request !== null && typeof request === "object" && MALFORMED in request ? String((request as Record<symbol, unknown>)[MALFORMED]) : undefined;
}
