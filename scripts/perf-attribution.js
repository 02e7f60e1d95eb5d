// Where a server's event loop spends its CPU, from `perf record -g` samples (on-CPU time, unlike
// --cpu-prof, which samples wall time: a thread preempted by a woken signing thread shows up in
// --cpu-prof as time in Atomics.notify). Record with the probe, which starts perf per row:
//   apt-get install linux-perf
//   BENCH_PERF_DIR=/tmp/perf BENCH_PERF_FREQ=1999 BENCH_ROWS=service,audit-off BENCH_KEYS=EC-256 \
//     BENCH_CONCURRENCY=64 BENCH_ROUNDS=1 node scripts/bench-cpu.js
// then attribute the main thread's samples to the nearest JavaScript frame's file (native and
// kernel work go to the JavaScript that called it), per call when the call count is given:
//   node scripts/perf-attribution.js /tmp/perf/service-EC-256-64.data[:calls] [/tmp/perf/audit-off-EC-256-64.data[:calls]]
// With two files it prints both and their difference, largest first. The server runs with
// --perf-basic-prof-only-functions under BENCH_PERF_DIR, so JIT frames have names.
import { execFileSync } from "node:child_process";

const FILE_OF = /(dist\/src\/[\w/-]+\.js|@grpc\/grpc-js|@bufbuild\/protobuf|prom-client|valibot|node:[\w/]+)/;

/** Samples of the process's main thread (its thread id is the process id, the lowest of them), as call chains. */
function mainThreadStacks(file) {
  const text = execFileSync("perf", ["script", "-i", file, "-F", "tid,ip,sym,dso"], { maxBuffer: 1 << 30, encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] });
  const stacks = [];
  let cur;
  for (const line of text.split("\n")) {
    if (line.trim() === "") {
      if (cur) stacks.push(cur);
      cur = undefined;
    } else if (!line.startsWith("\t")) {
      // A sample's first line: its thread id, right-aligned (a leading space below 10000); its frames start with a tab.
      const [tid, , ...rest] = line.trim().split(/\s+/);
      cur = { tid: Number(tid), frames: rest.length ? [rest.join(" ")] : [] };
    } else if (cur) {
      const [, ...sym] = line.trim().split(/\s+/);
      cur.frames.push(sym.join(" "));
    }
  }
  if (cur) stacks.push(cur);
  const main = Math.min(...stacks.map((s) => s.tid));
  return stacks.filter((s) => s.tid === main);
}

function bucket(frames) {
  for (const f of frames) {
    if (!f.startsWith("JS:")) continue;
    const m = FILE_OF.exec(f);
    return m ? m[1] : f.replace(/\s*\(\/[^)]*\)$/, "").slice(3);
  }
  const all = frames.join(" ");
  if (/Scavenger|Heap::|MarkCompact|Sweeper|MinorMC/.test(all)) return "(garbage collection)";
  if (/\[kernel/.test(frames[0] ?? "")) return "(kernel, no JavaScript caller)";
  return "(native, no JavaScript caller)";
}

function profile(arg) {
  const [file, calls] = arg.split(":");
  const counts = new Map();
  const stacks = mainThreadStacks(file);
  for (const s of stacks) {
    const b = bucket(s.frames);
    counts.set(b, (counts.get(b) ?? 0) + 1);
  }
  return { file, calls: calls ? Number(calls) : undefined, total: stacks.length, counts };
}

const profiles = process.argv.slice(2).map(profile);
if (profiles.length === 0) {
  console.error("usage: node scripts/perf-attribution.js FILE[:calls] [FILE[:calls]]");
  process.exit(2);
}
const hz = Number(process.env.BENCH_PERF_FREQ || 1999);
// Per call in µs when the calls are known (samples / Hz / calls), else the share of the main thread's samples in %.
const value = (p, n) => (p.calls ? (n * 1e6) / hz / p.calls : (100 * n) / p.total);
const unit = profiles.every((p) => p.calls) ? `µs/call (at ${hz} Hz)` : "% of the main thread's samples";
const keys = [...new Set(profiles.flatMap((p) => [...p.counts.keys()]))];
const diff = (k) =>
  profiles.length === 2 ? value(profiles[0], profiles[0].counts.get(k) ?? 0) - value(profiles[1], profiles[1].counts.get(k) ?? 0) : value(profiles[0], profiles[0].counts.get(k) ?? 0);
keys.sort((a, b) => diff(b) - diff(a));
console.log(`main thread, ${unit}: ${profiles.map((p) => `${p.file} (${p.total} samples)`).join(" against ")}`);
const cols = (k) =>
  profiles.map((p) =>
    value(p, p.counts.get(k) ?? 0)
      .toFixed(1)
      .padStart(10),
  );
console.log(
  `${"TOTAL".padEnd(48)}${profiles.map((p) => value(p, p.total).toFixed(1).padStart(10)).join("")}${profiles.length === 2 ? (value(profiles[0], profiles[0].total) - value(profiles[1], profiles[1].total)).toFixed(1).padStart(10) : ""}`,
);
for (const k of keys.slice(0, Number(process.env.TOP || 30))) console.log(`${k.slice(0, 47).padEnd(48)}${cols(k).join("")}${profiles.length === 2 ? diff(k).toFixed(1).padStart(10) : ""}`);
