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
}

/** Real TLS material made by scripts/dev-tls.sh (openssl), as the quick start makes it. */
export function createTlsMaterial(dir: string, clientName = "test-client"): TlsMaterial {
  execFileSync("bash", [join(PROJECT_ROOT, "scripts/dev-tls.sh"), dir, clientName], { stdio: "ignore" });
  const f = (n: string): string => join(dir, n);
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
  };
}
