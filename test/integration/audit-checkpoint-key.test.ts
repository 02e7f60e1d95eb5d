import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { ObjectClass, KeyGenMechanism } from "graphene-pk11";
import { AuditLog } from "../../src/audit/index.js";
import { CHECKPOINTS_FILE } from "../../src/audit/checkpoints.js";
import { withCheckpoints } from "../../src/bin/audit-setup.js";
import type { Config } from "../../src/bin/config.js";
import type { SignerError } from "../../src/errors/index.js";
import { createTestChain, KeyCustody } from "../../src/hsm/index.js";
import { EC_PARAMS } from "../../src/hsm/mechanisms.js";
import type { Logger } from "../../src/log/index.js";
import { getFixture, type Fixture } from "../helpers/fixture.js";

const OK = "cp-key-ok";
const DISABLED = "cp-key-disabled";
const EXPOSED = "cp-key-exposed";
const ROOT = `${OK}-root-ca`;

/**
 * The audit key signs checkpoints that `audit verify` trusts, so it is held to the Signer's rules:
 * a key a custodian disabled, or one whose private key may exist outside the HSM, signs none.
 * Keys on the fixture's SoftHSM token, checkpoints of a real audit log in a temp folder.
 */
describe("the audit checkpoint key (SoftHSM)", function () {
  this.timeout(60_000);
  let f: Fixture;
  let custody: KeyCustody;
  const warnings: string[] = [];
  const logger: Logger = {
    enabled: () => true,
    debug: () => undefined,
    info: () => undefined,
    warn: (msg, fields) => void warnings.push(`${msg} ${JSON.stringify(fields ?? {})}`),
    error: () => undefined,
  };

  const configFor = (keyId: string, dir: string): Config => ({ audit: { dir, replicaId: "cp-test", checkpoints: { keyId, everyRecords: 1, everyMs: 3_600_000 } } }) as unknown as Config;
  const checkpointLines = (dir: string): number => (existsSync(join(dir, CHECKPOINTS_FILE)) ? readFileSync(join(dir, CHECKPOINTS_FILE), "utf8").split("\n").filter(Boolean).length : 0);
  const event = (n: number) => ({ requestId: `cp-${n}`, peer: "-", identity: "test", method: "Sign", decision: "allow" as const, result: "OK", latencyMs: 0 });

  before(async () => {
    f = await getFixture();
    custody = new KeyCustody(f.hsm.pool, f.hsm.keys);
    await createTestChain(f.hsm.pool, f.hsm.keys, { keyId: OK, keySpec: "EC-256" });
    await createTestChain(f.hsm.pool, f.hsm.keys, { keyId: DISABLED, keySpec: "EC-256", rootKeyId: ROOT });
    await custody.setState(DISABLED, 1, false, "compromised");
    // A key pair made extractable by another tool: its private key may have left the HSM.
    await f.hsm.pool.use((s) => {
      const common = { token: true, label: EXPOSED, id: Buffer.from(EXPOSED) };
      s.generateKeyPair(
        KeyGenMechanism.EC,
        { ...common, class: ObjectClass.PUBLIC_KEY, verify: true, paramsEC: EC_PARAMS["P-256"] },
        { ...common, class: ObjectClass.PRIVATE_KEY, private: true, sensitive: true, extractable: true, sign: true },
      );
    });
    await f.hsm.keys.refresh();
  });

  after(async () => {
    await f.hsm.pool.use((s) => {
      for (const label of [OK, DISABLED, EXPOSED, ROOT])
        for (const cls of [ObjectClass.CERTIFICATE, ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY, ObjectClass.DATA]) {
          const found = s.find({ class: cls, label });
          for (let i = 0; i < found.length; i++) found.items(i).destroy();
        }
    });
    await f.hsm.keys.refresh();
  });

  for (const [keyId, reason] of [
    [DISABLED, /audit key "cp-key-disabled".*disabled by a custodian: compromised/],
    [EXPOSED, /audit key "cp-key-exposed".*extractable/],
  ] as const) {
    it(`the service does not start with ${keyId === DISABLED ? "a disabled" : "an extractable"} audit key`, async () => {
      const dir = mkdtempSync(join(f.token.dir, "cp-"));
      const log = await AuditLog.open({ dir });
      try {
        await assert.rejects(withCheckpoints(log, configFor(keyId, dir), f.hsm.keys, logger), (e: SignerError) => e.code === "CONFIG_INVALID" && reason.test(e.message));
      } finally {
        await log.close();
      }
    });
  }

  it("a key a custodian disables while the service runs signs no further checkpoint; the failure is logged", async () => {
    const dir = mkdtempSync(join(f.token.dir, "cp-"));
    const store = await withCheckpoints(await AuditLog.open({ dir }), configFor(OK, dir), f.hsm.keys, logger);
    try {
      await store.append(event(1));
      for (let i = 0; i < 100 && checkpointLines(dir) === 0; i++) await new Promise((r) => setTimeout(r, 50));
      assert.equal(checkpointLines(dir), 1, "the enabled key signed a checkpoint");
      await custody.setState(OK, 1, false, "compromised");
      await f.hsm.keys.refresh();
      warnings.length = 0;
      await store.append(event(2));
      for (let i = 0; i < 100 && warnings.length === 0; i++) await new Promise((r) => setTimeout(r, 50));
      assert.match(warnings.join("\n"), /checkpoint could not be made.*disabled by a custodian: compromised/);
      assert.equal(checkpointLines(dir), 1, "no checkpoint signed by the disabled key");
    } finally {
      await store.close();
    }
  });
});
