/**
 * Soak: minutes of mixed load against hsm-signer running as its own process (dist/hsm-signer
 * serve, set up by scripts/demo-setup.sh on a SoftHSM token of its own), reporting throughput,
 * p50/p99 latency per kind of call, and the service's memory (RSS and V8 heap from its /metrics,
 * RSS also from /proc/PID/status) over time, with a verdict on growth.
 *
 * The mix, per call, by weight: Sign EC-256 and RSA-2048 over payloads of 64 B to 4 KiB, Sign of
 * a digest, DescribeKey, GetCertificateChain, ListKeys, a key the policy denies (PERMISSION_DENIED)
 * and malformed requests (INVALID_ARGUMENT). Every answer is checked: an unexpected one fails it.
 *
 * Knobs (environment): BENCH_SOAK_MS (180000), BENCH_SOAK_CONCURRENCY (8).
 */
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { performance } from "node:perf_hooks";
import { promisify } from "node:util";
import * as grpc from "@grpc/grpc-js";
import { digest as hashBytes } from "../../src/signing/key-spec.js";
import { verifyNotarySignature } from "../helpers/notation.js";
import { demoSetup } from "../helpers/service-process.js";
import { callSigner, signerClient, type SignResponse } from "../helpers/signer-client.js";
import { PROJECT_ROOT } from "../helpers/softhsm.js";
import { percentile } from "./load.js";

const run = promisify(execFile);
const HSM_SIGNER = join(PROJECT_ROOT, "dist/hsm-signer");
const EC_KEY = "soak-ec";
const RSA_KEY = "soak-rsa";
const DENIED_KEY = "soak-not-allowed";
/** Memory after the run may be at most this many times the memory after warm-up. */
export const SOAK_RSS_FACTOR = 1.1;
const CALL_TIMEOUT_MS = 10_000;

export interface SoakOptions {
  durationMs: number;
  concurrency: number;
  log: (s: string) => void;
}

interface Memory {
  atMs: number;
  rssMb: number;
  heapUsedMb: number;
  heapTotalMb: number;
  procRssMb: number;
}

export interface SoakResult {
  durationS: number;
  concurrency: number;
  calls: number;
  perSec: number;
  p50Ms: number;
  p99Ms: number;
  byKind: Record<string, { calls: number; p50Ms: number; p99Ms: number }>;
  unexpected: number;
  memory: { start: Memory; afterWarmup: Memory; end: Memory; samples: Memory[]; rssSlopeMbPerMin: number };
  rssRatio: number;
  pass: boolean;
}

function waitForListening(child: ChildProcess, ms: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let out = "";
    const t = setTimeout(() => reject(new Error(`the service did not start within ${ms} ms: ${out}`)), ms);
    child.stdout?.on("data", (d: Buffer) => {
      out += d.toString();
      if (out.includes('"msg":"hsm-signer listening"')) {
        clearTimeout(t);
        resolve();
      }
    });
    child.on("exit", (code) => reject(new Error(`the service exited with ${code}: ${out}`)));
  });
}

const MB = 1024 * 1024;

async function memoryOf(metricsPort: number, pid: number, t0: number): Promise<Memory> {
  const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
  const value = (name: string): number => {
    const line = text.split("\n").find((l) => l.startsWith(`${name} `));
    return line ? Number(line.slice(name.length + 1)) : Number.NaN;
  };
  let procRss = Number.NaN;
  try {
    const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    if (m?.[1]) procRss = (Number(m[1]) * 1024) / MB;
  } catch {
    // not Linux
  }
  return {
    atMs: performance.now() - t0,
    rssMb: value("process_resident_memory_bytes") / MB,
    heapUsedMb: value("nodejs_heap_size_used_bytes") / MB,
    heapTotalMb: value("nodejs_heap_size_total_bytes") / MB,
    procRssMb: procRss,
  };
}

/** Least-squares slope of RSS over time, MB per minute. */
function slope(samples: Memory[]): number {
  const n = samples.length;
  if (n < 2) return Number.NaN;
  const xs = samples.map((s) => s.atMs / 60_000);
  const ys = samples.map((s) => s.rssMb);
  const mx = xs.reduce((a, b) => a + b, 0) / n;
  const my = ys.reduce((a, b) => a + b, 0) / n;
  let num = 0;
  let den = 0;
  for (let i = 0; i < n; i++) {
    num += ((xs[i] as number) - mx) * ((ys[i] as number) - my);
    den += ((xs[i] as number) - mx) ** 2;
  }
  return den === 0 ? Number.NaN : num / den;
}

type Kind = "Sign EC-256 payload" | "Sign RSA-2048 payload" | "Sign EC-256 digest" | "DescribeKey" | "GetCertificateChain" | "ListKeys" | "denied (PERMISSION_DENIED)" | "malformed (INVALID_ARGUMENT)";

/** The mix: kind and weight. */
const MIX: [Kind, number][] = [
  ["Sign EC-256 payload", 30],
  ["Sign RSA-2048 payload", 20],
  ["Sign EC-256 digest", 10],
  ["DescribeKey", 10],
  ["GetCertificateChain", 10],
  ["ListKeys", 5],
  ["denied (PERMISSION_DENIED)", 8],
  ["malformed (INVALID_ARGUMENT)", 7],
];
const TOTAL_WEIGHT = MIX.reduce((a, [, w]) => a + w, 0);

function pick(): Kind {
  let r = Math.random() * TOTAL_WEIGHT;
  for (const [k, w] of MIX) {
    r -= w;
    if (r < 0) return k;
  }
  return MIX[0]![0];
}

const expectCode = async (p: Promise<unknown>, code: grpc.status, what: string): Promise<void> => {
  const e = await p.then(
    () => undefined,
    (err: grpc.ServiceError) => err,
  );
  if (!e) throw new Error(`${what}: answered, expected status ${code}`);
  if (e.code !== code) throw new Error(`${what}: status ${e.code} (${e.details}), expected ${code}`);
};

/** One call of `kind`, checked. Signatures are verified on a sample only, to keep the client's CPU low. */
async function call(client: grpc.Client, kind: Kind, verify: boolean): Promise<void> {
  const deadline = Date.now() + CALL_TIMEOUT_MS;
  switch (kind) {
    case "Sign EC-256 payload":
    case "Sign RSA-2048 payload": {
      const ec = kind === "Sign EC-256 payload";
      const payload = randomBytes(64 + Math.floor(Math.random() * 4032));
      const r = await callSigner<SignResponse>(client, "Sign", { keyId: ec ? EC_KEY : RSA_KEY, payload }, deadline);
      if (verify && !verifyNotarySignature(payload, r.signature, r.certificateChain[0] as Buffer, ec ? "EC-256" : "RSA-2048")) throw new Error(`${kind}: the signature does not verify`);
      return;
    }
    case "Sign EC-256 digest": {
      const r = await callSigner<SignResponse>(client, "Sign", { keyId: EC_KEY, digest: hashBytes("SHA-256", randomBytes(32)), hashAlgorithm: "SHA-256", keySpec: "EC-256" }, deadline);
      if (r.signature.length !== 64) throw new Error(`${kind}: ${r.signature.length}-byte signature`);
      return;
    }
    case "DescribeKey": {
      const r = await callSigner<{ key: { keySpec: string } }>(client, "DescribeKey", { keyId: Math.random() < 0.5 ? EC_KEY : RSA_KEY }, deadline);
      if (!r.key.keySpec) throw new Error("DescribeKey: no key spec");
      return;
    }
    case "GetCertificateChain": {
      const r = await callSigner<{ certificateChain: Buffer[] }>(client, "GetCertificateChain", { keyId: EC_KEY }, deadline);
      if (r.certificateChain.length < 2) throw new Error("GetCertificateChain: no chain");
      return;
    }
    case "ListKeys": {
      const r = await callSigner<{ keys: unknown[] }>(client, "ListKeys", {}, deadline);
      if (r.keys.length !== 2) throw new Error(`ListKeys: ${r.keys.length} keys`);
      return;
    }
    case "denied (PERMISSION_DENIED)":
      return expectCode(callSigner(client, "Sign", { keyId: DENIED_KEY, payload: randomBytes(100) }, deadline), grpc.status.PERMISSION_DENIED, kind);
    case "malformed (INVALID_ARGUMENT)": {
      const r = Math.random();
      // No payload nor digest; a digest of the wrong length; a hash that does not fit the key.
      const req =
        r < 0.34 ? { keyId: EC_KEY } : r < 0.67 ? { keyId: EC_KEY, digest: randomBytes(20), hashAlgorithm: "SHA-256" } : { keyId: EC_KEY, payload: randomBytes(10), hashAlgorithm: "SHA-512" };
      return expectCode(callSigner(client, "Sign", req, deadline), grpc.status.INVALID_ARGUMENT, kind);
    }
  }
}

export async function runSoak(o: SoakOptions): Promise<SoakResult> {
  const data = mkdtempSync(join(tmpdir(), "hsm-signer-soak-"));
  let child: ChildProcess | undefined;
  let client: grpc.Client | undefined;
  try {
    o.log(`soak: setting up a token with ${EC_KEY} (EC-256) and ${RSA_KEY} (RSA-2048) in ${data}...`);
    const { port, metricsPort } = await demoSetup({ data, keyId: EC_KEY, tokenLabel: "hsm-signer-soak", timeoutMs: 120_000 });
    const env = { ...process.env, SOFTHSM2_CONF: join(data, "softhsm2.conf") };
    await run(HSM_SIGNER, ["test-chain", "--config", join(data, "config.yaml"), "--key-id", RSA_KEY, "--key-spec", "RSA-2048"], { env, timeout: 120_000 });
    // Anonymous loopback callers may use the two soak keys and nothing else, so DENIED_KEY is refused by policy.
    writeFileSync(join(data, "policy.yaml"), `allowAnonymousOnLoopback: true\nrules:\n  - name: soak\n    match: { anonymous: true }\n    keys: ["${EC_KEY}", "${RSA_KEY}"]\n`);
    child = spawn(HSM_SIGNER, ["serve", "--config", join(data, "config.yaml")], { env, stdio: ["ignore", "pipe", "pipe"] });
    child.stderr?.resume();
    await waitForListening(child, 30_000);
    const pid = child.pid as number;
    client = signerClient(readFileSync(join(data, "tls/ca.pem")), port);
    const c = client;
    for (const [k] of MIX) await call(c, k, true); // every kind answers as expected before the clock starts

    const t0 = performance.now();
    const start = await memoryOf(metricsPort, pid, t0);
    const warmupMs = Math.min(30_000, o.durationMs * 0.2);
    const sampleEveryMs = Math.max(1_000, Math.min(15_000, o.durationMs / 12));
    const samples: Memory[] = [start];
    let afterWarmup: Memory | undefined;
    const latencies = new Map<Kind, number[]>(MIX.map(([k]) => [k, []]));
    let calls = 0;
    let unexpected = 0;
    let firstError: unknown;
    let stop = false;
    let measuring = false;
    let measureStart = 0;
    let measureCalls = 0;
    o.log(`soak: ${o.durationMs / 1000} s of mixed load, ${o.concurrency} calls in flight (warm-up ${warmupMs / 1000} s, memory every ${sampleEveryMs / 1000} s)...`);
    const sampler = (async () => {
      let next = sampleEveryMs;
      while (!stop) {
        const now = performance.now() - t0;
        if (!afterWarmup && now >= warmupMs) {
          afterWarmup = await memoryOf(metricsPort, pid, t0);
          samples.push(afterWarmup);
          measuring = true;
          measureStart = performance.now();
        }
        if (now >= next) {
          const m = await memoryOf(metricsPort, pid, t0);
          samples.push(m);
          next += sampleEveryMs;
          o.log(`soak: ${(m.atMs / 1000).toFixed(0)} s, ${calls} calls, RSS ${m.rssMb.toFixed(1)} MB, heap used ${m.heapUsedMb.toFixed(1)} MB`);
        }
        await new Promise((r) => setTimeout(r, 200));
      }
    })();
    const callers = Array.from({ length: o.concurrency }, async () => {
      while (performance.now() - t0 < o.durationMs) {
        const kind = pick();
        const s = performance.now();
        try {
          await call(c, kind, calls % 50 === 0);
        } catch (e) {
          unexpected++;
          firstError ??= e;
        }
        calls++;
        if (measuring) {
          measureCalls++;
          latencies.get(kind)?.push(performance.now() - s);
        }
      }
    });
    await Promise.all(callers);
    const measuredS = (performance.now() - measureStart) / 1000;
    stop = true;
    await sampler;
    const end = await memoryOf(metricsPort, pid, t0);
    samples.push(end);
    if (firstError) o.log(`soak: ${unexpected} unexpected answers; the first: ${firstError instanceof Error ? firstError.message : String(firstError)}`);

    const all = [...latencies.values()].flat().sort((a, b) => a - b);
    const byKind: SoakResult["byKind"] = {};
    for (const [k, l] of latencies) {
      const s = [...l].sort((a, b) => a - b);
      byKind[k] = { calls: s.length, p50Ms: percentile(s, 50), p99Ms: percentile(s, 99) };
    }
    const base = afterWarmup ?? start;
    const rssRatio = end.rssMb / base.rssMb;
    return {
      durationS: o.durationMs / 1000,
      concurrency: o.concurrency,
      calls,
      perSec: measureCalls / measuredS,
      p50Ms: percentile(all, 50),
      p99Ms: percentile(all, 99),
      byKind,
      unexpected,
      memory: { start, afterWarmup: base, end, samples, rssSlopeMbPerMin: slope(samples.filter((s) => s.atMs >= base.atMs)) },
      rssRatio,
      pass: unexpected === 0 && rssRatio <= SOAK_RSS_FACTOR,
    };
  } finally {
    client?.close();
    if (child && child.exitCode === null) {
      const exited = new Promise<void>((r) => child?.once("exit", () => r()));
      child.kill("SIGTERM");
      await Promise.race([exited, new Promise((r) => setTimeout(r, 15_000))]);
      if (child.exitCode === null) child.kill("SIGKILL");
    }
    rmSync(data, { recursive: true, force: true });
  }
}

const f1 = (n: number, d = 1): string => (Number.isFinite(n) ? n.toFixed(d) : "-");

export function printSoak(r: SoakResult): void {
  console.log("");
  console.log(`soak: hsm-signer as a process, ${r.durationS} s of mixed load, ${r.concurrency} calls in flight, client in the bench process`);
  console.log("");
  const kinds = Object.entries(r.byKind);
  const w = Math.max(...kinds.map(([k]) => k.length), "all (after warm-up)".length);
  console.log(`${"".padEnd(w)}  ${"calls".padStart(7)}  ${"p50 ms".padStart(7)}  ${"p99 ms".padStart(7)}`);
  console.log(`${"-".repeat(w)}  ${"-".repeat(7)}  ${"-".repeat(7)}  ${"-".repeat(7)}`);
  for (const [k, v] of kinds) console.log(`${k.padEnd(w)}  ${String(v.calls).padStart(7)}  ${f1(v.p50Ms, 2).padStart(7)}  ${f1(v.p99Ms, 2).padStart(7)}`);
  console.log(
    `${"all (after warm-up)".padEnd(w)}  ${String(kinds.reduce((a, [, v]) => a + v.calls, 0)).padStart(7)}  ${f1(r.p50Ms, 2).padStart(7)}  ${f1(r.p99Ms, 2).padStart(7)}   ${f1(r.perSec, 0)} calls/s`,
  );
  console.log("");
  console.log("service memory     at s   RSS MB  heap used MB  heap total MB  /proc VmRSS MB");
  const row = (name: string, m: Memory): void =>
    console.log(
      `${name.padEnd(16)} ${f1(m.atMs / 1000, 0).padStart(6)}  ${f1(m.rssMb).padStart(7)}  ${f1(m.heapUsedMb).padStart(12)}  ${f1(m.heapTotalMb).padStart(13)}  ${f1(m.procRssMb).padStart(14)}`,
    );
  row("start", r.memory.start);
  row("after warm-up", r.memory.afterWarmup);
  row("end", r.memory.end);
  console.log(`RSS trend after warm-up: ${f1(r.memory.rssSlopeMbPerMin, 2)} MB/min over ${r.memory.samples.length} samples`);
  console.log("");
  console.log(`  ${r.unexpected === 0 ? "PASS" : "FAIL"}  every answer as expected (${r.unexpected} unexpected of ${r.calls})`);
  console.log(
    `  ${r.rssRatio <= SOAK_RSS_FACTOR ? "PASS" : "FAIL"}  memory bounded: end RSS <= ${SOAK_RSS_FACTOR}x RSS after warm-up (${f1(r.rssRatio, 2)}x: ${f1(r.memory.end.rssMb)} / ${f1(r.memory.afterWarmup.rssMb)} MB)`,
  );
}
