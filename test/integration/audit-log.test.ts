import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { appendFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, unlinkSync, writeFileSync } from "node:fs";
import { hostname, tmpdir } from "node:os";
import { basename, join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { Worker } from "node:worker_threads";
import { SignerError } from "../../src/errors/index.js";
import { spawnCollect } from "../helpers/process.js";
import {
  AuditLog,
  GENESIS_HASH,
  LOCK_FILE_NAME,
  auditFileName,
  listAuditFiles,
  searchAudit,
  verifyAuditFiles,
  type AuditLogOptions,
  type AuditReceipt,
  type AuditRecordInput,
} from "../../src/audit/index.js";

const sha256 = (s: string): string => createHash("sha256").update(s).digest("hex");

function record(i: number, over: Partial<AuditRecordInput> = {}): AuditRecordInput {
  return { requestId: `req-${i}`, peer: "ipv4:127.0.0.1:50000", identity: "spiffe://ci/build", method: "Sign", keyId: "release-2026", decision: "allow", result: "OK", latencyMs: 3, ...over };
}

/** The lines of a file without their newlines; the file must end with one. */
function linesOf(file: string): string[] {
  const text = readFileSync(file, "utf8");
  assert.ok(text === "" || text.endsWith("\n"), `${file} ends with a newline`);
  return text === "" ? [] : text.slice(0, -1).split("\n");
}

async function allLines(dir: string): Promise<string[]> {
  return (await listAuditFiles(dir)).flatMap(linesOf);
}

function isUnavailable(e: unknown): boolean {
  assert.ok(e instanceof SignerError, `a SignerError, got ${String(e)}`);
  assert.equal(e.code, "AUDIT_UNAVAILABLE");
  return true;
}

describe("AuditLog: hash-chained, group-committed JSON lines on real files", function () {
  this.timeout(20_000);
  let root: string;
  let n = 0;
  const logs: AuditLog[] = [];
  const freshDir = (): string => join(root, `log-${++n}`);
  const openLog = async (o: AuditLogOptions): Promise<AuditLog> => {
    const log = await AuditLog.open(o);
    logs.push(log);
    return log;
  };

  before(() => {
    root = mkdtempSync(join(tmpdir(), "hsm-signer-audit-"));
  });
  afterEach(async () => {
    for (const log of logs.splice(0)) await log.close().catch(() => undefined);
  });
  after(() => rmSync(root, { recursive: true, force: true }));

  it("writes one line per append, chained, with stable key order and exact receipts", async () => {
    const dir = freshDir();
    const log = await openLog({ dir });
    assert.equal(statSync(dir).mode & 0o777, 0o700, "the directory is private");
    const artifact = { digest: "sha256:d7fe", mediaType: "application/vnd.oci.image.manifest.v1+json", size: 400 };
    const receipts: AuditReceipt[] = [];
    receipts.push(await log.append(record(1, { artifact, payloadKind: "notary-jws", payloadDigest: "sha256:00aa" })));
    receipts.push(await log.append(record(2, { decision: "deny", result: "PERMISSION_DENIED", extra: { why: "no rule" } })));
    receipts.push(await log.append(record(3, { identity: 'ünïcødé \u2028 "quoted"\nnewline' })));

    const files = await listAuditFiles(dir);
    assert.deepEqual(
      files.map((f) => basename(f)),
      ["audit-0000000000000001.jsonl"],
    );
    const lines = linesOf(files[0]!);
    assert.equal(lines.length, 3);
    let prev = GENESIS_HASH;
    lines.forEach((line, i) => {
      const r = JSON.parse(line) as Record<string, unknown>;
      assert.deepEqual(Object.keys(r).slice(0, 4), ["seq", "prev", "time", "requestId"]);
      assert.equal(r.seq, i + 1);
      assert.equal(r.prev, prev);
      assert.ok(Math.abs(Date.parse(r.time as string) - Date.now()) < 60_000);
      assert.deepEqual(receipts[i], { sequence: i + 1, lineHash: sha256(line) });
      prev = sha256(line);
    });
    const first = JSON.parse(lines[0]!) as Record<string, unknown>;
    assert.deepEqual(Object.keys(first), ["seq", "prev", "time", "requestId", "peer", "identity", "method", "keyId", "decision", "result", "latencyMs", "artifact", "payloadKind", "payloadDigest"]);
    assert.deepEqual(first.artifact, artifact);
    assert.deepEqual((JSON.parse(lines[1]!) as Record<string, unknown>).extra, { why: "no rule" });
    assert.equal((JSON.parse(lines[2]!) as Record<string, unknown>).identity, 'ünïcødé \u2028 "quoted"\nnewline');
    assert.deepEqual(log.stats, { sequence: 3, queueDepth: 0, healthy: true });
    assert.deepEqual(await verifyAuditFiles(files), { ok: true, lines: 3 });
  });

  it("refuses a record that sets seq, prev or time, without using up a sequence number", async () => {
    const log = await openLog({ dir: freshDir() });
    for (const field of ["seq", "prev", "time"]) {
      await assert.rejects(log.append({ ...record(0), [field]: 1 }), (e: unknown) => e instanceof SignerError && e.code === "INTERNAL");
    }
    assert.equal((await log.append(record(1))).sequence, 1);
    assert.ok(log.healthy);
  });

  it("500 concurrent appends: 500 lines in call order, one chain, far fewer fsyncs", async () => {
    const dir = freshDir();
    let fsyncs = 0;
    let synced = 0;
    const log = await openLog({
      dir,
      onFsync: (seconds, lines) => {
        assert.ok(seconds >= 0);
        fsyncs++;
        synced += lines;
      },
    });
    const pending: Promise<AuditReceipt>[] = [];
    for (let i = 0; i < 500; i++) {
      // Arrive over several turns of the event loop, as requests do, so some find a write in flight.
      if (i % 10 === 0) await new Promise((r) => setImmediate(r));
      pending.push(log.append(record(i)));
    }
    const receipts = await Promise.all(pending);
    assert.deepEqual(
      receipts.map((r) => r.sequence),
      Array.from({ length: 500 }, (_, i) => i + 1),
    );
    const lines = await allLines(dir);
    assert.equal(lines.length, 500);
    lines.forEach((line, i) => {
      const r = JSON.parse(line) as { seq: number; requestId: string };
      assert.equal(r.seq, i + 1);
      assert.equal(r.requestId, `req-${i}`, "file order is call order");
      assert.equal(receipts[i]!.lineHash, sha256(line));
    });
    assert.deepEqual(await verifyAuditFiles(await listAuditFiles(dir)), { ok: true, lines: 500 });
    assert.equal(synced, 500, "every line was made durable by some fsync");
    assert.ok(fsyncs >= 1 && fsyncs < 100, `group commit: ${fsyncs} fsyncs for 500 appends`);
    assert.deepEqual(log.stats, { sequence: 500, queueDepth: 0, healthy: true });
  });

  describe("group commit waits for the lines of calls that have started (commitDelayMs)", () => {
    it("a line waits for the calls that expect() announced; the last of them ends the wait, and one fdatasync covers all", async () => {
      const batches: number[] = [];
      const log = await openLog({ dir: freshDir(), commitDelayMs: 100, onFsync: (_s, lines) => batches.push(lines) });
      log.expect();
      log.expect();
      log.expect();
      let firstDone = false;
      const first = log.append(record(1)).then((r) => ((firstDone = true), r));
      await sleep(5);
      assert.equal(firstDone, false, "the first line waits for the two calls still running");
      const second = log.append(record(2));
      await sleep(5);
      assert.equal(firstDone, false, "one call is still running");
      const started = performance.now();
      const third = log.append(record(3));
      const receipts = await Promise.all([first, second, third]);
      assert.ok(performance.now() - started < 90, "the last expected line ended the wait before the delay");
      assert.deepEqual(
        receipts.map((r) => r.sequence),
        [1, 2, 3],
      );
      assert.deepEqual(batches, [3], "one fdatasync for the three lines");
    });

    it("a call alone is written at once; an announced line that never comes costs at most the delay", async () => {
      const dir = freshDir();
      const log = await openLog({ dir, fsync: false, commitDelayMs: 100 });
      let t = performance.now();
      await log.append(record(1));
      assert.ok(performance.now() - t < 90, `no call announced: written at once (${Math.round(performance.now() - t)} ms)`);
      log.expect(); // a call whose line never comes (none should)
      log.expect();
      t = performance.now();
      await log.append(record(2));
      assert.ok(performance.now() - t >= 95, "waited for the other announced line, up to the delay");
      t = performance.now();
      await log.append(record(3)); // no call is announced any more: the count never goes below zero
      assert.ok(performance.now() - t < 90, "written at once again");
      assert.deepEqual(await verifyAuditFiles(await listAuditFiles(dir)), { ok: true, lines: 3 });
    });

    it("close() ends the wait: the waiting line is written and its append resolves", async () => {
      const dir = freshDir();
      const log = await AuditLog.open({ dir, commitDelayMs: 100 });
      log.expect();
      log.expect();
      const appended = log.append(record(1));
      await sleep(5);
      const t = performance.now();
      await log.close();
      assert.equal((await appended).sequence, 1);
      assert.ok(performance.now() - t < 90, "close did not wait out the delay");
      assert.equal((await allLines(dir)).length, 1);
    });

    it("commitDelayMs outside 0..100 is refused", async () => {
      await assert.rejects(AuditLog.open({ dir: freshDir(), commitDelayMs: -1 }), /commitDelayMs must be between 0 and 100/);
      await assert.rejects(AuditLog.open({ dir: freshDir(), commitDelayMs: 101 }), /commitDelayMs must be between 0 and 100/);
    });
  });

  it("rotates by size; the chain continues across files and verifies", async () => {
    const dir = freshDir();
    const maxFileBytes = 2000;
    const log = await openLog({ dir, maxFileBytes });
    // Sequential and concurrent appends, so that a batch is split across a rotation too.
    for (let i = 1; i <= 10; i++) await log.append(record(i));
    await Promise.all(Array.from({ length: 40 }, (_, i) => log.append(record(11 + i))));
    const files = await listAuditFiles(dir);
    assert.ok(files.length >= 4, `several files: ${files.length}`);
    let prev = GENESIS_HASH;
    let seq = 0;
    for (const file of files) {
      assert.ok(statSync(file).size <= maxFileBytes, `${basename(file)} within the limit`);
      const lines = linesOf(file);
      assert.equal(basename(file), auditFileName(seq + 1), "a file is named after its first sequence");
      for (const line of lines) {
        const r = JSON.parse(line) as { seq: number; prev: string };
        assert.equal(r.seq, ++seq);
        assert.equal(r.prev, prev);
        prev = sha256(line);
      }
    }
    assert.equal(seq, 50);
    assert.deepEqual(await verifyAuditFiles(files), { ok: true, lines: 50 });
  });

  it("a reopened log continues the chain of the newest file", async () => {
    const dir = freshDir();
    let log = await openLog({ dir, maxFileBytes: 1000 });
    let last: AuditReceipt | undefined;
    for (let i = 1; i <= 12; i++) last = await log.append(record(i));
    await log.close();
    const before = await listAuditFiles(dir);
    assert.ok(before.length > 1);

    log = await openLog({ dir, maxFileBytes: 1000 });
    assert.equal(log.recovered, false);
    assert.equal(log.stats.sequence, 12);
    const next = await log.append(record(13));
    assert.equal(next.sequence, 13);
    const lines = await allLines(dir);
    assert.equal((JSON.parse(lines[12]!) as { prev: string }).prev, last!.lineHash);
    assert.deepEqual(await verifyAuditFiles(await listAuditFiles(dir)), { ok: true, lines: 13 });
  });

  it("cuts away a torn last line left by a crash, and says so", async () => {
    const dir = freshDir();
    let log = await openLog({ dir });
    for (let i = 1; i <= 3; i++) await log.append(record(i));
    await log.close();
    const file = join(dir, auditFileName(1));
    const intact = readFileSync(file);
    const torn = '{"seq":4,"prev":"0123456789abcdef","time":"2026-';
    appendFileSync(file, torn);
    const broken = await verifyAuditFiles([file]);
    assert.equal(broken.ok, false);
    assert.equal(broken.firstBad?.line, 4);
    assert.match(broken.firstBad?.reason ?? "", /no newline/);

    log = await openLog({ dir });
    assert.equal(log.recovered, true);
    assert.deepEqual(log.tornLine, { file, bytes: Buffer.byteLength(torn), sha256: sha256(torn), preview: torn });
    // Only the torn bytes are cut, and the chain records the repair before anything else.
    const lines = linesOf(file);
    assert.deepEqual(Buffer.from(lines.slice(0, 3).join("\n") + "\n"), intact);
    const repaired = JSON.parse(lines[3]!) as { seq: number; prev: string; method: string; repair: Record<string, unknown> };
    assert.deepEqual([repaired.seq, repaired.prev, repaired.method], [4, sha256(lines[2]!), "AuditLog.Repaired"]);
    assert.deepEqual(repaired.repair, {
      file: basename(file),
      cutBytes: Buffer.byteLength(torn),
      cutSha256: sha256(torn),
      cutPreview: torn,
      reason: "a torn last line (a crash or a failed write in the middle of a line) was cut away",
    });
    const r = await log.append(record(5));
    assert.equal(r.sequence, 5);
    assert.equal((JSON.parse(linesOf(file)[4]!) as { prev: string }).prev, sha256(linesOf(file)[3]!));
    const verified = await verifyAuditFiles([file]);
    assert.deepEqual(verified, { ok: true, lines: 5, repairs: [{ file, line: 4, seq: 4, cutBytes: Buffer.byteLength(torn), repairedFile: basename(file) }] });
  });

  it("a file that is only a torn line starts the chain at 1", async () => {
    const dir = freshDir();
    mkdirSync(dir);
    writeFileSync(join(dir, auditFileName(1)), '{"seq":1,"pr');
    const log = await openLog({ dir });
    assert.equal(log.recovered, true);
    const r = await log.append(record(1));
    assert.equal(r.sequence, 2, "1 is the line recording the repair");
    const first = JSON.parse(linesOf(join(dir, auditFileName(1)))[0]!) as { prev: string; method: string };
    assert.deepEqual([first.prev, first.method], [GENESIS_HASH, "AuditLog.Repaired"]);
  });

  it("refuses to open on a last line that is complete but not a record", async () => {
    const dir = freshDir();
    mkdirSync(dir);
    writeFileSync(join(dir, auditFileName(1)), "garbage\n");
    await assert.rejects(AuditLog.open({ dir }), isUnavailable);
  });

  describe("verify: each kind of tampering is found at the right line", () => {
    let dir: string;
    let original: string[];

    before(async () => {
      dir = freshDir();
      const log = await AuditLog.open({ dir });
      for (let i = 1; i <= 10; i++) await log.append(record(i, { identity: `user-${i}` }));
      await log.close();
      original = linesOf(join(dir, auditFileName(1)));
    });

    /** Writes tampered lines as audit-0000000000000001.jsonl in a new directory and verifies it. */
    const verifyLines = async (lines: string[]) => {
      const d = freshDir();
      mkdirSync(d);
      const file = join(d, auditFileName(1));
      writeFileSync(file, lines.map((l) => `${l}\n`).join(""));
      return { file, result: await verifyAuditFiles([file]) };
    };

    it("the untouched file verifies", async () => {
      assert.deepEqual((await verifyLines(original)).result, { ok: true, lines: 10 });
    });

    it("an edited field of a middle line: reported at the next line, naming the edited one", async () => {
      const lines = [...original];
      lines[4] = lines[4]!.replace('"user-5"', '"user-X"');
      assert.notEqual(lines[4], original[4]);
      const { file, result } = await verifyLines(lines);
      assert.equal(result.ok, false);
      assert.equal(result.lines, 5);
      assert.equal(result.firstBad?.file, file);
      assert.equal(result.firstBad?.line, 6);
      assert.match(result.firstBad?.reason ?? "", /prev does not match the hash of line 5 of .*audit-0000000000000001\.jsonl/);
    });

    it("a deleted line", async () => {
      const lines = original.filter((_, i) => i !== 4);
      const { result } = await verifyLines(lines);
      assert.equal(result.firstBad?.line, 5);
      assert.match(result.firstBad?.reason ?? "", /seq 6 where 5 was expected/);
    });

    it("an inserted copy of an earlier line", async () => {
      const lines = [...original];
      lines.splice(7, 0, original[2]!);
      const { result } = await verifyLines(lines);
      assert.equal(result.firstBad?.line, 8);
      assert.match(result.firstBad?.reason ?? "", /seq 3 where 8 was expected/);
    });

    it("two swapped lines", async () => {
      const lines = [...original];
      [lines[3], lines[4]] = [lines[4]!, lines[3]!];
      const { result } = await verifyLines(lines);
      assert.equal(result.firstBad?.line, 4);
      assert.match(result.firstBad?.reason ?? "", /seq 5 where 4 was expected/);
    });

    it("a removed first line (the file name says where the file starts)", async () => {
      const { result } = await verifyLines(original.slice(1));
      assert.equal(result.firstBad?.line, 1);
      assert.match(result.firstBad?.reason ?? "", /first seq is 1/);
    });

    it("a line that is not JSON, and a re-chained forgery of line 1", async () => {
      const lines = [...original];
      lines[6] = "not json";
      assert.equal((await verifyLines(lines)).result.firstBad?.line, 7);
      const forged = [...original];
      forged[0] = forged[0]!.replace(GENESIS_HASH, "1".repeat(64));
      const { result } = await verifyLines(forged);
      assert.equal(result.firstBad?.line, 1);
      assert.match(result.firstBad?.reason ?? "", /64 zeros/);
    });

    it("a large tail without a newline (zeros a crash left, a wrong file) is reported in time linear in its size", async () => {
      const d = freshDir();
      mkdirSync(d);
      const file = join(d, auditFileName(1));
      writeFileSync(file, `${original[0]!}\n`);
      // 64 MiB, the default file size limit. Joining each 64 KiB chunk to the bytes before it was
      // quadratic: about 30 s here, and hours for a file of a few GiB.
      appendFileSync(file, Buffer.alloc(64 * 1024 * 1024));
      const started = Date.now();
      const result = await verifyAuditFiles([file]);
      const ms = Date.now() - started;
      assert.equal(result.ok, false);
      assert.deepEqual(result.firstBad, { file, line: 2, reason: "the last line has no newline: a torn write or a truncated file" });
      assert.ok(ms < 8_000, `verify took ${ms} ms for 64 MiB`);
    });

    it("across files: an edit of a file's last line is reported at the next file's first line", async () => {
      const d = freshDir();
      const log = await AuditLog.open({ dir: d, maxFileBytes: 900 });
      for (let i = 1; i <= 12; i++) await log.append(record(i));
      await log.close();
      const files = await listAuditFiles(d);
      assert.ok(files.length >= 2);
      assert.equal((await verifyAuditFiles(files)).ok, true);
      const lines = linesOf(files[0]!);
      const lastLine = lines.length;
      lines[lastLine - 1] = lines[lastLine - 1]!.replace('"latencyMs":3', '"latencyMs":4');
      writeFileSync(files[0]!, lines.map((l) => `${l}\n`).join(""));
      const result = await verifyAuditFiles(files);
      assert.equal(result.ok, false);
      assert.equal(result.firstBad?.file, files[1]);
      assert.equal(result.firstBad?.line, 1);
      assert.match(result.firstBad?.reason ?? "", new RegExp(`line ${lastLine} of ${files[0]!}`));
      // A missing middle file breaks the sequence at the first line of the file after it.
      if (files.length >= 3) {
        const gap = await verifyAuditFiles([files[0]!, ...files.slice(2)]);
        assert.equal(gap.firstBad?.file, files[2]);
        assert.equal(gap.firstBad?.line, 1);
      }
    });
  });

  describe("write failures fail closed", () => {
    it("an audit file on /dev/full: the batch rejects, the log turns unhealthy, later appends reject at once", async () => {
      const dir = freshDir();
      mkdirSync(dir);
      const link = join(dir, auditFileName(1));
      symlinkSync("/dev/full", link);
      const log = await openLog({ dir });
      assert.equal(log.healthy, true);

      // Two appends in the failing batch, and more that arrive while its write is in flight.
      // Each rejection is observed at once (allSettled below reads them), so none is "unhandled".
      const observed = <T>(p: Promise<T>): Promise<T> => {
        p.catch(() => undefined);
        return p;
      };
      const pending = [observed(log.append(record(1))), observed(log.append(record(2)))];
      for (let i = 3; i <= 6; i++) {
        await new Promise((r) => setImmediate(r));
        pending.push(observed(log.append(record(i))));
      }
      const batch = await Promise.allSettled(pending);
      const errors = batch.map((r) => (r.status === "rejected" ? (r.reason as unknown) : assert.fail("an append succeeded on /dev/full")));
      for (const e of errors) {
        isUnavailable(e);
        assert.match((e as Error).message, /^the audit log cannot be written: ENOSPC$/);
      }
      assert.equal(log.healthy, false);
      assert.deepEqual(log.stats, { sequence: 0, queueDepth: 0, healthy: false });

      // Rejected at once: nothing is queued and the error is the one that failed the batch.
      let settled = false;
      const next = log.append(record(7)).finally(() => (settled = true));
      await Promise.resolve();
      await Promise.resolve();
      assert.equal(settled, true, "rejected without waiting for any I/O");
      await assert.rejects(next, (e: unknown) => e === errors[0]);

      // The storage is fixed: recover() resyncs from the disk (nothing was written) and the chain starts at 1.
      unlinkSync(link);
      await log.recover();
      assert.equal(log.healthy, true);
      const r = await log.append(record(8));
      assert.equal(r.sequence, 1);
      assert.equal((JSON.parse(linesOf(link)[0]!) as { prev: string; requestId: string }).prev, GENESIS_HASH);
      assert.deepEqual(await verifyAuditFiles(await listAuditFiles(dir)), { ok: true, lines: 1 });
    });

    it("a failure at rotation: after recover() the chain continues from the last line on disk", async () => {
      const dir = freshDir();
      let log = await openLog({ dir });
      let third: AuditReceipt | undefined;
      for (let i = 1; i <= 3; i++) third = await log.append(record(i));
      await log.close();
      const size = statSync(join(dir, auditFileName(1))).size;

      // The 4th line does not fit: it goes to audit-...4, which is on /dev/full.
      log = await openLog({ dir, maxFileBytes: size + 10 });
      const full = join(dir, auditFileName(4));
      symlinkSync("/dev/full", full);
      await assert.rejects(log.append(record(4)), isUnavailable);
      await assert.rejects(log.append(record(5)), isUnavailable);
      assert.equal(log.healthy, false);

      // Still full: recover() cannot tell until it writes, so the next append fails again.
      await log.recover();
      await assert.rejects(log.append(record(6)), isUnavailable);

      unlinkSync(full);
      await log.recover();
      const r = await log.append(record(7));
      assert.equal(r.sequence, 4, "sequence numbers of lines that were never written are reused");
      const lines = linesOf(join(dir, auditFileName(4)));
      assert.equal(lines.length, 1);
      assert.equal((JSON.parse(lines[0]!) as { prev: string; requestId: string }).prev, third!.lineHash);
      assert.deepEqual(await verifyAuditFiles(await listAuditFiles(dir)), { ok: true, lines: 4 });
    });

    it("with retry: tries again, backing off, while the disk takes no writes; once it does, a line records the outage and the chain continues", async () => {
      const dir = freshDir();
      let log = await openLog({ dir });
      for (let i = 1; i <= 2; i++) await log.append(record(i));
      await log.close();
      const size = statSync(join(dir, auditFileName(1))).size;
      const events: string[] = [];
      log = await openLog({
        dir,
        maxFileBytes: size + 10,
        retry: { minMs: 50, maxMs: 200, onRecovered: () => events.push("recovered"), onFailed: (_e, next) => events.push(`failed, next in ${next} ms`) },
      });
      // The 3rd line goes to a new file, which is /dev/full.
      const full = join(dir, auditFileName(3));
      symlinkSync("/dev/full", full);
      await assert.rejects(log.append(record(3)), isUnavailable);
      assert.equal(log.healthy, false);
      const until = Date.now() + 10_000;
      while (events.length < 3 && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
      // Each attempt writes its line to the full disk and fails: it never reports healthy in between.
      assert.deepEqual(events.slice(0, 3), ["failed, next in 100 ms", "failed, next in 200 ms", "failed, next in 200 ms"]);
      unlinkSync(full);
      while (!events.includes("recovered") && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
      assert.ok(events.includes("recovered"), events.join("; "));
      assert.equal(log.healthy, true);
      const r = await log.append(record(4));
      assert.equal(r.sequence, 4, "the line of the recovery is 3, this one 4");
      const recovered = JSON.parse(linesOf(full)[0]!) as { seq: number; method: string; error: string };
      assert.deepEqual([recovered.seq, recovered.method, recovered.error], [3, "AuditLog.Recovered", "the audit log cannot be written: ENOSPC"]);
      assert.deepEqual(await verifyAuditFiles(await listAuditFiles(dir)), { ok: true, lines: 4 });
      await log.close();
    });

    it("a write cut short (file size limit): the rejected batch's lines, whole or torn, are cut back before the appends reject", async () => {
      // A child process under `ulimit -f 4` (4 KiB): the kernel writes part of the batch, then EFBIG.
      const dir = freshDir();
      const script = join(root, `partial-write-${n}.mjs`);
      const auditModule = new URL("../../src/audit/index.js", import.meta.url).href;
      writeFileSync(
        script,
        `import { AuditLog } from ${JSON.stringify(auditModule)};
process.on("SIGXFSZ", () => {}); // without this the signal kills the process instead of EFBIG
const rec = (i) => ({ requestId: "req-" + i, peer: "p", identity: "x".repeat(150), method: "Sign", decision: "allow", result: "OK", latencyMs: 1 });
const log = await AuditLog.open({ dir: process.argv[2] });
const durable = [];
for (let i = 1; i <= 8; i++) durable.push(await log.append(rec(i)));
const batch = await Promise.allSettled(Array.from({ length: 12 }, (_, i) => log.append(rec(9 + i))));
const failedHealthy = log.healthy;
// What a SIGKILL right now would leave: the rejected batch must already be cut back.
const { readdirSync, readFileSync } = await import("node:fs");
const onDiskAtAnswer = readdirSync(process.argv[2]).filter((n) => n.endsWith(".jsonl")).map((n) => readFileSync(process.argv[2] + "/" + n, "utf8")).join("");
await log.recover();
const after = { healthy: log.healthy, stats: log.stats };
await log.close();
console.log(JSON.stringify({ durable, batch: batch.map((r) => r.status === "fulfilled" ? "ok" : r.reason.code + " " + r.reason.message), failedHealthy, after, onDiskAtAnswer }));
`,
      );
      const r = await spawnCollect("bash", ["-c", `ulimit -f 4 && exec "${process.execPath}" "${script}" "${dir}"`], "", { timeoutMs: 15_000 });
      assert.equal(r.code, 0, r.stderr);
      const out = JSON.parse(r.stdout) as { durable: AuditReceipt[]; batch: string[]; failedHealthy: boolean; after: { healthy: boolean; stats: unknown }; onDiskAtAnswer: string };
      assert.equal(out.durable.length, 8);
      assert.deepEqual(out.batch, Array(12).fill("AUDIT_UNAVAILABLE the audit log cannot be written: EFBIG"));
      assert.equal(out.failedHealthy, false);
      assert.deepEqual(out.after, { healthy: true, stats: { sequence: 8, queueDepth: 0, healthy: true } });
      // Only the 8 durable lines remain: none of the 12 rejected requests is on record as "OK",
      // and that was so when they were answered, not only after recover() (a SIGKILL in between).
      const lines = await allLines(dir);
      assert.equal(out.onDiskAtAnswer, lines.map((l) => `${l}\n`).join(""));
      assert.equal(lines.length, 8);
      assert.equal(sha256(lines[7]!), out.durable[7]!.lineHash);
      assert.deepEqual(await verifyAuditFiles(await listAuditFiles(dir)), { ok: true, lines: 8 });
    });

    it("a directory that vanished: AUDIT_UNAVAILABLE, and recover() fails until it is back", async () => {
      const dir = freshDir();
      const log = await openLog({ dir, maxFileBytes: 1 }); // every line gets its own file
      await log.append(record(1));
      rmSync(dir, { recursive: true });
      await assert.rejects(log.append(record(2)), (e: unknown) => isUnavailable(e) && /ENOENT/.test((e as Error).message));
      await assert.rejects(log.recover(), isUnavailable);
      assert.equal(log.healthy, false);
      mkdirSync(dir);
      await log.recover();
      assert.equal((await log.append(record(3))).sequence, 1, "what is on disk is the truth");
    });
  });

  describe("the directory: checked, created one level at a time, locked by its writer", () => {
    const refused =
      (re: RegExp) =>
      (e: unknown): boolean =>
        isUnavailable(e) && re.test((e as Error).message);

    it("kernel file systems and paths that cannot be a directory are refused at once (Node's recursive mkdir spun for ever under /proc)", async () => {
      const link = join(root, "to-proc");
      symlinkSync("/proc/self", link);
      const file = join(root, "a-file");
      writeFileSync(file, "");
      const cases: [string, RegExp][] = [
        ["/proc/hsm-signer/audit", /\/proc\/hsm-signer\/audit is under \/proc, a kernel file system, not storage/],
        ["/sys/hsm-signer", /is under \/sys/],
        ["/dev/shm/hsm-signer", /is under \/dev/],
        [join(link, "audit"), /is under \/proc/],
        [join(file, "audit"), /a-file is not a directory/],
        ["relative/audit", /is not an absolute path/],
      ];
      for (const [dir, re] of cases) {
        const t0 = performance.now();
        await assert.rejects(AuditLog.open({ dir }), refused(re), dir);
        assert.ok(performance.now() - t0 < 5_000, `${dir}: refused in ${(performance.now() - t0).toFixed(0)} ms`);
      }
      const deep = join(root, "x", "y", "z");
      await openLog({ dir: deep });
      assert.equal(statSync(deep).mode & 0o777, 0o700);
    });

    it("a directory the service cannot write (a read-only mount): refused at open, naming it", async function () {
      if (process.getuid?.() !== 0) this.skip(); // mounting needs root
      const ro = join(root, "read-only");
      mkdirSync(ro);
      const mounted = spawnSync("mount", ["-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", ro]);
      if (mounted.status !== 0) this.skip();
      try {
        await assert.rejects(AuditLog.open({ dir: join(ro, "audit") }), refused(/read-only\/audit does not exist and cannot be created: .*read-only is not writable by this process/));
        await assert.rejects(AuditLog.open({ dir: ro }), refused(/read-only is not writable by this process/));
      } finally {
        spawnSync("umount", [ro]);
      }
    });

    it("a second writer is refused, naming the holder; close() releases the directory", async () => {
      const dir = freshDir();
      const first = await openLog({ dir });
      await first.append(record(1));
      const lockFile = join(dir, LOCK_FILE_NAME);
      assert.equal((JSON.parse(readFileSync(lockFile, "utf8")) as { pid: number }).pid, process.pid);
      await assert.rejects(AuditLog.open({ dir }), refused(new RegExp(`in use by another writer: pid ${process.pid}, this process on host ${hostname()}, since .*\\(lock file ${lockFile}\\)`)));
      assert.equal((await first.append(record(2))).sequence, 2, "the holder is undisturbed");
      await first.close();
      assert.throws(() => statSync(lockFile), /ENOENT/);
      const second = await openLog({ dir });
      assert.equal((await second.append(record(3))).sequence, 3);
    });

    it("a lock left by a process that is gone is taken over; one of another host is not", async () => {
      const dir = freshDir();
      mkdirSync(dir);
      const lockFile = join(dir, LOCK_FILE_NAME);
      const gone = await spawnCollect(process.execPath, ["-e", "console.log(process.pid)"], "", { timeoutMs: 10_000 });
      const deadPid = Number(gone.stdout.trim());
      writeFileSync(lockFile, JSON.stringify({ pid: deadPid, startTicks: "1", host: hostname(), since: "2026-01-01T00:00:00.000Z" }));
      const log = await openLog({ dir });
      assert.equal((JSON.parse(readFileSync(lockFile, "utf8")) as { pid: number }).pid, process.pid);
      await log.close();

      // A pid that runs, but is another program than the one that took the lock (pid reuse): stale too.
      writeFileSync(lockFile, JSON.stringify({ pid: process.pid, startTicks: "1", host: hostname(), since: "2026-01-01T00:00:00.000Z" }));
      await (await openLog({ dir })).close();

      writeFileSync(lockFile, JSON.stringify({ pid: deadPid, host: "elsewhere.example", since: "2026-01-01T00:00:00.000Z" }));
      await assert.rejects(AuditLog.open({ dir }), refused(/in use by another writer: pid \d+ on host elsewhere\.example/));
    });

    it("two starters that find the same stale lock at the same moment: exactly one gets the directory (300 races)", async () => {
      // Each worker thread calls acquireDirLock once per race, both released at the same instant
      // by a spin barrier on shared memory. Before the takeover file, the second starter could
      // remove the lock the first had just written in place of the stale one, and both held it.
      const gone = await spawnCollect(process.execPath, ["-e", "console.log(process.pid)"], "", { timeoutMs: 10_000 });
      const stale = JSON.stringify({ pid: Number(gone.stdout.trim()), startTicks: "1", host: hostname(), since: "2026-01-01T00:00:00.000Z" });
      const barrier = new Int32Array(new SharedArrayBuffer(8));
      const source = `
        const { parentPort, workerData } = require("node:worker_threads");
        const barrier = new Int32Array(workerData.barrier);
        import(workerData.module).then(({ acquireDirLock }) => {
          parentPort.on("message", (dir) => {
            Atomics.add(barrier, 0, 1);
            while (Atomics.load(barrier, 0) < 2);
            let got = false;
            try { acquireDirLock(dir); got = true; } catch {}
            parentPort.postMessage(got);
          });
          parentPort.postMessage("ready");
        });`;
      const module = new URL("../../src/audit/audit-dir.js", import.meta.url).href;
      const workers = [0, 1].map(() => new Worker(source, { eval: true, workerData: { barrier: barrier.buffer, module } }));
      const next = (w: Worker): Promise<unknown> =>
        new Promise((res, rej) => {
          const fail = (e: Error): void => rej(e);
          w.once("error", fail).once("message", (m) => {
            w.off("error", fail);
            res(m);
          });
        });
      try {
        await Promise.all(workers.map(next));
        const base = freshDir();
        mkdirSync(base);
        const tally = new Map<string, number>();
        for (let i = 0; i < 300; i++) {
          const dir = join(base, String(i));
          mkdirSync(dir);
          writeFileSync(join(dir, LOCK_FILE_NAME), stale);
          Atomics.store(barrier, 0, 0);
          const answers = workers.map(next);
          for (const w of workers) w.postMessage(dir);
          const got = (await Promise.all(answers)).filter((a) => a === true).length;
          tally.set(`${got} got it`, (tally.get(`${got} got it`) ?? 0) + 1);
          assert.equal((JSON.parse(readFileSync(join(dir, LOCK_FILE_NAME), "utf8")) as { pid: number }).pid, process.pid);
          assert.ok(!existsSync(join(dir, `${LOCK_FILE_NAME}.takeover`)), "the takeover file is gone");
        }
        assert.deepEqual([...tally], [["1 got it", 300]]);
      } finally {
        await Promise.all(workers.map((w) => w.terminate()));
      }
    });
  });

  it("close() writes what is queued, then refuses appends", async () => {
    const dir = freshDir();
    const log = await AuditLog.open({ dir });
    const pending = Array.from({ length: 20 }, (_, i) => log.append(record(i)));
    await log.close();
    const receipts = await Promise.all(pending);
    assert.equal(receipts.at(-1)?.sequence, 20);
    assert.equal((await allLines(dir)).length, 20);
    await assert.rejects(log.append(record(21)), isUnavailable);
    assert.equal(log.healthy, false);
  });

  it("search finds records by artifact digest, key and identity (globs) and time range, across files", async () => {
    const dir = freshDir();
    const log = await openLog({ dir, maxFileBytes: 1500 });
    const art = (d: string) => ({ digest: d, mediaType: "application/vnd.oci.image.manifest.v1+json", size: 1 });
    const a = `sha256:${"a".repeat(64)}`;
    const b = `sha256:${"b".repeat(64)}`;
    await log.append(record(1, { artifact: art(a), keyId: "k1", identity: "alice" }));
    await log.append(record(2, { artifact: art(b), keyId: "k2", identity: "bob" }));
    await sleep(15);
    const t1 = new Date();
    await log.append(record(3, { artifact: art(a), keyId: "k2", identity: "carol" }));
    await log.append(record(4, { keyId: "k1", identity: "alice", decision: "deny", result: "PERMISSION_DENIED" }));
    await sleep(15);
    const t2 = new Date();
    await log.append(record(5, { artifact: art(a), keyId: "k1", identity: "bob" }));
    await sleep(15);
    await log.append(record(6, { keyId: "release-2026", identity: "spiffe://corp/build/1" }));
    await log.append(record(7, { keyId: "release-2026.1+x", identity: "spiffe://corp/build/runner/22" }));
    await log.close();
    const files = await listAuditFiles(dir);
    assert.ok(files.length >= 2, "the records span several files");

    const ids = async (q: Parameters<typeof searchAudit>[1]): Promise<string[]> => {
      const out: string[] = [];
      for await (const r of searchAudit(files, q)) out.push(r.requestId as string);
      return out;
    };
    assert.deepEqual(await ids({ artifactDigest: a }), ["req-1", "req-3", "req-5"]);
    assert.deepEqual(await ids({ artifactDigest: a.toUpperCase().replace("SHA256", "sha256") }), ["req-1", "req-3", "req-5"]);
    assert.deepEqual(await ids({ keyId: "k1" }), ["req-1", "req-4", "req-5"]);
    assert.deepEqual(await ids({ identity: "alice" }), ["req-1", "req-4"]);
    assert.deepEqual(await ids({ from: t1, to: t2 }), ["req-3", "req-4"]);
    assert.deepEqual(await ids({ from: t1 }), ["req-3", "req-4", "req-5", "req-6", "req-7"]);
    assert.deepEqual(await ids({ to: t1 }), ["req-1", "req-2"]);
    assert.deepEqual(await ids({ artifactDigest: a, keyId: "k1", identity: "bob" }), ["req-5"]);
    assert.deepEqual(await ids({ artifactDigest: `sha256:${"c".repeat(64)}` }), []);
    assert.equal((await ids({})).length, 7);
    assert.deepEqual(await ids({ identity: "spiffe://corp/build/*" }), ["req-6", "req-7"], "globs as in the policy: * any run, / included");
    assert.deepEqual(await ids({ identity: "spiffe://corp/build/?" }), ["req-6"]);
    assert.deepEqual(await ids({ keyId: "k?" }), ["req-1", "req-2", "req-3", "req-4", "req-5"]);
    assert.deepEqual(await ids({ keyId: "release-*" }), ["req-6", "req-7"]);
    assert.deepEqual(await ids({ keyId: "release-2026.1+x" }), ["req-7"], "the other characters are literal");
    assert.deepEqual(await ids({ keyId: "release-2026x1+x" }), []);

    // Stopping early releases the file (the generator's finally runs).
    for await (const r of searchAudit(files, {})) {
      assert.equal(r.seq, 1);
      break;
    }
  });
});
