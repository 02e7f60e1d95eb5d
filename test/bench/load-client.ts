/**
 * The load generator as its own process, so that the server under test has its event loop to
 * itself, as it does in production where build farms call it over the network. Usage:
 *   node load-client.js '{"port":N,"caFile":"...","req":{...,"digest":"<base64>"},"concurrency":16,"warmupMs":500,"durationMs":4000}'
 * Prints one JSON LoadResult line.
 */
import { readFileSync } from "node:fs";
import { callSigner, signerClient, type SignResponse } from "../helpers/signer-client.js";
import { runLoad } from "./load.js";

interface Args {
  port: number;
  caFile: string;
  req: Record<string, unknown> & { digest?: string };
  signatureLength: number;
  concurrency: number;
  warmupMs: number;
  durationMs: number;
}

const a = JSON.parse(process.argv[2] ?? "{}") as Args;
const req = { ...a.req, digest: a.req.digest === undefined ? undefined : Buffer.from(a.req.digest, "base64") };
const client = signerClient(readFileSync(a.caFile), a.port);
try {
  const r = await runLoad(async () => {
    const res = await callSigner<SignResponse>(client, "Sign", req);
    if (res.signature.length !== a.signatureLength) throw new Error(`${res.signature.length}-byte signature, expected ${a.signatureLength}`);
  }, { concurrency: a.concurrency, warmupMs: a.warmupMs, durationMs: a.durationMs });
  process.stdout.write(`${JSON.stringify(r)}\n`);
} finally {
  client.close();
}
