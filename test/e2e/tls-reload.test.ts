import assert from "node:assert/strict";
import { X509Certificate } from "node:crypto";
import { mkdirSync, mkdtempSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { get as httpGet } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as grpc from "@grpc/grpc-js";
import { freePort, isolatedToken, startServiceProcess, type ServiceProcess } from "../helpers/service-process.js";
import { callSigner, signerClient } from "../helpers/signer-client.js";
import type { SoftHsmToken } from "../helpers/softhsm.js";
import { CLIENT_LEAF_EXT, OpensslCa, SERVER_LEAF_EXT } from "../helpers/openssl-ca.js";
import type { TlsMaterial } from "../helpers/tls.js";

const clientExt = (name: string): string => `${CLIENT_LEAF_EXT}\nsubjectAltName=URI:spiffe://corp/build/${name}`;

function metricsText(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    httpGet({ host: "127.0.0.1", port, path: "/metrics", timeout: 10_000 }, (res) => {
      let body = "";
      res.on("data", (d: Buffer) => (body += d.toString()));
      res.on("end", () => resolve(body));
    }).on("error", reject);
  });
}

const sample = (text: string, series: string): number => Number(new RegExp(`^${series.replace(/[{}]/g, "\\$&")} (\\S+)$`, "m").exec(text)?.[1]);

describe("hsm-signer serve: client CRLs and TLS material reloaded without a restart", function () {
  this.timeout(120_000);
  let dir: string;
  let token: SoftHsmToken;
  let root: OpensslCa;
  let svc: ServiceProcess | undefined;

  before(() => {
    dir = mkdtempSync(join(tmpdir(), "tls-reload-"));
    token = isolatedToken(join(dir, "hsm"), "tls-reload");
    root = OpensslCa.root(join(dir, "pki"), { subject: "/O=Corp/CN=Corp Root" });
  });

  after(async () => {
    await svc?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  it("a client revoked in a new CRL file is refused from then on, the others go on; a bad file is refused and logged, and what was in force stays", async () => {
    const tlsDir = join(dir, "tls");
    mkdirSync(tlsDir);
    const server = root.leaf({ subject: "/CN=localhost", extensions: SERVER_LEAF_EXT });
    writeFileSync(join(tlsDir, "server.pem"), new X509Certificate(server.der).toString());
    writeFileSync(join(tlsDir, "server-key.pem"), server.keyPem);
    writeFileSync(join(tlsDir, "ca.pem"), root.certPem);
    const crlFile = join(tlsDir, "clients.crl");
    writeFileSync(crlFile, root.crl());
    // Replaced as tools and Kubernetes do: a new file renamed over the old one.
    const replace = (content: string): void => {
      writeFileSync(`${crlFile}.new`, content);
      renameSync(`${crlFile}.new`, crlFile);
    };
    const [a, b] = ["a", "b"].map((name) => root.leaf({ subject: `/CN=${name}`, extensions: clientExt(name) })) as [{ der: Buffer; keyPem: string }, { der: Buffer; keyPem: string }];
    const material = { dir: tlsDir, caFile: join(tlsDir, "ca.pem") } as TlsMaterial;
    const metricsPort = await freePort();
    svc = await startServiceProcess({
      name: "crl",
      dir,
      token,
      tls: material,
      policy: `rules:\n  - name: builds\n    match: { mtls: "spiffe://corp/build/*" }\n    keys: ["*"]\n`,
      tlsConfig: [`  clientCrlFile: ${crlFile}`],
      extraConfig: [`metrics: { listen: 127.0.0.1:${metricsPort} }`],
    });
    const log: Record<string, unknown>[] = [];
    svc.child.stdout?.on("data", (d: Buffer) => {
      for (const line of d.toString().split("\n")) if (line.startsWith("{")) log.push(JSON.parse(line) as Record<string, unknown>);
    });
    const ca = Buffer.from(root.certPem);
    // A new client (a new connection) per call: new material applies to new connections.
    const listKeys = async (c: { der: Buffer; keyPem: string }): Promise<string> => {
      const client = signerClient(ca, svc?.port ?? 0, { cert: Buffer.from(new X509Certificate(c.der).toString()), key: Buffer.from(c.keyPem) });
      try {
        await callSigner(client, "ListKeys", {}, Date.now() + 10_000);
        return "OK";
      } catch (e) {
        return grpc.status[(e as grpc.ServiceError).code] ?? "?";
      } finally {
        client.close();
      }
    };
    const eventually = async (what: string, cond: () => boolean | Promise<boolean>): Promise<void> => {
      const end = Date.now() + 15_000;
      while (!(await cond())) {
        if (Date.now() > end) assert.fail(`timed out: ${what}`);
        await new Promise((r) => setTimeout(r, 100));
      }
    };
    const logged = (msg: string | RegExp, listener: string): boolean => log.some((l) => (typeof msg === "string" ? l.msg === msg : msg.test(String(l.msg))) && l.listener === listener);

    assert.equal(await listKeys(a), "OK");
    assert.equal(await listKeys(b), "OK");
    // And a connection each that stays open across the reload, as a build runner's does.
    const [openA, openB] = [a, b].map((c) => signerClient(ca, svc?.port ?? 0, { cert: Buffer.from(new X509Certificate(c.der).toString()), key: Buffer.from(c.keyPem) })) as [grpc.Client, grpc.Client];
    const onOpen = (client: grpc.Client): Promise<string> =>
      callSigner(client, "ListKeys", {}, Date.now() + 10_000).then(
        () => "OK",
        (e: grpc.ServiceError) => grpc.status[e.code] ?? "?",
      );
    try {
      assert.deepEqual([await onOpen(openA), await onOpen(openB)], ["OK", "OK"]);

      // Client a leaves: the CA revokes it and the CRL file is replaced, no signal needed.
      root.revoke(a.der);
      replace(root.crl());
      await eventually("the new CRL is in force for both listeners", () => logged("TLS material reloaded", "tls") && logged("TLS material reloaded", "admin"));
      assert.equal(await listKeys(a), "UNAVAILABLE");
      assert.equal(await listKeys(b), "OK");
      // a's open connection was closed at the reload (it would sign on for hours), b's was not.
      assert.deepEqual([await onOpen(openA), await onOpen(openB)], ["UNAVAILABLE", "OK"]);
      const closed = log.filter((l) => l.code === "REFUSED_AFTER_RELOAD");
      assert.deepEqual(
        closed.map((l) => [l.msg, l.reason, l.subject]),
        [["connection closed: the reloaded client CAs or CRLs refuse its client certificate", "certificate_revoked", "CN=a"]],
      );
    } finally {
      openA.close();
      openB.close();
    }

    // A file that is no CRL, then SIGHUP: refused, logged, and the CRL in force stays.
    replace("not a CRL\n");
    svc.child.kill("SIGHUP");
    await eventually("the bad file is refused", () => logged(/^tls TLS material rejected, the previous one stays in force: tls\.clientCrlFile: .*holds no CRL/, "tls"));
    assert.equal(await listKeys(a), "UNAVAILABLE");
    assert.equal(await listKeys(b), "OK");
    assert.equal(svc.child.exitCode, null, "SIGHUP did not stop the service");

    const text = await metricsText(metricsPort);
    assert.ok(sample(text, 'hsm_signer_tls_reloads_total{listener="signer",result="applied"}') >= 1, text);
    assert.ok(sample(text, 'hsm_signer_tls_reloads_total{listener="signer",result="rejected"}') >= 1);
    assert.ok(sample(text, 'hsm_signer_tls_handshake_failures_total{reason="certificate_revoked"}') >= 2);
    const crlSeconds = sample(text, 'hsm_signer_tls_crl_next_update_seconds{listener="signer"}');
    assert.ok(crlSeconds > 6 * 86400 && crlSeconds <= 7 * 86400, `CRL next update in ${crlSeconds} s`);
    assert.ok(sample(text, 'hsm_signer_tls_certificate_expiry_seconds{listener="admin"}') > 0);
  });

  it("refuses to start on a CRL file that lacks the CRL of a client CA, naming it", async () => {
    await svc?.stop();
    svc = undefined;
    const other = OpensslCa.root(join(dir, "pki"), { subject: "/O=Corp/CN=Other Root" });
    const tlsDir = join(dir, "tls");
    const crlFile = join(tlsDir, "other.crl");
    writeFileSync(crlFile, other.crl());
    await assert.rejects(
      startServiceProcess({
        name: "crl-missing",
        dir,
        token,
        tls: { dir: tlsDir, caFile: join(tlsDir, "ca.pem") } as TlsMaterial,
        policy: "rules: []\n",
        tlsConfig: [`  clientCrlFile: ${crlFile}`],
      }),
      /tls\.clientCrlFile: no CRL from "O=Corp, CN=Corp Root" of tls\.clientCaFile/,
    );
  });
});
