import { execFile, execFileSync, spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { join } from "node:path";
import { promisify } from "node:util";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import type { SoftHsmToken } from "./softhsm.js";
import { PROJECT_ROOT, softHsmModule } from "./softhsm.js";
import type { TlsMaterial } from "./tls.js";

export const HSM_SIGNER = join(PROJECT_ROOT, "dist/hsm-signer");

/** A SoftHSM token of its own, made by `hsm-signer token init` in a child process (this process keeps the shared fixture's token). */
export function isolatedToken(dir: string, label: string): SoftHsmToken {
  mkdirSync(join(dir, "tokens"), { recursive: true });
  const conf = join(dir, "softhsm2.conf");
  writeFileSync(conf, `directories.tokendir = ${dir}/tokens\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n`);
  const pin = randomBytes(8).toString("hex");
  const pinFile = join(dir, "pin");
  const soPinFile = join(dir, "so-pin");
  writeFileSync(pinFile, `${pin}\n`, { mode: 0o600 });
  writeFileSync(soPinFile, `${randomBytes(8).toString("hex")}\n`, { mode: 0o600 });
  const module = softHsmModule();
  execFileSync(HSM_SIGNER, ["token", "init", "--module", module, "--label", label, "--so-pin-file", soPinFile, "--pin-file", pinFile], {
    env: { ...process.env, SOFTHSM2_CONF: conf },
    stdio: "ignore",
  });
  return { dir, conf, module, label, pin, pinFile, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** Ports this process has handed out: the kernel may give a just-closed port again, and two listeners of one service on one port are refused. */
const handedOut = new Set<number>();

function ephemeralPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const a = s.address();
      s.close(() => (a && typeof a === "object" ? resolve(a.port) : reject(new Error("no port"))));
    });
  });
}

/** A free loopback port not handed out before by this process, so that the ports one test asks for in a row differ. */
export async function freePort(): Promise<number> {
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = await ephemeralPort();
    if (!handedOut.has(port)) {
      handedOut.add(port);
      return port;
    }
  }
  throw new Error("no free port that this process has not handed out already, after 50 tries");
}

/** The listeners of a demo set-up (demoSetup), each on a port of its own. */
export interface DemoPorts {
  port: number;
  metricsPort: number;
  adminPort: number;
}

/**
 * scripts/demo-setup.sh --setup-only into `data`: a token, TLS, the key and its chain and a
 * config.yaml whose listeners have free ports of their own (a quick-start service on the
 * defaults may be running). `env` adds to or replaces the process's variables.
 */
export async function demoSetup(o: { data: string; keyId: string; tokenLabel: string; keySpec?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv }): Promise<DemoPorts> {
  const ports = { port: await freePort(), metricsPort: await freePort(), adminPort: await freePort() };
  const env = {
    ...process.env,
    ...o.env,
    HSM_SIGNER_DATA: o.data,
    HSM_SIGNER_LISTEN: `127.0.0.1:${ports.port}`,
    HSM_SIGNER_METRICS_LISTEN: `127.0.0.1:${ports.metricsPort}`,
    HSM_SIGNER_ADMIN_LISTEN: `127.0.0.1:${ports.adminPort}`,
    DEMO_KEY_ID: o.keyId,
    DEMO_KEY_SPEC: o.keySpec ?? "EC-256",
    DEMO_TOKEN_LABEL: o.tokenLabel,
  };
  await promisify(execFile)("bash", [join(PROJECT_ROOT, "scripts/demo-setup.sh"), "--setup-only"], { env, timeout: o.timeoutMs ?? 90_000 });
  return ports;
}

/** Waits for a JSON log line with this msg on the child's stdout; a failure carries stdout and stderr. */
export function waitForLog(child: ChildProcess, msg: string, ms = 30_000): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    let buf = "";
    let err = "";
    child.stderr?.on("data", (d: Buffer) => (err += d.toString()));
    const t = setTimeout(() => reject(new Error(`no "${msg}" log line within ${ms} ms; output: ${buf}; stderr: ${err}`)), ms);
    child.stdout?.on("data", (d: Buffer) => {
      buf += d.toString();
      for (const line of buf.split("\n")) {
        try {
          const o = JSON.parse(line) as Record<string, unknown>;
          if (o.msg === msg) {
            clearTimeout(t);
            resolve(o);
          }
        } catch {
          // not a complete JSON line yet
        }
      }
    });
    child.on("close", (code) => reject(new Error(`exited with ${code} before "${msg}"; output: ${buf}; stderr: ${err}`)));
  });
}

export interface ServiceProcess {
  port: number;
  adminPort: number;
  auditDir: string;
  configFile: string;
  child: ChildProcess;
  /** SIGTERM and wait for the exit code. */
  stop(): Promise<number | null>;
}

/**
 * Runs the built `hsm-signer serve` as its own process on a SoftHSM token: mTLS with the test
 * CA, a KeyAdmin listener, the given policy, and a short key refresh interval.
 */
export async function startServiceProcess(o: {
  name: string;
  dir: string;
  token: SoftHsmToken;
  tls: TlsMaterial;
  policy: string;
  keyRefreshSeconds?: number;
  /** KeyAdmin's client CA (default: the Signer's, tls.caFile). */
  adminClientCaFile?: string;
  /** More top-level configuration lines (YAML). */
  extraConfig?: string[];
  /** More lines of the tls section, e.g. "  clientCrlFile: /path". */
  tlsConfig?: string[];
}): Promise<ServiceProcess> {
  const dir = join(o.dir, o.name);
  mkdirSync(dir, { recursive: true });
  const [port, adminPort] = [await freePort(), await freePort()];
  const auditDir = join(dir, "audit");
  const policyFile = join(dir, "policy.yaml");
  writeFileSync(policyFile, o.policy);
  const configFile = join(dir, "config.yaml");
  writeFileSync(
    configFile,
    [
      `listen: 127.0.0.1:${port}`,
      "tls:",
      `  certFile: ${join(o.tls.dir, "server.pem")}`,
      `  keyFile: ${join(o.tls.dir, "server-key.pem")}`,
      `  clientCaFile: ${o.tls.caFile}`,
      ...(o.tlsConfig ?? []),
      "hsm:",
      `  module: ${o.token.module}`,
      `  tokenLabel: ${o.token.label}`,
      `  pinFile: ${o.token.pinFile}`,
      "  sessions: 2",
      `  keyRefreshSeconds: ${o.keyRefreshSeconds ?? 1}`,
      `policy: { file: ${policyFile} }`,
      `audit: { dir: ${auditDir} }`,
      `admin: { listen: 127.0.0.1:${adminPort}${o.adminClientCaFile ? `, clientCaFile: ${o.adminClientCaFile}` : ""} }`,
      ...(o.extraConfig ?? []),
      "",
    ].join("\n"),
  );
  const child = spawn(HSM_SIGNER, ["serve", "--config", configFile], { env: { ...process.env, SOFTHSM2_CONF: o.token.conf }, stdio: ["ignore", "pipe", "pipe"] });
  await waitForLog(child, "hsm-signer listening");
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  return {
    port,
    adminPort,
    auditDir,
    configFile,
    child,
    stop: () => {
      if (child.exitCode === null) child.kill("SIGTERM");
      return exited;
    },
  };
}

let adminClass: grpc.ServiceClientConstructor | undefined;

/** A KeyAdmin client built from the .proto with grpc-js; mTLS with the given client certificate. */
export function adminClient(ca: Buffer, port: number, client: { key: Buffer; cert: Buffer }): grpc.Client {
  if (!adminClass) {
    const def = protoLoader.loadSync(join(PROJECT_ROOT, "proto/hsm_signer/v1/key_admin.proto"), { keepCase: false, longs: Number, enums: String, defaults: true, oneofs: true });
    adminClass = (grpc.loadPackageDefinition(def) as unknown as { hsm_signer: { v1: { KeyAdmin: grpc.ServiceClientConstructor } } }).hsm_signer.v1.KeyAdmin;
  }
  return new adminClass(`127.0.0.1:${port}`, grpc.credentials.createSsl(ca, client.key, client.cert), { "grpc.ssl_target_name_override": "localhost" });
}

export function callAdmin<T>(client: grpc.Client, method: string, req: object): Promise<T> {
  const fn = (client as unknown as Record<string, (r: object, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, r: T) => void) => void>)[method];
  if (!fn) throw new Error(`no KeyAdmin method ${method}`);
  return new Promise<T>((resolve, reject) => fn.call(client, req, { deadline: Date.now() + 60_000 }, (err, res) => (err ? reject(err) : resolve(res))));
}
