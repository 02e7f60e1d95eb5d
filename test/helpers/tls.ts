import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { connect as tlsConnect, type ConnectionOptions } from "node:tls";
import { PROJECT_ROOT } from "./softhsm.js";

export interface TlsMaterial {
  dir: string;
  caFile: string;
  ca: Buffer;
  serverCert: Buffer;
  serverKey: Buffer;
  clientCertFile: string;
  clientKeyFile: string;
  clientCert: Buffer;
  clientKey: Buffer;
  /** Further client certificates by name (identity spiffe://hsm-signer.dev/NAME). */
  extra: Record<string, { certFile: string; keyFile: string; cert: Buffer; key: Buffer }>;
}

/** Real TLS material made by scripts/dev-tls.sh (openssl), as the quick start makes it. */
export function createTlsMaterial(dir: string, clientName = "test-client", extraClients: string[] = []): TlsMaterial {
  execFileSync("bash", [join(PROJECT_ROOT, "scripts/dev-tls.sh"), dir, clientName, ...extraClients], { stdio: "ignore" });
  const f = (n: string): string => join(dir, n);
  const extra = Object.fromEntries(extraClients.map((n) => [n, { certFile: f(`${n}.pem`), keyFile: f(`${n}-key.pem`), cert: readFileSync(f(`${n}.pem`)), key: readFileSync(f(`${n}-key.pem`)) }]));
  return {
    dir,
    caFile: f("ca.pem"),
    ca: readFileSync(f("ca.pem")),
    serverCert: readFileSync(f("server.pem")),
    serverKey: readFileSync(f("server-key.pem")),
    clientCertFile: f("client.pem"),
    clientKeyFile: f("client-key.pem"),
    clientCert: readFileSync(f("client.pem")),
    clientKey: readFileSync(f("client-key.pem")),
    extra,
  };
}

/**
 * One TLS connection attempt to 127.0.0.1:port; resolves once the connection is closed (or
 * after 5 s), with whether the client saw its handshake complete. With TLS 1.3 the server judges
 * the client's certificate after the client thinks the handshake is done, so the client stays
 * until the server closes, unless `closeWhenSecure` (a handshake expected to be accepted).
 */
export function attempt(port: number, o: ConnectionOptions, closeWhenSecure = false): Promise<{ secure: boolean; error?: string }> {
  return new Promise((resolve) => {
    const s = tlsConnect({ host: "127.0.0.1", port, servername: "localhost", ALPNProtocols: ["h2"], ...o });
    const r: { secure: boolean; error?: string } = { secure: false };
    s.on("secureConnect", () => {
      r.secure = true;
      if (closeWhenSecure) s.end();
    });
    s.on("error", (e) => (r.error = e.message));
    s.on("close", () => resolve(r));
    s.resume();
    setTimeout(() => s.destroy(), 5000).unref();
  });
}
