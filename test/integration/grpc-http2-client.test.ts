import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { execFileSync } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import http2 from "node:http2";
import { tmpdir } from "node:os";
import { join } from "node:path";
import tls from "node:tls";
import { setTimeout as delay } from "node:timers/promises";
import { GrpcCallError, GrpcHttp2Channel, Status, withRetries, type ChannelOptions } from "../../src/client/grpc-http2-client.js";
import { createTlsMaterial, type TlsMaterial } from "../helpers/tls.js";

/**
 * GrpcHttp2Channel (the plugin's gRPC client on node:http2) against node:http2's secure server
 * over real TLS on loopback: gRPC framing and status, trailers-only answers, large bodies, the
 * response size limit, resets, GOAWAY and lost connections, deadlines, ALPN, and the ca_file
 * check made before the server gets a single HTTP/2 byte.
 */

type Handler = (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, body: Buffer) => void;

interface TestServer {
  server: http2.Http2SecureServer;
  port: number;
  sessions: http2.ServerHttp2Session[];
  sockets: tls.TLSSocket[];
  nextSession(): Promise<http2.ServerHttp2Session>;
}

const { constants } = http2;
const sha256 = (b: Buffer): string => createHash("sha256").update(b).digest("hex");

/** A gRPC length-prefixed message. */
function grpcFrame(body: Buffer): Buffer {
  const out = Buffer.alloc(5 + body.length);
  out.writeUInt32BE(body.length, 1);
  body.copy(out, 5);
  return out;
}

/** Answers with one message and grpc-status 0 in trailers. */
function answer(stream: http2.ServerHttp2Stream, body: Buffer): void {
  stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
  stream.on("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
  stream.end(grpcFrame(body));
}

async function callError(p: Promise<unknown>): Promise<GrpcCallError> {
  const e = await p.then(
    () => assert.fail("the call succeeded"),
    (err: unknown) => err,
  );
  assert.ok(e instanceof GrpcCallError, `not a GrpcCallError: ${String(e)}`);
  return e;
}

async function until(cond: () => boolean, what: string, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await delay(5);
  }
}

describe("GrpcHttp2Channel (node:http2) against node:http2's server over TLS", function () {
  this.timeout(60_000);

  let dir: string;
  let material: TlsMaterial;
  const servers: TestServer[] = [];
  const channels: GrpcHttp2Channel[] = [];

  before(() => {
    dir = mkdtempSync(join(tmpdir(), "grpc-http2-client-"));
    material = createTlsMaterial(dir);
  });

  after(() => rmSync(dir, { recursive: true, force: true }));

  afterEach(async () => {
    for (const c of channels.splice(0)) c.close();
    for (const t of servers.splice(0)) {
      for (const s of t.sessions) s.destroy();
      for (const s of t.sockets) s.destroy();
      await new Promise<void>((resolve) => t.server.close(() => resolve()));
    }
  });

  /** Calls handler once the whole request body is in (the gRPC message, unframed). */
  async function startServer(handler: Handler, options: http2.SecureServerOptions = {}): Promise<TestServer> {
    const server = http2.createSecureServer({ key: material.serverKey, cert: material.serverCert, ...options });
    const t: TestServer = { server, port: 0, sessions: [], sockets: [], nextSession: () => once(server, "session").then(([s]) => s as http2.ServerHttp2Session) };
    server.on("secureConnection", (s: tls.TLSSocket) => t.sockets.push(s));
    server.on("session", (s: http2.ServerHttp2Session) => {
      t.sessions.push(s);
      s.on("error", () => undefined);
    });
    server.on("stream", (stream, headers) => {
      stream.on("error", () => undefined);
      const chunks: Buffer[] = [];
      stream.on("data", (c: Buffer) => chunks.push(c));
      stream.on("end", () => {
        const frame = Buffer.concat(chunks);
        handler(stream, headers, frame.length >= 5 ? frame.subarray(5, 5 + frame.readUInt32BE(1)) : Buffer.alloc(0));
      });
    });
    servers.push(t);
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    t.port = (server.address() as { port: number }).port;
    return t;
  }

  function channel(port: number, o: Partial<ChannelOptions> = {}): GrpcHttp2Channel {
    const c = new GrpcHttp2Channel({ endpoint: `127.0.0.1:${port}`, ca: material.ca, ...o });
    channels.push(c);
    return c;
  }

  const call = (c: GrpcHttp2Channel, path: string, body = Buffer.from("request"), ms = 10_000, metadata?: Record<string, string>): Promise<Buffer> =>
    c.unary(path, body, { deadline: Date.now() + ms, metadata });

  it("sends a well-formed gRPC call and returns the answer's message", async () => {
    let seen: http2.IncomingHttpHeaders | undefined;
    let got: Buffer | undefined;
    const t = await startServer((stream, headers, body) => {
      seen = headers;
      got = body;
      answer(stream, Buffer.from("the answer"));
    });
    const c = channel(t.port, { userAgent: "test-agent/1" });
    const out = await call(c, "/hsm_signer.v1.Signer/Sign", Buffer.from("the request"), 10_000, { "authorization": "Bearer x", "X-Extra": "y" });
    assert.equal(out.toString(), "the answer");
    assert.equal(got?.toString(), "the request");
    assert.equal(seen?.[":path"], "/hsm_signer.v1.Signer/Sign");
    assert.equal(seen?.[":method"], "POST");
    assert.equal(seen?.[":authority"], `127.0.0.1:${t.port}`);
    assert.equal(seen?.["content-type"], "application/grpc");
    assert.equal(seen?.te, "trailers");
    assert.equal(seen?.["user-agent"], "test-agent/1");
    assert.equal(seen?.authorization, "Bearer x");
    assert.equal(seen?.["x-extra"], "y");
    assert.match(String(seen?.["grpc-timeout"]), /^\d+m$/);
    assert.ok(Number(String(seen?.["grpc-timeout"]).slice(0, -1)) <= 10_000);
  });

  it("a metadata value gRPC cannot carry (a line break, a character outside ASCII) is refused, not sent without it; the value is never shown", async () => {
    let seen = 0;
    const t = await startServer((stream) => {
      seen++;
      stream.respond({ ":status": 200, "content-type": "application/grpc", "grpc-status": "0" }, { endStream: true });
    });
    const c = channel(t.port);
    for (const [value, at] of [
      ["Bearer SECRET1\nSECRET2", 15],
      ["Bearer SECRET-é€", 15],
      ["Bearer SECRET\r", 14],
    ] as const) {
      const e = await callError(call(c, "/x", Buffer.from("x"), 10_000, { authorization: value }));
      assert.equal(e.code, Status.INVALID_ARGUMENT);
      assert.equal(e.permanent, true);
      assert.equal(e.details, `metadata "authorization" cannot be sent: character ${at} of its value is not printable ASCII`);
    }
    assert.equal(seen, 0, "nothing reached the server");
  });

  it("a trailers-only gRPC error is a GrpcCallError with its code, decoded message and retry-after-ms, marked received", async () => {
    const message = 'key "signing/k1" not found: 100% gone, naïve ✓';
    const t = await startServer((stream, headers) => {
      const extra = headers[":path"] === "/limited" ? { "retry-after-ms": "250" } : {};
      stream.respond(
        { ":status": 200, "content-type": "application/grpc", "grpc-status": headers[":path"] === "/limited" ? "8" : "5", "grpc-message": encodeURIComponent(message), ...extra },
        { endStream: true },
      );
    });
    const c = channel(t.port);
    const e = await callError(call(c, "/missing"));
    assert.equal(e.code, Status.NOT_FOUND);
    assert.equal(e.details, message);
    assert.equal(e.retryAfterMs, undefined);
    assert.equal(e.received, true, "the server's own status");
    const l = await callError(call(c, "/limited"));
    assert.equal(l.code, Status.RESOURCE_EXHAUSTED);
    assert.equal(l.retryAfterMs, 250);
  });

  it("an error status in trailers after headers, and a grpc-message that is not percent-encoding, come through", async () => {
    const t = await startServer((stream) => {
      stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
      stream.on("wantTrailers", () => stream.sendTrailers({ "grpc-status": "13", "grpc-message": "disk 100% full" }));
      stream.end();
    });
    const e = await callError(call(channel(t.port), "/x"));
    assert.equal(e.code, Status.INTERNAL);
    assert.equal(e.details, "disk 100% full");
  });

  it("an HTTP error status without a gRPC status is UNAVAILABLE; a 200 without one is INTERNAL", async () => {
    const t = await startServer((stream, headers) => {
      stream.respond({ ":status": headers[":path"] === "/502" ? 502 : 200 });
      stream.end("not grpc");
    });
    const c = channel(t.port);
    const e = await callError(call(c, "/502"));
    assert.equal(e.code, Status.UNAVAILABLE);
    assert.match(e.details, /HTTP status 502/);
    assert.equal(e.received, false, "no gRPC status came: the client's own");
    assert.equal((await callError(call(c, "/200"))).code, Status.INTERNAL);
  });

  it("sends a 3 MB request and receives a 3 MB answer intact, several on one connection and at once", async () => {
    const t = await startServer((stream, _h, body) => answer(stream, Buffer.concat([Buffer.from(sha256(body)), randomBytes(3 * 1024 * 1024)])));
    const c = channel(t.port);
    const bodies = [randomBytes(3 * 1024 * 1024), randomBytes(300 * 1024), randomBytes(1), Buffer.alloc(0)];
    const out = await Promise.all(bodies.map((b) => call(c, "/upload", b, 30_000)));
    for (const [i, o] of out.entries()) {
      assert.equal(o.subarray(0, 64).toString(), sha256(bodies[i]!));
      assert.equal(o.length, 64 + 3 * 1024 * 1024);
    }
    assert.equal(t.sessions.length, 1, "one connection for all calls");
  });

  it("an answer above maxResponseBytes is RESOURCE_EXHAUSTED, not retried, and the stream is cancelled; the channel goes on", async () => {
    const resets: number[] = [];
    const t = await startServer((stream, headers) => {
      const n = Number(String(headers[":path"]).slice(1));
      stream.on("close", () => resets.push(stream.rstCode));
      answer(stream, randomBytes(n));
    });
    const c = channel(t.port, { maxResponseBytes: 64 * 1024 });
    const e = await callError(call(c, `/${200 * 1024}`));
    assert.equal(e.code, Status.RESOURCE_EXHAUSTED);
    assert.equal(e.permanent, true);
    assert.match(e.details, /larger than 65536 bytes/);
    assert.equal((await call(c, `/${64 * 1024}`)).length, 64 * 1024);
    await until(() => resets.length === 2, "the server to see both streams end");
    assert.equal(resets[0], constants.NGHTTP2_CANCEL);
  });

  it("RST_STREAM: REFUSED_STREAM is UNAVAILABLE, CANCEL is CANCELLED, ENHANCE_YOUR_CALM is RESOURCE_EXHAUSTED; the connection goes on", async () => {
    const t = await startServer((stream, headers) => {
      const p = headers[":path"];
      if (p === "/refuse") stream.close(constants.NGHTTP2_REFUSED_STREAM);
      else if (p === "/cancel") stream.close(constants.NGHTTP2_CANCEL);
      else if (p === "/calm") stream.close(constants.NGHTTP2_ENHANCE_YOUR_CALM);
      else answer(stream, Buffer.from("fine"));
    });
    const c = channel(t.port);
    const refused = await callError(call(c, "/refuse"));
    assert.equal(refused.code, Status.UNAVAILABLE);
    assert.match(refused.details, /REFUSED_STREAM/);
    assert.equal((await callError(call(c, "/cancel"))).code, Status.CANCELLED);
    assert.equal((await callError(call(c, "/calm"))).code, Status.RESOURCE_EXHAUSTED);
    assert.equal((await call(c, "/ok")).toString(), "fine");
    assert.equal(t.sessions.length, 1);
  });

  describe("GOAWAY and connection loss", () => {
    async function holdingServer(): Promise<{ t: TestServer; held: http2.ServerHttp2Stream[] }> {
      const held: http2.ServerHttp2Stream[] = [];
      const t = await startServer((stream) => held.push(stream));
      return { t, held };
    }

    it("a graceful GOAWAY with a call in flight: the call completes, the next call goes on a new connection", async () => {
      const { t, held } = await holdingServer();
      const serverSession = t.nextSession();
      const c = channel(t.port);
      const pending = call(c, "/held");
      await until(() => held.length === 1, "the server to see the call");
      (await serverSession).goaway(constants.NGHTTP2_NO_ERROR, 1);
      await delay(50);
      answer(held[0]!, Buffer.from("answer 1"));
      assert.equal((await pending).toString(), "answer 1");
      const next = call(c, "/after");
      await until(() => held.length === 2, "the server to see the second call");
      answer(held[1]!, Buffer.from("answer 2"));
      assert.equal((await next).toString(), "answer 2");
      assert.equal(t.sessions.length, 2, "a new connection after the GOAWAY");
    });

    it("a GOAWAY whose last stream id is below a call's: UNAVAILABLE (never processed), and withRetries succeeds on a new connection", async () => {
      const { t, held } = await holdingServer();
      const serverSession = t.nextSession();
      const c = channel(t.port);
      const first = call(c, "/held/1");
      await until(() => held.length === 1, "the server to see the first call");
      const second = call(c, "/held/3");
      await until(() => held.length === 2, "the server to see the second call");
      (await serverSession).goaway(constants.NGHTTP2_NO_ERROR, 1);
      const e = await callError(second);
      assert.equal(e.code, Status.UNAVAILABLE);
      answer(held[0]!, Buffer.from("one"));
      assert.equal((await first).toString(), "one");
      const retried = withRetries(Date.now() + 10_000, { attempts: 3, baseDelayMs: 10 }, () => call(c, "/retried"));
      await until(() => held.length === 3, "the retried call");
      answer(held[2]!, Buffer.from("three"));
      assert.equal((await retried).toString(), "three");
    });

    it("the server destroying its session or its socket: a call in flight is UNAVAILABLE; the next call reconnects", async () => {
      for (const how of ["session", "socket"] as const) {
        const { t, held } = await holdingServer();
        const serverSession = t.nextSession();
        const c = channel(t.port);
        const pending = call(c, "/held");
        await until(() => held.length === 1, "the server to see the call");
        if (how === "session") (await serverSession).destroy();
        else for (const s of t.sockets) s.destroy();
        const e = await callError(pending);
        assert.equal(e.code, Status.UNAVAILABLE, `${how}: ${e.message}`);
        const next = call(c, "/next");
        await until(() => held.length === 2, "the server to see the next call");
        answer(held[1]!, Buffer.from("again"));
        assert.equal((await next).toString(), "again");
      }
    });
  });

  it("a call past its deadline is DEADLINE_EXCEEDED in time (the client's own, not received) and its stream is cancelled at the server", async () => {
    const closes: number[] = [];
    const t = await startServer((stream) => stream.on("close", () => closes.push(stream.rstCode)));
    const c = channel(t.port);
    const started = Date.now();
    const e = await callError(call(c, "/never", Buffer.from("x"), 300));
    assert.equal(e.code, Status.DEADLINE_EXCEEDED);
    assert.equal(e.received, false);
    assert.ok(Date.now() - started < 5000, `took ${Date.now() - started} ms`);
    await until(() => closes.length === 1, "the server to see the reset");
    assert.equal(closes[0], constants.NGHTTP2_CANCEL);
  });

  it("a server that accepts TCP but never finishes TLS: DEADLINE_EXCEEDED within the deadline", async () => {
    const net = await import("node:net");
    const sockets: import("node:net").Socket[] = [];
    const silent = net.createServer((s) => sockets.push(s));
    silent.listen(0, "127.0.0.1");
    await once(silent, "listening");
    try {
      const c = channel((silent.address() as { port: number }).port);
      const started = Date.now();
      const e = await callError(call(c, "/x", Buffer.from("x"), 300));
      assert.equal(e.code, Status.DEADLINE_EXCEEDED);
      assert.ok(Date.now() - started < 5000);
    } finally {
      for (const s of sockets) s.destroy();
      silent.close();
    }
  });

  it("with the server's maxConcurrentStreams 1, five concurrent calls all succeed", async () => {
    let open = 0;
    let maxOpen = 0;
    const t = await startServer(
      (stream) => {
        open++;
        maxOpen = Math.max(maxOpen, open);
        stream.on("close", () => open--);
        setTimeout(() => answer(stream, Buffer.from(String(stream.id))), 30);
      },
      { settings: { maxConcurrentStreams: 1 } },
    );
    const c = channel(t.port);
    const out = await Promise.allSettled(Array.from({ length: 5 }, () => call(c, "/one-at-a-time")));
    assert.deepEqual(
      out.flatMap((r) => (r.status === "rejected" ? [String(r.reason)] : [])),
      [],
    );
    assert.equal(maxOpen, 1);
  });

  // A TLS endpoint that is not gRPC (an HTTP/1.1 proxy, a web server) must get a clear, final answer.
  for (const alpn of [["http/1.1"], undefined]) {
    it(`a TLS server that does not agree to h2 (ALPN ${alpn ? alpn.join(",") : "none"}) is UNAVAILABLE, permanent, and says so`, async () => {
      const server = tls.createServer({ key: material.serverKey, cert: material.serverCert, ...(alpn ? { ALPNProtocols: alpn } : {}) }, (socket) => socket.on("error", () => undefined));
      server.listen(0, "127.0.0.1");
      await once(server, "listening");
      try {
        const e = await callError(call(channel((server.address() as { port: number }).port), "/x"));
        assert.equal(e.code, Status.UNAVAILABLE);
        assert.equal(e.permanent, true);
        assert.match(e.details, /did not agree to HTTP\/2/);
      } finally {
        server.close();
      }
    });
  }

  it("an mTLS server refusing the call for want of a client certificate: UNAUTHENTICATED, permanent, naming client_cert_file", async () => {
    const t = await startServer((stream) => answer(stream, Buffer.from("x")), { ca: material.ca, requestCert: true, rejectUnauthorized: true });
    const e = await callError(call(channel(t.port), "/x"));
    assert.equal(e.code, Status.UNAUTHENTICATED, e.message);
    assert.equal(e.permanent, true);
    assert.match(e.details, /client_cert_file/);
    // Control: with the client certificate the same server answers.
    assert.equal((await call(channel(t.port, { cert: material.clientCert, key: material.clientKey }), "/x")).toString(), "x");
  });

  it("with ca_file, a server certificate from another CA is refused before the server receives a single byte after the handshake", async () => {
    const other = join(dir, "other");
    execFileSync(
      "openssl",
      [
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        `${other}-key.pem`,
        "-out",
        `${other}.pem`,
        "-days",
        "2",
        "-subj",
        "/CN=localhost",
        "-addext",
        "subjectAltName=IP:127.0.0.1",
      ],
      { stdio: "ignore" },
    );
    let received = 0;
    let connections = 0;
    // The client finishes its side of a TLS 1.3 handshake first: were the check made later, the
    // HTTP/2 preface and the request would follow at once and arrive here.
    const server = tls.createServer({ key: readFileSync(`${other}-key.pem`), cert: readFileSync(`${other}.pem`), ALPNProtocols: ["h2"] }, (socket) => {
      socket.on("data", (d: Buffer) => (received += d.length));
      socket.on("error", () => undefined);
    });
    server.on("connection", () => connections++);
    server.on("tlsClientError", () => undefined);
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    try {
      const e = await callError(call(channel((server.address() as { port: number }).port), "/x", Buffer.from("secret payload"), 10_000, { authorization: "Bearer secret" }));
      assert.equal(e.code, Status.UNAVAILABLE);
      assert.equal(e.permanent, true);
      assert.match(e.details, /not issued by a CA in ca_file/);
      await delay(100);
      assert.equal(connections, 1, "control: the client connected");
      assert.equal(received, 0, "no HTTP/2 preface, no request");
    } finally {
      server.close();
    }
  });
});
