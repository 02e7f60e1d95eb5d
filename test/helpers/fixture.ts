import { join } from "node:path";
import { createTestChain, finalizeModule, openHsm, type Hsm } from "../../src/hsm/index.js";
import { silentLogger } from "../../src/log/index.js";
import { KEY_SPECS, type KeySpec } from "../../src/signing/key-spec.js";
import { SigningService } from "../../src/signing/signing-service.js";
import { startSignerServer, type RunningServer } from "../../src/server/signer-server.js";
import { createSoftHsmToken, type SoftHsmToken } from "./softhsm.js";
import { createTlsMaterial, type TlsMaterial } from "./tls.js";

/** Key id of the test key of each spec, e.g. "test-ec-256". */
export function keyIdOf(spec: KeySpec): string {
  return `test-${spec.toLowerCase()}`;
}

export interface Fixture {
  token: SoftHsmToken;
  tls: TlsMaterial;
  hsm: Hsm;
  signing: SigningService;
  /** Root certificate DER of each test key. */
  roots: Map<KeySpec, Buffer>;
}

let shared: Promise<Fixture> | undefined;

/**
 * One SoftHSM token per test run with a key and an HSM-made chain for each of the six key specs
 * (RSA-4096 generation takes seconds, so it is done once), plus TLS material from openssl.
 */
export function getFixture(): Promise<Fixture> {
  shared ??= (async () => {
    const token = createSoftHsmToken();
    const tls = createTlsMaterial(join(token.dir, "tls"));
    const hsm = await openHsm({ modulePath: token.module, tokenLabel: token.label, pin: token.pin, poolSize: 4, keyRefreshMs: 0 });
    const roots = new Map<KeySpec, Buffer>();
    for (const spec of KEY_SPECS) {
      const r = await createTestChain(hsm.pool, hsm.keys, { keyId: keyIdOf(spec), keySpec: spec });
      roots.set(spec, r.root);
    }
    return { token, tls, hsm, signing: new SigningService(hsm.keys), roots };
  })();
  return shared;
}

export async function closeFixture(): Promise<void> {
  if (!shared) return;
  const f = await shared;
  shared = undefined;
  await f.hsm.close();
  finalizeModule(f.token.module);
  f.token.cleanup();
}

export interface ServerOptions {
  mtls?: boolean;
  maxDeadlineMs?: number;
}

/** The real gRPC server with TLS (and optionally mTLS) on 127.0.0.1, on a free port. */
export async function startTestServer(f: Fixture, o: ServerOptions = {}): Promise<RunningServer> {
  return startSignerServer({
    listen: "127.0.0.1:0",
    tls: { insecure: false, cert: f.tls.serverCert, key: f.tls.serverKey, clientCa: o.mtls ? f.tls.ca : undefined },
    signing: f.signing,
    logger: silentLogger,
    maxDeadlineMs: o.maxDeadlineMs,
  });
}
