import { mkdtempSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createTestChain, finalizeModule, openHsm, type Hsm } from "../../src/hsm/index.js";
import { silentLogger } from "../../src/log/index.js";
import { KEY_SPECS, type KeySpec } from "../../src/signing/key-spec.js";
import { SigningService } from "../../src/signing/signing-service.js";
import type { KeyStore } from "../../src/signing/ports.js";
import { startSignerServer, type AuditSink, type RunningServer } from "../../src/server/signer-server.js";
import { AccessControl } from "../../src/server/access-control.js";
import { AuditLog } from "../../src/audit/index.js";
import { Authenticator, PolicyStore, RateLimiter, type JwtIssuerOptions } from "../../src/auth/index.js";
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
    return { token, tls, hsm, roots };
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

/** The test policy unless a test brings its own: anonymous callers on loopback may use every key. */
export const OPEN_LOOPBACK_POLICY = `allowAnonymousOnLoopback: true
rules:
  - name: local-tests
    match: { anonymous: true }
    keys: ["*"]
  - name: test-client-certificate
    match: { mtls: "*" }
    keys: ["*"]
`;

export interface ServerOptions {
  mtls?: boolean;
  /** With mtls: false makes the client certificate optional (a presented one is verified in the handshake all the same). */
  requireClientCertificate?: boolean;
  maxDeadlineMs?: number;
  /** Policy YAML (default OPEN_LOOPBACK_POLICY). */
  policy?: string;
  jwt?: JwtIssuerOptions[];
  /** An audit log to use (default: a fresh one in a temporary directory). */
  audit?: AuditSink;
  /** Plaintext (loopback only) instead of TLS. */
  insecure?: boolean;
  /** Default 127.0.0.1:0. */
  listen?: string;
  ready?: () => boolean;
  /** The key store the server's signing core uses (default: the fixture's HSM). */
  keys?: KeyStore;
}

export interface TestServer extends RunningServer {
  audit: AuditSink;
  auditDir: string;
  policyFile: string;
  policy: PolicyStore;
}

/** The real gRPC server with TLS (and optionally mTLS) on 127.0.0.1, on a free port, with policy and audit. */
export async function startTestServer(f: Fixture, o: ServerOptions = {}): Promise<TestServer> {
  const dir = mkdtempSync(join(f.token.dir, "server-"));
  const policyFile = join(dir, "policy.yaml");
  writeFileSync(policyFile, o.policy ?? OPEN_LOOPBACK_POLICY);
  const auditDir = join(dir, "audit");
  const audit = o.audit ?? (await AuditLog.open({ dir: auditDir }));
  const policy = await PolicyStore.open(policyFile, silentLogger);
  const authenticator = await Authenticator.create({ jwt: o.jwt ?? [] }, silentLogger);
  const optional = o.mtls === true && o.requireClientCertificate === false;
  const access = new AccessControl({ authenticator, policy, limiter: new RateLimiter() });
  let server: RunningServer;
  try {
    server = await startSignerServer({
      listen: o.listen ?? "127.0.0.1:0",
      tls: o.insecure ? { insecure: true } : { insecure: false, cert: f.tls.serverCert, key: f.tls.serverKey, clientCa: o.mtls ? f.tls.ca : undefined, requireClientCertificate: !optional },
      signing: new SigningService({ keys: o.keys ?? f.hsm.keys, authorizer: access }),
      logger: silentLogger,
      maxDeadlineMs: o.maxDeadlineMs,
      access,
      audit,
      ready: o.ready,
    });
  } catch (e) {
    policy.close();
    authenticator.close();
    if (!o.audit) await (audit as AuditLog).close();
    throw e;
  }
  return {
    ...server,
    audit,
    auditDir,
    policyFile,
    policy,
    async close(graceMs?: number) {
      await server.close(graceMs);
      policy.close();
      authenticator.close();
      if (!o.audit) await (audit as AuditLog).close();
    },
  };
}
