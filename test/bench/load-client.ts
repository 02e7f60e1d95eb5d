/**
 * The load generator as its own process, so that the server under test has its event loop to
 * itself, as it does in production where build farms call it over the network. Usage:
 *   node load-client.js '{"port":N,"caFile":"...","req":{...,"digest":"<base64>"},"concurrency":16,"warmupMs":500,"durationMs":4000}'
 * Prints one JSON LoadResult line. With "server" ({pid, threads}), the CPU it reports is that
 * process's, read from /proc at the edges of the window (load.ts).
 */
import { readFileSync } from "node:fs";
import { callSigner, signerClient, type SignResponse } from "../helpers/signer-client.js";
import { GrpcHttp2Channel } from "../../src/client/grpc-http2-client.js";
import { SignerDefinition, SignRequest, SignResponse as SignResponseCodec } from "../../src/gen/hsm_signer/v1/signer.js";
import { runLoad, type LoadOptions } from "./load.js";

interface Args {
  port: number;
  caFile: string;
  req: Record<string, unknown> & { digest?: string };
  signatureLength: number;
  concurrency: number;
  warmupMs: number;
  durationMs: number;
  warmupCalls?: number;
  server?: LoadOptions["server"];
  /** "grpc-js" (default) or "http2" (src/client's GrpcHttp2Channel). */
  client?: "grpc-js" | "http2";
}

const a = JSON.parse(process.argv[2] ?? "{}") as Args;
const req = { ...a.req, digest: a.req.digest === undefined ? undefined : Buffer.from(a.req.digest, "base64") };
const ca = readFileSync(a.caFile);
const load: LoadOptions = { concurrency: a.concurrency, warmupMs: a.warmupMs, warmupCalls: a.warmupCalls, durationMs: a.durationMs, server: a.server };
const check = (signature: Buffer): void => {
  if (signature.length !== a.signatureLength) throw new Error(`${signature.length}-byte signature, expected ${a.signatureLength}`);
};
if (a.client === "http2") {
  // The project's own lightweight client (src/client): one HTTP/2 session, calls multiplexed.
  const channel = new GrpcHttp2Channel({ endpoint: `127.0.0.1:${a.port}`, ca, serverName: "localhost" });
  const defaults: SignRequest = { keyId: "", payload: undefined, digest: undefined, hashAlgorithm: "", keySpec: "", keyVersion: 0 };
  const body = Buffer.from(SignRequest.encode({ ...defaults, ...req }).finish());
  const path = `/${SignerDefinition.fullName}/${SignerDefinition.methods.sign.name}`;
  try {
    const r = await runLoad(async () => check(SignResponseCodec.decode(await channel.unary(path, body, { deadline: Date.now() + 10_000 })).signature), load);
    process.stdout.write(`${JSON.stringify(r)}\n`);
  } finally {
    channel.close();
  }
} else {
  const client = signerClient(ca, a.port);
  try {
    const r = await runLoad(async () => check((await callSigner<SignResponse>(client, "Sign", req)).signature), load);
    process.stdout.write(`${JSON.stringify(r)}\n`);
  } finally {
    client.close();
  }
}
