import { BinaryReader, type BinaryWriter } from "@bufbuild/protobuf/wire";
import type * as grpc from "@grpc/grpc-js";
import { SignRequest } from "../gen/hsm_signer/v1/signer.js";

/** A message's codec in src/gen/ (ts-proto's MessageFns, which it does not export). */
interface MessageCodec {
  encode(message: never, writer?: BinaryWriter): BinaryWriter;
  decode(input: BinaryReader | Uint8Array, length?: number): unknown;
}

interface GeneratedMethod {
  readonly name: string;
  readonly requestType: MessageCodec;
  readonly responseType: MessageCodec;
  readonly requestStream: boolean;
  readonly responseStream: boolean;
}

/** A service of src/gen/ (ts-proto's generic definitions: no grpc-js in them). */
export interface GeneratedService {
  readonly fullName: string;
  readonly methods: Readonly<Record<string, GeneratedMethod>>;
}

type MessageOf<C> = C extends { decode(input: Uint8Array): infer T } ? T : never;
type Method<S extends GeneratedService, K extends keyof S["methods"]> = S["methods"][K];

/** The handlers of a generated service, by the method names of the .proto, typed with its messages. */
export type ServiceHandlers<S extends GeneratedService> = {
  [K in keyof S["methods"] as Method<S, K>["name"]]: grpc.handleUnaryCall<MessageOf<Method<S, K>["requestType"]>, MessageOf<Method<S, K>["responseType"]>>;
};

const asBuffer = (bytes: Uint8Array): Buffer => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);

/**
 * The grpc-js service definition of a service of src/gen/, the wire contract generated from
 * proto/: its paths are /<package>.<Service>/<Method>, its bodies go through the generated codecs.
 */
export function serviceDefinition<S extends GeneratedService>(service: S): grpc.ServiceDefinition {
  return Object.fromEntries(
    Object.entries(service.methods).map(([originalName, m]) => {
      const request = m.requestType;
      const response = m.responseType;
      const definition: grpc.MethodDefinition<unknown, unknown> = {
        path: `/${service.fullName}/${m.name}`,
        originalName,
        requestStream: m.requestStream,
        responseStream: m.responseStream,
        requestSerialize: (message) => asBuffer(request.encode(message as never).finish()),
        // A body that is not the method's message would make grpc-js answer INTERNAL itself,
        // before the handler, so without an audit line. It reaches the handler as a marker
        // instead, and the handler refuses it like any other bad request (INVALID_ARGUMENT, audited).
        requestDeserialize: (bytes) => {
          try {
            return lastOneofMemberOnly(request, bytes, request.decode(bytes));
          } catch (e) {
            return { [MALFORMED]: `the request body is not a ${m.name} request message: ${e instanceof Error ? e.message : String(e)}` };
          }
        },
        responseSerialize: (message) => asBuffer(response.encode(message as never).finish()),
        responseDeserialize: (bytes) => response.decode(bytes),
      };
      return [m.name, definition];
    }),
  );
}

/** Marks a request body that did not decode (see serviceDefinition). */
const MALFORMED = Symbol("malformed request");

/** Why a request body did not decode, when it did not (the unary handler refuses it, audited). */
export function malformedReason(request: unknown): string | undefined {
  return request !== null && typeof request === "object" && MALFORMED in request ? String((request as Record<symbol, unknown>)[MALFORMED]) : undefined;
}

/** The oneofs of the requests this edge decodes, by their members' names (SignRequest's `input`). */
const ONEOFS = new Map<MessageCodec, readonly (readonly string[])[]>([[SignRequest, [["payload", "digest"] satisfies (keyof SignRequest)[]]]]);

/**
 * A parser keeps only the last member of a oneof that it meets on the wire (protobuf language
 * guide, "Oneof"); ts-proto's oneof=properties keeps each one. When a body holds more than one,
 * its fields are decoded one at a time to find the last, and the others are cleared.
 */
function lastOneofMemberOnly(type: MessageCodec, bytes: Uint8Array, message: unknown): unknown {
  const fields = message as Record<string, unknown>;
  for (const members of ONEOFS.get(type) ?? []) {
    if (members.filter((name) => fields[name] !== undefined).length < 2) continue;
    const reader = new BinaryReader(bytes);
    let last: string | undefined;
    while (reader.pos < reader.len) {
      const start = reader.pos;
      const tag = reader.uint32();
      reader.skip(tag & 7, tag >>> 3);
      const one = type.decode(bytes.subarray(start, reader.pos)) as Record<string, unknown>;
      last = members.find((name) => one[name] !== undefined) ?? last;
    }
    for (const name of members) if (name !== last) fields[name] = undefined;
  }
  return message;
}
