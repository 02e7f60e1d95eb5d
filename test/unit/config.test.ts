import assert from "node:assert/strict";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadConfig } from "../../src/bin/config.js";
import { PROJECT_ROOT } from "../helpers/softhsm.js";

describe("configuration: file, environment overrides, every problem at once", () => {
  let dir: string;
  const write = (yaml: string): string => {
    const f = join(dir, "config.yaml");
    writeFileSync(f, yaml);
    return f;
  };
  const minimal = "listen: 127.0.0.1:8443\ntls: { insecure: true }\nhsm: { module: /usr/lib/softhsm/libsofthsm2.so, tokenLabel: t, pinFile: pin }\npolicy: { file: policy.yaml }\naudit: { dir: audit }\n";

  before(() => {
    dir = mkdtempSync(join(tmpdir(), "hsm-signer-config-"));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it("defaults: 10 s shutdown grace, 2 s key refresh, 15 s sign stall, no admin or health listeners; relative paths from the file", () => {
    const c = loadConfig(write(minimal), {});
    assert.equal(c.shutdown.graceMs, 10_000);
    assert.equal(c.hsm.keyRefreshMs, 2_000);
    assert.equal(c.hsm.signStallMs, 15_000);
    assert.equal(c.admin.listen, undefined);
    assert.equal(c.metrics.grpcHealthListen, undefined);
    assert.equal(c.audit.dir, join(dir, "audit"));
  });

  it("environment overrides win over the file", () => {
    const c = loadConfig(write(`${minimal}shutdown: { graceSeconds: 30 }\n`), {
      HSM_SIGNER_SHUTDOWN_GRACE_SECONDS: "5",
      HSM_SIGNER_GRPC_HEALTH_LISTEN: "0.0.0.0:9465",
      HSM_SIGNER_METRICS_LISTEN: "0.0.0.0:9464",
      HSM_SIGNER_LISTEN: "127.0.0.2:9000",
    });
    assert.equal(c.shutdown.graceMs, 5_000);
    assert.equal(c.metrics.grpcHealthListen, "0.0.0.0:9465");
    assert.equal(c.metrics.listen, "0.0.0.0:9464");
    assert.equal(c.listen, "127.0.0.2:9000");
  });

  it("KeyAdmin needs TLS material and a client CA; a bad grace and a bad health listener are reported with it", () => {
    const f = write(`${minimal.replace("pinFile: pin }", "pinFile: pin, signStallSeconds: 0 }")}shutdown: { graceSeconds: -1 }\nmetrics: { grpcHealthListen: nowhere }\nadmin: { listen: 127.0.0.1:9443 }\n`);
    assert.throws(
      () => loadConfig(f, {}),
      (e: Error) => {
        for (const want of ["hsm.signStallSeconds", "shutdown.graceSeconds", "metrics.grpcHealthListen", "admin.certFile and admin.keyFile", "admin.clientCaFile"]) assert.ok(e.message.includes(want), `missing ${want} in: ${e.message}`);
        return true;
      },
    );
  });
});

describe("the shipped configurations", () => {
  it("deploy/base/config.yaml has no problem but files that only exist in the cluster", () => {
    let problems: string[] = [];
    try {
      loadConfig(join(PROJECT_ROOT, "deploy/base/config.yaml"), {});
    } catch (e) {
      problems = (e as Error).message.split("\n").slice(1).map((l) => l.trim().replace(/^- /, ""));
    }
    const elsewhere = problems.filter((p) => !/cannot read \/etc\/hsm-signer\//.test(p));
    assert.deepEqual(elsewhere, []);
  });
});
