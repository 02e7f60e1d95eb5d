import assert from "node:assert/strict";
import { createLogger } from "../../src/log/index.js";
import { classifyHandshakeFailure, TlsHandshakeFailureLog, type TlsHandshakeFailure } from "../../src/server/tls-listener.js";

const failure = (reason: TlsHandshakeFailure["reason"]): TlsHandshakeFailure => ({ reason, peer: "127.0.0.1:5000", code: "X" });

describe("refused TLS handshakes: classification and the rate-limited log", () => {
  it("logs the first refusal of a reason at once, counts the others, and sums them up in one line at the end of the interval", async () => {
    const lines: Record<string, unknown>[] = [];
    const counted: string[] = [];
    const log = new TlsHandshakeFailureLog(
      createLogger("info", (l) => lines.push(JSON.parse(l) as Record<string, unknown>)),
      (r) => counted.push(r),
      50,
    );
    for (let i = 0; i < 5; i++) log.report(failure("unknown_ca"));
    log.report(failure("no_certificate"));
    assert.deepEqual(counted, ["unknown_ca", "unknown_ca", "unknown_ca", "unknown_ca", "unknown_ca", "no_certificate"], "every refusal is counted");
    assert.deepEqual(
      lines.map((l) => [l.msg, l.reason]),
      [
        ["TLS handshake refused", "unknown_ca"],
        ["TLS handshake refused", "no_certificate"],
      ],
    );
    const deadline = Date.now() + 20_000;
    while (lines.length < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(
      lines.slice(2).map((l) => [l.msg, l.reason, l.suppressed]),
      [["TLS handshakes refused (not logged one by one)", "unknown_ca", 4]],
    );
    // A reason with nothing suppressed gets no summary, and once its interval is over (a later
    // timer fires after an earlier one) its next refusal is logged at once again.
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(lines.filter((l) => l.reason === "no_certificate").length, 1);
    log.report(failure("no_certificate"));
    assert.deepEqual([lines.at(-1)?.msg, lines.at(-1)?.reason], ["TLS handshake refused", "no_certificate"]);
    log.close();
  });

  it("maps Node's and OpenSSL's codes to a bounded set of reasons", () => {
    const err = (code: string, message = "x"): NodeJS.ErrnoException => Object.assign(new Error(message), { code });
    const sock = (authorizationError: string): Parameters<typeof classifyHandshakeFailure>[1] => ({ authorizationError }) as unknown as Parameters<typeof classifyHandshakeFailure>[1];
    assert.equal(classifyHandshakeFailure(err("ECONNRESET", "socket hang up"), sock("CERT_HAS_EXPIRED")).reason, "certificate_expired");
    assert.equal(classifyHandshakeFailure(undefined, sock("CERT_NOT_YET_VALID")).reason, "certificate_not_yet_valid");
    assert.equal(classifyHandshakeFailure(undefined, sock("UNABLE_TO_VERIFY_LEAF_SIGNATURE")).reason, "unknown_ca");
    assert.equal(classifyHandshakeFailure(undefined, sock("DEPTH_ZERO_SELF_SIGNED_CERT")).reason, "unknown_ca");
    assert.equal(classifyHandshakeFailure(undefined, sock("INVALID_PURPOSE")).reason, "bad_certificate");
    assert.equal(classifyHandshakeFailure(err("ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE"), undefined).reason, "no_certificate");
    assert.equal(classifyHandshakeFailure(err("ERR_SSL_NO_APPLICATION_PROTOCOL"), undefined).reason, "no_h2");
    assert.equal(classifyHandshakeFailure(err("ERR_SSL_TLSV1_ALERT_UNKNOWN_CA"), undefined).reason, "client_alert");
    assert.equal(classifyHandshakeFailure(err("ERR_SSL_HTTP_REQUEST"), undefined).reason, "protocol");
    assert.equal(classifyHandshakeFailure(err("ERR_TLS_HANDSHAKE_TIMEOUT"), undefined).reason, "timeout");
    assert.equal(classifyHandshakeFailure(err("ECONNRESET", "socket hang up"), undefined).reason, "closed");
    assert.equal(classifyHandshakeFailure(err("EWHATEVER"), undefined).reason, "other");
  });
});
