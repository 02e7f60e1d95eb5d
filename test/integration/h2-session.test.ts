import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { once } from "node:events";
import { mkdtempSync, rmSync } from "node:fs";
import http2 from "node:http2";
import { tmpdir } from "node:os";
import { join } from "node:path";
import tls from "node:tls";
import { setTimeout as delay } from "node:timers/promises";
import { GrpcCallError, GrpcHttp2Channel } from "../../src/client/grpc-http2-client.js";
import { H2Session, H2StreamError, type H2FailureKind, type H2Response, type H2SessionOptions } from "../../src/client/h2-session.js";
import type { HeaderList } from "../../src/client/hpack.js";
import { createTlsMaterial, type TlsMaterial } from "../helpers/tls.js";

/**
 * H2Session (the plugin's own HTTP/2 client) against node:http2's secure server, i.e. nghttp2 with
 * Huffman coding, its HPACK dynamic table, flow control, padding and CONTINUATION, over real TLS.
 */

type Handler = (stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders) => void;

interface TestServer {
  server: http2.Http2SecureServer;
  port: number;
  sessions: http2.ServerHttp2Session[];
  sockets: tls.TLSSocket[];
  /** Resolves with the next server-side session. */
  nextSession(): Promise<http2.ServerHttp2Session>;
}

const { constants } = http2;

/** A small seeded PRNG, so a failing random case can be reproduced. */
function prng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s / 2 ** 32;
  };
}

/** Printable ASCII (0x20-0x7e); no space first or last, which a receiver may reject (RFC 9113 §8.2.1). */
function printable(rand: () => number, length: number): string {
  let out = "";
  for (let i = 0; i < length; i++) {
    const edge = i === 0 || i === length - 1;
    out += String.fromCharCode(edge ? 0x21 + Math.floor(rand() * 94) : 0x20 + Math.floor(rand() * 95));
  }
  return out;
}

const sha256 = (b: Buffer): string => createHash("sha256").update(b).digest("hex");

const requestHeaders = (path: string, extra: HeaderList = []): HeaderList => [
  [":method", "POST"],
  [":scheme", "https"],
  [":path", path],
  [":authority", "localhost"],
  ...extra,
];

const pick = (list: HeaderList | undefined, name: string): string | undefined => list?.find(([n]) => n === name)?.[1];

/** Reads a request body on the server side. */
async function readBody(stream: http2.ServerHttp2Stream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of stream) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

async function rejectsWith(p: Promise<H2Response>, kind: H2FailureKind, h2Code?: number): Promise<H2StreamError> {
  const e = await p.then(
    () => assert.fail(`expected a "${kind}" failure, the request succeeded`),
    (err: unknown) => err,
  );
  assert.ok(e instanceof H2StreamError, `not an H2StreamError: ${String(e)}`);
  assert.equal(e.kind, kind, e.message);
  if (h2Code !== undefined) assert.equal(e.h2Code, h2Code, e.message);
  return e;
}

async function until(cond: () => boolean, what: string, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) assert.fail(`timed out waiting for ${what}`);
    await delay(5);
  }
}

describe("H2Session against node:http2 (nghttp2) over TLS", function () {
  this.timeout(30_000);

  let dir: string;
  let material: TlsMaterial;
  const servers: TestServer[] = [];
  const clientSockets: tls.TLSSocket[] = [];

  before(() => {
    dir = mkdtempSync(join(tmpdir(), "h2-session-"));
    material = createTlsMaterial(dir);
  });

  after(() => rmSync(dir, { recursive: true, force: true }));

  afterEach(async () => {
    for (const s of clientSockets.splice(0)) s.destroy();
    for (const t of servers.splice(0)) {
      for (const s of t.sessions) s.destroy();
      for (const s of t.sockets) s.destroy();
      await new Promise<void>((resolve) => t.server.close(() => resolve()));
    }
  });

  async function startServer(handler: Handler, options: http2.SecureServerOptions = {}): Promise<TestServer> {
    const server = http2.createSecureServer({ key: material.serverKey, cert: material.serverCert, ...options });
    const t: TestServer = {
      server,
      port: 0,
      sessions: [],
      sockets: [],
      nextSession: () => once(server, "session").then(([s]) => s as http2.ServerHttp2Session),
    };
    server.on("secureConnection", (s: tls.TLSSocket) => t.sockets.push(s));
    server.on("session", (s: http2.ServerHttp2Session) => {
      t.sessions.push(s);
      s.on("error", () => undefined);
    });
    server.on("stream", (stream, headers) => {
      stream.on("error", () => undefined);
      handler(stream, headers);
    });
    servers.push(t);
    server.listen(0, "127.0.0.1");
    await once(server, "listening");
    t.port = (server.address() as { port: number }).port;
    return t;
  }

  async function connect(port: number, o?: H2SessionOptions): Promise<H2Session> {
    const socket = tls.connect({ host: "127.0.0.1", port, servername: "localhost", ca: material.ca, ALPNProtocols: ["h2"] });
    clientSockets.push(socket);
    await once(socket, "secureConnect");
    assert.equal(socket.alpnProtocol, "h2");
    return new H2Session(socket, o);
  }

  /** Answers /size/N with N random bytes and their SHA-256 in a header. */
  const sizedBody: Handler = (stream, headers) => {
    const n = Number(String(headers[":path"]).split("/")[2]);
    const body = randomBytes(n);
    stream.respond({ ":status": 200, "x-sha256": sha256(body) });
    stream.end(body);
  };

  it("decodes 200+ random header and trailer values over several responses on one session (Huffman, dynamic table, eviction)", async () => {
    const rand = prng(7541);
    const cases: { headers: HeaderList; trailers: HeaderList; request: HeaderList }[] = [];
    const distinct = new Set<string>();
    for (let r = 0; r < 10; r++) {
      const gen = (prefix: string, n: number): HeaderList =>
        Array.from({ length: n }, (_, i) => {
          const roll = rand();
          // Mostly short values (indexed by nghttp2), some medium (evict others), a few long (not indexed).
          const length = roll < 0.7 ? Math.floor(rand() * 40) : roll < 0.93 ? 100 + Math.floor(rand() * 700) : 2000 + Math.floor(rand() * 3000);
          // A few names repeat across responses with new values: indexed names with new values.
          const name = i % 5 === 0 ? `${prefix}-shared-${i}` : `${prefix}-${r}-${i}`;
          const value = printable(rand, length);
          distinct.add(value);
          return [name, value];
        });
      cases.push({ headers: gen("x-h", 24), trailers: gen("x-t", 8), request: gen("x-q", 6) });
    }
    assert.ok(distinct.size >= 200, `only ${distinct.size} distinct values`);

    const received: http2.IncomingHttpHeaders[] = [];
    const t = await startServer((stream, headers) => {
      received.push(headers);
      const c = cases[Number(String(headers[":path"]).slice(1))]!;
      stream.respond({ ":status": 200, ...Object.fromEntries(c.headers) }, { waitForTrailers: true });
      stream.on("wantTrailers", () => stream.sendTrailers(Object.fromEntries(c.trailers)));
      stream.end(Buffer.from("body"));
    });
    const session = await connect(t.port);
    // Twice over the cases: the second round finds many values still in nghttp2's table.
    for (let round = 0; round < 2; round++) {
      for (const [i, c] of cases.entries()) {
        const r = await session.request(requestHeaders(`/${i}`, c.request), Buffer.alloc(0)).response;
        assert.equal(r.headers[0]?.[0], ":status");
        assert.equal(pick(r.headers, ":status"), "200");
        assert.deepEqual(
          r.headers.filter(([n]) => n.startsWith("x-")),
          c.headers,
          `response ${i}, round ${round}`,
        );
        assert.deepEqual(r.trailers, c.trailers, `trailers ${i}, round ${round}`);
        assert.equal(r.data.toString(), "body");
        const seen = received.at(-1)!;
        for (const [n, v] of c.request) assert.equal(seen[n], v, `request header ${n}`);
      }
    }
  });

  it("receives bodies of 1 byte, 70 KB and 3 MB, and 6 x 3 MB on one session (above the 16 MiB connection window)", async () => {
    const t = await startServer(sizedBody);
    const session = await connect(t.port);
    for (const n of [1, 70 * 1024, 3 * 1024 * 1024, 0]) {
      const r = await session.request(requestHeaders(`/size/${n}`), Buffer.alloc(0)).response;
      assert.equal(r.data.length, n);
      assert.equal(sha256(r.data), pick(r.headers, "x-sha256"));
    }
    for (let i = 0; i < 6; i++) {
      const r = await session.request(requestHeaders(`/size/${3 * 1024 * 1024}`), Buffer.alloc(0)).response;
      assert.equal(r.data.length, 3 * 1024 * 1024);
      assert.equal(sha256(r.data), pick(r.headers, "x-sha256"));
    }
  });

  it("sends request bodies of 300 KB and 3 MB intact (past the server's 64 KB windows, waiting for its WINDOW_UPDATEs)", async () => {
    const t = await startServer((stream) => {
      void readBody(stream).then((body) => {
        stream.respond({ ":status": 200, "x-length": String(body.length), "x-sha256": sha256(body) });
        stream.end();
      });
    });
    const session = await connect(t.port);
    const bodies = [randomBytes(300 * 1024), randomBytes(3 * 1024 * 1024), randomBytes(1)];
    // Two at once as well: they share the connection window.
    const results = await Promise.all(bodies.map((b) => session.request(requestHeaders("/upload"), b).response));
    for (const [i, r] of results.entries()) {
      assert.equal(pick(r.headers, "x-length"), String(bodies[i]!.length));
      assert.equal(pick(r.headers, "x-sha256"), sha256(bodies[i]!));
    }
  });

  it("handles padded HEADERS and DATA frames (paddingStrategy: PADDING_STRATEGY_MAX)", async () => {
    const handler: Handler = (stream) => {
      stream.respond({ ":status": 200, "x-a": "padded", "x-b": "y".repeat(300) }, { waitForTrailers: true });
      stream.on("wantTrailers", () => stream.sendTrailers({ "x-trailer": "after padding" }));
      stream.end(Buffer.alloc(70 * 1024, 0x61));
    };
    /** Bytes read for three answers, which must arrive intact. */
    const run = async (options: http2.SecureServerOptions): Promise<number> => {
      const t = await startServer(handler, options);
      const session = await connect(t.port);
      const socket = clientSockets.at(-1)!;
      const before = socket.bytesRead;
      for (let i = 0; i < 3; i++) {
        const r = await session.request(requestHeaders("/padded"), Buffer.from("hi")).response;
        assert.equal(pick(r.headers, "x-a"), "padded");
        assert.equal(pick(r.headers, "x-b"), "y".repeat(300));
        assert.deepEqual(r.data, Buffer.alloc(70 * 1024, 0x61));
        assert.deepEqual(r.trailers, [["x-trailer", "after padding"]]);
      }
      return socket.bytesRead - before;
    };
    const plain = await run({ paddingStrategy: constants.PADDING_STRATEGY_NONE });
    const padded = await run({ paddingStrategy: constants.PADDING_STRATEGY_MAX });
    // The padding really was there (several hundred bytes an answer).
    assert.ok(padded > plain + 3 * 200, `padded ${padded} bytes, plain ${plain}`);
  });

  it("decodes a response header block above 16 KB (CONTINUATION) and sends one as well", async () => {
    const rand = prng(16384);
    // Random printable text stays above 16 KB after Huffman coding (about 6.5 bits a character).
    const big = printable(rand, 30_000);
    const bigTrailer = printable(rand, 25_000);
    let requestBig: string | undefined;
    const t = await startServer(
      (stream, headers) => {
        requestBig = headers["x-request-big"] as string | undefined;
        stream.respond({ ":status": 200, "x-big": big, "x-after": "end" }, { waitForTrailers: true });
        stream.on("wantTrailers", () => stream.sendTrailers({ "x-big-trailer": bigTrailer }));
        stream.end("ok");
      },
      { maxHeaderListPairs: 2000, settings: { maxHeaderListSize: 256 * 1024 } },
    );
    const session = await connect(t.port);
    const sent = "q".repeat(40_000);
    const r = await session.request(requestHeaders("/big", [["x-request-big", sent]]), Buffer.alloc(0)).response;
    assert.equal(pick(r.headers, "x-big"), big);
    assert.equal(pick(r.headers, "x-after"), "end");
    assert.deepEqual(r.trailers, [["x-big-trailer", bigTrailer]]);
    assert.equal(r.data.toString(), "ok");
    assert.equal(requestBig, sent);
    // The session is still in step afterwards.
    const again = await session.request(requestHeaders("/big"), Buffer.alloc(0)).response;
    assert.equal(pick(again.headers, "x-big"), big);
  });

  it("with the server's maxConcurrentStreams 1, five concurrent requests all succeed", async () => {
    let open = 0;
    let maxOpen = 0;
    const t = await startServer(
      (stream) => {
        open++;
        maxOpen = Math.max(maxOpen, open);
        stream.on("close", () => open--);
        setTimeout(() => {
          stream.respond({ ":status": 200 });
          stream.end(String(stream.id));
        }, 30);
      },
      { settings: { maxConcurrentStreams: 1 } },
    );
    const session = await connect(t.port);
    const results = await Promise.allSettled(Array.from({ length: 5 }, () => session.request(requestHeaders("/one-at-a-time"), Buffer.alloc(0)).response));
    const failures = results.flatMap((r) => (r.status === "rejected" ? [String(r.reason)] : []));
    assert.deepEqual(failures, []);
    assert.equal(maxOpen, 1);
  });

  it("with the server's maxConcurrentStreams 1 known (after a first request), five concurrent requests all succeed", async () => {
    const t = await startServer(
      (stream) => {
        setTimeout(() => {
          stream.respond({ ":status": 200 });
          stream.end(String(stream.id));
        }, 20);
      },
      { settings: { maxConcurrentStreams: 1 } },
    );
    const session = await connect(t.port);
    await session.request(requestHeaders("/first"), Buffer.alloc(0)).response;
    const results = await Promise.all(Array.from({ length: 5 }, () => session.request(requestHeaders("/queued"), Buffer.alloc(0)).response));
    assert.deepEqual(
      results.map((r) => pick(r.headers, ":status")),
      ["200", "200", "200", "200", "200"],
    );
  });

  it("RST_STREAM REFUSED_STREAM is kind refused, CANCEL is kind reset with h2Code 8; the session goes on", async () => {
    const t = await startServer((stream, headers) => {
      if (headers[":path"] === "/refuse") stream.close(constants.NGHTTP2_REFUSED_STREAM);
      else if (headers[":path"] === "/cancel") stream.close(constants.NGHTTP2_CANCEL);
      else {
        stream.respond({ ":status": 200 });
        stream.end("fine");
      }
    });
    const session = await connect(t.port);
    await rejectsWith(session.request(requestHeaders("/refuse"), Buffer.alloc(0)).response, "refused", constants.NGHTTP2_REFUSED_STREAM);
    await rejectsWith(session.request(requestHeaders("/cancel"), Buffer.from("body")).response, "reset", 8);
    const r = await session.request(requestHeaders("/ok"), Buffer.alloc(0)).response;
    assert.equal(r.data.toString(), "fine");
    assert.equal(session.usable, true);
  });

  describe("GOAWAY and connection loss", () => {
    /** A server that holds every stream until told to answer it. */
    async function holdingServer(): Promise<{ t: TestServer; held: http2.ServerHttp2Stream[]; answer(s: http2.ServerHttp2Stream): void }> {
      const held: http2.ServerHttp2Stream[] = [];
      const t = await startServer((stream) => held.push(stream));
      const answer = (s: http2.ServerHttp2Stream): void => {
        s.respond({ ":status": 200 });
        s.end(`answer ${s.id}`);
      };
      return { t, held, answer };
    }

    it("session.goaway() with a pending stream: the stream (at or below last-stream-id) still completes; a later request is refused", async () => {
      const { t, held, answer } = await holdingServer();
      const serverSession = t.nextSession();
      const session = await connect(t.port);
      const pending = session.request(requestHeaders("/held"), Buffer.alloc(0));
      await until(() => held.length === 1, "the server to see the stream");
      (await serverSession).goaway();
      await until(() => !session.usable, "the client to see the GOAWAY");
      await rejectsWith(session.request(requestHeaders("/later"), Buffer.alloc(0)).response, "refused", constants.NGHTTP2_NO_ERROR);
      answer(held[0]!);
      const r = await pending.response;
      assert.equal(r.data.toString(), "answer 1");
    });

    it("GOAWAY with a last-stream-id below a pending stream refuses that stream with the GOAWAY's code", async () => {
      const { t, held } = await holdingServer();
      const serverSession = t.nextSession();
      const session = await connect(t.port);
      const first = session.request(requestHeaders("/held/1"), Buffer.alloc(0));
      const second = session.request(requestHeaders("/held/3"), Buffer.alloc(0));
      await until(() => held.length === 2, "the server to see both streams");
      (await serverSession).goaway(constants.NGHTTP2_ENHANCE_YOUR_CALM, 1);
      await rejectsWith(second.response, "refused", constants.NGHTTP2_ENHANCE_YOUR_CALM);
      await rejectsWith(session.request(requestHeaders("/later"), Buffer.alloc(0)).response, "refused");
      // Stream 1 was below the line: it stays open until the connection goes.
      for (const s of t.sockets) s.destroy();
      await rejectsWith(first.response, "connection");
    });

    it("server.close() and a graceful session.close() with a pending stream: it completes, a later request is refused", async () => {
      // node 20's server.close() only stops listening; a graceful shutdown also closes the sessions.
      const { t, held, answer } = await holdingServer();
      const serverSession = t.nextSession();
      const session = await connect(t.port);
      const pending = session.request(requestHeaders("/held"), Buffer.alloc(0));
      await until(() => held.length === 1, "the server to see the stream");
      const closed = new Promise<void>((resolve) => t.server.close(() => resolve()));
      (await serverSession).close();
      await until(() => !session.usable, "the client to see the GOAWAY");
      await rejectsWith(session.request(requestHeaders("/later"), Buffer.alloc(0)).response, "refused");
      answer(held[0]!);
      assert.equal((await pending.response).data.toString(), "answer 1");
      // The connection then ends from both sides and the server closes.
      await closed;
      servers.splice(servers.indexOf(t), 1);
    });

    it("server session.destroy() with a pending stream: it fails as connection; a later request is refused", async () => {
      const { t, held } = await holdingServer();
      const serverSession = t.nextSession();
      const session = await connect(t.port);
      const pending = session.request(requestHeaders("/held"), Buffer.alloc(0));
      await until(() => held.length === 1, "the server to see the stream");
      (await serverSession).destroy();
      await rejectsWith(pending.response, "connection");
      assert.equal(session.usable, false);
      // node's destroy() sends GOAWAY (NO_ERROR) before it closes: the session ended as "refused".
      await rejectsWith(session.request(requestHeaders("/later"), Buffer.alloc(0)).response, "refused", constants.NGHTTP2_NO_ERROR);
    });

    it("the server destroying the TCP/TLS socket: a pending request fails as connection", async () => {
      const { t, held } = await holdingServer();
      const session = await connect(t.port);
      const pending = session.request(requestHeaders("/held"), Buffer.alloc(0));
      await until(() => held.length === 1, "the server to see the stream");
      for (const s of t.sockets) s.destroy();
      await rejectsWith(pending.response, "connection");
      assert.equal(session.usable, false);
      await rejectsWith(session.request(requestHeaders("/later"), Buffer.alloc(0)).response, "connection");
    });
  });

  it("answers the server's PING", async () => {
    const t = await startServer(sizedBody);
    const serverSession = t.nextSession();
    const session = await connect(t.port);
    await session.request(requestHeaders("/size/10"), Buffer.alloc(0)).response;
    const s = await serverSession;
    const payload = Buffer.from("12345678");
    const echoed = await new Promise<Buffer>((resolve, reject) => {
      const ok = s.ping(payload, (err, _duration, p) => (err ? reject(err) : resolve(p)));
      assert.equal(ok, true);
    });
    assert.deepEqual(echoed, payload);
  });

  it("a response above maxResponseBytes fails as too-large; the session goes on", async () => {
    const t = await startServer(sizedBody);
    const session = await connect(t.port, { maxResponseBytes: 64 * 1024 });
    await rejectsWith(session.request(requestHeaders(`/size/${200 * 1024}`), Buffer.alloc(0)).response, "too-large");
    const exact = await session.request(requestHeaders(`/size/${64 * 1024}`), Buffer.alloc(0)).response;
    assert.equal(exact.data.length, 64 * 1024);
    assert.equal(sha256(exact.data), pick(exact.headers, "x-sha256"));
  });

  it("cancel() of a pending request rejects it with the given error and resets the stream; the next request works", async () => {
    const closeCodes: number[] = [];
    const t = await startServer((stream, headers) => {
      if (headers[":path"] === "/never") {
        // Headers now (new values for the HPACK table), the rest never.
        stream.respond({ ":status": 200, "x-partial": "only headers" });
        stream.on("close", () => closeCodes.push(stream.rstCode));
        return;
      }
      stream.respond({ ":status": 200, "x-partial": "a whole answer" });
      stream.end("done");
    });
    const session = await connect(t.port);
    const req = session.request(requestHeaders("/never"), Buffer.alloc(0));
    await delay(100);
    const reason = new Error("the caller gave up");
    req.cancel(reason);
    await assert.rejects(req.response, (e) => e === reason);
    const r = await session.request(requestHeaders("/next"), Buffer.alloc(0)).response;
    assert.equal(r.data.toString(), "done");
    assert.equal(pick(r.headers, "x-partial"), "a whole answer");
    await until(() => closeCodes.length === 1, "the server to see the reset");
    assert.deepEqual(closeCodes, [constants.NGHTTP2_CANCEL]);
  });

  it("cancel() of a request still waiting for a stream slot rejects it; the others complete", async () => {
    const t = await startServer(
      (stream) => {
        setTimeout(() => {
          stream.respond({ ":status": 200 });
          stream.end("x");
        }, 50);
      },
      { settings: { maxConcurrentStreams: 1 } },
    );
    const session = await connect(t.port);
    await session.request(requestHeaders("/settings"), Buffer.alloc(0)).response;
    const a = session.request(requestHeaders("/a"), Buffer.alloc(0));
    const b = session.request(requestHeaders("/b"), Buffer.alloc(0));
    const c = session.request(requestHeaders("/c"), Buffer.alloc(0));
    const reason = new Error("not needed");
    b.cancel(reason);
    await assert.rejects(b.response, (e) => e === reason);
    assert.equal((await a.response).data.toString(), "x");
    assert.equal((await c.response).data.toString(), "x");
  });

  it("GrpcHttp2Channel: a trailers-only gRPC error is a GrpcCallError with its code and decoded message", async () => {
    const message = 'key "signing/k1" not found: 100% gone, naïve ✓';
    let seen: http2.IncomingHttpHeaders | undefined;
    const t = await startServer((stream, headers) => {
      seen = headers;
      void readBody(stream).then(() => {
        stream.respond({ ":status": 200, "content-type": "application/grpc", "grpc-status": "5", "grpc-message": encodeURIComponent(message) }, { endStream: true });
      });
    });
    const channel = new GrpcHttp2Channel({ endpoint: `127.0.0.1:${t.port}`, ca: material.ca });
    try {
      const e = await channel.unary("/hsm_signer.v1.Signer/Sign", Buffer.from("request"), { deadline: Date.now() + 10_000, metadata: { authorization: "Bearer x" } }).then(
        () => assert.fail("the call succeeded"),
        (err: unknown) => err,
      );
      assert.ok(e instanceof GrpcCallError, String(e));
      assert.equal(e.code, 5);
      assert.equal(e.details, message);
      assert.equal(seen?.[":path"], "/hsm_signer.v1.Signer/Sign");
      assert.equal(seen?.["content-type"], "application/grpc");
      assert.equal(seen?.authorization, "Bearer x");
    } finally {
      channel.close();
    }
  });

  // A TLS endpoint that is not gRPC (an HTTP/1.1 proxy, a web server) must get a clear, final
  // answer, not a hang or a retry loop.
  for (const alpn of [["http/1.1"], undefined]) {
    it(`GrpcHttp2Channel: a TLS server that does not agree to h2 (ALPN ${alpn ? alpn.join(",") : "none"}) is UNAVAILABLE, permanent, and says so`, async () => {
      const server = tls.createServer({ key: material.serverKey, cert: material.serverCert, ...(alpn ? { ALPNProtocols: alpn } : {}) }, (socket) => socket.on("error", () => undefined));
      server.listen(0, "127.0.0.1");
      await once(server, "listening");
      const port = (server.address() as { port: number }).port;
      const channel = new GrpcHttp2Channel({ endpoint: `127.0.0.1:${port}`, ca: material.ca });
      try {
        const e = await channel.unary("/hsm_signer.v1.Signer/Sign", Buffer.from("request"), { deadline: Date.now() + 10_000 }).then(
          () => assert.fail("the call succeeded"),
          (err: unknown) => err,
        );
        assert.ok(e instanceof GrpcCallError, String(e));
        assert.equal(e.code, 14);
        assert.equal(e.permanent, true);
        assert.match(e.details, /did not agree to HTTP\/2/);
      } finally {
        channel.close();
        server.close();
      }
    });
  }
});
