// Search in the PostgreSQL audit store at scale: a throwaway PostgreSQL (as the tests start it)
// gets AUDIT_SEARCH_ROWS records (default 1,000,000) over 3 replicas with generate_series, then
// `hsm-signer audit search --artifact ...` runs as a process and EXPLAIN ANALYZE shows the plan.
// Run alone: node dist/test/bench/audit-search.js (a minute or two; it loads 2 cores meanwhile).
import { performance } from "node:perf_hooks";
import { migrateSchema } from "../../src/audit/postgres-store.js";
import { spawnCollect } from "../helpers/process.js";
import { startPostgres } from "../helpers/postgres.js";
import { HSM_SIGNER } from "../helpers/service-process.js";

const ROWS = Number(process.env.AUDIT_SEARCH_ROWS ?? 1_000_000);
const TARGET_MS = 1000;

async function main(): Promise<void> {
  const server = await startPostgres();
  try {
    const { database } = await server.createDatabase("audit_search_bench");
    const c = await server.admin(database);
    try {
      await migrateSchema(c);
      await c.query("INSERT INTO audit_replicas (replica_id) VALUES ('bench-0'), ('bench-1'), ('bench-2')");
      let t = performance.now();
      // Lines shaped like the service's (about 500 bytes), every record with its own artifact digest.
      await c.query(
        `INSERT INTO audit_records (replica_id, seq, time, line, method, identity, key_id, artifact_digest, result)
         SELECT 'bench-' || (g % 3), g / 3 + 1, now() - make_interval(secs => ($1 - g) / 100.0),
                json_build_object('seq', g / 3 + 1, 'prev', encode(sha256(int8send(g)), 'hex'), 'time', now()::text, 'requestId', md5(g::text),
                  'peer', 'ipv4:10.0.0.1:5000', 'identity', 'spiffe://corp/build/' || (g % 50), 'method', 'Sign', 'keyId', 'release-' || (g % 7),
                  'artifact', json_build_object('digest', 'sha256:' || encode(sha256(int8send(g * 7919)), 'hex'), 'mediaType', 'application/vnd.oci.image.manifest.v1+json', 'size', 1234),
                  'decision', 'allow', 'result', 'OK', 'latencyMs', 3)::text,
                'Sign', 'spiffe://corp/build/' || (g % 50), 'release-' || (g % 7), 'sha256:' || encode(sha256(int8send(g * 7919)), 'hex'), 'OK'
         FROM generate_series(0::bigint, $1::bigint - 1) AS g`,
        [ROWS],
      );
      await c.query("ANALYZE audit_records");
      const loadS = (performance.now() - t) / 1000;
      const size = (await c.query<{ s: string }>("SELECT pg_size_pretty(pg_total_relation_size('audit_records')) AS s")).rows[0]!.s;
      const target = (await c.query<{ d: string }>("SELECT 'sha256:' || encode(sha256(int8send($1::bigint * 7919)), 'hex') AS d", [Math.floor(ROWS / 2)])).rows[0]!.d;
      const plan = (
        await c.query<{ "QUERY PLAN": string }>("EXPLAIN (ANALYZE, BUFFERS) SELECT replica_id, seq, line FROM audit_records WHERE artifact_digest = $1 ORDER BY time, replica_id, seq", [target])
      ).rows.map((r) => r["QUERY PLAN"]);
      const env = { ...process.env, PGHOST: server.socketDir, PGPORT: String(server.port), PGUSER: "postgres", PGDATABASE: database };
      const runs: number[] = [];
      let found = "";
      for (let i = 0; i < 5; i++) {
        t = performance.now();
        const r = await spawnCollect(HSM_SIGNER, ["audit", "search", "--database", "--artifact", target, "--json"], "", { env, timeoutMs: 60_000 });
        runs.push(performance.now() - t);
        if (r.code !== 0) throw new Error(r.stderr);
        found = r.stdout;
      }
      const q: number[] = [];
      for (let i = 0; i < 20; i++) {
        t = performance.now();
        await c.query("SELECT replica_id, seq, line FROM audit_records WHERE artifact_digest = $1 ORDER BY time, replica_id, seq", [target]);
        q.push(performance.now() - t);
      }
      runs.sort((a, b) => a - b);
      q.sort((a, b) => a - b);
      console.log(`rows: ${ROWS} (${size} with indexes), loaded in ${loadS.toFixed(1)} s`);
      console.log(`search by digest, the query alone: median ${q[10]!.toFixed(2)} ms, max ${q.at(-1)!.toFixed(2)} ms`);
      console.log(
        `hsm-signer audit search --artifact (a process: start, connect, query, print): median ${runs[2]!.toFixed(0)} ms, max ${runs.at(-1)!.toFixed(0)} ms; ${found.trim().split("\n").length} record(s) found`,
      );
      console.log(plan.map((l) => `  ${l}`).join("\n"));
      const ok = q[10]! < TARGET_MS;
      console.log(ok ? `PASS: well under ${TARGET_MS} ms` : `MISS: over ${TARGET_MS} ms`);
    } finally {
      await c.end();
    }
  } finally {
    await server.destroy();
  }
}

await main();
