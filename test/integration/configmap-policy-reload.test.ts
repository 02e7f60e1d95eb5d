import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { CallerIdentity } from "../../src/auth/identity.js";
import { PolicyStore } from "../../src/auth/policy.js";
import { createLogger } from "../../src/log/index.js";

async function waitFor(what: string, cond: () => boolean, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) assert.fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * deploy/base mounts the policy from a ConfigMap that keeps its name, and says a change is
 * reloaded without a restart. kubelet never writes the file itself: the volume holds
 * policy.yaml -> ..data/policy.yaml and ..data -> ..<timestamp>/, and an update writes a new
 * timestamped folder, points a ..data_tmp symlink at it, renames ..data_tmp over ..data and
 * removes the old folder.
 * This lays the volume out the same way and updates it the same way.
 */
describe("the policy from a Kubernetes ConfigMap volume is reloaded when kubelet updates it", function () {
  this.timeout(30_000);
  let volume: string;
  let store: PolicyStore | undefined;
  const caller: CallerIdentity = { kind: "mtls", source: "uri", id: "spiffe://corp/build/a", subject: "spiffe://corp/build/a" };
  const policyFor = (keys: string): string => `rules:\n  - name: build\n    match: { mtls: "spiffe://corp/build/*" }\n    keys: ["${keys}"]\n`;
  const allowed = (keyId: string): boolean => store?.current.decide(caller, "Sign", keyId).allow ?? false;
  let generation = 0;

  /** What kubelet's atomic writer does for one update of the ConfigMap. */
  function publish(text: string): void {
    const dir = `..2026_12_03_08_00_00.${++generation}`;
    mkdirSync(join(volume, dir));
    writeFileSync(join(volume, dir, "policy.yaml"), text);
    symlinkSync(dir, join(volume, "..data_tmp"));
    renameSync(join(volume, "..data_tmp"), join(volume, "..data"));
    if (generation > 1) rmSync(join(volume, `..2026_12_03_08_00_00.${generation - 1}`), { recursive: true }); // the old version goes
  }

  beforeEach(async () => {
    volume = mkdtempSync(join(tmpdir(), "hsm-signer-configmap-"));
    generation = 0;
    publish(policyFor("build-*"));
    symlinkSync("..data/policy.yaml", join(volume, "policy.yaml"));
    store = await PolicyStore.open(
      join(volume, "policy.yaml"),
      createLogger("error", () => undefined),
    );
    store.watch();
  });

  afterEach(() => {
    store?.close();
    store = undefined;
    rmSync(volume, { recursive: true, force: true });
  });

  it("applies each update of the ConfigMap in the running service", async () => {
    assert.equal(allowed("build-1"), true);
    publish(policyFor("release-*"));
    await waitFor("the first update", () => allowed("release-1"));
    assert.equal(allowed("build-1"), false);
    publish(policyFor("other-*"));
    await waitFor("the second update", () => allowed("other-1"));
  });

  it("keeps the policy in force when an update is invalid, and applies the next good one", async () => {
    publish("rules: [");
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(allowed("build-1"), true);
    publish(policyFor("release-*"));
    await waitFor("the good update", () => allowed("release-1"));
  });
});
