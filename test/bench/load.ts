import { spawnCollect, type ProcessResult } from "../helpers/process.js";
import { readFileSync } from "node:fs";
import { performance, type EventLoopUtilization } from "node:perf_hooks";

/** Closed-loop load: `concurrency` callers, each starting the next call as soon as its last one ends. */
export interface LoadOptions {
  concurrency: number;
  warmupMs: number;
  durationMs: number;
  /** The whole run (warm-up, measurement, drain) fails after this long. */
  hardLimitMs?: number;
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
  /** Event loop utilization of this (main) thread during the window, 0..1. */
  elu: number;
  /** CPU time of the whole process (all threads, user + system) per completed call, in ms. */
  cpuMsPerCall: number;
  /** Process CPU during the window in cores (1.0 = one core busy all the time). */
  cores: number;
  /** CPU used by other processes on the machine during the window, in cores (NaN when unknown). */
  otherCores: number;
  /** With the client in its own process: that process's CPU, in cores. */
  clientCores?: number;
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
  return percentile([...values].sort((a, b) => a - b), 50);
}

/**
 * Runs `op` with `concurrency` calls in flight for warm-up + duration, then lets the calls in
 * flight drain. The first failing call aborts the run with its error; the run is bounded by
 * hardLimitMs, so a hung call cannot hang the benchmark.
 */
export async function runLoad(op: () => Promise<unknown>, o: LoadOptions): Promise<LoadResult> {
  const t0 = performance.now();
  const measureStart = t0 + o.warmupMs;
  const measureEnd = measureStart + o.durationMs;
  let stop = false;
  let ops = 0;
  const latencies: number[] = [];
  let failure: { error: unknown } | undefined;

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
      if (e >= measureStart && e <= measureEnd) {
        ops++;
        if (s >= measureStart) latencies.push(e - s);
      }
      if (e > measureEnd) stop = true;
    }
  };

  let elu0: EventLoopUtilization | undefined;
  let cpu0: NodeJS.CpuUsage | undefined;
  let elu = Number.NaN;
  let cpuMs = Number.NaN;
  let machine0 = Number.NaN;
  let otherMs = Number.NaN;
  const startTimer = setTimeout(() => {
    elu0 = performance.eventLoopUtilization();
    cpu0 = process.cpuUsage();
    machine0 = machineBusyMs();
  }, measureStart - t0);
  const stopTimer = setTimeout(() => {
    stop = true;
    if (elu0 && cpu0) {
      elu = performance.eventLoopUtilization(elu0).utilization;
      const c = process.cpuUsage(cpu0);
      cpuMs = (c.user + c.system) / 1000;
      otherMs = Math.max(0, machineBusyMs() - machine0 - cpuMs);
    }
  }, measureEnd - t0);
  let hardTimer: NodeJS.Timeout | undefined;
  const hardLimit = new Promise<never>((_, reject) => {
    hardTimer = setTimeout(() => reject(new Error(`load run did not finish within ${o.hardLimitMs ?? 30_000 + o.warmupMs + o.durationMs} ms`)), o.hardLimitMs ?? 30_000 + o.warmupMs + o.durationMs);
  });
  try {
    await Promise.race([Promise.all(Array.from({ length: o.concurrency }, caller)), hardLimit]);
  } finally {
    stop = true;
    clearTimeout(startTimer);
    clearTimeout(stopTimer);
    clearTimeout(hardTimer);
  }
  if (failure) throw failure.error instanceof Error ? failure.error : new Error(String(failure.error));
  latencies.sort((a, b) => a - b);
  const seconds = o.durationMs / 1000;
  return {
    ops,
    seconds,
    rate: ops / seconds,
    p50: percentile(latencies, 50),
    p99: percentile(latencies, 99),
    mean: latencies.reduce((a, b) => a + b, 0) / Math.max(1, latencies.length),
    elu,
    cpuMsPerCall: cpuMs / Math.max(1, ops),
    cores: cpuMs / o.durationMs,
    otherCores: otherMs / o.durationMs,
  };
}

/** CPU time of this process's waited-for children so far, in ms (Linux /proc/self/stat), or NaN. */
export function childrenCpuMs(): number {
  try {
    const stat = readFileSync("/proc/self/stat", "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ").map(Number);
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
 * server), feeding `input` on stdin; wall time is spawn to "close" (exit and streams drained).
 */
export async function runProcess(file: string, args: string[], input: string | undefined, env: NodeJS.ProcessEnv, timeoutMs = 15_000): Promise<ProcessResult> {
  const r = await spawnCollect(file, args, input ?? "", { env, timeoutMs });
  if (r.timedOut) throw new Error(`${file} ${args.join(" ")} did not finish within ${timeoutMs} ms`);
  return r;
}
