// Sign throughput with the PostgreSQL audit store against the file store, alone and quickly (the
// same rows as b'') of bench.ts, without the rest): node dist/test/bench/audit-store-load.js
// Knobs: BENCH_CONCURRENCY (64), BENCH_DURATION_MS (3000), BENCH_ROUNDS (2: file and PostgreSQL
// alternate, to spread the machine's noise over both).
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { AuditLog } from "../../src/audit/index.js";
import { PostgresAuditStore } from "../../src/audit/postgres-store.js";
import type { KeySpec } from "../../src/signing/key-spec.js";
import { closeFixture, getFixture, startTestServer } from "../helpers/fixture.js";
import { startPostgres } from "../helpers/postgres.js";
import type { LoadResult } from "./load.js";
import { signLoad, WarmLoadClient } from "./warm-load-client.js";

const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 64);
const DURATION_MS = Number(process.env.BENCH_DURATION_MS ?? 3000);
const ROUNDS = Number(process.env.BENCH_ROUNDS ?? 2);
const KEYS: KeySpec[] = ["EC-256", "RSA-3072"];

const loadClient = new WarmLoadClient();

function load(port: number, caFile: string, spec: KeySpec): Promise<LoadResult> {
  return loadClient.run({ port, caFile, ...signLoad(spec), concurrency: CONCURRENCY, warmupMs: 500, durationMs: DURATION_MS, client: "grpc-js" }, DURATION_MS + 60_000);
}

async function main(): Promise<void> {
  const f = await getFixture();
  const dir = mkdtempSync(join(tmpdir(), "hsm-signer-bench-audit-"));
  const pg = await startPostgres({ fsync: true });
  try {
    const db = await pg.createDatabase("bench_audit_load");
    const file = await AuditLog.open({ dir: join(dir, "audit") });
    const pgStore = await PostgresAuditStore.open({ connection: { host: pg.socketDir, port: pg.port, database: db.database, user: "postgres" }, replicaId: "bench" });
    const fileServer = await startTestServer(f, { audit: file });
    const pgServer = await startTestServer(f, { audit: pgStore });
    const rates = new Map<string, number[]>();
    const dbCpu = new Map<KeySpec, number[]>();
    try {
      for (let round = 0; round < ROUNDS; round++) {
        for (const spec of KEYS) {
          const r1 = await load(fileServer.port, f.tls.caFile, spec);
          (rates.get(`file ${spec}`) ?? rates.set(`file ${spec}`, []).get(`file ${spec}`)!).push(r1.rate);
          const [cpu0, seq0] = [await pg.cpuMs(), pgStore.stats.sequence];
          const r2 = await load(pgServer.port, f.tls.caFile, spec);
          (rates.get(`pg ${spec}`) ?? rates.set(`pg ${spec}`, []).get(`pg ${spec}`)!).push(r2.rate);
          (dbCpu.get(spec) ?? dbCpu.set(spec, []).get(spec)!).push(((await pg.cpuMs()) - cpu0) / Math.max(1, pgStore.stats.sequence - seq0));
          console.error(
            `round ${round + 1} ${spec}: file ${r1.rate.toFixed(0)}/s (p50 ${r1.p50.toFixed(1)} ms), PostgreSQL ${r2.rate.toFixed(0)}/s (p50 ${r2.p50.toFixed(1)} ms), others ${r2.otherCores.toFixed(2)} cores`,
          );
        }
      }
    } finally {
      await loadClient.close();
      await fileServer.close(2000);
      await pgServer.close(2000);
      await file.close();
      await pgStore.close();
    }
    const mean = (xs: number[]): number => xs.reduce((a, b) => a + b, 0) / xs.length;
    for (const spec of KEYS) {
      const [fr, pr] = [mean(rates.get(`file ${spec}`)!), mean(rates.get(`pg ${spec}`)!)];
      // Issue 13's targets: the database may cost EC-256 at most 20% of its calls/s, RSA-3072 5%.
      const floor = spec === "EC-256" ? 0.8 : 0.95;
      const verdict = pr / fr >= floor ? "PASS" : "FAIL";
      console.log(
        `${verdict}  ${spec}: file store ${fr.toFixed(0)} calls/s, PostgreSQL ${pr.toFixed(0)} calls/s = ${((100 * pr) / fr).toFixed(0)}% (target >= ${floor * 100}%); database CPU ${mean(dbCpu.get(spec)!).toFixed(3)} ms per call`,
      );
    }
  } finally {
    await pg.destroy();
    rmSync(dir, { recursive: true, force: true });
    await closeFixture();
  }
}

await main();
