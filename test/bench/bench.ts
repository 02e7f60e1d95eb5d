// Throughput and start-up benchmark (npm run bench). Not a mocha spec: it is a report, so it exits 0
// when a target is missed and non-zero only when something fails to run.
//
//   a) the raw PKCS#11 ceiling: Pkcs11KeyStore.signDigest through the session pool, N in flight
//   b) Sign through the real gRPC server with TLS (grpc-js client), same keys, same N
//   c) the transport ceiling: a bare grpc-js unary server with the same TLS and a fixed response
//   d) the notation plugin as a process, per command (NODE_EXTRA_CA_CERTS unset)
//   e) soak: minutes of mixed load against the service as a process, memory at start and end (soak.ts)
//
// Throughput is measured at saturation: 64 calls in flight by default. With 16, a closed loop on
// this kind of machine is bound by latency (each Sign waits for its audit fdatasync, 2-3 ms under
// load) rather than by CPU, and measures round trips instead of capacity; 1-in-flight rows report
// the latency side.
//
// Knobs (environment): BENCH_CONCURRENCY (64), BENCH_WARMUP_MS (500), BENCH_DURATION_MS (4000),
// BENCH_PLUGIN_RUNS (20), BENCH_SOAK_MS (180000), BENCH_SOAK_CONCURRENCY (8).
// Only the soak: node dist/test/bench/bench.js --only soak (or BENCH_ONLY=soak); without it: --skip soak.
import { randomBytes } from "node:crypto";
import { availableParallelism } from "node:os";
import { performance, type EventLoopUtilization } from "node:perf_hooks";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import type { RunningServer } from "../../src/server/signer-server.js";
import { digest as hashBytes, keySpecInfo, type KeySpec } from "../../src/signing/key-spec.js";
import { closeFixture, getFixture, keyIdOf, startTestServer, type Fixture } from "../helpers/fixture.js";
import { requestFor, verifyNotarySignature } from "../helpers/notation.js";
import { callSigner, loadSignerClientClass, signerClient, type SignResponse } from "../helpers/signer-client.js";
import { PROJECT_ROOT } from "../helpers/softhsm.js";
import { MachineNoise, percentile, runLoad, runProcess, type LoadOptions, type LoadResult } from "./load.js";
import { printSoak, runSoak } from "./soak.js";
import { PostgresAuditStore } from "../../src/audit/postgres-store.js";
import { startPostgres } from "../helpers/postgres.js";

const intEnv = (name: string, dflt: number): number => {
  const v = process.env[name];
  const n = v === undefined || v === "" ? dflt : Number(v);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`${name} must be a positive integer, not "${v}"`);
  return n;
};

const CONCURRENCY = intEnv("BENCH_CONCURRENCY", 64);
const WARMUP_MS = intEnv("BENCH_WARMUP_MS", 500);
const DURATION_MS = intEnv("BENCH_DURATION_MS", 4000);
const PLUGIN_RUNS = intEnv("BENCH_PLUGIN_RUNS", 20);
const PLUGIN_WARMUP_RUNS = 2;
const CALL_TIMEOUT_MS = 10_000;
type LoadClient = "grpc-js" | "http2";
/** The gRPC client of the load process for the target rows: grpc-js, or the project's own http2 client (BENCH_CLIENT=http2). */
const LOAD_CLIENT: LoadClient = process.env.BENCH_CLIENT === "http2" ? "http2" : "grpc-js";
/** The other client, for rows e): the same servers under the other client. */
const OTHER_CLIENT: LoadClient = LOAD_CLIENT === "http2" ? "grpc-js" : "http2";
/** Time for the load-client process to start and connect before its warm-up begins. */
const CLIENT_START_MS = 400;
const argAfter = (flag: string): string | undefined => {
  const i = process.argv.indexOf(flag);
  return i >= 0 ? process.argv[i + 1] : undefined;
};
const ONLY = argAfter("--only") ?? process.env.BENCH_ONLY;
if (ONLY !== undefined && ONLY !== "soak") throw new Error(`--only takes "soak", not "${ONLY}"`);
const SOAK = argAfter("--skip") !== "soak";
const SOAK_MS = intEnv("BENCH_SOAK_MS", 180_000);
const SOAK_CONCURRENCY = intEnv("BENCH_SOAK_CONCURRENCY", 8);
/** The whole benchmark gives up (exit 2) after this long. */
const WATCHDOG_MS = 10 * 60_000 + (SOAK ? SOAK_MS : 0);

const LOAD: LoadOptions = { concurrency: CONCURRENCY, warmupMs: WARMUP_MS, durationMs: DURATION_MS };
const KEYS: KeySpec[] = ["RSA-3072", "EC-256"];
const PLUGIN = join(PROJECT_ROOT, "dist/plugin/notation-hsm-signer");

// ---------------------------------------------------------------------------------------------
// gRPC client and echo server

const signCall = (client: grpc.Client, req: Record<string, unknown>): Promise<SignResponse> => callSigner<SignResponse>(client, "Sign", req, Date.now() + CALL_TIMEOUT_MS);

/** A bare grpc-js unary server with the fixture's TLS material: Sign answers `fixed` without touching the HSM. */
async function startEchoServer(f: Fixture, Signer: grpc.ServiceClientConstructor, fixed: Record<string, unknown>): Promise<{ port: number; server: grpc.Server }> {
  const server = new grpc.Server();
  const unimplemented: grpc.handleUnaryCall<unknown, unknown> = (_call, cb) => cb({ code: grpc.status.UNIMPLEMENTED });
  server.addService(Signer.service, {
    Sign: ((_call, cb) => cb(null, fixed)) as grpc.handleUnaryCall<unknown, unknown>,
    GetCertificateChain: unimplemented,
    DescribeKey: unimplemented,
    ListKeys: unimplemented,
  });
  const creds = grpc.ServerCredentials.createSsl(null, [{ private_key: f.tls.serverKey, cert_chain: f.tls.serverCert }], false);
  const port = await new Promise<number>((res, rej) => server.bindAsync("127.0.0.1:0", creds, (err, p) => (err ? rej(err) : res(p))));
  return { port, server };
}

/**
 * Runs the closed-loop client in its own process (test/bench/load-client.ts) against a server
 * in this process, and measures this process (the server) over the client's window.
 */
async function remoteLoad(port: number, caFile: string, req: Record<string, unknown>, signatureLength: number, o: LoadOptions, client: LoadClient = LOAD_CLIENT): Promise<LoadResult> {
  const wire = { ...req, digest: Buffer.isBuffer(req.digest) ? req.digest.toString("base64") : undefined };
  const args = JSON.stringify({ port, caFile, req: wire, signatureLength, concurrency: o.concurrency, warmupMs: o.warmupMs, durationMs: o.durationMs, client });
  // The child needs about CLIENT_START_MS to start and connect; the server is measured from then on.
  const window = { from: CLIENT_START_MS + o.warmupMs, to: CLIENT_START_MS + o.warmupMs + o.durationMs };
  let elu0: EventLoopUtilization | undefined;
  let cpu0: NodeJS.CpuUsage | undefined;
  let server = { elu: Number.NaN, cpuMs: Number.NaN };
  const t1 = setTimeout(() => {
    elu0 = performance.eventLoopUtilization();
    cpu0 = process.cpuUsage();
  }, window.from);
  const t2 = setTimeout(() => {
    if (elu0 && cpu0) {
      const c = process.cpuUsage(cpu0);
      server = { elu: performance.eventLoopUtilization(elu0).utilization, cpuMs: (c.user + c.system) / 1000 };
    }
  }, window.to);
  const p = await runProcess(process.execPath, [join(PROJECT_ROOT, "dist/test/bench/load-client.js"), args], undefined, process.env, o.warmupMs + o.durationMs + 30_000).finally(() => {
    clearTimeout(t1);
    clearTimeout(t2);
  });
  if (p.code !== 0) throw new Error(`load client failed (${p.code ?? p.signal}): ${p.stderr.slice(0, 800)}`);
  const c = JSON.parse(p.stdout) as LoadResult;
  // Reported: the client's rate and latencies; the server process's loop and CPU.
  const serverCores = server.cpuMs / (window.to - window.from);
  // The client measured "other" CPU as everything but itself: this server included.
  return { ...c, elu: server.elu, cores: serverCores, cpuMsPerCall: server.cpuMs / Math.max(1, c.rate * ((window.to - window.from) / 1000)), otherCores: Math.max(0, c.otherCores - serverCores), clientCores: c.cores };
}

// ---------------------------------------------------------------------------------------------
// Report

const fmt = (n: number, digits = 1): string => (Number.isFinite(n) ? n.toFixed(digits) : "-");
const pct = (r: number): string => (Number.isFinite(r) ? `${(r * 100).toFixed(1)}%` : "-");

interface Row {
  name: string;
  r: LoadResult;
  ratio?: string;
}

function printLoadTable(rows: Row[]): void {
  const head = ["", "calls/s", "p50 ms", "p99 ms", "calls", "loop busy", "CPU cores", "CPU ms/call", "client", "others", "ratio"];
  const cells = rows.map((x) => [x.name, fmt(x.r.rate, 0), fmt(x.r.p50, 2), fmt(x.r.p99, 2), String(x.r.ops), pct(x.r.elu), fmt(x.r.cores, 2), fmt(x.r.cpuMsPerCall, 3), fmt(x.r.clientCores ?? Number.NaN, 2), fmt(x.r.otherCores, 2), x.ratio ?? ""]);
  const widths = head.map((h, i) => Math.max(h.length, ...cells.map((c) => (c[i] as string).length)));
  const line = (c: string[]): string => c.map((v, i) => (i === 0 || i === head.length - 1 ? v.padEnd(widths[i] as number) : v.padStart(widths[i] as number))).join("  ");
  console.log(line(head));
  console.log(widths.map((w) => "-".repeat(w)).join("  "));
  for (const c of cells) console.log(line(c));
}

interface ProcStats {
  name: string;
  median: number;
  p90: number;
  min: number;
  max: number;
  /** CPU used by unrelated processes on the machine while these runs went on, in cores. */
  otherCores: number;
}

function procStats(name: string, ms: number[], otherCores: number): ProcStats {
  const s = [...ms].sort((a, b) => a - b);
  return { name, median: percentile(s, 50), p90: percentile(s, 90), min: s[0] as number, max: s[s.length - 1] as number, otherCores };
}

/** Other processes using more than this many cores during a measurement make it unreliable. */
const NOISE_LIMIT_CORES = 0.15;

// ---------------------------------------------------------------------------------------------

async function main(): Promise<boolean> {
  const results: Record<string, unknown> = {};
  const rows: Row[] = [];
  const log = (s: string): void => void process.stderr.write(`[bench] ${s}\n`);

  log("setting up the SoftHSM fixture (generates six key pairs and chains)...");
  const f = await getFixture();
  const keyOf = new Map<KeySpec, Awaited<ReturnType<Fixture["hsm"]["keys"]["getKey"]>>>();
  for (const spec of KEYS) keyOf.set(spec, await f.hsm.keys.getKey(keyIdOf(spec)));

  const raw = new Map<KeySpec, LoadResult>();
  const svc = new Map<KeySpec, LoadResult>();
  const svcNoAudit = new Map<KeySpec, LoadResult>();
  const svcPg = new Map<KeySpec, LoadResult & { dbCpuMsPerCall: number }>();
  let echo: LoadResult | undefined;
  let echo1: LoadResult | undefined;
  let svcEc1: LoadResult | undefined;
  const otherRows: Row[] = [];
  let server: RunningServer | undefined;
  let echoServer: grpc.Server | undefined;
  const clients: grpc.Client[] = [];
  const plugin: ProcStats[] = [];
  try {
    // a) raw PKCS#11 ceiling through the same session pool
    for (const spec of KEYS) {
      const key = keyOf.get(spec)!;
      const hash = key.info.hash;
      const d = hashBytes(hash, randomBytes(64));
      log(`a) raw signDigest ${spec}...`);
      const r = await runLoad(async () => {
        const sig = await f.hsm.keys.signDigest(key, hash, d);
        if (sig.length !== key.info.signatureLength) throw new Error(`raw ${spec}: ${sig.length}-byte signature`);
      }, LOAD);
      raw.set(spec, r);
      rows.push({ name: `a) raw PKCS#11 signDigest ${spec}`, r });
    }

    // b) Sign through the real gRPC server with TLS
    const Signer = loadSignerClientClass();
    server = await startTestServer(f);
    const client = signerClient(f.tls.ca, server.port);
    clients.push(client);
    let ecResponse: SignResponse | undefined;
    for (const spec of KEYS) {
      const keyId = keyIdOf(spec);
      const info = keySpecInfo(spec);
      // Sanity: a payload signature through the service verifies against the returned leaf.
      const payload = randomBytes(200);
      const check = await signCall(client, { keyId, payload, hashAlgorithm: info.hash, keySpec: spec });
      if (!verifyNotarySignature(payload, check.signature, check.certificateChain[0] as Buffer, spec)) throw new Error(`gRPC ${spec}: the signature does not verify`);
      const req = { keyId, digest: hashBytes(info.hash, randomBytes(64)), hashAlgorithm: info.hash, keySpec: spec };
      if (spec === "EC-256") ecResponse = await signCall(client, req);
      log(`b) gRPC+TLS Sign ${spec} (client in its own process)...`);
      const r = await remoteLoad(server.port, f.tls.caFile, req, info.signatureLength, LOAD);
      svc.set(spec, r);
      rows.push({ name: `b) gRPC+TLS Sign ${spec}`, r, ratio: `${pct(r.rate / raw.get(spec)!.rate)} of raw` });
    }
    // b') the same with the audit off (a sink that writes nothing), to price the durable audit
    const noAudit = await startTestServer(f, { audit: { append: () => Promise.resolve({ sequence: 0, lineHash: "" }) } });
    try {
      for (const spec of KEYS) {
        const info = keySpecInfo(spec);
        const req = { keyId: keyIdOf(spec), digest: hashBytes(info.hash, randomBytes(64)), hashAlgorithm: info.hash, keySpec: spec };
        log(`b') gRPC+TLS Sign ${spec}, audit off...`);
        const r = await remoteLoad(noAudit.port, f.tls.caFile, req, info.signatureLength, LOAD);
        svcNoAudit.set(spec, r);
        rows.push({ name: `b') the same, audit off ${spec}`, r, ratio: `audit on = ${pct(svc.get(spec)!.rate / r.rate)} of it` });
      }
    } finally {
      await noAudit.close(2000);
    }
    // b'') the same with the audit in PostgreSQL (a throwaway server with fsync on, as the tests
    // start it; one connection, group commit), against the file store of b)
    const pgServer = await startPostgres({ fsync: true });
    try {
      const pgDb = await pgServer.createDatabase("bench_audit");
      const pgStore = await PostgresAuditStore.open({ connection: { host: pgServer.socketDir, port: pgServer.port, database: pgDb.database, user: "postgres" }, replicaId: "bench" });
      const withPg = await startTestServer(f, { audit: pgStore });
      try {
        for (const spec of KEYS) {
          const info = keySpecInfo(spec);
          const req = { keyId: keyIdOf(spec), digest: hashBytes(info.hash, randomBytes(64)), hashAlgorithm: info.hash, keySpec: spec };
          log(`b'') gRPC+TLS Sign ${spec}, audit in PostgreSQL...`);
          const [cpu0, seq0] = [await pgServer.cpuMs(), pgStore.stats.sequence];
          const r = await remoteLoad(withPg.port, f.tls.caFile, req, info.signatureLength, LOAD);
          // Every call is one record: the database's CPU over the whole run per record written.
          const dbCpuMsPerCall = ((await pgServer.cpuMs()) - cpu0) / Math.max(1, pgStore.stats.sequence - seq0);
          svcPg.set(spec, { ...r, dbCpuMsPerCall });
          rows.push({ name: `b'') the same, audit in PostgreSQL ${spec}`, r, ratio: `${pct(r.rate / svc.get(spec)!.rate)} of the file store; database ${fmt(dbCpuMsPerCall, 3)} ms CPU/call` });
        }
      } finally {
        await withPg.close(2000);
        await pgStore.close();
      }
    } finally {
      await pgServer.destroy();
    }
    const ecReq = { keyId: keyIdOf("EC-256"), digest: hashBytes("SHA-256", randomBytes(64)), hashAlgorithm: "SHA-256", keySpec: "EC-256" };
    log("b) gRPC+TLS Sign EC-256, 1 in flight...");
    svcEc1 = await remoteLoad(server.port, f.tls.caFile, ecReq, 64, { ...LOAD, concurrency: 1, durationMs: Math.min(DURATION_MS, 2000) });

    // c) the transport ceiling: same TLS, same response message (a real EC-256 answer), no HSM
    if (!ecResponse) throw new Error("no EC-256 response to echo");
    const fixed = { ...ecResponse };
    const e = await startEchoServer(f, Signer, fixed);
    echoServer = e.server;
    const echoClient = signerClient(f.tls.ca, e.port);
    clients.push(echoClient);
    const echoCheck = await signCall(echoClient, ecReq);
    if (!echoCheck.signature.equals(ecResponse.signature)) throw new Error("echo server answered something else");
    log("c) gRPC+TLS echo (client in its own process)...");
    echo = await remoteLoad(e.port, f.tls.caFile, ecReq, 64, LOAD);
    const ecSvc = svc.get("EC-256")!;
    rows.push({ name: "c) gRPC+TLS echo (same messages, no HSM)", r: echo, ratio: `EC-256 service = ${pct(ecSvc.rate / echo.rate)} of it` });
    log("c) gRPC+TLS echo, 1 in flight...");
    echo1 = await remoteLoad(e.port, f.tls.caFile, ecReq, 64, { ...LOAD, concurrency: 1, durationMs: Math.min(DURATION_MS, 2000) });
    // e) the same servers under the other client. With grpc-js the load client saturates a core
    // before the echo server does, so c) is the client's ceiling; the project's own client (the
    // plugin's) needs about a third of the CPU per call, so there the echo row is the server's.
    const other = `${OTHER_CLIENT} client`;
    log(`e) echo and Sign again with the ${other}...`);
    const echoOther = await remoteLoad(e.port, f.tls.caFile, ecReq, 64, LOAD, OTHER_CLIENT);
    otherRows.push({ name: `e) gRPC+TLS echo, ${other}`, r: echoOther });
    for (const spec of KEYS) {
      const info = keySpecInfo(spec);
      const req = { keyId: keyIdOf(spec), digest: hashBytes(info.hash, randomBytes(64)), hashAlgorithm: info.hash, keySpec: spec };
      const r = await remoteLoad(server.port, f.tls.caFile, req, info.signatureLength, LOAD, OTHER_CLIENT);
      otherRows.push({ name: `e) gRPC+TLS Sign ${spec}, ${other}`, r, ratio: spec === "EC-256" ? `${pct(r.rate / echoOther.rate)} of echo` : `${pct(r.rate / raw.get(spec)!.rate)} of raw` });
    }
    echoClient.close();
    await new Promise<void>((res) => e.server.tryShutdown(() => res()));
    echoServer = undefined;

    // d) the plugin as a process, against the real server (still in this process: async spawn only)
    const env: NodeJS.ProcessEnv = { ...process.env };
    delete env.NODE_EXTRA_CA_CERTS;
    const pluginConfig = { endpoint: `127.0.0.1:${server.port}`, ca_file: f.tls.caFile };
    const describeReq = JSON.stringify(requestFor("describe-key", keyIdOf("EC-256"), "EC-256", pluginConfig));
    const genReqObj = requestFor("generate-signature-jws", keyIdOf("EC-256"), "EC-256", pluginConfig);
    const genReq = JSON.stringify(genReqObj);
    const genPayload = Buffer.from(genReqObj.payload as string, "base64");
    const metaReq = JSON.stringify({});

    const commands: { name: string; file: string; args: string[]; input: string | undefined; check: (stdout: string) => void }[] = [
      { name: "node -e 0 (baseline)", file: process.execPath, args: ["-e", "0"], input: undefined, check: () => undefined },
      {
        name: "get-plugin-metadata",
        file: PLUGIN,
        args: ["get-plugin-metadata"],
        input: metaReq,
        check: (out) => {
          if ((JSON.parse(out) as { name?: string }).name !== "hsm-signer") throw new Error(`get-plugin-metadata answered ${out}`);
        },
      },
      {
        name: "describe-key (EC-256)",
        file: PLUGIN,
        args: ["describe-key"],
        input: describeReq,
        check: (out) => {
          if ((JSON.parse(out) as { keySpec?: string }).keySpec !== "EC-256") throw new Error(`describe-key answered ${out}`);
        },
      },
      {
        name: "describe-key, pluginConfig key_spec",
        file: PLUGIN,
        args: ["describe-key"],
        input: JSON.stringify(requestFor("describe-key", keyIdOf("EC-256"), "EC-256", { ...pluginConfig, key_spec: "EC-256" })),
        check: (out) => {
          if ((JSON.parse(out) as { keySpec?: string }).keySpec !== "EC-256") throw new Error(`describe-key answered ${out}`);
        },
      },
      {
        name: "generate-signature (JWS, EC-256)",
        file: PLUGIN,
        args: ["generate-signature"],
        input: genReq,
        check: (out) => {
          const r = JSON.parse(out) as { signature: string; certificateChain: string[] };
          if (!verifyNotarySignature(genPayload, Buffer.from(r.signature, "base64"), Buffer.from(r.certificateChain[0] as string, "base64"), "EC-256")) {
            throw new Error("generate-signature: the signature does not verify");
          }
        },
      },
    ];
    // Rounds with the commands in turn, not each command's runs in a row: this machine's speed
    // drifts over minutes (node -e 0 took 34 to 48 ms in one session), and a drift should move
    // the baseline and the commands alike.
    log(`d) ${commands.length} commands in turn, ${PLUGIN_WARMUP_RUNS} + ${PLUGIN_RUNS} rounds...`);
    const times = commands.map((): number[] => []);
    const noise = new MachineNoise();
    for (let i = 0; i < PLUGIN_WARMUP_RUNS + PLUGIN_RUNS; i++) {
      for (const [k, c] of commands.entries()) {
        const p = await runProcess(c.file, c.args, c.input, env);
        if (p.code !== 0) throw new Error(`${c.name} exited with ${p.code ?? p.signal}: ${p.stderr.slice(0, 500)}`);
        c.check(p.stdout);
        if (i >= PLUGIN_WARMUP_RUNS) times[k]!.push(p.ms);
      }
    }
    const others = noise.otherCores();
    commands.forEach((c, k) => plugin.push(procStats(c.name, times[k]!, others)));
  } finally {
    for (const c of clients) c.close();
    echoServer?.forceShutdown();
    if (server) await server.close(2000);
    await closeFixture();
  }

  // ------------------------------------------------------------------------------- report
  const rsaRatio = svc.get("RSA-3072")!.rate / raw.get("RSA-3072")!.rate;
  const ecAuditRatio = svc.get("EC-256")!.rate / svcNoAudit.get("EC-256")!.rate;
  const ecEchoRatio = svc.get("EC-256")!.rate / echo.rate;
  const ecPgRatio = svcPg.get("EC-256")!.rate / svc.get("EC-256")!.rate;
  const rsaPgRatio = svcPg.get("RSA-3072")!.rate / svc.get("RSA-3072")!.rate;
  const [base, meta, desc, descLocal, gen] = plugin as [ProcStats, ProcStats, ProcStats, ProcStats, ProcStats];
  const metaRatio = meta.median / base.median;
  const sum3 = meta.median + desc.median + gen.median;
  const sum3Local = meta.median + descLocal.median + gen.median;

  console.log("");
  console.log(`hsm-signer benchmark: node ${process.version}, ${availableParallelism()} CPUs, UV_THREADPOOL_SIZE=${process.env.UV_THREADPOOL_SIZE ?? "4 (default)"}, HSM session pool ${f.hsm.pool.size}`);
  console.log(`closed loop, ${CONCURRENCY} calls in flight, ${WARMUP_MS / 1000} s warm-up + ${DURATION_MS / 1000} s measured per row; a) in this process; b) and c): the client in its own process, loop busy and CPU are the server's`);
  console.log("");
  printLoadTable([
    ...rows,
    { name: "   gRPC+TLS Sign EC-256, 1 in flight", r: svcEc1 },
    { name: "   gRPC+TLS echo, 1 in flight", r: echo1 },
    ...otherRows,
  ]);
  console.log("loop busy = event-loop utilization of the main thread of this process (the server; in a) also the caller);");
  console.log("CPU = this whole process incl. the HSM signing threads; client = the load client process (b, c, e); others = unrelated processes (cores)");
  console.log("");
  console.log(`d) plugin wall time per command as a process, ${PLUGIN_RUNS} rounds after ${PLUGIN_WARMUP_RUNS} warm-up rounds, the commands in turn;`);
  console.log("   NODE_EXTRA_CA_CERTS UNSET in the child environment (it adds ~70 ms to every Node start)");
  console.log("");
  const pw = Math.max(...plugin.map((p) => p.name.length), "one notation signature (sum of 3 medians)".length);
  console.log(`${"".padEnd(pw)}  ${"median ms".padStart(9)}  ${"p90 ms".padStart(7)}  ${"min".padStart(6)}  ${"max".padStart(6)}  ${"others".padStart(6)}`);
  console.log(`${"-".repeat(pw)}  ${"-".repeat(9)}  ${"-".repeat(7)}  ${"-".repeat(6)}  ${"-".repeat(6)}  ${"-".repeat(6)}`);
  for (const p of plugin) console.log(`${p.name.padEnd(pw)}  ${fmt(p.median).padStart(9)}  ${fmt(p.p90).padStart(7)}  ${fmt(p.min).padStart(6)}  ${fmt(p.max).padStart(6)}  ${fmt(p.otherCores, 2).padStart(6)}`);
  console.log(`${"one notation signature (sum of 3 medians)".padEnd(pw)}  ${fmt(sum3).padStart(9)}`);
  console.log(`${"  the same with pluginConfig key_spec".padEnd(pw)}  ${fmt(sum3Local).padStart(9)}`);

  const targets = [
    { name: "RSA-3072 service (durable audit on) >= 85% of raw PKCS#11", value: pct(rsaRatio), pass: rsaRatio >= 0.85 },
    { name: "EC-256 with durable audit loses <= 15% against audit off", value: `${pct(1 - ecAuditRatio)} lost`, pass: ecAuditRatio >= 0.85 },
    { name: "EC-256 service >= 80% of gRPC echo", value: pct(ecEchoRatio), pass: ecEchoRatio >= 0.8 },
    { name: "EC-256 with the PostgreSQL audit >= 80% of the file audit", value: pct(ecPgRatio), pass: ecPgRatio >= 0.8 },
    { name: "RSA-3072 with the PostgreSQL audit >= 95% of the file audit", value: pct(rsaPgRatio), pass: rsaPgRatio >= 0.95 },
    { name: "get-plugin-metadata <= 1.5x node -e 0", value: `${fmt(metaRatio, 2)}x (${fmt(meta.median)} / ${fmt(base.median)} ms)`, pass: metaRatio <= 1.5 },
    { name: "three plugin commands < 200 ms", value: `${fmt(sum3)} ms`, pass: sum3 < 200 },
    { name: "three plugin commands < 200 ms, with key_spec", value: `${fmt(sum3Local)} ms`, pass: sum3Local < 200 },
  ];
  const allLoads: [string, LoadResult][] = [...rows.map((x): [string, LoadResult] => [x.name.trim(), x.r]), ["EC-256 1 in flight", svcEc1], ["echo 1 in flight", echo1], ...otherRows.map((x): [string, LoadResult] => [x.name, x.r])];
  const noisy = [
    ...allLoads.filter(([, r]) => r.otherCores > NOISE_LIMIT_CORES).map(([n, r]) => `${n} (${fmt(r.otherCores, 2)} cores)`),
    ...plugin.filter((p) => p.otherCores > NOISE_LIMIT_CORES).map((p) => `${p.name} (${fmt(p.otherCores, 2)} cores)`),
  ];
  console.log("");
  if (noisy.length > 0) {
    console.log(`WARNING: other processes used CPU during: ${noisy.join("; ")}. Those figures are unreliable; run again on a quiet machine.`);
  } else {
    console.log(`machine quiet: no other process used more than ${NOISE_LIMIT_CORES} cores during any measurement`);
  }
  console.log("");
  console.log("targets");
  const tw = Math.max(...targets.map((t) => t.name.length));
  for (const t of targets) console.log(`  ${t.pass ? "PASS" : "FAIL"}  ${t.name.padEnd(tw)}  ${t.value}`);

  // Why RSA-3072 cannot reach 85% of raw here: the client shares the 2 cores. With raw CPU per
  // signature s, server overhead o per call and client CPU c (cores), the service makes at most
  // (cpus - c) / (s + o) calls per second; raw makes about cpus / s.
  const rsaRaw = raw.get("RSA-3072")!;
  const cpus = availableParallelism();
  const rsaAnalysis = (rsaSvc: LoadResult, client: LoadClient): Record<string, number> => {
    const clientCores = rsaSvc.clientCores ?? Number.NaN;
    const overhead = rsaSvc.cpuMsPerCall - rsaRaw.cpuMsPerCall;
    const ceiling = ((cpus - clientCores) * 1000) / rsaRaw.cpuMsPerCall / rsaRaw.rate;
    const allowed = ((cpus - clientCores) * 1000) / (0.85 * rsaRaw.rate) - rsaRaw.cpuMsPerCall;
    console.log(`  ${client} client: through the service ${fmt(rsaSvc.cpuMsPerCall, 2)} ms of CPU per call, so TLS, gRPC, policy and audit add ${fmt(overhead, 2)} ms;`);
    console.log(`    the client takes ${fmt(clientCores, 2)} of the ${cpus} cores, so a service adding nothing would reach ${pct(ceiling)} of raw, and 85% allows ${fmt(allowed, 2)} ms of overhead per call`);
    return { serverOverheadMsPerCall: round(overhead, 3), clientCores: round(clientCores, 2), zeroOverheadCeilingOfRaw: round(ceiling, 3), overheadAllowedFor85PctMs: round(allowed, 3) };
  };
  const round = (n: number, d = 1): number => Number(n.toFixed(d));
  console.log("");
  console.log(`RSA-3072, where the CPU goes (this run): raw signing costs ${fmt(rsaRaw.cpuMsPerCall, 2)} ms of CPU per signature`);
  const rsaOther = otherRows.find((x) => x.name.startsWith("e) gRPC+TLS Sign RSA-3072"));
  const rsa3072Analysis = { [LOAD_CLIENT]: rsaAnalysis(svc.get("RSA-3072")!, LOAD_CLIENT), ...(rsaOther ? { [OTHER_CLIENT]: rsaAnalysis(rsaOther.r, OTHER_CLIENT) } : {}) };
  console.log(`  the bare grpc-js echo server spends ${fmt(echo.cpuMsPerCall, 2)} ms of CPU per call`);

  // EC-256 against echo, per client: 80% of the echo rate leaves each call (cpus / rate) of CPU,
  // less what the client spends on it. No service can spend less than the echo server's
  // transport plus one raw signature through the signing threads.
  const ecRaw = raw.get("EC-256")!;
  const ecAnalysis = (svcRow: LoadResult, echoRow: LoadResult, client: LoadClient): Record<string, number> => {
    const clientMs = ((svcRow.clientCores ?? Number.NaN) * 1000) / svcRow.rate;
    const budget = (cpus * 1000) / (0.8 * echoRow.rate) - clientMs;
    const floor = echoRow.cpuMsPerCall + ecRaw.cpuMsPerCall;
    console.log(`  ${client} client: echo ${fmt(echoRow.rate, 0)}/s, so 80% leaves the server ${fmt(budget, 3)} ms of CPU per call (the client takes ${fmt(clientMs, 3)});`);
    console.log(`    echo transport + one raw signature = ${fmt(floor, 3)} ms${floor > budget ? ", more than that: out of reach on these cores" : ""}; the service spends ${fmt(svcRow.cpuMsPerCall, 3)} ms`);
    return { serverBudgetMsPerCall: round(budget, 3), floorMsPerCall: round(floor, 3), serviceMsPerCall: round(svcRow.cpuMsPerCall, 3) };
  };
  console.log("");
  console.log("EC-256 against echo, where the CPU goes (this run):");
  const ecOther = otherRows.find((x) => x.name.startsWith("e) gRPC+TLS Sign EC-256"));
  const echoOther = otherRows.find((x) => x.name.startsWith("e) gRPC+TLS echo"));
  const ec256Analysis = { [LOAD_CLIENT]: ecAnalysis(svc.get("EC-256")!, echo, LOAD_CLIENT), ...(ecOther && echoOther ? { [OTHER_CLIENT]: ecAnalysis(ecOther.r, echoOther.r, OTHER_CLIENT) } : {}) };

  const lr = (r: LoadResult): Record<string, number> => ({ perSec: round(r.rate), p50Ms: round(r.p50, 3), p99Ms: round(r.p99, 3), calls: r.ops, eventLoopBusy: round(r.elu, 3), cpuCores: round(r.cores, 2), cpuMsPerCall: round(r.cpuMsPerCall, 3) });
  Object.assign(results, {
    node: process.version,
    cpus: availableParallelism(),
    concurrency: CONCURRENCY,
    warmupMs: WARMUP_MS,
    durationMs: DURATION_MS,
    poolSize: f.hsm.pool.size,
    raw: Object.fromEntries([...raw].map(([k, v]) => [k, lr(v)])),
    service: Object.fromEntries([...svc].map(([k, v]) => [k, { ...lr(v), ratioToRaw: round(v.rate / raw.get(k)!.rate, 3) }])),
    serviceAuditOff: Object.fromEntries([...svcNoAudit].map(([k, v]) => [k, { ...lr(v), auditOnRatio: round(svc.get(k)!.rate / v.rate, 3) }])),
    serviceAuditPostgres: Object.fromEntries([...svcPg].map(([k, v]) => [k, { ...lr(v), fileStoreRatio: round(v.rate / svc.get(k)!.rate, 3), dbCpuMsPerCall: round(v.dbCpuMsPerCall, 4) }])),
    serviceEc256OneInFlight: lr(svcEc1),
    echo: { ...lr(echo), ec256ServiceRatio: round(ecEchoRatio, 3) },
    echoOneInFlight: lr(echo1),
    otherClient: { client: OTHER_CLIENT, rows: Object.fromEntries(otherRows.map((x) => [x.name, { ...lr(x.r), clientCores: round(x.r.clientCores ?? Number.NaN, 2), ratio: x.ratio ?? "" }])) },
    plugin: {
      nodeExtraCaCerts: "unset",
      runs: PLUGIN_RUNS,
      commands: Object.fromEntries(plugin.map((p) => [p.name, { medianMs: round(p.median), p90Ms: round(p.p90), otherCores: round(p.otherCores, 2) }])),
      sumOfThreeMediansMs: round(sum3),
      sumOfThreeMediansWithKeySpecMs: round(sum3Local),
    },
    rsa3072Analysis: { ...rsa3072Analysis, echoServerCpuMsPerCall: round(echo.cpuMsPerCall, 3) },
    ec256Analysis,
    targets: targets.map((t) => ({ name: t.name, value: t.value, pass: t.pass })),
    noisy,
  });
  console.log("");
  console.log(`BENCH_JSON ${JSON.stringify(results)}`);
  return targets.every((t) => t.pass);
}

const watchdog = setTimeout(() => {
  process.stderr.write(`[bench] watchdog: the benchmark did not finish within ${WATCHDOG_MS / 1000} s\n`);
  process.exit(2);
}, WATCHDOG_MS);
watchdog.unref();

/** e) the soak, printed after the rest; its verdict is a finding like the targets above. */
async function soak(): Promise<boolean> {
  const r = await runSoak({ durationMs: SOAK_MS, concurrency: SOAK_CONCURRENCY, log: (s) => void process.stderr.write(`[bench] ${s}\n`) });
  printSoak(r);
  console.log("");
  console.log(`BENCH_SOAK_JSON ${JSON.stringify({ ...r, memory: { ...r.memory, samples: r.memory.samples.length } })}`);
  return r.pass;
}

(ONLY === "soak" ? soak() : main().then(async (ok) => (SOAK ? (await soak()) && ok : ok))).then(
  () => {
    // A missed target is a finding, not an error: exit 0.
    process.exitCode = 0;
    setTimeout(() => process.exit(0), 2000).unref();
  },
  async (e: unknown) => {
    process.stderr.write(`[bench] FAILED: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
    try {
      await closeFixture();
    } catch {
      // already failing
    }
    process.exit(1);
  },
);

