import assert from "node:assert/strict";
import { request } from "node:http";
import { register as globalRegister } from "prom-client";
import { ERROR_CODES } from "../../src/errors/index.js";
import { SignerMetrics, startOpsServer, type Readiness, type RunningOpsServer } from "../../src/metrics/index.js";

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parses the Prometheus text format (0.0.4): one sample a line, comments skipped. */
function parseProm(text: string): { samples: Sample[]; types: Map<string, string> } {
  const samples: Sample[] = [];
  const types = new Map<string, string>();
  for (const line of text.split("\n")) {
    if (line === "") continue;
    if (line.startsWith("#")) {
      const t = /^# TYPE (\S+) (\S+)$/.exec(line);
      if (t?.[1] && t[2]) types.set(t[1], t[2]);
      continue;
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)( \d+)?$/.exec(line);
    assert.ok(m?.[1] && m[4], `unparsable line: ${line}`);
    const labels: Record<string, string> = {};
    const body = m[3] ?? "";
    const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)",?/g;
    let consumed = 0;
    for (let l = re.exec(body); l; l = re.exec(body)) {
      assert.equal(l.index, consumed, `bad labels in: ${line}`);
      consumed = re.lastIndex;
      labels[l[1] as string] = (l[2] as string).replace(/\\(.)/g, (_s, c: string) => (c === "n" ? "\n" : c));
    }
    assert.equal(consumed, body.length, `bad labels in: ${line}`);
    const raw = m[4];
    const value = raw === "+Inf" ? Infinity : raw === "-Inf" ? -Infinity : Number(raw);
    // prom-client writes "Nan" (event loop stats before the first sample); Prometheus parses NaN case-insensitively.
    assert.ok(!Number.isNaN(value) || /^nan$/i.test(raw), `bad value in: ${line}`);
    samples.push({ name: m[1], labels, value });
  }
  return { samples, types };
}

/** Every sample of `name` whose labels include `labels`. */
function find(samples: Sample[], name: string, labels: Record<string, string> = {}): Sample[] {
  return samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
}

/** The value of the one sample of `name` with exactly these labels (besides `le`, which must be given for buckets). */
function value(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  const hits = samples.filter((s) => s.name === name && Object.keys(s.labels).length === Object.keys(labels).length && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  assert.equal(hits.length, 1, `expected one sample ${name}${JSON.stringify(labels)}, found ${hits.length}`);
  return (hits[0] as Sample).value;
}

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/** Real HTTP, one connection per request (no keep-alive agent left behind). */
function http(port: number, path: string, method = "GET"): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port, path, method, agent: false, timeout: 3000 }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (c: Buffer) => chunks.push(c));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString("utf8") }));
      res.on("error", reject);
    });
    req.on("timeout", () => req.destroy(new Error(`timeout on ${method} ${path}`)));
    req.on("error", reject);
    req.end();
  });
}

const DAY = 86_400;
/** A caller-controlled key id: it must never become a label value. */
const CALLER_KEY = 'attacker-<script>-"quoted"-x9f1';

describe("SignerMetrics and the operations HTTP listener", function () {
  this.timeout(5000);

  let metrics: SignerMetrics;
  let ops: RunningOpsServer;
  let readiness: Readiness;
  let pool = { inUse: 3, idle: 1, waiting: 2 };
  let audit = { queueDepth: 7, healthy: true };
  let hsmUp = true;

  before(async () => {
    metrics = new SignerMetrics({ version: "9.8.7-test" });
    metrics.setKnownKeys(["release-ec", "release-rsa"]);
    metrics.bindSessionPool(() => pool);
    metrics.bindAudit(() => audit);
    metrics.bindHsmUp(() => hsmUp);
    readiness = { ready: true, checks: { hsm: true, audit: true } };
    ops = await startOpsServer({ listen: "127.0.0.1:0", metrics, ready: () => readiness });

    metrics.observeRequest("Sign", "OK", 0.002, "release-ec");
    metrics.observeRequest("Sign", "OK", 0.004, "release-ec");
    metrics.observeRequest("Sign", "OK", 0.5, "release-rsa");
    metrics.observeRequest("Sign", "KEY_NOT_FOUND", 0.001, CALLER_KEY);
    metrics.observeRequest("Sign", "PERMISSION_DENIED", 0.001, "other-team-key");
    metrics.observeRequest("Sign", "UNAUTHENTICATED", 0.0003, undefined);
    metrics.observeRequest("Sign", "RATE_LIMITED", 0.0002, "release-ec");
    metrics.observeRequest("Sign", "RATE_LIMITED", 0.0002, "release-ec");
    metrics.observeRequest("DescribeKey", "OK", 0.001, "release-ec");
    metrics.observeRequest("ListKeys", "OK", 0.003);
    metrics.observeRequest("GetCertificateChain", "PERMISSION_DENIED", 0.001, CALLER_KEY);
    metrics.observeRequest("/evil/Method", "OK", 0.001, "release-ec");
    metrics.observeRequest("Sign", "SOME_NEW_CODE", 0.001, "release-ec");

    metrics.observeHsmSign("EC-256", 0.0015);
    metrics.observeHsmSign("EC-256", 0.0025);
    metrics.observeHsmSign("RSA-3072", 0.02);
    metrics.observeHsmSign("DSA-1024", 0.1);

    metrics.onAuditFsync(0.003, 5);
    metrics.onAuditFsync(0.001, 1);

    const now = Date.now();
    metrics.setCertificateExpiries([
      { keyId: "release-ec", notAfter: new Date(now + 10 * DAY * 1000) },
      { keyId: "release-rsa", notAfter: new Date(now - DAY * 1000) },
    ]);
  });

  after(async () => {
    await ops?.close();
  });

  async function scrape(): Promise<Sample[]> {
    const r = await http(ops.port, "/metrics");
    assert.equal(r.status, 200, r.body);
    assert.match(String(r.headers["content-type"]), /^text\/plain; version=0\.0\.4/);
    const { samples, types } = parseProm(r.body);
    assert.equal(types.get("hsm_signer_requests_total"), "counter");
    assert.equal(types.get("hsm_signer_request_duration_seconds"), "histogram");
    assert.equal(types.get("hsm_signer_session_pool_sessions"), "gauge");
    return samples;
  }

  it("counts requests by bounded method and result", async () => {
    const s = await scrape();
    assert.equal(value(s, "hsm_signer_requests_total", { method: "Sign", result: "OK" }), 3);
    assert.equal(value(s, "hsm_signer_requests_total", { method: "Sign", result: "RATE_LIMITED" }), 2);
    assert.equal(value(s, "hsm_signer_requests_total", { method: "Sign", result: "KEY_NOT_FOUND" }), 1);
    assert.equal(value(s, "hsm_signer_requests_total", { method: "Sign", result: "other" }), 1, "an unknown result code collapses to other");
    assert.equal(value(s, "hsm_signer_requests_total", { method: "DescribeKey", result: "OK" }), 1);
    assert.equal(value(s, "hsm_signer_requests_total", { method: "ListKeys", result: "OK" }), 1);
    assert.equal(value(s, "hsm_signer_requests_total", { method: "GetCertificateChain", result: "PERMISSION_DENIED" }), 1);
    assert.equal(value(s, "hsm_signer_requests_total", { method: "other", result: "OK" }), 1, "an unknown method collapses to other");
    const total = find(s, "hsm_signer_requests_total").reduce((a, x) => a + x.value, 0);
    assert.equal(total, 13);
  });

  it("counts Sign by key, with a caller's key id collapsed to other", async () => {
    const s = await scrape();
    assert.equal(value(s, "hsm_signer_sign_requests_total", { key: "release-ec", result: "OK" }), 2);
    assert.equal(value(s, "hsm_signer_sign_requests_total", { key: "release-rsa", result: "OK" }), 1);
    assert.equal(value(s, "hsm_signer_sign_requests_total", { key: "release-ec", result: "RATE_LIMITED" }), 2);
    assert.equal(value(s, "hsm_signer_sign_requests_total", { key: "other", result: "KEY_NOT_FOUND" }), 1);
    assert.equal(value(s, "hsm_signer_sign_requests_total", { key: "other", result: "PERMISSION_DENIED" }), 1);
    assert.equal(value(s, "hsm_signer_sign_requests_total", { key: "other", result: "UNAUTHENTICATED" }), 1);
    // Only Sign calls: DescribeKey/GetCertificateChain/ListKeys are not here.
    assert.equal(
      find(s, "hsm_signer_sign_requests_total").reduce((a, x) => a + x.value, 0),
      9,
    );
  });

  it("keeps every label value in its bounded set; no caller string appears anywhere", async () => {
    const r = await http(ops.port, "/metrics");
    assert.ok(!r.body.includes("attacker"), "the caller's key id leaked into the metrics");
    assert.ok(!r.body.includes("other-team-key"), "an unknown key id leaked into the metrics");
    assert.ok(!r.body.includes("/evil/Method"), "an unknown method leaked into the metrics");
    assert.ok(!r.body.includes("SOME_NEW_CODE"), "an unknown result leaked into the metrics");
    assert.ok(!r.body.includes("DSA-1024"), "an unknown key spec leaked into the metrics");
    const s = parseProm(r.body).samples;
    const labelValues = (prefix: string, label: string): Set<string> => new Set(s.filter((x) => x.name.startsWith(prefix) && x.labels[label] !== undefined).map((x) => x.labels[label] as string));
    const methods = new Set(["Sign", "GetCertificateChain", "DescribeKey", "ListKeys", "other"]);
    const results = new Set<string>(["OK", ...ERROR_CODES, "other"]);
    for (const m of labelValues("hsm_signer_", "method")) assert.ok(methods.has(m), `method label ${m}`);
    for (const r2 of labelValues("hsm_signer_", "result")) assert.ok(results.has(r2), `result label ${r2}`);
    assert.deepEqual([...labelValues("hsm_signer_sign_requests_total", "key")].sort(), ["other", "release-ec", "release-rsa"]);
    assert.deepEqual([...labelValues("hsm_signer_hsm_sign_duration", "key_spec")].sort(), ["EC-256", "RSA-3072", "other"]);
    // Every hsm_signer_ series name follows the conventions.
    for (const x of s.filter((y) => y.name.startsWith("hsm_signer_"))) {
      assert.match(x.name, /^hsm_signer_[a-z0-9_]+$/);
    }
  });

  it("a key that is no longer known stops getting its own label; a new one starts", async () => {
    const m = new SignerMetrics({ version: "t" });
    m.setKnownKeys(["a"]);
    m.observeRequest("Sign", "OK", 0.001, "a");
    m.observeRequest("Sign", "OK", 0.001, "b");
    m.setKnownKeys(["b"]);
    m.observeRequest("Sign", "OK", 0.001, "a");
    m.observeRequest("Sign", "OK", 0.001, "b");
    const s = parseProm(await m.metricsText()).samples;
    assert.equal(value(s, "hsm_signer_sign_requests_total", { key: "a", result: "OK" }), 1);
    assert.equal(value(s, "hsm_signer_sign_requests_total", { key: "b", result: "OK" }), 1);
    assert.equal(value(s, "hsm_signer_sign_requests_total", { key: "other", result: "OK" }), 2);
  });

  it("records request latency histograms with buckets from 0.5 ms to 10 s", async () => {
    const s = await scrape();
    const sign = { method: "Sign" };
    assert.equal(value(s, "hsm_signer_request_duration_seconds_count", sign), 9);
    const sum = value(s, "hsm_signer_request_duration_seconds_sum", sign);
    assert.ok(Math.abs(sum - (0.002 + 0.004 + 0.5 + 0.001 + 0.001 + 0.0003 + 0.0002 + 0.0002 + 0.001)) < 1e-9, `sum ${sum}`);
    assert.equal(value(s, "hsm_signer_request_duration_seconds_bucket", { ...sign, le: "0.0005" }), 3);
    assert.equal(value(s, "hsm_signer_request_duration_seconds_bucket", { ...sign, le: "0.005" }), 8);
    assert.equal(value(s, "hsm_signer_request_duration_seconds_bucket", { ...sign, le: "0.25" }), 8);
    assert.equal(value(s, "hsm_signer_request_duration_seconds_bucket", { ...sign, le: "0.5" }), 9);
    assert.equal(value(s, "hsm_signer_request_duration_seconds_bucket", { ...sign, le: "+Inf" }), 9);
    const les = find(s, "hsm_signer_request_duration_seconds_bucket", sign).map((x) => x.labels.le);
    assert.equal(les[0], "0.0005");
    assert.equal(les[les.length - 2], "10");
    assert.equal(value(s, "hsm_signer_request_duration_seconds_count", { method: "ListKeys" }), 1);
  });

  it("records HSM sign latency by key spec", async () => {
    const s = await scrape();
    assert.equal(value(s, "hsm_signer_hsm_sign_duration_seconds_count", { key_spec: "EC-256" }), 2);
    assert.ok(Math.abs(value(s, "hsm_signer_hsm_sign_duration_seconds_sum", { key_spec: "EC-256" }) - 0.004) < 1e-9);
    assert.equal(value(s, "hsm_signer_hsm_sign_duration_seconds_bucket", { key_spec: "EC-256", le: "0.0025" }), 2);
    assert.equal(value(s, "hsm_signer_hsm_sign_duration_seconds_bucket", { key_spec: "EC-256", le: "0.001" }), 0);
    assert.equal(value(s, "hsm_signer_hsm_sign_duration_seconds_count", { key_spec: "RSA-3072" }), 1);
    assert.equal(value(s, "hsm_signer_hsm_sign_duration_seconds_count", { key_spec: "other" }), 1);
  });

  it("counts authentication, authorization and rate-limit refusals", async () => {
    const s = await scrape();
    assert.equal(value(s, "hsm_signer_auth_failures_total", { reason: "unauthenticated" }), 1);
    assert.equal(value(s, "hsm_signer_auth_failures_total", { reason: "permission_denied" }), 2);
    assert.equal(value(s, "hsm_signer_rate_limited_total"), 2);
    // A fresh instance shows both reasons at 0 rather than no series.
    const fresh = parseProm(await new SignerMetrics({ version: "t" }).metricsText()).samples;
    assert.equal(value(fresh, "hsm_signer_auth_failures_total", { reason: "unauthenticated" }), 0);
    assert.equal(value(fresh, "hsm_signer_auth_failures_total", { reason: "permission_denied" }), 0);
    assert.equal(value(fresh, "hsm_signer_rate_limited_total"), 0);
  });

  it("records audit fsync latency and lines per fsync", async () => {
    const s = await scrape();
    assert.equal(value(s, "hsm_signer_audit_fsync_duration_seconds_count"), 2);
    assert.ok(Math.abs(value(s, "hsm_signer_audit_fsync_duration_seconds_sum") - 0.004) < 1e-9);
    assert.equal(value(s, "hsm_signer_audit_lines_per_fsync_count"), 2);
    assert.equal(value(s, "hsm_signer_audit_lines_per_fsync_sum"), 6);
    assert.equal(value(s, "hsm_signer_audit_lines_per_fsync_bucket", { le: "1" }), 1);
    assert.equal(value(s, "hsm_signer_audit_lines_per_fsync_bucket", { le: "4" }), 1);
    assert.equal(value(s, "hsm_signer_audit_lines_per_fsync_bucket", { le: "8" }), 2);
  });

  it("reads the session pool, audit and HSM gauges from their callbacks at each scrape", async () => {
    let s = await scrape();
    assert.equal(value(s, "hsm_signer_session_pool_sessions", { state: "in_use" }), 3);
    assert.equal(value(s, "hsm_signer_session_pool_sessions", { state: "idle" }), 1);
    assert.equal(value(s, "hsm_signer_session_pool_waiting"), 2);
    assert.equal(value(s, "hsm_signer_audit_queue_depth"), 7);
    assert.equal(value(s, "hsm_signer_audit_healthy"), 1);
    assert.equal(value(s, "hsm_signer_hsm_up"), 1);

    pool = { inUse: 0, idle: 4, waiting: 0 };
    audit = { queueDepth: 0, healthy: false };
    hsmUp = false;
    s = await scrape();
    assert.equal(value(s, "hsm_signer_session_pool_sessions", { state: "in_use" }), 0);
    assert.equal(value(s, "hsm_signer_session_pool_sessions", { state: "idle" }), 4);
    assert.equal(value(s, "hsm_signer_session_pool_waiting"), 0);
    assert.equal(value(s, "hsm_signer_audit_queue_depth"), 0);
    assert.equal(value(s, "hsm_signer_audit_healthy"), 0);
    assert.equal(value(s, "hsm_signer_hsm_up"), 0);
  });

  it("a throwing callback does not break the scrape and reads as down", async () => {
    const m = new SignerMetrics({ version: "t" });
    m.bindHsmUp(() => {
      throw new Error("CKR_DEVICE_ERROR");
    });
    m.bindAudit(() => {
      throw new Error("EIO");
    });
    m.bindSessionPool(() => {
      throw new Error("closed");
    });
    const text = await m.metricsText();
    assert.ok(!text.includes("CKR_DEVICE_ERROR"));
    const s = parseProm(text).samples;
    assert.equal(value(s, "hsm_signer_hsm_up"), 0);
    assert.equal(value(s, "hsm_signer_audit_healthy"), 0);
    assert.equal(find(s, "hsm_signer_session_pool_sessions").length, 0);
  });

  it("exports seconds until each known key's certificate expires, replacing the whole set", async () => {
    let s = await scrape();
    const ec = value(s, "hsm_signer_certificate_expiry_seconds", { key: "release-ec" });
    assert.ok(Math.abs(ec - 10 * DAY) < 60, `release-ec expires in ${ec} s, expected about ${10 * DAY}`);
    const rsa = value(s, "hsm_signer_certificate_expiry_seconds", { key: "release-rsa" });
    assert.ok(Math.abs(rsa + DAY) < 60, `release-rsa expired ${-rsa} s ago, expected about ${DAY}`);

    metrics.setCertificateExpiries([
      { keyId: "release-ec", notAfter: new Date(Date.now() + 2 * DAY * 1000) },
      { keyId: "release-ec", notAfter: new Date(Date.now() + 30 * DAY * 1000) },
    ]);
    s = await scrape();
    assert.equal(find(s, "hsm_signer_certificate_expiry_seconds").length, 1, "release-rsa must disappear");
    const latest = value(s, "hsm_signer_certificate_expiry_seconds", { key: "release-ec" });
    assert.ok(Math.abs(latest - 30 * DAY) < 60, `the latest notAfter of a key counts, got ${latest}`);
  });

  it("exports build info and Node process metrics on its own registry", async () => {
    const s = await scrape();
    const info = find(s, "hsm_signer_build_info");
    assert.equal(info.length, 1);
    assert.deepEqual(info[0]?.labels, { version: "9.8.7-test", node: process.version });
    assert.equal(info[0]?.value, 1);
    for (const name of ["process_cpu_seconds_total", "process_resident_memory_bytes", "nodejs_heap_size_used_bytes", "nodejs_eventloop_lag_seconds"]) {
      assert.ok(find(s, name).length >= 1, `${name} missing`);
    }
    // Never the global registry: two instances coexist, and the global one stays empty of ours.
    const other = new SignerMetrics({ version: "x" });
    assert.notEqual(other.registry, metrics.registry);
    assert.equal(globalRegister.getSingleMetric("hsm_signer_requests_total"), undefined);
    assert.ok(metrics.registry.getSingleMetric("hsm_signer_requests_total"));
    assert.equal(metrics.contentType, metrics.registry.contentType);
  });

  it("/healthz answers 200 ok", async () => {
    const r = await http(ops.port, "/healthz");
    assert.equal(r.status, 200);
    assert.equal(r.body.trim(), "ok");
    const head = await http(ops.port, "/healthz", "HEAD");
    assert.equal(head.status, 200);
    assert.equal(head.body, "");
  });

  it("/readyz answers 200 with the checks when ready, 503 naming the failing check otherwise", async () => {
    readiness = { ready: true, checks: { hsm: true, audit: true } };
    let r = await http(ops.port, "/readyz");
    assert.equal(r.status, 200, r.body);
    assert.match(String(r.headers["content-type"]), /^application\/json/);
    assert.deepEqual(JSON.parse(r.body), { ready: true, checks: { hsm: true, audit: true } });

    readiness = { ready: false, checks: { hsm: false, audit: true } };
    r = await http(ops.port, "/readyz");
    assert.equal(r.status, 503, r.body);
    assert.deepEqual(JSON.parse(r.body), { ready: false, checks: { hsm: false, audit: true } });

    // A failing check makes it unready even if the callback's summary disagrees.
    readiness = { ready: true, checks: { hsm: true, audit: false } };
    r = await http(ops.port, "/readyz");
    assert.equal(r.status, 503, r.body);
    assert.equal(JSON.parse(r.body).checks.audit, false);

    readiness = { ready: true, checks: { hsm: true, audit: true } };
    r = await http(ops.port, "/readyz?verbose=1");
    assert.equal(r.status, 200, "back to ready");
    // /healthz is liveness only: unaffected by readiness.
    readiness = { ready: false, checks: { hsm: false } };
    assert.equal((await http(ops.port, "/healthz")).status, 200);
  });

  it("answers 404 for other paths and 405 for other methods", async () => {
    for (const path of ["/", "/metricsx", "/metrics/", "/debug/pprof", "/readyz/../metrics2"]) {
      const r = await http(ops.port, path);
      assert.equal(r.status, 404, `${path}: ${r.status}`);
    }
    for (const method of ["POST", "PUT", "DELETE"]) {
      const r = await http(ops.port, "/metrics", method);
      assert.equal(r.status, 405, `${method}: ${r.status}`);
      assert.equal(r.headers.allow, "GET, HEAD");
    }
    const head = await http(ops.port, "/metrics", "HEAD");
    assert.equal(head.status, 200);
    assert.equal(head.body, "");
  });

  it("refuses a listen address that is not host:port and closes idempotently", async () => {
    await assert.rejects(startOpsServer({ listen: "nope", metrics, ready: () => readiness }), /not host:port/);
    const s = await startOpsServer({ listen: "127.0.0.1:0", metrics, ready: () => readiness });
    assert.ok(s.port > 0 && s.port !== ops.port);
    await s.close();
    await s.close();
    await assert.rejects(http(s.port, "/healthz"), /ECONNREFUSED/);
  });
});
