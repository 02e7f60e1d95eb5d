import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { PROJECT_ROOT } from "./softhsm.js";

export type { SignResponse, KeyInfo } from "../../src/gen/hsm_signer/v1/signer.js";

/** The Signer client class built from the .proto with grpc-js, as any third-party caller would. */
export function loadSignerClientClass(): grpc.ServiceClientConstructor {
  const def = protoLoader.loadSync(join(PROJECT_ROOT, "proto/hsm_signer/v1/signer.proto"), { keepCase: false, longs: Number, enums: String, defaults: true, oneofs: true });
  const pkg = grpc.loadPackageDefinition(def) as unknown as { hsm_signer: { v1: { Signer: grpc.ServiceClientConstructor } } };
  return pkg.hsm_signer.v1.Signer;
}

let clientClass: grpc.ServiceClientConstructor | undefined;

/** A TLS client for a test server on 127.0.0.1 (whose certificate names localhost; SNI may not carry an IP). */
export function signerClient(ca: Buffer, port: number, clientCert?: { key: Buffer; cert: Buffer }): grpc.Client {
  clientClass ??= loadSignerClientClass();
  const creds = clientCert ? grpc.credentials.createSsl(ca, clientCert.key, clientCert.cert) : grpc.credentials.createSsl(ca);
  return new clientClass(`127.0.0.1:${port}`, creds, { "grpc.ssl_target_name_override": "localhost" });
}

export type SignerMethod = "Sign" | "GetCertificateChain" | "DescribeKey" | "ListKeys";

export function callSigner<T>(client: grpc.Client, method: SignerMethod, req: object, deadline: Date | number = Date.now() + 30_000): Promise<T> {
  const fn = (client as unknown as Record<SignerMethod, (r: object, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r: T) => void) => void>)[method].bind(client);
  return new Promise<T>((resolve, reject) => fn(req, { deadline }, (err, res) => (err ? reject(err) : resolve(res))));
}
