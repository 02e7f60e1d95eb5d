import assert from "node:assert/strict";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { protoPath as healthProtoPath } from "grpc-health-check";
import { getFixture, startTestServer, type TestServer } from "../helpers/fixture.js";
import { startHealthServer } from "../../src/server/health-service.js";
import { callSigner, loadSignerClientClass } from "../helpers/signer-client.js";

type HealthClient = grpc.Client & {
  Check(req: { service: string }, cb: (e: grpc.ServiceError | null, r: { status: string }) => void): void;
  Watch(req: { service: string }): grpc.ClientReadableStream<{ status: string }>;
};

describe("grpc.health.v1 on the Signer listener", function () {
  this.timeout(30_000);
  let server: TestServer;
  let client: HealthClient;
  let ready = true;

  before(async () => {
    const f = await getFixture();
    server = await startTestServer(f, { ready: () => ready });
    const def = protoLoader.loadSync(healthProtoPath, { keepCase: true, enums: String, defaults: true });
    const Health = (((grpc.loadPackageDefinition(def).grpc as grpc.GrpcObject).health as grpc.GrpcObject).v1 as grpc.GrpcObject).Health as grpc.ServiceClientConstructor;
    client = new Health(`127.0.0.1:${server.port}`, grpc.credentials.createSsl(f.tls.ca), { "grpc.ssl_target_name_override": "localhost" }) as unknown as HealthClient;
  });

  after(async () => {
    client.close();
    await server.close(1000);
  });

  const check = (service: string): Promise<string> => new Promise((res, rej) => client.Check({ service }, (e, r) => (e ? rej(e) : res(r.status))));

  it("Check follows readiness for the server and the Signer service; an unknown service is NOT_FOUND", async () => {
    assert.equal(await check(""), "SERVING");
    assert.equal(await check("hsm_signer.v1.Signer"), "SERVING");
    ready = false;
    assert.equal(await check(""), "NOT_SERVING");
    ready = true;
    await assert.rejects(check("nope.Service"), (e: grpc.ServiceError) => e.code === grpc.status.NOT_FOUND);
  });

  it("Watch sends the status, then its changes", async () => {
    const seen: string[] = [];
    const stream = client.Watch({ service: "" });
    await new Promise<void>((resolve, reject) => {
      stream.on("data", (m: { status: string }) => {
        seen.push(m.status);
        if (seen.length === 1) ready = false;
        if (seen.length === 2) resolve();
      });
      stream.on("error", (e: grpc.ServiceError) => (e.code === grpc.status.CANCELLED ? undefined : reject(e)));
    });
    stream.cancel();
    ready = true;
    assert.deepEqual(seen, ["SERVING", "NOT_SERVING"]);
  });
});

describe("grpc.health.v1 alone on a plaintext listener (kubelet gRPC probes)", function () {
  this.timeout(30_000);

  it("answers Check in plaintext, follows readiness, and serves nothing else", async () => {
    let ready = true;
    const health = await startHealthServer("127.0.0.1:0", () => ready);
    const def = protoLoader.loadSync(healthProtoPath, { keepCase: true, enums: String, defaults: true });
    const Health = (((grpc.loadPackageDefinition(def).grpc as grpc.GrpcObject).health as grpc.GrpcObject).v1 as grpc.GrpcObject).Health as grpc.ServiceClientConstructor;
    const client = new Health(`127.0.0.1:${health.port}`, grpc.credentials.createInsecure()) as unknown as HealthClient;
    const signer = new (loadSignerClientClass())(`127.0.0.1:${health.port}`, grpc.credentials.createInsecure());
    try {
      const check = (): Promise<string> => new Promise((res, rej) => client.Check({ service: "" }, (e, r) => (e ? rej(e) : res(r.status))));
      assert.equal(await check(), "SERVING");
      ready = false;
      assert.equal(await check(), "NOT_SERVING");
      const e = await callSigner(signer, "ListKeys", {}).then(
        () => assert.fail("the health listener answered a Signer call"),
        (err: grpc.ServiceError) => err,
      );
      assert.equal(e.code, grpc.status.UNIMPLEMENTED);
    } finally {
      client.close();
      signer.close();
      await health.close(1000);
    }
  });
});
