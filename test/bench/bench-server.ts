/**
 * One server under test as its own process (test/bench/bench.ts forks it), so that the CPU the
 * benchmark charges to a server is that process's and nothing else's: not the benchmark's own
 * bookkeeping, not the load client (a process of its own, load-client.ts), not another server.
 *
 *   service      the real Signer server (TLS, policy, durable audit) on the fixture's token
 *   service-nosync  the same, the audit written without fdatasync (audit.fsync: false)
 *   audit-off    the same with an audit sink that writes nothing, to price the audit
 *   echo         a bare grpc-js unary server with the same TLS answering a fixed Sign response
 *   echo-sign    the same bare server, whose Sign first signs the request's digest with its key
 *                through the HSM's signing threads (the raw path): gRPC, TLS and the HSM signature,
 *                nothing of the service (no policy, no audit), the floor a gRPC signing server on
 *                grpc-js pays (scripts/bench-cpu.js only)
 *   raw          no server: runs the raw PKCS#11 load (signDigest through the session pool and the
 *                signing threads) in this process when asked, and measures itself
 *
 *   h2-echo, h2-sign  echo and echo-sign without grpc-js: a gRPC unary answer written on node:http2
 *                directly (no deadlines, metadata, interceptors or errors: the least any gRPC server
 *                on Node does), to price grpc-js's own share (scripts/bench-cpu.js only)
 *
 * It reports which of its threads are which (main, HSM signing threads, the audit writer thread,
 * libuv pool, the rest: V8's platform threads for GC and compilation), so that the load client can
 * split the server's CPU.
 * Talks to the benchmark over the IPC channel (advanced serialization): see BenchServerRequest.
 */
import { readdirSync } from "node:fs";
import { stat } from "node:fs/promises";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import * as grpc from "@grpc/grpc-js";
import { AuditLog } from "../../src/audit/index.js";
import { frameMessage } from "../../src/client/grpc-http2-client.js";
import { openHsm, type Hsm } from "../../src/hsm/index.js";
import { digest as hashBytes, keySpecInfo, type HashAlgorithm, type KeySpec } from "../../src/signing/key-spec.js";
import { keyIdOf, startTestServer, type Fixture } from "../helpers/fixture.js";
import { loadSignerClientClass } from "../helpers/signer-client.js";
import { runLoad, type LoadOptions, type LoadResult, type ThreadGroups } from "./load.js";

export type BenchServerMode = "service" | "service-nosync" | "audit-off" | "echo" | "echo-sign" | "raw" | "h2-echo" | "h2-sign";

export interface BenchServerStart {
  mode: BenchServerMode;
  token: { module: string; label: string; pin: string; dir: string };
  tls: { serverCert: Uint8Array; serverKey: Uint8Array; ca: Uint8Array };
  /** echo: the Sign response to answer (a real EC-256 answer). */
  fixed?: Record<string, unknown>;
}

export type BenchServerRequest = { op: "raw"; spec: KeySpec; load: LoadOptions } | { op: "stats" } | { op: "stop" };

export type BenchServerMessage =
  | { op: "ready"; port: number; pid: number; threads: ThreadGroups }
  | { op: "raw"; result: LoadResult }
  | { op: "stats"; fsyncs: number; fsyncSeconds: number; fsyncLines: number }
  | { op: "error"; message: string };

const send = (m: BenchServerMessage): void => void process.send?.(m);
const tids = (): Set<string> => new Set(readdirSync("/proc/self/task"));
const added = (before: Set<string>, after: Set<string>): string[] => [...after].filter((t) => !before.has(t));

/**
 * A setting for this run from the environment (default: the service's), to compare two values
 * back to back: BENCH_ANSWER_HOLD_MS (hsm.answerHoldMs), BENCH_COMMIT_DELAY_MS (audit.commitDelayMs),
 * BENCH_SESSIONS (hsm.sessions, and so the signing threads; 4 unless set).
 */
function benchNumber(name: string): number | undefined {
  const v = process.env[name];
  return v === undefined || v === "" ? undefined : Number(v);
}

const POOL_SIZE = benchNumber("BENCH_SESSIONS") ?? 4;

async function main(start: BenchServerStart): Promise<void> {
  const atStart = tids();
  // The libuv pool starts with its first request, which the ES module loader has usually made
  // already: then its threads are the newest ones (the threads are numbered in order of creation).
  await stat(start.token.dir);
  const withPool = tids();
  const poolSize = Number(process.env.UV_THREADPOOL_SIZE) || 4;
  const started = added(atStart, withPool);
  const libuv = started.length > 0 ? started : [...atStart].sort((a, b) => Number(a) - Number(b)).slice(-poolSize);
  let hsm: Hsm | undefined;
  let sign: string[] = [];
  if (start.mode !== "echo" && start.mode !== "h2-echo") {
    hsm = await openHsm({
      modulePath: start.token.module,
      tokenLabel: start.token.label,
      pin: start.token.pin,
      poolSize: POOL_SIZE,
      keyRefreshMs: 0,
      answerHoldMs: benchNumber("BENCH_ANSWER_HOLD_MS"),
    });
    // The signing threads start one after another (sign-threads.ts): wait for all of them.
    for (let i = 0; i < 200 && sign.length < POOL_SIZE; i++) {
      await new Promise((r) => setTimeout(r, 50));
      sign = added(withPool, tids());
    }
  }
  const threads: ThreadGroups = { main: [String(process.pid)], sign, libuv };

  const fsync = { fsyncs: 0, fsyncSeconds: 0, fsyncLines: 0 };
  let close: () => Promise<void> = () => Promise.resolve();
  let port = 0;
  if (start.mode === "h2-echo" || start.mode === "h2-sign") {
    const h2 = await startHttp2Server(start, hsm);
    port = h2.port;
    close = h2.close;
  } else if (start.mode === "echo" || start.mode === "echo-sign") {
    const Signer = loadSignerClientClass();
    const server = new grpc.Server();
    const fixed = start.fixed ?? {};
    const unimplemented: grpc.handleUnaryCall<unknown, unknown> = (_call, cb) => cb({ code: grpc.status.UNIMPLEMENTED });
    const keys = hsm?.keys;
    const echoSign: grpc.handleUnaryCall<{ keyId: string; digest: Buffer; hashAlgorithm: HashAlgorithm }, unknown> = (call, cb) => {
      const { keyId, digest, hashAlgorithm } = call.request;
      if (!keys) return cb({ code: grpc.status.UNAVAILABLE });
      keys
        .getKey(keyId)
        .then((key) => keys.signDigest(key, hashAlgorithm, digest))
        .then(
          (signature) => cb(null, { ...fixed, signature }),
          (e: unknown) => cb({ code: grpc.status.INTERNAL, details: String(e) }),
        );
    };
    server.addService(Signer.service, {
      Sign: (start.mode === "echo" ? (_call, cb) => cb(null, fixed) : echoSign) as grpc.handleUnaryCall<unknown, unknown>,
      GetCertificateChain: unimplemented,
      DescribeKey: unimplemented,
      ListKeys: unimplemented,
    });
    const creds = grpc.ServerCredentials.createSsl(null, [{ private_key: Buffer.from(start.tls.serverKey), cert_chain: Buffer.from(start.tls.serverCert) }], false);
    port = await new Promise<number>((res, rej) => server.bindAsync("127.0.0.1:0", creds, (err, p) => (err ? rej(err) : res(p))));
    close = () => new Promise<void>((res) => server.tryShutdown(() => res()));
  } else if (start.mode !== "raw" && hsm) {
    const h = hsm;
    // startTestServer takes what it needs of a fixture: the token directory, the TLS material, the key store.
    const f = {
      token: { dir: start.token.dir },
      tls: { serverCert: Buffer.from(start.tls.serverCert), serverKey: Buffer.from(start.tls.serverKey), ca: Buffer.from(start.tls.ca) },
      hsm: { keys: h.keys },
    } as unknown as Fixture;
    const noAudit = { append: () => Promise.resolve({ sequence: 0, lineHash: "" }) };
    const onFsync = (seconds: number, lines: number): void => {
      fsync.fsyncs++;
      fsync.fsyncSeconds += seconds;
      fsync.fsyncLines += lines;
    };
    const beforeAudit = tids();
    const audit =
      start.mode === "audit-off"
        ? noAudit
        : await AuditLog.open({ dir: join(start.token.dir, `bench-audit-${process.pid}`), fsync: start.mode === "service", onFsync, commitDelayMs: benchNumber("BENCH_COMMIT_DELAY_MS") });
    // The audit log's writer thread is the one thread its opening started.
    if (audit instanceof AuditLog) threads.audit = added(beforeAudit, tids());
    const server = await startTestServer(f, { audit });
    port = server.port;
    close = async () => {
      await server.close(2000);
      if (audit instanceof AuditLog) await audit.close();
    };
  }
  send({ op: "ready", port, pid: process.pid, threads });

  process.on("message", (m: BenchServerRequest) => {
    void (async () => {
      if (m.op === "stats") return send({ op: "stats", ...fsync });
      if (m.op === "stop") {
        await close();
        await hsm?.close();
        process.exit(0);
      }
      if (m.op === "raw" && hsm) {
        const h = hsm;
        const key = await h.keys.getKey(keyIdOf(m.spec));
        const hash = keySpecInfo(m.spec).hash;
        const d = hashBytes(hash, randomBytes(64));
        // This process is the server here: the load runs in it and it measures itself.
        const result = await runLoad(
          async () => {
            const sig = await h.keys.signDigest(key, hash, d);
            if (sig.length !== key.info.signatureLength) throw new Error(`raw ${m.spec}: ${sig.length}-byte signature`);
          },
          { ...m.load, server: { pid: process.pid, threads } },
        );
        send({ op: "raw", result });
      }
      return undefined;
    })().catch((e: unknown) => send({ op: "error", message: e instanceof Error ? (e.stack ?? e.message) : String(e) }));
  });
  process.on("disconnect", () => process.exit(0));
}

type SignRequest = { keyId: string; digest: Buffer; hashAlgorithm: HashAlgorithm };

/** h2-echo and h2-sign: Sign answered on node:http2 alone (see the modes above); anything else is reset. */
async function startHttp2Server(start: BenchServerStart, hsm: Hsm | undefined): Promise<{ port: number; close: () => Promise<void> }> {
  const { createSecureServer } = await import("node:http2");
  const Signer = loadSignerClientClass();
  const sign = (Signer.service as unknown as Record<string, { path: string; responseSerialize: (v: unknown) => Buffer; requestDeserialize: (b: Buffer) => SignRequest }>).Sign!;
  const fixed = frameMessage(sign.responseSerialize(start.fixed ?? {}));
  const keys = start.mode === "h2-sign" ? hsm?.keys : undefined;
  const server = createSecureServer({ key: Buffer.from(start.tls.serverKey), cert: Buffer.from(start.tls.serverCert) });
  server.on("stream", (stream, headers) => {
    if (headers[":path"] !== sign.path) return stream.close(7 /* REFUSED_STREAM */);
    const chunks: Buffer[] = [];
    stream.on("data", (c: Buffer) => chunks.push(c));
    stream.on("end", () => {
      const answer = (body: Buffer): void => {
        stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
        stream.once("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
        stream.end(body);
      };
      if (!keys) return answer(fixed);
      const req = sign.requestDeserialize(Buffer.concat(chunks).subarray(5));
      keys
        .getKey(req.keyId)
        .then((key) => keys.signDigest(key, req.hashAlgorithm, req.digest))
        .then(
          (signature) => answer(frameMessage(sign.responseSerialize({ ...start.fixed, signature }))),
          () => stream.close(2 /* INTERNAL_ERROR */),
        );
    });
  });
  const port = await new Promise<number>((res) => server.listen(0, "127.0.0.1", () => res((server.address() as { port: number }).port)));
  return { port, close: () => new Promise<void>((res) => server.close(() => res())) };
}

process.once("message", (start: BenchServerStart) => {
  main(start).catch((e: unknown) => {
    send({ op: "error", message: e instanceof Error ? (e.stack ?? e.message) : String(e) });
    process.exit(1);
  });
});
