import assert from "node:assert/strict";
import { ERROR_CODE_TRAILER, ERROR_CODES, SignerError, type ErrorCode } from "../../src/errors/index.js";
import { pluginCodeOfError } from "../../src/plugin/remote-signer.js";
import type { KeyRecord, KeyStore } from "../../src/signing/ports.js";
import { getFixture, startTestServer, type TestServer } from "../helpers/fixture.js";
import { requestFor } from "../helpers/notation.js";
import { runPlugin } from "../helpers/plugin-process.js";

/**
 * Issue 12 §3: the server sends the error catalog's code in a trailer, the client decodes it, and
 * the plugin maps it to notation's errorCode, for every code of the catalog. A key store whose
 * lookup fails with the code its key id names makes the real server answer each one; the real
 * plugin executable reads the answer.
 */
describe(`every catalog code travels server → ${ERROR_CODE_TRAILER} trailer → client → plugin (real server, built plugin)`, function () {
  this.timeout(120_000);
  let server: TestServer;
  const lookups = new Map<string, number>();

  const failing: KeyStore = {
    getKey(keyId: string): Promise<KeyRecord> {
      lookups.set(keyId, (lookups.get(keyId) ?? 0) + 1);
      const code = keyId.slice("code-".length) as ErrorCode;
      return Promise.reject(new SignerError(code, `made to fail with ${code}`));
    },
    listKeys: () => Promise.resolve([]),
    signDigest: () => Promise.reject(new Error("not used")),
  };

  before(async () => {
    server = await startTestServer(await getFixture(), { keys: failing });
  });
  after(async () => {
    await server?.close(2000);
  });

  it("describe-key reports each code as the README's notation errorCode, and retries only what a retry can clear", async () => {
    const f = await getFixture();
    const cfg = { endpoint: `127.0.0.1:${server.port}`, ca_file: f.tls.caFile, timeout: "4s" };
    const seen: string[] = [];
    for (const code of ERROR_CODES) {
      const keyId = `code-${code}`;
      const r = await runPlugin("describe-key", JSON.stringify(requestFor("describe-key", keyId, "EC-256", cfg)));
      assert.equal(r.code, 1, `${code}: exit ${r.code}, stderr ${r.stderr}`);
      const err = JSON.parse(r.stderr) as { errorCode: string; errorMessage: string };
      assert.equal(err.errorCode, pluginCodeOfError(code), `${code}: ${r.stderr}`);
      seen.push(`${code}:${lookups.get(keyId)}`);
      const retryable = ["HSM_UNAVAILABLE", "AUDIT_UNAVAILABLE", "POOL_EXHAUSTED", "RATE_LIMITED"].includes(code);
      // The old client retried HSM_PIN_INCORRECT (UNAVAILABLE) 4 times; a refused PIN never clears.
      if (!retryable) assert.equal(lookups.get(keyId), 1, `${code} was asked ${lookups.get(keyId)} times`);
    }
    assert.equal(seen.length, ERROR_CODES.length);
    assert.ok((lookups.get("code-HSM_UNAVAILABLE") ?? 0) > 1, "a passing outage is still retried");
  });
});
