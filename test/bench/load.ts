import { spawnCollect, type ProcessResult } from "../helpers/process.js";
import { readdirSync, readFileSync } from "node:fs";
import { performance } from "node:perf_hooks";

/** Closed-loop load: `concurrency` callers, each starting the next call as soon as its last one ends. */
export interface LoadOptions {
  concurrency: number;
  warmupMs: number;
  /**
   * The window starts only once this many calls are done as well (default 0). A server's code
   * runs unoptimized until V8 has seen it run often enough: a slow row (RSA, ~300 calls/s)
   * measured after a warm-up in time alone measures the JIT's warm-up.
   */
  warmupCalls?: number;
  durationMs: number;
  /** The whole run (warm-up, measurement, drain) fails after this long. */
  hardLimitMs?: number;
  /** The process whose CPU the window measures (default: this one). */
  server?: { pid: number; threads: ThreadGroups };
}

/** Which threads of a server are which (ids as in /proc/PID/task); the others count as "other" (V8's GC and compiler threads). */
export interface ThreadGroups {
  main: string[];
  /** The HSM signing threads (sign-threads.ts). */
  sign: string[];
  /** The libuv pool (file I/O the service does not do on its own threads). */
  libuv: string[];
  /** The audit log's writer thread (audit-writer.ts: its writes and fdatasyncs), when the server has one. */
  audit?: string[];
}

/** A server's CPU per completed call over the window, in ms, all threads and by kind of thread. */
export interface ServerCpu {
  total: number;
  main: number;
  sign: number;
  libuv: number;
  /** The audit writer thread (0 when the server has none). */
  audit: number;
  other: number;
  user: number;
  system: number;
}

export interface LoadResult {
  /** Calls that completed inside the measurement window. */
  ops: number;
  seconds: number;
  /** ops / seconds */
  rate: number;
  /** Latency (ms) of the calls that both started and ended inside the window. */
  p50: number;
  p99: number;
  mean: number;
  /** The server process's CPU (all its threads, user + system) per completed call, in ms. */
  cpuMsPerCall: number;
  /** The same, split by thread. */
  cpu: ServerCpu;
  /** The server process's CPU during the window in cores (1.0 = one core busy all the time). */
  cores: number;
  /** CPU used by other processes on the machine during the window, in cores (NaN when unknown). */
  otherCores: number;
  /** With the client in its own process: that process's CPU, in cores. */
  clientCores?: number;
}

/** ticks (USER_HZ, 100 on Linux) of utime and stime in a /proc stat line. */
function statTicks(text: string): [number, number] {
  const f = text.slice(text.lastIndexOf(")") + 2).split(" ");
  // Fields after the command, numbered from 3 (state): utime is 14, stime 15.
  return [Number(f[11]), Number(f[12])];
}

interface CpuSample {
  user: number;
  system: number;
  byThread: Map<string, number>;
}

/** CPU so far of process `pid` (all threads, exited ones included) and of each live thread, in ms (Linux /proc). */
export function sampleCpu(pid: number): CpuSample {
  const [u, s] = statTicks(readFileSync(`/proc/${pid}/stat`, "utf8"));
  const byThread = new Map<string, number>();
  for (const t of readdirSync(`/proc/${pid}/task`)) {
    try {
      const [tu, ts] = statTicks(readFileSync(`/proc/${pid}/task/${t}/stat`, "utf8"));
      byThread.set(t, (tu + ts) * 10);
    } catch {
      // the thread ended meanwhile
    }
  }
  return { user: u * 10, system: s * 10, byThread };
}

/** The CPU between two samples, per call. */
function cpuPerCall(a: CpuSample, b: CpuSample, threads: ThreadGroups, calls: number): ServerCpu {
  const n = Math.max(1, calls);
  const group = (ids: string[]): number => ids.reduce((sum, t) => sum + (b.byThread.get(t) ?? 0) - (a.byThread.get(t) ?? 0), 0);
  const user = b.user - a.user;
  const system = b.system - a.system;
  const main = group(threads.main);
  const sign = group(threads.sign);
  const libuv = group(threads.libuv);
  const audit = group(threads.audit ?? []);
  return {
    total: (user + system) / n,
    main: main / n,
    sign: sign / n,
    libuv: libuv / n,
    audit: audit / n,
    other: Math.max(0, user + system - main - sign - libuv - audit) / n,
    user: user / n,
    system: system / n,
  };
}

/** Busy CPU time of the whole machine so far, in ms (Linux /proc/stat), or NaN. */
export function machineBusyMs(): number {
  try {
    const line = readFileSync("/proc/stat", "utf8").split("\n")[0] ?? "";
    const f = line.trim().split(/\s+/).slice(1).map(Number);
    // user nice system idle iowait irq softirq steal guest guest_nice; guest time is already in user.
    const busy = (f[0] ?? 0) + (f[1] ?? 0) + (f[2] ?? 0) + (f[5] ?? 0) + (f[6] ?? 0) + (f[7] ?? 0);
    return (busy * 1000) / 100; // USER_HZ is 100 on Linux
  } catch {
    return Number.NaN;
  }
}

/** Nearest-rank percentile of an ascending array. */
export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i] as number;
}

export function median(values: number[]): number {
  return percentile(
    [...values].sort((a, b) => a - b),
    50,
  );
}

/**
 * A confidence interval for the median of `values` that holds whatever their distribution (from
 * order statistics): the narrowest [x(k+1), x(n-k)] that contains the true median with a chance
 * of at least `level`, that chance being 1 - 2 P(B <= k) for B ~ Binomial(n, 1/2). With fewer
 * values than that level allows, their whole range, with the chance it has (5 values: 93.75%).
 */
export function medianInterval(values: number[], level = 0.9): { low: number; high: number; level: number } {
  const s = [...values].sort((a, b) => a - b);
  const n = s.length;
  if (n === 0) return { low: Number.NaN, high: Number.NaN, level: 0 };
  let term = 1;
  let below = 0;
  let k = 0;
  let chance = 1 - 2 / 2 ** n;
  for (let j = 0; j < Math.floor(n / 2); j++) {
    // below = P(B <= j); term = C(n, j)
    if (j > 0) term = (term * (n - j + 1)) / j;
    below += term / 2 ** n;
    const c = 1 - 2 * below;
    if (c < level) break;
    k = j;
    chance = c;
  }
  return { low: s[k] as number, high: s[n - 1 - k] as number, level: chance };
}

/**
 * Runs `op` with `concurrency` calls in flight for the warm-up (warmupMs and warmupCalls) and then
 * durationMs, then lets the calls in flight drain. The server's CPU (o.server, or this process)
 * is read from /proc at the two edges of the window, so it covers exactly the calls counted. The
 * first failing call aborts the run with its error; the run is bounded by hardLimitMs, so a hung
 * call cannot hang the benchmark.
 */
export async function runLoad(op: () => Promise<unknown>, o: LoadOptions): Promise<LoadResult> {
  const t0 = performance.now();
  const server = o.server ?? { pid: process.pid, threads: { main: [String(process.pid)], sign: [], libuv: [] } };
  const warmupCalls = o.warmupCalls ?? 0;
  /** The warm-up may wait for its calls this much longer than warmupMs. */
  const maxWarmupMs = o.warmupMs + 60_000;
  let measureStart = Infinity;
  let measureEnd = Infinity;
  let stop = false;
  let done = 0;
  let ops = 0;
  const latencies: number[] = [];
  let failure: { error: unknown } | undefined;
  let first: { cpu: CpuSample; machine: number; self: NodeJS.CpuUsage } | undefined;
  let last: { cpu: CpuSample; machine: number; self: NodeJS.CpuUsage } | undefined;
  let endTimer: NodeJS.Timeout | undefined;

  const begin = (): void => {
    measureStart = performance.now();
    measureEnd = measureStart + o.durationMs;
    first = { cpu: sampleCpu(server.pid), machine: machineBusyMs(), self: process.cpuUsage() };
    endTimer = setTimeout(() => {
      last = { cpu: sampleCpu(server.pid), machine: machineBusyMs(), self: process.cpuUsage() };
      stop = true;
    }, o.durationMs);
  };
  const maybeBegin = (): void => {
    if (first || stop) return;
    const now = performance.now();
    if (now - t0 >= o.warmupMs && (done >= warmupCalls || now - t0 >= maxWarmupMs)) begin();
  };

  const caller = async (): Promise<void> => {
    while (!stop) {
      const s = performance.now();
      try {
        await op();
      } catch (e) {
        failure ??= { error: e };
        stop = true;
        return;
      }
      const e = performance.now();
      done++;
      if (e >= measureStart && e <= measureEnd) {
        ops++;
        if (s >= measureStart) latencies.push(e - s);
      }
      maybeBegin();
    }
  };

  // At one call in flight a call may outlast the warm-up: the window then starts at the end of the next call.
  const warmTimer = setTimeout(maybeBegin, o.warmupMs);
  let hardTimer: NodeJS.Timeout | undefined;
  const limit = o.hardLimitMs ?? 30_000 + maxWarmupMs + o.durationMs;
  const hardLimit = new Promise<never>((_, reject) => {
    hardTimer = setTimeout(() => reject(new Error(`load run did not finish within ${limit} ms`)), limit);
  });
  try {
    await Promise.race([Promise.all(Array.from({ length: o.concurrency }, caller)), hardLimit]);
  } finally {
    stop = true;
    clearTimeout(warmTimer);
    clearTimeout(endTimer);
    clearTimeout(hardTimer);
  }
  if (failure) throw failure.error instanceof Error ? failure.error : new Error(String(failure.error));
  if (!first || !last) throw new Error("the load run ended before its measurement window did");
  latencies.sort((a, b) => a - b);
  const seconds = o.durationMs / 1000;
  const cpu = cpuPerCall(first.cpu, last.cpu, server.threads, ops);
  const serverMs = cpu.total * Math.max(1, ops);
  // With the server elsewhere, this process is the load client.
  const client = server.pid === process.pid ? 0 : (last.self.user + last.self.system - first.self.user - first.self.system) / 1000;
  return {
    ops,
    seconds,
    rate: ops / seconds,
    p50: percentile(latencies, 50),
    p99: percentile(latencies, 99),
    mean: latencies.reduce((a, b) => a + b, 0) / Math.max(1, latencies.length),
    cpuMsPerCall: cpu.total,
    cpu,
    cores: serverMs / o.durationMs,
    otherCores: Math.max(0, last.machine - first.machine - serverMs - client) / o.durationMs,
    ...(server.pid === process.pid ? {} : { clientCores: client / o.durationMs }),
  };
}

/** CPU time of this process's waited-for children so far, in ms (Linux /proc/self/stat), or NaN. */
export function childrenCpuMs(): number {
  try {
    const stat = readFileSync("/proc/self/stat", "utf8");
    const f = stat
      .slice(stat.lastIndexOf(")") + 2)
      .split(" ")
      .map(Number);
    // Fields after the command: state(3) ... cutime(16) cstime(17), numbered from 1 with pid.
    return (((f[13] ?? 0) + (f[14] ?? 0)) * 1000) / 100;
  } catch {
    return Number.NaN;
  }
}

/** CPU (in cores) used by processes other than this one and its children since `start`. */
export class MachineNoise {
  private readonly machine0 = machineBusyMs();
  private readonly self0 = process.cpuUsage();
  private readonly children0 = childrenCpuMs();
  private readonly t0 = performance.now();

  otherCores(): number {
    const c = process.cpuUsage(this.self0);
    const other = machineBusyMs() - this.machine0 - (c.user + c.system) / 1000 - (childrenCpuMs() - this.children0);
    return Math.max(0, other) / (performance.now() - this.t0);
  }
}

/**
 * Runs one process asynchronously (the event loop stays free to serve the in-process gRPC
 * server), feeding `input` on stdin (a socket, as Node's spawn makes it, or through `stdinFifo` a
 * pipe, as notation's Go makes it); wall time is spawn to "close" (exit and streams drained).
 */
export async function runProcess(file: string, args: string[], input: string | undefined, env: NodeJS.ProcessEnv, o: { timeoutMs?: number; stdinFifo?: string } = {}): Promise<ProcessResult> {
  const timeoutMs = o.timeoutMs ?? 15_000;
  const r = await spawnCollect(file, args, input ?? "", { env, timeoutMs, stdinFifo: o.stdinFifo });
  if (r.timedOut) throw new Error(`${file} ${args.join(" ")} did not finish within ${timeoutMs} ms`);
  return r;
}
