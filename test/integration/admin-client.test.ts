import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { runAdmin } from "../../src/admin/admin-cli.js";
import { KeyAdminClient } from "../../src/client/index.js";
import { PROJECT_ROOT } from "../helpers/softhsm.js";
import { createTlsMaterial, type TlsMaterial } from "../helpers/tls.js";

/**
 * The real KeyAdmin client (client/key-admin-client.ts: the shared node:http2 channel, mTLS, the
 * generated codecs) against a stand-in KeyAdmin server (grpc-js, the contract proto): the wire,
 * TLS and error paths of the command line, without the real server.
 */
describe("admin command line: KeyAdmin client over mTLS against a stand-in server", () => {
  let dir: string;
  let tls: TlsMaterial;
  let server: grpc.Server;
  let port: number;
  const seen: { method: string; request: unknown; peerCn: string | undefined }[] = [];

  const peerCn = (call: grpc.ServerUnaryCall<unknown, unknown>): string | undefined => {
    const cert = call.getAuthContext().sslPeerCertificate;
    return cert?.subject.CN as string | undefined;
  };

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "hsm-signer-admin-client-"));
    tls = createTlsMaterial(dir, "custodian-1");
    const def = protoLoader.loadSync(resolve(PROJECT_ROOT, "proto/hsm_signer/v1/key_admin.proto"), { keepCase: false, longs: Number, enums: String, defaults: true, oneofs: true });
    const v1 = (grpc.loadPackageDefinition(def).hsm_signer as grpc.GrpcObject).v1 as grpc.GrpcObject;
    server = new grpc.Server();
    const unary =
      (method: string, answer: (req: Record<string, unknown>) => unknown): grpc.handleUnaryCall<Record<string, unknown>, unknown> =>
      (call, cb) => {
        seen.push({ method, request: call.request, peerCn: peerCn(call) });
        try {
          cb(null, answer(call.request));
        } catch (e) {
          cb(e as grpc.ServiceError);
        }
      };
    server.addService((v1.KeyAdmin as grpc.ServiceClientConstructor).service, {
      ListSlots: unary("ListSlots", () => ({
        slots: [
          {
            slotId: 7,
            description: "slot",
            manufacturer: "m",
            tokenPresent: true,
            token: {
              label: "signing",
              serialNumber: "s1",
              flags: ["RNG"],
              mechanisms: ["ECDSA"],
              freePublicMemory: -1,
              totalPublicMemory: -1,
              freePrivateMemory: 4096,
              totalPrivateMemory: 8192,
              managed: true,
            },
          },
        ],
      })),
      ImportCertificateChain: unary("ImportCertificateChain", () => {
        throw { code: grpc.status.INVALID_ARGUMENT, details: "certificate chain rejected:\ncertificate 1 (CN=leaf): keyUsage is not critical\ncertificate 2 (CN=ca): SHA-1 signature" };
      }),
      GetInventory: ((call: grpc.ServerUnaryCall<unknown, unknown>) => {
        // Never answers: the client's deadline must end the call.
        seen.push({ method: "GetInventory", request: call.request, peerCn: peerCn(call) });
      }) as grpc.handleUnaryCall<unknown, unknown>,
      RotateKey: ((call: grpc.ServerUnaryCall<unknown, unknown>) => {
        // Never answers, as a rotation that outlives the command's --timeout (it still completes on the service).
        seen.push({ method: "RotateKey", request: call.request, peerCn: peerCn(call) });
      }) as grpc.handleUnaryCall<unknown, unknown>,
      GetCertificateChain: unary("GetCertificateChain", (req) => ({ keyId: req.keyId, keyVersion: 3, certificateChain: [Buffer.from("leaf"), Buffer.from("root")], leafSubject: "CN=a,O=b,ST=c,C=d" })),
    });
    port = await new Promise<number>((ok, fail) =>
      server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createSsl(tls.ca, [{ private_key: tls.serverKey, cert_chain: tls.serverCert }], true), (e, p) => (e ? fail(e) : ok(p))),
    );
  });

  after(async () => {
    await new Promise<void>((ok) => server.tryShutdown(() => ok()));
    rmSync(dir, { recursive: true, force: true });
  });

  async function run(argv: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number; out: string; err: string }> {
    let out = "";
    let err = "";
    const code = await runAdmin(argv, {
      env: { HSM_SIGNER_ADMIN_ENDPOINT: `127.0.0.1:${port}`, HSM_SIGNER_ADMIN_CA: tls.caFile, HSM_SIGNER_ADMIN_CERT: tls.clientCertFile, HSM_SIGNER_ADMIN_KEY: tls.clientKeyFile, ...env },
      out: (t) => (out += `${t}\n`),
      err: (t) => (err += `${t}\n`),
      connect: (o) => new KeyAdminClient(o),
    });
    return { code, out, err };
  }

  it("calls KeyAdmin with the client certificate and renders the answer", async () => {
    const r = await run(["slots"]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^7\s+signing\s+s1\s+m?.*unknown\s+4\.0 KiB of 8\.0 KiB\s+yes$/m);
    assert.equal(seen.at(-1)?.peerCn, "custodian-1");
    const json = await run(["certs", "chain", "--key-id", "release", "--version", "3", "--json"]);
    assert.equal(json.code, 0, json.err);
    const parsed = JSON.parse(json.out) as { certificateChain: string[]; keyVersion: number };
    assert.equal(parsed.keyVersion, 3);
    assert.match(parsed.certificateChain[0] ?? "", /^-----BEGIN CERTIFICATE-----\nbGVhZg==\n/);
    assert.deepEqual(seen.at(-1)?.request, { keyId: "release", keyVersion: 3 });
  });

  it("prints the server's message as-is and exits 1", async () => {
    const r = await run(["certs", "import", "--key-id", "release", tls.caFile]);
    assert.equal(r.code, 1);
    assert.equal(r.err, "hsm-signer: certificate chain rejected:\ncertificate 1 (CN=leaf): keyUsage is not critical\ncertificate 2 (CN=ca): SHA-1 signature\n");
  });

  it("ends a call at --timeout and says so", async () => {
    const started = Date.now();
    const r = await run(["keys", "list", "--timeout", "0.5"]);
    assert.equal(r.code, 1);
    assert.match(r.err, new RegExp(`^hsm-signer: KeyAdmin at 127\\.0\\.0\\.1:${port} did not answer within 0\\.5s`));
    assert.ok(Date.now() - started < 5000);
  });

  it("a change that timed out may still be made by the service: the message says to look before running it again", async () => {
    const r = await run(["keys", "rotate", "--key-id", "release", "--timeout", "0.5"]);
    assert.equal(r.code, 1);
    assert.match(r.err, new RegExp(`^hsm-signer: KeyAdmin at 127\\.0\\.0\\.1:${port} did not answer within 0\\.5s`));
    assert.match(r.err, /the service may still make the change: look with hsm-signer keys list --key-id release before running the command again \(another rotate makes another version\)\n$/);
    const list = await run(["keys", "list", "--timeout", "0.5"]);
    assert.doesNotMatch(list.err, /may still make the change/, "a read changes nothing");
  });

  it("names the endpoint when it cannot be reached, or when TLS fails", async () => {
    const closedPort = await new Promise<number>((ok) => {
      const s = createServer().listen(0, "127.0.0.1", () => {
        const p = (s.address() as { port: number }).port;
        s.close(() => ok(p));
      });
    });
    const r = await run(["slots", "--endpoint", `127.0.0.1:${closedPort}`]);
    assert.equal(r.code, 1);
    assert.match(r.err, new RegExp(`^hsm-signer: cannot reach KeyAdmin at 127\\.0\\.0\\.1:${closedPort}: .*ECONNREFUSED`));

    // The server's own certificate as the only CA: the server chain does not verify.
    const wrongCa = await run(["slots", "--ca", tls.clientCertFile]);
    assert.equal(wrongCa.code, 1);
    assert.match(wrongCa.err, new RegExp(`^hsm-signer: cannot reach KeyAdmin at 127\\.0\\.0\\.1:${port}: `));
  });
});
