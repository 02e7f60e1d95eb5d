import assert from "node:assert/strict";
import { once } from "node:events";
import net from "node:net";
import type { KeySpec } from "../../src/signing/key-spec.js";
import type { RunningServer } from "../../src/server/signer-server.js";
import { getFixture, startTestServer, type Fixture } from "../helpers/fixture.js";
import { signLoad, WarmLoadClient, type LoadRequest } from "../bench/warm-load-client.js";

/**
 * The benchmark's load client (npm run bench, scripts/bench-cpu.js): one process, started once,
 * runs loads one after another against the real server over TLS and reads the server's CPU from
 * /proc; a failing load reports the server's error, and a load that hangs is bounded.
 */
describe("bench: the warm load client process", function () {
  this.timeout(60_000);
  let f: Fixture;
  let server: RunningServer;
  const client = new WarmLoadClient();

  before(async () => {
    f = await getFixture();
    server = await startTestServer(f);
  });

  after(async () => {
    await client.close();
    await server?.close(1000);
  });

  function request(spec: KeySpec, o: Partial<LoadRequest> = {}): LoadRequest {
    return {
      port: server.port,
      caFile: f.tls.caFile,
      ...signLoad(spec),
      concurrency: 4,
      warmupMs: 100,
      warmupCalls: 10,
      durationMs: 300,
      // The server runs in this process: its CPU is this process's, main thread included.
      server: { pid: process.pid, threads: { main: [String(process.pid)], sign: [], libuv: [] } },
      ...o,
    };
  }

  it("runs loads one after another in the same process, with both gRPC clients, and reports the server's CPU per call", async () => {
    const first = await client.run(request("EC-256"));
    const pid = client.pid;
    assert.ok(pid !== undefined);
    const second = await client.run(request("RSA-3072", { client: "http2" }));
    assert.equal(client.pid, pid, "the second load ran in another process");
    for (const r of [first, second]) {
      assert.ok(r.ops > 0, "no call was answered in the window");
      assert.ok(Number.isFinite(r.cpuMsPerCall) && r.cpuMsPerCall > 0, `server CPU per call: ${r.cpuMsPerCall}`);
      assert.ok(r.clientCores !== undefined && r.clientCores > 0, "the client's own CPU is not reported");
      assert.ok(r.p50 > 0 && r.p99 >= r.p50);
    }
  });

  it("fails a load with the server's error, and the next load runs", async () => {
    await assert.rejects(client.run(request("EC-256", { req: { ...request("EC-256").req, keyId: "no-such-key" } })), /load client: .*(NOT_FOUND|PERMISSION_DENIED)/);
    assert.ok((await client.run(request("EC-256"))).ops > 0);
  });

  it("bounds a load that does not end: the process is killed, the load fails, and the next one starts a new process", async () => {
    const pid = client.pid;
    // A listener that accepts and never says a word: the TLS handshake, and so every call, waits.
    const silent = net.createServer(() => undefined);
    silent.listen(0, "127.0.0.1");
    await once(silent, "listening");
    const held: net.Socket[] = [];
    silent.on("connection", (s) => held.push(s));
    try {
      await assert.rejects(client.run(request("EC-256", { port: (silent.address() as net.AddressInfo).port }), 1500), /did not answer within 1500 ms/);
    } finally {
      for (const s of held) s.destroy();
      silent.close();
    }
    assert.ok((await client.run(request("EC-256"))).ops > 0);
    assert.notEqual(client.pid, pid);
  });
});
