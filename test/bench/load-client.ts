/**
 * The load generator as its own process, so that the server under test has its event loop to
 * itself, as it does in production where build farms call it over the network. It is started once
 * (WarmLoadClient, warm-load-client.ts) and runs one load per request it gets over IPC, keeping
 * one connection per server and client kind: the client's code is compiled by V8 once for the
 * whole benchmark, not again in every row's warm-up. A fresh client per row was still being
 * optimized during its window, and a slower client lowers the server's calls per wake-up, and so
 * raises its CPU per call: EC-256 Sign at 8 in flight, 0.515 and 0.552 ms per call with a fresh
 * client after 300 ms of warm-up, 0.478 and 0.438 after 2 s (issue 14).
 *
 * Each request is a LoadRequest; the answer is { result: LoadResult } or { error: string }. With
 * "server" ({pid, threads}), the CPU a result reports is that process's, read from /proc at the
 * edges of the window (load.ts).
 */
import { readFileSync } from "node:fs";
import type * as grpc from "@grpc/grpc-js";
import { callSigner, signerClient, type SignResponse } from "../helpers/signer-client.js";
import { GrpcHttp2Channel } from "../../src/client/grpc-http2-client.js";
import { SignerDefinition, SignRequest, SignResponse as SignResponseCodec } from "../../src/gen/hsm_signer/v1/signer.js";
import { runLoad, type LoadOptions } from "./load.js";

export interface LoadRequest {
  port: number;
  caFile: string;
  /** A Sign request, its digest in base64. */
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

type Connection = { kind: "grpc-js"; client: grpc.Client } | { kind: "http2"; channel: GrpcHttp2Channel };

const connections = new Map<string, Connection>();
const SIGN_PATH = `/${SignerDefinition.fullName}/${SignerDefinition.methods.sign.name}`;

function connection(a: LoadRequest): Connection {
  const kind = a.client ?? "grpc-js";
  const key = `${kind} ${a.port} ${a.caFile}`;
  let c = connections.get(key);
  if (!c) {
    const ca = readFileSync(a.caFile);
    // The project's own lightweight client (src/client): one HTTP/2 session, calls multiplexed.
    c = kind === "http2" ? { kind, channel: new GrpcHttp2Channel({ endpoint: `127.0.0.1:${a.port}`, ca, serverName: "localhost" }) } : { kind, client: signerClient(ca, a.port) };
    connections.set(key, c);
  }
  return c;
}

/** One closed-loop call of the request: a Sign whose signature must have the expected length. */
function operation(a: LoadRequest): () => Promise<unknown> {
  const req = { ...a.req, digest: a.req.digest === undefined ? undefined : Buffer.from(a.req.digest, "base64") };
  const check = (signature: Buffer): void => {
    if (signature.length !== a.signatureLength) throw new Error(`${signature.length}-byte signature, expected ${a.signatureLength}`);
  };
  const c = connection(a);
  if (c.kind === "http2") {
    const defaults: SignRequest = { keyId: "", payload: undefined, digest: undefined, hashAlgorithm: "", keySpec: "", keyVersion: 0 };
    const body = Buffer.from(SignRequest.encode({ ...defaults, ...req }).finish());
    return async () => check(SignResponseCodec.decode(await c.channel.unary(SIGN_PATH, body, { deadline: Date.now() + 10_000 })).signature);
  }
  return async () => check((await callSigner<SignResponse>(c.client, "Sign", req)).signature);
}

if (!process.send) {
  process.stderr.write("load-client.js takes its loads over IPC: start it with WarmLoadClient (warm-load-client.ts)\n");
  process.exit(2);
}
process.on("message", (a: LoadRequest) => {
  const load: LoadOptions = { concurrency: a.concurrency, warmupMs: a.warmupMs, warmupCalls: a.warmupCalls, durationMs: a.durationMs, server: a.server };
  let run: Promise<unknown>;
  try {
    run = runLoad(operation(a), load);
  } catch (e) {
    run = Promise.reject(e);
  }
  run.then(
    (result) => process.send?.({ result }),
    (e: unknown) => process.send?.({ error: e instanceof Error ? (e.stack ?? e.message) : String(e) }),
  );
});
// Asked to stop: close the connections so that the process can end on its own.
process.on("disconnect", () => {
  for (const c of connections.values()) {
    if (c.kind === "http2") c.channel.close();
    else c.client.close();
  }
});
