import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
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
