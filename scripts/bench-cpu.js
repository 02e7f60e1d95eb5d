// A quick CPU-per-call probe for work on the hot path (not the report: that is npm run bench).
// It runs only the rows named below, each server in its own process (test/bench/bench-server.ts),
// each load client in its own process, and prints the server's CPU per call split by thread.
// Uses the compiled tree at BENCH_ROOT (default: this checkout), so that two builds (before and
// after a change) can be compared back to back with the same script:
//   npm run build && BENCH_ROOT=/path/to/other/checkout node scripts/bench-cpu.js
// Knobs (environment): BENCH_ROWS (service,audit-off,raw,echo; also echo-sign, the bare grpc-js
// server that signs through the HSM, service-nosync, and h2-echo and h2-sign, echo and echo-sign
// on node:http2 without grpc-js: bench-server.ts), BENCH_KEYS (RSA-3072,EC-256),
// BENCH_CONCURRENCY (64,8), BENCH_ROUNDS (3), BENCH_DURATION_MS (2000), BENCH_WARMUP_MS (300),
// BENCH_SERVER_WARMUP_MS (2000), BENCH_PROF_DIR (write --cpu-prof profiles of the servers there:
// wall time, see below), BENCH_PERF_DIR and BENCH_PERF_FREQ (499) (run `perf record -g` on the
// server during each row, its on-CPU samples; scripts/perf-attribution.js reads them).
// The servers read BENCH_ANSWER_HOLD_MS (hsm.answerHoldMs), BENCH_COMMIT_DELAY_MS
// (audit.commitDelayMs) and BENCH_SESSIONS (4) themselves: run twice, alternating, to compare two
// settings of the same build.
import { fork } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readdirSync, readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";

const ROOT = resolve(process.env.BENCH_ROOT ?? fileURLToPath(new URL("..", import.meta.url)));
const DIST = join(ROOT, "dist/test");
const { getFixture, closeFixture, keyIdOf } = await import(join(DIST, "helpers/fixture.js"));
const { callSigner, signerClient } = await import(join(DIST, "helpers/signer-client.js"));
const { digest: hashBytes, keySpecInfo } = await import(join(ROOT, "dist/src/signing/key-spec.js"));
const { median } = await import(join(DIST, "bench/load.js"));
const { signLoad, WarmLoadClient } = await import(join(DIST, "bench/warm-load-client.js"));
const loadClient = new WarmLoadClient();

const list = (name, dflt) => (process.env[name] || dflt).split(",").map((s) => s.trim());
const num = (name, dflt) => Number(process.env[name] || dflt);
const ROWS = list("BENCH_ROWS", "service,audit-off,raw,echo");
const KEYS = list("BENCH_KEYS", "RSA-3072,EC-256");
const CONC = list("BENCH_CONCURRENCY", "64,8").map(Number);
const ROUNDS = num("BENCH_ROUNDS", 3);
const DURATION_MS = num("BENCH_DURATION_MS", 2000);
const WARMUP_MS = num("BENCH_WARMUP_MS", 300);
const SERVER_WARMUP_MS = num("BENCH_SERVER_WARMUP_MS", 2000);
const PROF_DIR = process.env.BENCH_PROF_DIR;
/** The rows whose server answers one fixed EC-256 Sign response, whatever the key. */
const FIXED_ANSWER = new Set(["echo", "h2-echo"]);
const log = (s) => process.stderr.write(`[bench-cpu] ${s}\n`);

function startServer(mode, f, fixed) {
  const execArgv = PROF_DIR ? ["--cpu-prof", `--cpu-prof-dir=${join(PROF_DIR, mode)}`] : process.env.BENCH_PERF_DIR ? ["--perf-basic-prof-only-functions"] : [];
  if (process.env.BENCH_NODE_FLAGS) execArgv.push(...process.env.BENCH_NODE_FLAGS.split(" "));
  const child = fork(join(DIST, "bench/bench-server.js"), [], { serialization: "advanced", stdio: ["ignore", "inherit", "inherit", "ipc"], execArgv });
  const waiting = new Map();
  child.on("message", (m) => {
    const key = m.op === "error" ? [...waiting.keys()][0] : m.op;
    const w = waiting.get(key);
    if (!w) return;
    waiting.delete(key);
    if (m.op === "error") w.reject(new Error(`${mode}: ${m.message}`));
    else w.resolve(m);
  });
  const request = (m, op = m.op) => {
    const p = new Promise((res, rej) => waiting.set(op, { resolve: res, reject: rej }));
    child.send(m);
    return p;
  };
  const s = { mode, child, request };
  return request(
    { mode, token: { module: f.token.module, label: f.token.label, pin: f.token.pin, dir: f.token.dir }, tls: { serverCert: f.tls.serverCert, serverKey: f.tls.serverKey, ca: f.tls.ca }, fixed },
    "ready",
  ).then((r) => Object.assign(s, { port: r.port, pid: r.pid, threads: r.threads }));
}

function stopServer(s) {
  return new Promise((res) => {
    s.child.once("exit", res);
    s.child.send({ op: "stop" });
    setTimeout(() => s.child.kill("SIGKILL"), 15000).unref();
  });
}

function digestRequest(spec) {
  const info = keySpecInfo(spec);
  return { keyId: keyIdOf(spec), digest: hashBytes(info.hash, randomBytes(64)), hashAlgorithm: info.hash, keySpec: spec };
}

/** Context switches so far (voluntary: the thread slept, i.e. event-loop wake-ups) of the main thread and of the rest. */
function switches(pid) {
  const r = { mainVol: 0, mainInvol: 0, restVol: 0 };
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    let txt;
    try {
      txt = readFileSync(`/proc/${pid}/task/${t}/status`, "utf8");
    } catch {
      continue;
    }
    const vol = Number(/voluntary_ctxt_switches:\s+(\d+)/.exec(txt)[1]);
    const inv = Number(/nonvoluntary_ctxt_switches:\s+(\d+)/.exec(txt)[1]);
    if (t === String(pid)) Object.assign(r, { mainVol: vol, mainInvol: inv });
    else r.restVol += vol;
  }
  return r;
}

async function load(s, f, spec, o) {
  const perfDir = process.env.BENCH_PERF_DIR;
  let perf;
  if (perfDir) {
    const { spawn } = await import("node:child_process");
    const { mkdirSync } = await import("node:fs");
    mkdirSync(perfDir, { recursive: true });
    const out = join(perfDir, `${s.mode}-${spec}-${o.concurrency}.data`);
    perf = spawn("perf", ["record", "-q", "-F", process.env.BENCH_PERF_FREQ || "499", "-g", "-s", "-p", String(s.pid), "-o", out, "--", "sleep", String((o.warmupMs + o.durationMs) / 1000)], {
      stdio: "ignore",
    });
  }
  const before = switches(s.pid);
  const stats0 = s.mode === "service" ? await s.request({ op: "stats" }) : undefined;
  const t0 = performance.now();
  const x = await load1(s, f, spec, o);
  if (stats0) {
    const stats1 = await s.request({ op: "stats" });
    x.linesPerFsync = (stats1.fsyncLines - stats0.fsyncLines) / Math.max(1, stats1.fsyncs - stats0.fsyncs);
  }
  const after = switches(s.pid);
  const calls = (x.rate * (performance.now() - t0)) / 1000;
  if (perf) await new Promise((r) => (perf.exitCode !== null ? r() : perf.once("exit", r)));
  x.switches = { main: (after.mainVol - before.mainVol) / calls, rest: (after.restVol - before.restVol) / calls };
  return x;
}

async function load1(s, f, spec, o) {
  if (s.mode === "raw") return (await s.request({ op: "raw", spec, load: o })).result;
  return loadClient.run({
    port: s.port,
    caFile: f.tls.caFile,
    ...signLoad(spec),
    ...o,
    server: { pid: s.pid, threads: s.threads },
  });
}

const f = await getFixture();
const servers = {};
try {
  // The service first: its first signature with each key records that on the token.
  for (const mode of ["service", ...ROWS.filter((r) => r !== "service")]) {
    if (!ROWS.includes(mode)) continue;
    let fixed;
    if (FIXED_ANSWER.has(mode) || mode === "echo-sign" || mode === "h2-sign") {
      const c = signerClient(f.tls.ca, servers.service.port);
      fixed = { ...(await callSigner(c, "Sign", digestRequest("EC-256"), Date.now() + 10000)) };
      c.close();
    }
    servers[mode] = await startServer(mode, f, fixed);
  }
  log(`root ${ROOT}; warming up ${SERVER_WARMUP_MS} ms per server and key...`);
  for (const mode of ROWS) for (const spec of FIXED_ANSWER.has(mode) ? ["EC-256"] : KEYS) await load(servers[mode], f, spec, { concurrency: 64, warmupMs: 100, durationMs: SERVER_WARMUP_MS });
  const res = new Map();
  for (let r = 1; r <= ROUNDS; r++) {
    log(`round ${r}/${ROUNDS}`);
    for (const c of CONC)
      for (const spec of KEYS)
        for (const mode of ROWS) {
          if (FIXED_ANSWER.has(mode) && spec !== KEYS[KEYS.length - 1]) continue;
          const k = `${FIXED_ANSWER.has(mode) ? mode : `${mode} ${spec}`} @${c}`;
          // The echo server answers one fixed EC-256 signature, whatever the key of the round.
          const x = await load(servers[mode], f, FIXED_ANSWER.has(mode) ? "EC-256" : spec, { concurrency: c, warmupMs: WARMUP_MS, warmupCalls: 100, durationMs: DURATION_MS });
          res.set(k, [...(res.get(k) ?? []), x]);
        }
  }
  const fmt = (n, d = 3) => (Number.isFinite(n) ? n.toFixed(d) : "-");
  console.log(
    `${"row".padEnd(24)} ${"calls/s".padStart(7)} ${"ms/call".padStart(8)} ${"rounds".padStart(20)} ${"main".padStart(6)} ${"sign".padStart(6)} ${"audit".padStart(6)} ${"other".padStart(6)} ${"others".padStart(6)} ${"wake/c".padStart(6)} ${"thr/c".padStart(6)} ${"l/fs".padStart(4)} ${"p50 ms".padStart(6)}`,
  );
  for (const [k, xs] of res) {
    const m = (g) => median(xs.map(g));
    console.log(
      `${k.padEnd(24)} ${fmt(
        m((x) => x.rate),
        0,
      ).padStart(7)} ${fmt(m((x) => x.cpuMsPerCall)).padStart(8)} ${xs
        .map((x) => fmt(x.cpuMsPerCall))
        .join(",")
        .padStart(
          20,
        )} ${fmt(m((x) => x.cpu.main)).padStart(6)} ${fmt(m((x) => x.cpu.sign)).padStart(6)} ${fmt(m((x) => x.cpu.audit)).padStart(6)} ${fmt(m((x) => x.cpu.other + x.cpu.libuv)).padStart(6)} ${fmt(
        m((x) => x.otherCores),
        2,
      ).padStart(6)} ${fmt(
        m((x) => x.switches.main),
        2,
      ).padStart(6)} ${fmt(
        m((x) => x.switches.rest),
        2,
      ).padStart(6)} ${fmt(
        m((x) => x.linesPerFsync ?? Number.NaN),
        1,
      ).padStart(4)} ${fmt(
        m((x) => x.p50),
        2,
      ).padStart(6)}`,
    );
  }
  console.log(
    `BENCH_CPU_JSON ${JSON.stringify(Object.fromEntries([...res].map(([k, xs]) => [k, xs.map((x) => ({ cpu: x.cpuMsPerCall, main: x.cpu.main, sign: x.cpu.sign, audit: x.cpu.audit, other: x.cpu.other, user: x.cpu.user, system: x.cpu.system, rate: x.rate, linesPerFsync: x.linesPerFsync }))])))}`,
  );
} finally {
  await loadClient.close();
  await Promise.all(Object.values(servers).map(stopServer));
  await closeFixture();
}
process.exit(0);
