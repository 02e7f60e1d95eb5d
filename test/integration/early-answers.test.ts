import assert from "node:assert/strict";
import { connect, constants as H2, type ClientHttp2Session, type IncomingHttpHeaders } from "node:http2";
import { mkdtempSync, rmSync } from "node:fs";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { AuditLog } from "../../src/audit/index.js";
import { ERROR_CODE_TRAILER } from "../../src/errors/index.js";
import { auditRecordsIn } from "../helpers/audit-records.js";
import { getFixture, startTestServer, type Fixture, type TestServer } from "../helpers/fixture.js";
import { signerClient } from "../helpers/signer-client.js";

interface Line {
  requestId: string;
  method: string;
  result: string;
  identity: string;
  identityKind?: string;
  decision: string;
}

const CLIENT_ID = "spiffe://hsm-signer.dev/test-client";

/** One unary call with raw bytes on any path, as a gRPC client can make it. */
function rawCall(client: grpc.Client, path: string, body: Buffer): Promise<grpc.ServiceError> {
  return new Promise((resolve, reject) =>
    client.makeUnaryRequest(
      path,
      (b: Buffer) => b,
      (b: Buffer) => b,
      body,
      { deadline: Date.now() + 20_000 },
      (err) => (err ? resolve(err as grpc.ServiceError) : reject(new Error(`${path} answered OK`))),
    ),
  );
}

/** A request no gRPC library would send (node:http2 itself): its response headers and trailers. */
function h2Request(session: ClientHttp2Session, headers: Record<string, string>, body?: Buffer): Promise<IncomingHttpHeaders> {
  return new Promise((resolve, reject) => {
    const req = session.request({ [H2.HTTP2_HEADER_METHOD]: "POST", "content-type": "application/grpc", "te": "trailers", ...headers });
    let head: IncomingHttpHeaders = {};
    req.on("response", (h) => (head = h));
    req.on("trailers", (t) => (head = { ...head, ...t }));
    req.on("error", reject);
    req.on("close", () => resolve(head));
    req.resume();
    req.end(body);
  });
}

/**
 * What grpc-js answers by itself, before any handler (an unknown path, a message over 4 MiB, a
 * bad grpc-timeout, no message), now goes through the audit like every other answer, with the
 * caller named (real SoftHSM fixture, gRPC over TLS with a client certificate).
 */
describe("answers grpc-js gives before any method runs: audited, with a request id and the catalog code", function () {
  this.timeout(60_000);
  let f: Fixture;
  let s: TestServer;
  let client: grpc.Client;
  const lines = (): Line[] => auditRecordsIn<Line>(s.auditDir);
  /** The lines the action adds. */
  const added = async (action: () => Promise<unknown>): Promise<Line[]> => {
    const before = lines().length;
    await action();
    return lines().slice(before);
  };

  before(async () => {
    f = await getFixture();
    s = await startTestServer(f, { mtls: true });
    client = signerClient(f.tls.ca, s.port, { key: f.tls.clientKey, cert: f.tls.clientCert });
  });
  after(async () => {
    client?.close();
    await s?.close(1000);
  });

  it("an unknown method or service: UNIMPLEMENTED with a request id and the catalog code; one line with the path and the caller", async () => {
    for (const path of ["/hsm_signer.v1.Signer/Nope", "/other.v1.Service/Call"]) {
      let e: grpc.ServiceError | undefined;
      const recs = await added(async () => (e = await rawCall(client, path, Buffer.from("x"))));
      assert.equal(e?.code, grpc.status.UNIMPLEMENTED);
      assert.match(e?.details ?? "", new RegExp(`^no method ${path.replaceAll(".", "\\.")} on this listener \\[request ([0-9a-f]+)\\]$`));
      assert.deepEqual(e?.metadata.get(ERROR_CODE_TRAILER), ["UNIMPLEMENTED"]);
      assert.deepEqual(
        recs.map((r) => [r.method, r.result, r.identity, r.identityKind, r.decision]),
        [[path, "UNIMPLEMENTED", CLIENT_ID, "mtls-uri", "none"]],
      );
      assert.equal(recs[0]?.requestId, /\[request ([0-9a-f]+)\]/.exec(e?.details ?? "")?.[1]);
    }
    // A long path is cut in the line (and the log), not repeated whole.
    const long = `/x/${"y".repeat(5000)}`;
    const [rec] = await added(() => rawCall(client, long, Buffer.alloc(0)));
    assert.ok(rec && rec.method.length < 260 && rec.method.endsWith("(4803 more characters)"), rec?.method.slice(0, 300));
  });

  it("a Sign message over 4 MiB: INVALID_ARGUMENT (PAYLOAD_TOO_LARGE) once its line is durable, one line; the service keeps signing", async () => {
    let e: grpc.ServiceError | undefined;
    const recs = await added(async () => (e = await rawCall(client, "/hsm_signer.v1.Signer/Sign", Buffer.alloc(5 * 1024 * 1024, 1))));
    assert.equal(e?.code, grpc.status.INVALID_ARGUMENT);
    assert.match(e?.details ?? "", /^the request message is too large: Received message larger than max \(5242880 vs 4194304\) \[request [0-9a-f]+\]$/);
    assert.deepEqual(e?.metadata.get(ERROR_CODE_TRAILER), ["PAYLOAD_TOO_LARGE"]);
    assert.deepEqual(
      recs.map((r) => [r.method, r.result, r.identity]),
      [["Sign", "PAYLOAD_TOO_LARGE", CLIENT_ID]],
    );
    // The same connection serves the next call, which gets its own line.
    const next = await added(() => rawCall(client, "/hsm_signer.v1.Signer/Sign", Buffer.from([0x08])));
    assert.deepEqual(
      next.map((r) => [r.method, r.result]),
      [["Sign", "INVALID_ARGUMENT"]],
    );
  });

  it("a grpc-timeout that does not parse, and a call with no message: INVALID_ARGUMENT, one line each, the caller named", async () => {
    const session = connect(`https://127.0.0.1:${s.port}`, { ca: f.tls.ca, cert: f.tls.clientCert, key: f.tls.clientKey, servername: "localhost" });
    session.on("error", () => undefined);
    try {
      const cases: [Record<string, string>, Buffer | undefined, RegExp][] = [
        [{ "grpc-timeout": "soon" }, Buffer.from([0, 0, 0, 0, 0]), /Invalid grpc-timeout value/],
        [{}, undefined, /Received no request message/],
      ];
      for (const [headers, body, why] of cases) {
        let t: IncomingHttpHeaders = {};
        const recs = await added(async () => (t = await h2Request(session, { [H2.HTTP2_HEADER_PATH]: "/hsm_signer.v1.Signer/DescribeKey", ...headers }, body)));
        assert.equal(t["grpc-status"], String(grpc.status.INVALID_ARGUMENT), JSON.stringify(t));
        assert.match(decodeURIComponent(String(t["grpc-message"])), why);
        assert.equal(t[ERROR_CODE_TRAILER], "INVALID_ARGUMENT");
        assert.deepEqual(
          recs.map((r) => [r.method, r.result, r.identity]),
          [["DescribeKey", "INVALID_ARGUMENT", CLIENT_ID]],
        );
      }
    } finally {
      session.close();
    }
  });

  it("a request that is not gRPC (another content-type, none): HTTP 415 once its line is durable, with the path and the caller", async () => {
    const session = connect(`https://127.0.0.1:${s.port}`, { ca: f.tls.ca, cert: f.tls.clientCert, key: f.tls.clientKey, servername: "localhost" });
    session.on("error", () => undefined);
    try {
      const cases: [string, Record<string, string>, string][] = [
        ["/hsm_signer.v1.Signer/Sign", { "content-type": "application/json" }, "Sign"],
        ["/hsm_signer.v1.KeyAdmin/ListSlots", { "content-type": "text/plain" }, "/hsm_signer.v1.KeyAdmin/ListSlots"],
      ];
      for (const [path, headers, method] of cases) {
        let t: IncomingHttpHeaders = {};
        const recs = await added(async () => (t = await h2Request(session, { [H2.HTTP2_HEADER_PATH]: path, ...headers }, Buffer.from("{}"))));
        assert.equal(t[H2.HTTP2_HEADER_STATUS], 415, JSON.stringify(t));
        assert.equal(t["grpc-status"], undefined);
        assert.deepEqual(
          recs.map((r) => [r.method, r.result, r.identity, r.identityKind]),
          [[method, "INVALID_ARGUMENT", CLIENT_ID, "mtls-uri"]],
        );
      }
      // No content-type at all (an HTTP/2 GET): the same, and the connection still serves gRPC.
      const noType = await added(async () => {
        const req = session.request({ [H2.HTTP2_HEADER_PATH]: "/" });
        const status = await new Promise<unknown>((resolve, reject) => {
          req.on("response", (h) => resolve(h[H2.HTTP2_HEADER_STATUS]));
          req.on("error", reject);
        });
        req.close();
        assert.equal(status, 415);
      });
      assert.deepEqual(
        noType.map((r) => [r.method, r.result, r.identity]),
        [["/", "INVALID_ARGUMENT", CLIENT_ID]],
      );
      assert.equal((await rawCall(client, "/hsm_signer.v1.Signer/Nope", Buffer.from("x"))).code, grpc.status.UNIMPLEMENTED);
    } finally {
      session.close();
    }
  });

  it("when the audit cannot be written, the early answer is UNAVAILABLE (AUDIT_UNAVAILABLE), as for any call", async () => {
    const dir = mkdtempSync(join(f.token.dir, "early-audit-"));
    const audit = await AuditLog.open({ dir: join(dir, "audit"), maxFileBytes: 1 }); // a new file for each line
    const broken = await startTestServer(f, { mtls: true, audit });
    const c = signerClient(f.tls.ca, broken.port, { key: f.tls.clientKey, cert: f.tls.clientCert });
    try {
      // The first line goes to the open file; each later one needs a new file in the removed directory.
      assert.equal((await rawCall(c, "/hsm_signer.v1.Signer/Nope", Buffer.from("x"))).code, grpc.status.UNIMPLEMENTED);
      rmSync(join(dir, "audit"), { recursive: true });
      for (const [path, body] of [
        ["/hsm_signer.v1.Signer/Nope", Buffer.from("x")],
        ["/hsm_signer.v1.Signer/Sign", Buffer.alloc(5 * 1024 * 1024)],
      ] as const) {
        const e = await rawCall(c, path, body);
        assert.equal(e.code, grpc.status.UNAVAILABLE, `${path}: ${e.details}`);
        assert.deepEqual(e.metadata.get(ERROR_CODE_TRAILER), ["AUDIT_UNAVAILABLE"]);
      }
      // A request that is not gRPC: 503 rather than 415, since its line could not be written.
      const session = connect(`https://127.0.0.1:${broken.port}`, { ca: f.tls.ca, cert: f.tls.clientCert, key: f.tls.clientKey, servername: "localhost" });
      session.on("error", () => undefined);
      try {
        const t = await h2Request(session, { [H2.HTTP2_HEADER_PATH]: "/hsm_signer.v1.Signer/Sign", "content-type": "application/json" }, Buffer.from("{}"));
        assert.equal(t[H2.HTTP2_HEADER_STATUS], 503, JSON.stringify(t));
      } finally {
        session.close();
      }
    } finally {
      c.close();
      await broken.close(1000);
      await audit.close().catch(() => undefined);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
