// The audit log's own CPU per append, in-process, without gRPC or the HSM: the main thread's part
// (serializing, hashing, queueing, the handoff to the writer thread and the answers) and the rest
// of the process (the writer thread: its event loop, write, fdatasync). For before/after work on
// the audit path; runs any compiled checkout (BENCH_ROOT), so that two builds compare back to back.
//   node scripts/bench-audit.js    knobs: BENCH_CONCURRENCY (64,8), BENCH_ROUNDS (5),
//   BENCH_DURATION_MS (2000), BENCH_FSYNC (1: fdatasync each batch, 0: not)
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { performance } from "node:perf_hooks";
import { fileURLToPath } from "node:url";

const ROOT = resolve(process.env.BENCH_ROOT ?? fileURLToPath(new URL("..", import.meta.url)));
const { AuditLog } = await import(join(ROOT, "dist/src/audit/index.js"));
const CONC = (process.env.BENCH_CONCURRENCY || "64,8").split(",").map(Number);
const ROUNDS = Number(process.env.BENCH_ROUNDS || 5);
const DURATION_MS = Number(process.env.BENCH_DURATION_MS || 2000);
const FSYNC = process.env.BENCH_FSYNC !== "0";

/** CPU ms so far of this process's main thread and of the whole process (Linux /proc). */
function cpu() {
  const ticks = (text) => {
    const f = text.slice(text.lastIndexOf(")") + 2).split(" ");
    return (Number(f[11]) + Number(f[12])) * 10;
  };
  return { main: ticks(readFileSync(`/proc/self/task/${process.pid}/stat`, "utf8")), all: ticks(readFileSync("/proc/self/stat", "utf8")) };
}

// A record shaped like a Sign call's (unary-handler.ts and the signing core's facts).
const record = (i) => ({
  requestId: `0a1b2c3d${String(i).padStart(8, "0")}`,
  peer: "ipv4:127.0.0.1:54321",
  identity: "anonymous@loopback",
  method: "Sign",
  decision: "allow",
  result: "OK",
  latencyMs: 3.214,
  identityKind: "anonymous",
  keyId: "test-ec-256",
  keySpec: "EC-256",
  hashAlgorithm: "SHA-256",
  digest: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
});

const dir = mkdtempSync(join(tmpdir(), "bench-audit-"));
const log = await AuditLog.open({ dir: join(dir, "audit"), fsync: FSYNC });
let n = 0;
const results = new Map();
try {
  for (let r = 0; r < ROUNDS + 1; r++) {
    for (const c of CONC) {
      let stop = false;
      let done = 0;
      const worker = async () => {
        while (!stop) {
          await log.append(record(n++));
          done++;
        }
      };
      const all = Promise.all(Array.from({ length: c }, worker));
      await new Promise((res) => setTimeout(res, 200));
      const d0 = done;
      const c0 = cpu();
      const t0 = performance.now();
      await new Promise((res) => setTimeout(res, DURATION_MS));
      const c1 = cpu();
      const calls = done - d0;
      const t1 = performance.now();
      stop = true;
      await all;
      // round 0 warms up
      if (r === 0) continue;
      const x = { rate: (calls * 1000) / (t1 - t0), main: (c1.main - c0.main) / calls, rest: (c1.all - c1.main - (c0.all - c0.main)) / calls };
      results.set(c, [...(results.get(c) ?? []), x]);
    }
  }
} finally {
  await log.close();
  rmSync(dir, { recursive: true, force: true });
}
const med = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
console.log(`audit appends, fsync ${FSYNC}, ${ROUNDS} rounds of ${DURATION_MS} ms, medians (root ${ROOT})`);
console.log("in flight  appends/s  main ms/append  writer+rest ms/append  main rounds");
for (const [c, xs] of results) {
  console.log(
    `${String(c).padStart(9)}  ${med(xs.map((x) => x.rate))
      .toFixed(0)
      .padStart(9)}  ${med(xs.map((x) => x.main))
      .toFixed(4)
      .padStart(14)}  ${med(xs.map((x) => x.rest))
      .toFixed(4)
      .padStart(21)}  ${xs.map((x) => x.main.toFixed(4)).join(",")}`,
  );
}
