import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { connect as netConnect, type Socket } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect as tlsConnect, type ConnectionOptions } from "node:tls";
import * as grpc from "@grpc/grpc-js";
import { bindServer, newGrpcServer, type RunningServer } from "../../src/server/bind-server.js";
import { loadTlsMaterial, type TlsFiles, type TlsMaterial } from "../../src/server/tls-material.js";
import type { TlsHandshakeFailure } from "../../src/server/tls-listener.js";
import { CLIENT_LEAF_EXT, OpensslCa, SERVER_LEAF_EXT } from "../helpers/openssl-ca.js";
import { attempt } from "../helpers/tls.js";

interface Client {
  cert: string;
  key: string;
  der: Buffer;
}

async function waitFor(what: string, cond: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A client of the listener with a client certificate (and the root that verifies the server). */
function grpcClient(port: number, rootPem: string, c: Client): grpc.Client {
  return new grpc.Client(`127.0.0.1:${port}`, grpc.credentials.createSsl(Buffer.from(rootPem), Buffer.from(c.key), Buffer.from(c.cert)), {
    "grpc.ssl_target_name_override": "localhost",
  });
}

/** One call to a path the server does not serve: UNIMPLEMENTED when the listener let the client in. */
function unknownCall(client: grpc.Client): Promise<grpc.status> {
  return new Promise((resolve) =>
    client.makeUnaryRequest(
      "/nothing.Here/Call",
      (x: Buffer) => x,
      (x: Buffer) => x,
      Buffer.alloc(0),
      { deadline: Date.now() + 5000 },
      (e) => resolve(e?.code ?? grpc.status.OK),
    ),
  );
}

/** unknownCall on a connection of its own. */
async function callAs(port: number, rootPem: string, c: Client): Promise<grpc.status> {
  const client = grpcClient(port, rootPem, c);
  try {
    return await unknownCall(client);
  } finally {
    client.close();
  }
}

/** A raw TCP connection to the listener; resolves once it is open. */
function tcp(port: number): Promise<Socket & { closedAt?: number }> {
  return new Promise((resolve, reject) => {
    const s: Socket & { closedAt?: number } = netConnect({ host: "127.0.0.1", port }, () => resolve(s));
    s.on("error", () => undefined);
    s.on("close", () => (s.closedAt = Date.now()));
    s.once("error", reject);
  });
}

describe("the TLS edge as production runs it: client CRLs, reloaded material, handshake timeout, connection cap, idle connections", function () {
  this.timeout(60_000);
  let dir: string;
  let root: OpensslCa;
  let inter: OpensslCa;
  let files: TlsFiles;
  let agent: Client;
  let leaver: Client;
  let rootClient: Client;
  const servers: RunningServer[] = [];
  let n = 0;

  const file = (content: string): string => {
    const f = join(dir, `f${++n}.pem`);
    writeFileSync(f, content);
    return f;
  };
  const client = (ca: OpensslCa, cn: string, chain: string): Client => {
    const l = ca.leaf({ subject: `/CN=${cn}`, extensions: CLIENT_LEAF_EXT });
    return { cert: new X509Certificate(l.der).toString() + chain, key: l.keyPem, der: l.der };
  };
  const as = (c: Client): ConnectionOptions => ({ ca: root.certPem, cert: c.cert, key: c.key });

  /** A grpc-js server behind the service's own TLS listener (bindServer), with mTLS required. */
  const start = async (m: TlsMaterial, o: { handshakeTimeoutMs?: number; maxConnections?: number; idleMs?: number } = {}): Promise<{ s: RunningServer; failures: TlsHandshakeFailure[] }> => {
    const failures: TlsHandshakeFailure[] = [];
    const s = await bindServer(newGrpcServer(), "127.0.0.1:0", {
      insecure: false,
      cert: m.cert,
      key: m.key,
      clientCa: m.clientCa,
      crl: m.crl,
      requireClientCertificate: true,
      handshakeTimeoutMs: o.handshakeTimeoutMs,
      maxConnections: o.maxConnections,
      idleMs: o.idleMs,
      onHandshakeFailure: (f) => failures.push(f),
    });
    servers.push(s);
    return { s, failures };
  };

  before(() => {
    dir = mkdtempSync(join(tmpdir(), "tls-edge-"));
    root = OpensslCa.root(dir, { subject: "/O=Corp/CN=Client Root" });
    inter = root.intermediate({ subject: "/O=Corp/CN=Build Agents" });
    const server = root.leaf({ subject: "/CN=localhost", extensions: SERVER_LEAF_EXT });
    // Clients of the intermediate send it with their certificate; the listener trusts the root only.
    agent = client(inter, "agent-1", inter.certPem);
    leaver = client(inter, "agent-2", inter.certPem);
    rootClient = client(root, "custodian", "");
    files = { section: "tls", certFile: file(new X509Certificate(server.der).toString()), keyFile: file(server.keyPem), clientCaFile: file(root.certPem) };
  });

  after(async () => {
    for (const s of servers) await s.close(0);
    rmSync(dir, { recursive: true, force: true });
  });

  it("refuses a revoked client certificate in the handshake (certificate_revoked) and keeps admitting the others of its CA", async () => {
    inter.revoke(leaver.der);
    const { s, failures } = await start(loadTlsMaterial({ ...files, clientCrlFile: file(root.crl() + inter.crl()) }));
    assert.equal((await attempt(s.port, as(agent), true)).secure, true);
    assert.equal((await attempt(s.port, as(rootClient), true)).secure, true);
    await attempt(s.port, as(leaver));
    await waitFor("the refusal is reported", () => failures.length === 1);
    assert.equal(failures[0]?.reason, "certificate_revoked");
    assert.equal(failures[0]?.code, "CERT_REVOKED");
  });

  it("refuses every client of a CA whose CRL is missing from the file (crl_unavailable): an intermediate the bundle does not hold cannot be checked when loading", async () => {
    const { s, failures } = await start(loadTlsMaterial({ ...files, clientCrlFile: file(root.crl()) }));
    assert.equal((await attempt(s.port, as(rootClient), true)).secure, true);
    await attempt(s.port, as(agent));
    await waitFor("the refusal is reported", () => failures.length === 1);
    assert.deepEqual([failures[0]?.reason, failures[0]?.code], ["crl_unavailable", "UNABLE_TO_GET_CRL"]);
  });

  it("new material (a fresh CRL, a renewed certificate) applies to the connections that come after it; an open connection keeps going", async () => {
    const { s, failures } = await start(loadTlsMaterial({ ...files, clientCrlFile: file(root.crl() + inter.crl()) }));
    const open = tlsConnect({ host: "127.0.0.1", port: s.port, servername: "localhost", ALPNProtocols: ["h2"], ...as(agent) });
    const openSerial = await new Promise<string>((resolve, reject) => {
      open.once("secureConnect", () => resolve(open.getPeerX509Certificate()?.serialNumber ?? ""));
      open.once("error", reject);
    });
    open.on("error", () => undefined);

    inter.revoke(agent.der);
    const renewed = root.leaf({ subject: "/CN=localhost", extensions: SERVER_LEAF_EXT });
    const next = loadTlsMaterial({ ...files, certFile: file(new X509Certificate(renewed.der).toString()), keyFile: file(renewed.keyPem), clientCrlFile: file(root.crl() + inter.crl()) });
    s.setTlsMaterial(next);

    await attempt(s.port, as(agent));
    await waitFor("the refusal is reported", () => failures.length === 1);
    assert.equal(failures[0]?.reason, "certificate_revoked");
    const fresh = tlsConnect({ host: "127.0.0.1", port: s.port, servername: "localhost", ALPNProtocols: ["h2"], ...as(rootClient) });
    const freshSerial = await new Promise<string>((resolve, reject) => {
      fresh.once("secureConnect", () => resolve(fresh.getPeerX509Certificate()?.serialNumber ?? ""));
      fresh.once("error", reject);
    });
    fresh.destroy();
    assert.equal(freshSerial, new X509Certificate(renewed.der).serialNumber, "the renewed certificate is presented");
    assert.notEqual(freshSerial, openSerial);
    assert.equal(open.destroyed, false, "the connection opened before stays open");
    open.destroy();

    // A key that is not the certificate's never reaches the listener.
    assert.throws(() => s.setTlsMaterial({ ...next, key: Buffer.from(root.leaf({ extensions: SERVER_LEAF_EXT }).keyPem) }), /key values mismatch/);
    assert.equal((await attempt(s.port, as(rootClient), true)).secure, true, "the listener still serves with what it had");
  });

  it("a client CA bundle of one intermediate alone admits that CA's clients only, not another's under the same root, after a reload too; with CRLs it is refused at load", async () => {
    const laptops = root.intermediate({ subject: "/O=Corp/CN=Laptops" });
    const builder = client(inter, "builder-7", inter.certPem);
    const laptop = client(laptops, "laptop-3", laptops.certPem);
    const onlyAgents = { ...files, clientCaFile: file(inter.certPem) };
    const { s, failures } = await start(loadTlsMaterial(onlyAgents));
    // (A TLS 1.3 client sees its handshake done before the server has checked its certificate: a call shows it got in.)
    assert.equal(await callAs(s.port, root.certPem, builder), grpc.status.UNIMPLEMENTED, "a client of the bundle's intermediate gets in");
    await attempt(s.port, as(laptop));
    await attempt(s.port, as(rootClient));
    await waitFor("both refusals are reported", () => failures.length === 2);
    assert.deepEqual(
      failures.map((f) => f.code).sort(),
      ["SELF_SIGNED_CERT_IN_CHAIN", "UNABLE_TO_GET_ISSUER_CERT_LOCALLY"],
      "another intermediate's client, and the root's own (the root is no anchor here)",
    );
    // setSecureContext makes a new context: the listener trusts the intermediate alone again.
    s.setTlsMaterial(loadTlsMaterial(onlyAgents));
    assert.equal(await callAs(s.port, root.certPem, builder), grpc.status.UNIMPLEMENTED, "after a reload");
    await attempt(s.port, as(laptop));
    await waitFor("the refusal after the reload is reported", () => failures.length === 3);
    assert.throws(
      () => loadTlsMaterial({ ...onlyAgents, clientCrlFile: file(inter.crl() + root.crl()) }),
      /tls\.clientCrlFile: tls\.clientCaFile holds "O=Corp, CN=Build Agents" without its issuer .* every client would be refused/,
    );
  });

  it("closes a connection that does not finish its handshake in time (timeout) instead of holding it for Node's two minutes", async () => {
    const { s, failures } = await start(loadTlsMaterial(files), { handshakeTimeoutMs: 300 });
    const idle = await tcp(s.port);
    const opened = Date.now();
    await waitFor("the server closes the silent connection", () => idle.closedAt !== undefined, 5000);
    const after = (idle.closedAt ?? 0) - opened;
    assert.ok(after >= 250 && after < 3000, `closed after ${after} ms`);
    await waitFor("the timeout is reported", () => failures.length === 1);
    assert.equal(failures[0]?.reason, "timeout");
  });

  it("closes a connection over the cap at once (connection_limit) and admits one again when a slot frees", async () => {
    const { s, failures } = await start(loadTlsMaterial(files), { maxConnections: 2 });
    const [a, b] = [await tcp(s.port), await tcp(s.port)];
    const third = await tcp(s.port);
    await waitFor("the third connection is closed", () => third.closedAt !== undefined, 5000);
    await waitFor("the drop is reported", () => failures.length === 1);
    assert.deepEqual([failures[0]?.reason, failures[0]?.code], ["connection_limit", "MAX_CONNECTIONS"]);
    assert.match(failures[0]?.peer ?? "", /^127\.0\.0\.1:\d+$/);
    assert.equal(a.closedAt, undefined);
    a.destroy();
    await waitFor("the slot is free", () => a.closedAt !== undefined);
    await new Promise((r) => setTimeout(r, 100));
    assert.equal((await attempt(s.port, as(rootClient), true)).secure, true);
    b.destroy();
  });

  it("closes a connection that received nothing for the idle time: a client's after its last call (it reconnects on the next), and one that never calls", async () => {
    const { s } = await start(loadTlsMaterial(files), { idleMs: 1500 });
    const c = grpcClient(s.port, root.certPem, rootClient);
    const call = (): Promise<number> => unknownCall(c);
    // A TLS connection that completes its handshake and then sends nothing (no HTTP/2 at all).
    const silent = tlsConnect({ host: "127.0.0.1", port: s.port, servername: "localhost", ALPNProtocols: ["h2"], ...as(rootClient) });
    silent.on("error", () => undefined);
    silent.resume();
    let silentClosed = 0;
    silent.on("close", () => (silentClosed = Date.now()));
    const opened = Date.now();
    try {
      assert.equal(await call(), grpc.status.UNIMPLEMENTED);
      assert.equal(c.getChannel().getConnectivityState(false), grpc.connectivityState.READY);
      // Calls keep a connection: six calls 300 ms apart span more than the idle time, and the
      // channel never leaves READY meanwhile (a closed connection would show, even if the next call reconnected).
      let left = false;
      const poll = setInterval(() => (left ||= c.getChannel().getConnectivityState(false) !== grpc.connectivityState.READY), 5);
      for (let i = 0; i < 6; i++) {
        await new Promise((r) => setTimeout(r, 300));
        assert.equal(await call(), grpc.status.UNIMPLEMENTED);
      }
      clearInterval(poll);
      assert.equal(left, false, "the connection stayed open while calls came");
      await waitFor("the idle client connection is closed", () => c.getChannel().getConnectivityState(false) !== grpc.connectivityState.READY, 8000);
      assert.equal(await call(), grpc.status.UNIMPLEMENTED, "the next call reconnects");
      await waitFor("the silent connection is closed", () => silentClosed !== 0, 8000);
      assert.ok(silentClosed - opened >= 1450, `closed after ${silentClosed - opened} ms`);
    } finally {
      c.close();
      silent.destroy();
    }
  });
});
