import { GrpcCallError, Status, type CallOptions, type GrpcHttp2Channel } from "./grpc-http2-client.js";

/** A method of a service definition generated from proto/ (src/gen/): its name and its messages' codecs. */
export interface GeneratedMethod<Req, Res> {
  name: string;
  requestType: { encode(message: Req): { finish(): Uint8Array } };
  responseType: { decode(input: Uint8Array): Res };
}

/**
 * One unary call of a generated method over the shared channel: the request encoded, the answer
 * decoded. An answer that does not decode is an INTERNAL GrpcCallError naming the method.
 */
export async function callGenerated<Req, Res>(channel: GrpcHttp2Channel, service: { fullName: string }, method: GeneratedMethod<Req, Res>, request: Req, o: CallOptions): Promise<Res> {
  const bytes = method.requestType.encode(request).finish();
  const answer = await channel.unary(`/${service.fullName}/${method.name}`, Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength), o);
  try {
    return method.responseType.decode(answer);
  } catch (e) {
    throw new GrpcCallError(Status.INTERNAL, `the answer to ${method.name} does not decode: ${(e as Error).message}`, undefined, true);
  }
}
