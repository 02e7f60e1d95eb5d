/**
 * The audit log on disks that stall, fill up or are shared, against hsm-signer running as its own
 * process (dist/hsm-signer serve) on a SoftHSM token of its own (scripts/demo-setup.sh):
 *
 *  1. the audit directory's file system frozen (fsfreeze on a loop-mounted ext4): the process
 *     keeps answering (/healthz), reports itself not ready, fails Sign with UNAVAILABLE within its
 *     deadline, and signs again by itself once the file system thaws;
 *  2. a full disk (a size-limited tmpfs) in the middle of a burst, SIGKILL before any recovery,
 *     space freed, restart: every OK answer has its OK line, no line says OK for a call that
 *     failed; a torn tail found at start is cut, logged, counted and recorded in the chain;
 *  3. an audit.dir under /proc: a clear error and exit 1 within seconds (it used to spin for ever);
 *  4. two services given the same audit.dir: the second is refused, naming the first.
 *
 * Mounting and freezing need root and a kernel that allows them; where it does not, those cases
 * are skipped with the reason. A frozen file system is always thawed and unmounted in after().
 */
import assert from "node:assert/strict";
import { execFile, execFileSync, spawn, spawnSync, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { appendFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statfsSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { protoPath as healthProtoPath } from "grpc-health-check";
import { auditFilesIn } from "../../src/audit/index.js";
import { callSigner, signerClient, type SignResponse } from "../helpers/signer-client.js";
import { adminClient, demoSetup, freePort, HSM_SIGNER, waitForLog } from "../helpers/service-process.js";
import { spawnCollect } from "../helpers/process.js";

const run = promisify(execFile);
const TOKEN_LABEL = "hsm-signer-audit-disk";
const KEY = "audit-disk-key";
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function until(what: string, probe: () => Promise<boolean>, withinMs: number, everyMs = 100): Promise<number> {
  const t0 = Date.now();
  for (;;) {
    if (await probe()) return Date.now() - t0;
    if (Date.now() - t0 > withinMs) assert.fail(`${what}: not within ${withinMs} ms`);
    await sleep(everyMs);
  }
}

interface Service {
  child: ChildProcess;
  port: number;
  metricsPort: number;
  adminPort: number;
  client: grpc.Client;
  health: grpc.Client;
  /** Everything the process printed on stdout (its JSON log lines). */
  stdout: () => string;
  exited: Promise<number | null>;
}

interface Answer {
  ok: boolean;
  code?: number;
  details?: string;
  requestId?: string;
  receipt?: { sequence: number; lineHash: string };
}

interface Line {
  seq: number;
  requestId: string;
  method: string;
  result: string;
  keyId?: string;
  repair?: { cutBytes: number };
}

describe("the audit log on a disk that stalls, fills up or is shared (service process)", function () {
  this.timeout(180_000);
  let data: string;
  let ca: Buffer;
  const services: Service[] = [];
  /** Mount points to thaw and unmount whatever happens. */
  const mounts: string[] = [];
  const env = (o: Record<string, string>): NodeJS.ProcessEnv => ({ ...process.env, SOFTHSM2_CONF: join(data, "softhsm2.conf"), ...o });

  async function startService(auditDir: string): Promise<Service> {
    const [port, metricsPort, adminPort] = [await freePort(), await freePort(), await freePort()];
    const child = spawn(HSM_SIGNER, ["serve", "--config", join(data, "config.yaml")], {
      env: env({ HSM_SIGNER_LISTEN: `127.0.0.1:${port}`, HSM_SIGNER_METRICS_LISTEN: `127.0.0.1:${metricsPort}`, HSM_SIGNER_ADMIN_LISTEN: `127.0.0.1:${adminPort}`, HSM_SIGNER_AUDIT_DIR: auditDir }),
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    child.stdout?.on("data", (d: Buffer) => (out += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
    await waitForLog(child, "hsm-signer listening");
    const def = protoLoader.loadSync(healthProtoPath, { keepCase: true, enums: String, defaults: true });
    const Health = (((grpc.loadPackageDefinition(def).grpc as grpc.GrpcObject).health as grpc.GrpcObject).v1 as grpc.GrpcObject).Health as grpc.ServiceClientConstructor;
    const s: Service = {
      child,
      port,
      metricsPort,
      adminPort,
      client: signerClient(ca, port),
      health: new Health(`127.0.0.1:${port}`, grpc.credentials.createSsl(ca), { "grpc.ssl_target_name_override": "localhost" }),
      stdout: () => out,
      exited,
    };
    services.push(s);
    return s;
  }

  async function stopService(s: Service, signal: NodeJS.Signals = "SIGTERM"): Promise<number | null> {
    s.client.close();
    s.health.close();
    if (s.child.exitCode === null && s.child.signalCode === null) s.child.kill(signal);
    return s.exited;
  }

  const httpStatus = async (s: Service, path: string): Promise<number | string> =>
    fetch(`http://127.0.0.1:${s.metricsPort}${path}`, { signal: AbortSignal.timeout(3_000) }).then(
      (r) => r.status,
      (e: Error) => `no answer (${e.name})`,
    );
  const healthStatus = (s: Service): Promise<string> =>
    new Promise((resolve) =>
      (s.health as unknown as { Check: (r: object, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r: { status: string }) => void) => void }).Check(
        { service: "hsm_signer.v1.Signer" },
        { deadline: Date.now() + 3_000 },
        (e, r) => resolve(e ? `error ${e.code}` : r.status),
      ),
    );
  const metric = async (s: Service, series: string): Promise<number> => {
    const text = await (await fetch(`http://127.0.0.1:${s.metricsPort}/metrics`, { signal: AbortSignal.timeout(3_000) })).text();
    const line = text.split("\n").find((l) => l.startsWith(`${series} `));
    return line === undefined ? Number.NaN : Number(line.slice(series.length + 1));
  };
  const sign = (s: Service, deadlineMs = 10_000): Promise<Answer> =>
    callSigner<SignResponse>(s.client, "Sign", { keyId: KEY, payload: randomBytes(64) }, Date.now() + deadlineMs).then(
      (r) => ({ ok: true, receipt: r.receipt }),
      (e: grpc.ServiceError) => ({ ok: false, code: e.code, details: e.details, requestId: /\[request ([0-9a-f]+)\]/.exec(e.details)?.[1] }),
    );
  /** The complete lines of the audit files (a torn last line, with no newline, is left out). */
  const linesIn = (dir: string): Line[] =>
    auditFilesIn(dir).flatMap((f) =>
      readFileSync(f, "utf8")
        .split("\n")
        .slice(0, -1)
        .map((l) => JSON.parse(l) as Line),
    );

  /** Root, mount and fsfreeze: why they cannot be used here, or undefined. */
  function mountProblem(): string | undefined {
    if (process.getuid?.() !== 0) return "not root: mount and fsfreeze need root";
    for (const tool of ["mount", "umount", "fsfreeze", "mkfs.ext4", "losetup"]) {
      if (spawnSync("sh", ["-c", `command -v ${tool}`]).status !== 0) return `${tool} is not installed`;
    }
    return undefined;
  }

  function mountExt4(name: string): string {
    const img = join(data, `${name}.img`);
    const dir = join(data, name);
    mkdirSync(dir);
    execFileSync("truncate", ["-s", "64M", img]);
    execFileSync("mkfs.ext4", ["-q", "-F", img]);
    execFileSync("mount", ["-o", "loop", img, dir], { stdio: "pipe" });
    mounts.push(dir);
    return dir;
  }

  function mountTmpfs(name: string, size: string): string {
    const dir = join(data, name);
    mkdirSync(dir);
    execFileSync("mount", ["-t", "tmpfs", "-o", `size=${size},mode=0700`, "tmpfs", dir], { stdio: "pipe" });
    mounts.push(dir);
    return dir;
  }

  /** Skips the test, saying why, when this machine cannot mount file systems for it (mountProblem). */
  function skipWithoutMounts(test: Mocha.Context): void {
    const problem = mountProblem();
    if (!problem) return;
    console.log(`      skipped: ${problem}`);
    test.skip();
  }

  /**
   * A loop-mounted ext4 that fsfreeze can freeze (tried once), or the test is skipped with the
   * reason: no root, a missing tool, or a kernel that refuses loop devices or freezing.
   */
  function freezableMount(test: Mocha.Context, name: string): string {
    skipWithoutMounts(test);
    try {
      const mnt = mountExt4(name);
      execFileSync("fsfreeze", ["-f", mnt], { stdio: "pipe", timeout: 10_000 });
      execFileSync("fsfreeze", ["-u", mnt], { stdio: "pipe", timeout: 10_000 });
      return mnt;
    } catch (e) {
      console.log(`      skipped: loop-mounted ext4 with fsfreeze not available here (${(e as Error).message.split("\n")[0]})`);
      return test.skip();
    }
  }

  /** Thaws (harmless if not frozen) and unmounts; a frozen file system left behind would hang other processes. */
  function release(dir: string): void {
    spawnSync("fsfreeze", ["-u", dir], { stdio: "ignore", timeout: 10_000 });
    for (let i = 0; i < 5; i++) {
      if (spawnSync("umount", [dir], { stdio: "ignore", timeout: 10_000 }).status === 0) return;
      spawnSync("sleep", ["0.5"]);
    }
    spawnSync("umount", ["-l", dir], { stdio: "ignore", timeout: 10_000 });
  }

  before(async function () {
    this.timeout(120_000);
    data = mkdtempSync(join(tmpdir(), "hsm-signer-audit-disk-"));
    await demoSetup({ data, keyId: KEY, tokenLabel: TOKEN_LABEL, env: env({}) });
    ca = readFileSync(join(data, "tls/ca.pem"));
  });

  afterEach(async () => {
    // Thaw first: a process blocked in a frozen file system cannot even die.
    for (const m of mounts) spawnSync("fsfreeze", ["-u", m], { stdio: "ignore", timeout: 10_000 });
    for (const s of services.splice(0)) {
      s.child.kill("SIGKILL");
      await Promise.race([s.exited, sleep(10_000)]);
    }
    for (const m of mounts.splice(0)) release(m);
  });

  after(() => {
    if (data) rmSync(data, { recursive: true, force: true });
  });

  it("a frozen file system: /healthz answers, /readyz and gRPC health say not serving, Sign is UNAVAILABLE within its deadline; after the thaw, signing resumes by itself", async function () {
    const mnt = freezableMount(this, "frozen");
    const auditDir = join(mnt, "audit");
    const s = await startService(auditDir);
    assert.equal((await sign(s)).ok, true);
    assert.equal(await httpStatus(s, "/readyz"), 200);

    execFileSync("fsfreeze", ["-f", mnt], { stdio: "pipe", timeout: 10_000 });
    const t0 = performance.now();
    const stalled = sign(s, 10_000);
    // While that call's line waits for the frozen disk, the process answers.
    await sleep(300);
    assert.equal(await httpStatus(s, "/healthz"), 200, "/healthz answers while an audit write is stuck");
    const first = await stalled;
    const firstMs = performance.now() - t0;
    assert.equal(first.ok, false, "no signature leaves without its audit line");
    assert.equal(first.code, grpc.status.UNAVAILABLE, first.details);
    assert.match(first.details ?? "", /the audit log cannot be written: the audit disk did not finish a write and its fdatasync within 2000 ms/);
    assert.ok(firstMs < 9_000, `answered within its deadline (${firstMs.toFixed(0)} ms)`);
    await until("/readyz 503 while the audit cannot write", async () => (await httpStatus(s, "/readyz")) === 503, 5_000);
    assert.equal(await healthStatus(s), "NOT_SERVING");
    assert.equal(await httpStatus(s, "/healthz"), 200);
    assert.equal(await metric(s, "hsm_signer_audit_healthy"), 0);
    // Later calls fail at once: the log failed closed, nobody waits on the disk again.
    const later = await Promise.all([sign(s, 5_000), sign(s, 5_000), sign(s, 5_000)]);
    for (const a of later) assert.equal(a.code, grpc.status.UNAVAILABLE, a.details);
    await sleep(2_500); // automatic recovery attempts run into the frozen disk too
    assert.equal(await httpStatus(s, "/readyz"), 503);

    execFileSync("fsfreeze", ["-u", mnt], { stdio: "pipe", timeout: 10_000 });
    await until("Sign succeeds after the thaw", async () => (await sign(s)).ok, 20_000, 200);
    assert.equal(await httpStatus(s, "/readyz"), 200);
    assert.equal(await healthStatus(s), "SERVING");
    const ok = await sign(s);
    assert.equal(ok.ok, true);

    assert.equal(await stopService(s), 0);
    const lines = linesIn(auditDir);
    // The stuck write finished after the thaw; its line (the UNAVAILABLE call's) was cut away again.
    for (const a of [first, ...later]) assert.ok(!lines.some((l) => l.requestId === a.requestId && l.result === "OK"), `no OK line for ${a.requestId}`);
    assert.ok(
      lines.some((l) => l.method === "AuditLog.Recovered"),
      "the outage is on record",
    );
    assert.equal(lines.find((l) => l.seq === ok.receipt?.sequence)?.result, "OK");
    const v = await run(HSM_SIGNER, ["audit", "verify", "--dir", auditDir]);
    assert.match(v.stdout, /^OK: /);
  });

  it("a full disk: a KeyAdmin change is refused before it starts (its intent line cannot be written), and the token stays as it was", async function () {
    skipWithoutMounts(this);
    const mnt = mountTmpfs("admin-full", "1m");
    const auditDir = join(mnt, "audit");
    const s = await startService(auditDir);
    assert.equal((await sign(s)).ok, true);
    const admin = adminClient(ca, s.adminPort, { key: readFileSync(join(data, "tls/custodian-key.pem")), cert: readFileSync(join(data, "tls/custodian.pem")) });
    const call = <T>(method: string, req: object): Promise<T> =>
      new Promise<T>((resolve, reject) =>
        (admin as unknown as Record<string, (r: object, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r: T) => void) => void>)[method]!.call(
          admin,
          req,
          { deadline: Date.now() + 15_000 },
          (e, r) => (e ? reject(e) : resolve(r)),
        ),
      );
    try {
      const filler = join(mnt, "filler");
      writeFileSync(filler, Buffer.alloc(statfsSync(mnt).bavail * statfsSync(mnt).bsize));
      // The audit file's last page may still hold a few lines: sign until a call finds the disk full.
      await until("a Sign finds the audit disk full", async () => !(await sign(s)).ok, 15_000, 10);
      const refused = await call("generateKey", { keyId: "never-made", keySpec: "EC-256" }).then(
        () => assert.fail("GenerateKey succeeded with the audit disk full"),
        (e: grpc.ServiceError) => e,
      );
      assert.equal(refused.code, grpc.status.UNAVAILABLE, refused.details);
      assert.match(refused.details, /audit/i);
      rmSync(filler);
      // The key was never made: once the audit is back, the inventory does not know it.
      await until("the audit recovers", async () => (await sign(s)).ok, 15_000, 250);
      const inv = await call<{ keys: unknown[] }>("getInventory", { keyId: "never-made" }).then(
        (r) => r.keys.length,
        (e: grpc.ServiceError) => e.code,
      );
      assert.ok(inv === 0 || inv === grpc.status.NOT_FOUND, `inventory of never-made: ${inv}`);
      const lines = linesIn(auditDir);
      assert.ok(!lines.some((l) => l.keyId === "never-made" && (l.result === "OK" || l.result === "STARTED")), "no line says the change started or happened");
    } finally {
      admin.close();
    }
  });

  it("a disk full in the middle of a burst, SIGKILL before recovery, space freed, restart: answers and lines agree; a torn tail is cut, logged, counted and verified", async function () {
    skipWithoutMounts(this);
    const mnt = mountTmpfs("full", "2m");
    const auditDir = join(mnt, "audit");
    let s = await startService(auditDir);
    const before: Answer[] = [];
    for (let i = 0; i < 3; i++) before.push(await sign(s));
    assert.ok(before.every((a) => a.ok));

    // Leave two pages free: the burst's lines (about 1 KiB each) fill them in the middle of a write.
    const filler = join(mnt, "filler");
    const st = statfsSync(mnt);
    writeFileSync(filler, Buffer.alloc(Math.max(0, (st.bavail - 2) * st.bsize)));
    const burst = await Promise.all(Array.from({ length: 60 }, () => sign(s, 15_000)));
    s.child.kill("SIGKILL"); // before the automatic recovery (1 s) could cut anything
    await s.exited;
    services.splice(services.indexOf(s), 1);
    const failed = burst.filter((a) => !a.ok);
    assert.ok(failed.length > 0, "the disk filled up during the burst");
    for (const a of failed) assert.equal(a.code, grpc.status.UNAVAILABLE, a.details);

    const check = (lines: Line[], answers: Answer[]): void => {
      for (const a of answers) {
        if (a.ok) assert.equal(lines.find((l) => l.seq === a.receipt?.sequence)?.result, "OK", `the line of OK answer #${a.receipt?.sequence}`);
        else assert.ok(!lines.some((l) => l.requestId === a.requestId && l.result === "OK"), `a line says OK for ${a.requestId}, answered ${a.details}`);
      }
    };
    rmSync(filler);
    check(linesIn(auditDir), [...before, ...burst]);

    // A crash in the middle of a write (the one thing the writer cannot cut back itself): a torn last line.
    const newest = auditFilesIn(auditDir).at(-1) as string;
    const torn = '{"seq":999,"prev":"00","time":"2026-12-03T08:00:00.000Z","requestId":"torn","result":"OK"';
    appendFileSync(newest, torn);
    s = await startService(auditDir);
    const logged = JSON.parse(
      s
        .stdout()
        .split("\n")
        .find((l) => l.includes("a torn last line was cut away")) ?? "{}",
    ) as { bytes?: number; file?: string; preview?: string };
    assert.deepEqual([logged.bytes, logged.file, logged.preview], [Buffer.byteLength(torn), newest, torn]);
    assert.equal(await metric(s, "hsm_signer_audit_tail_repairs_total"), 1);
    assert.equal(await metric(s, "hsm_signer_audit_repaired_bytes_total"), Buffer.byteLength(torn));
    const after = await sign(s);
    assert.equal(after.ok, true);
    assert.equal(await stopService(s), 0);

    const lines = linesIn(auditDir);
    check(lines, [...before, ...burst, after]);
    const repaired = lines.filter((l) => l.method === "AuditLog.Repaired");
    assert.equal(repaired.length, 1);
    assert.equal(repaired[0]?.repair?.cutBytes, Buffer.byteLength(torn));
    const v = await run(HSM_SIGNER, ["audit", "verify", "--dir", auditDir]);
    assert.match(v.stdout, /^OK: /);
    assert.match(v.stdout, new RegExp(`repaired: .*\\(seq ${repaired[0]?.seq}\\) records that the writer cut ${Buffer.byteLength(torn)} bytes`));
  });

  it("a file system frozen at shutdown: the audit cannot close, that is logged, the HSM is still closed, exit 1 (no unhandled rejection)", async function () {
    const mnt = freezableMount(this, "frozen-at-stop");
    const s = await startService(join(mnt, "audit"));
    let stderr = "";
    s.child.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
    assert.equal((await sign(s)).ok, true);

    // Idle, then frozen (a snapshot, say): closing the audit must release its directory lock,
    // which the frozen file system holds up until the close times out.
    execFileSync("fsfreeze", ["-f", mnt], { stdio: "pipe", timeout: 10_000 });
    const stopped = waitForLog(s.child, "stopped, not cleanly", 30_000);
    s.child.kill("SIGTERM");
    const line = await stopped;
    execFileSync("fsfreeze", ["-u", mnt], { stdio: "pipe", timeout: 10_000 });
    const code = await Promise.race([s.exited, sleep(20_000).then(() => "still running")]);

    assert.deepEqual(line.failed, ["audit"], JSON.stringify(line));
    const logged = s
      .stdout()
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as { msg: string; step?: string; error?: string });
    const failure = logged.find((l) => l.msg === "shutdown: a step failed; the others still run");
    assert.equal(failure?.step, "audit");
    assert.match(failure?.error ?? "", /the audit disk did not finish/);
    assert.equal(code, 1, `exit code; stderr: ${stderr}`);
    assert.doesNotMatch(stderr, /Unhandled|UnhandledPromiseRejection|\n\s+at /);
  });

  it("an audit.dir under /proc: exit 1 with a clear message within seconds (no endless mkdir)", async () => {
    const r = await spawnCollect(HSM_SIGNER, ["serve", "--config", join(data, "config.yaml")], "", {
      env: env({
        HSM_SIGNER_LISTEN: `127.0.0.1:${await freePort()}`,
        HSM_SIGNER_METRICS_LISTEN: `127.0.0.1:${await freePort()}`,
        HSM_SIGNER_ADMIN_LISTEN: `127.0.0.1:${await freePort()}`,
        HSM_SIGNER_AUDIT_DIR: "/proc/hsm-signer/audit",
      }),
      timeoutMs: 15_000,
    });
    assert.equal(r.timedOut, false, `still running after 15 s; stderr: ${r.stderr}`);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /audit\.dir: \/proc\/hsm-signer\/audit is under \/proc, a kernel file system/);
    assert.ok(r.ms < 10_000, `${r.ms.toFixed(0)} ms`);
  });

  it("two services given the same audit.dir: the second is refused at start, naming the first; once the first is gone (even SIGKILLed), another may start", async () => {
    const auditDir = join(data, "shared-audit");
    const first = await startService(auditDir);
    assert.equal((await sign(first)).ok, true);
    const second = await spawnCollect(HSM_SIGNER, ["serve", "--config", join(data, "config.yaml")], "", {
      env: env({
        HSM_SIGNER_LISTEN: `127.0.0.1:${await freePort()}`,
        HSM_SIGNER_METRICS_LISTEN: `127.0.0.1:${await freePort()}`,
        HSM_SIGNER_ADMIN_LISTEN: `127.0.0.1:${await freePort()}`,
        HSM_SIGNER_AUDIT_DIR: auditDir,
      }),
      timeoutMs: 30_000,
    });
    assert.equal(second.code, 1, `${second.stderr}${second.stdout}`);
    assert.match(second.stderr, new RegExp(`the audit directory ${auditDir} is in use by another writer: pid ${first.child.pid} on host `));
    assert.match(second.stderr, new RegExp(`lock file ${join(auditDir, "hsm-signer.lock")}`));
    assert.equal((await sign(first)).ok, true, "the first one is undisturbed");

    first.child.kill("SIGKILL");
    await first.exited;
    const third = await startService(auditDir); // the lock of a dead process is stale
    assert.equal((await sign(third)).ok, true);
    assert.equal(await stopService(third), 0);
    const v = await run(HSM_SIGNER, ["audit", "verify", "--dir", auditDir]);
    assert.match(v.stdout, /^OK: 3 records/);
  });
});
