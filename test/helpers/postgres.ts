import { execFile, execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { chownSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import pg from "pg";
import { freePort } from "./service-process.js";

const run = promisify(execFile);
/** PostgreSQL refuses to run as root; then the cluster is nobody's. */
const UNPRIVILEGED_USER = "nobody";
/** Every pg_ctl/initdb step must end within this, however loaded the machine. */
const STEP_TIMEOUT_MS = 120_000;

/** The newest PostgreSQL server binaries of Debian's postgresql package. */
export function postgresBinDir(): string {
  const root = "/usr/lib/postgresql";
  const versions = existsSync(root) ? readdirSync(root).filter((v) => existsSync(join(root, v, "bin", "initdb"))) : [];
  versions.sort((a, b) => Number(b) - Number(a));
  if (versions.length === 0) throw new Error("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin (scripts/install-system-deps.sh installs the postgresql package)");
  return join(root, versions[0]!, "bin");
}

export interface PostgresServer {
  /** 127.0.0.1 */
  host: string;
  port: number;
  /** The Unix socket directory (the superuser "postgres" connects there without a password). */
  socketDir: string;
  dir: string;
  running: boolean;
  /** pg_ctl stop -m fast: connections are cut, as when a database server goes down. */
  stop(): Promise<void>;
  start(): Promise<void>;
  /** A superuser connection (over the Unix socket) to `database`. */
  admin(database?: string): Promise<pg.Client>;
  /**
   * A fresh database, and a role that may only INSERT and SELECT its audit tables once
   * `grantAuditRole` ran (the schema is made by the superuser, as `audit migrate` would be).
   */
  createDatabase(name: string): Promise<{ database: string; role: string; password: string }>;
  /** Removes the cluster's files; stops it first. */
  destroy(): Promise<void>;
  /** CPU time (user + system) of the server's processes so far, ended backends included, in ms (Linux /proc). */
  cpuMs(): Promise<number>;
}

const CLOCK_TICKS_PER_S = 100;

/** utime + stime (+ cutime + cstime) of a process, in ms, from /proc/PID/stat. */
function procCpuMs(pid: number, withChildren: boolean): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    // Fields 14-17 of stat (utime, stime, cutime, cstime) are 11-14 after the state field.
    const ticks = Number(f[11]) + Number(f[12]) + (withChildren ? Number(f[13]) + Number(f[14]) : 0);
    return (ticks * 1000) / CLOCK_TICKS_PER_S;
  } catch {
    return 0;
  }
}

async function asServerUser(dir: string, cmd: string, args: string[]): Promise<void> {
  const root = process.getuid?.() === 0;
  const file = root ? "runuser" : cmd;
  const argv = root ? ["-u", UNPRIVILEGED_USER, "--", cmd, ...args] : args;
  await run(file, argv, { cwd: dir, timeout: STEP_TIMEOUT_MS, env: { PATH: process.env.PATH ?? "/usr/bin:/bin", LANG: "C.UTF-8", LC_ALL: "C.UTF-8" } });
}

/** Clusters still running: stopped (immediate) if the test process exits without destroying them. */
const running = new Map<string, () => void>();
process.on("exit", () => {
  for (const stop of running.values()) stop();
});

/** initdb in a temporary folder and start it on 127.0.0.1 (a free port) and a Unix socket in the folder. */
export async function startPostgres(o: { fsync?: boolean } = {}): Promise<PostgresServer> {
  const bin = postgresBinDir();
  const dir = mkdtempSync(join(tmpdir(), "hsm-signer-pg-"));
  if (process.getuid?.() === 0) {
    const { stdout: uid } = await run("id", ["-u", UNPRIVILEGED_USER]);
    const { stdout: gid } = await run("id", ["-g", UNPRIVILEGED_USER]);
    chownSync(dir, Number(uid.trim()), Number(gid.trim()));
  }
  const data = join(dir, "data");
  const pwfile = join(dir, "pw");
  const superPassword = randomBytes(12).toString("hex");
  writeFileSync(pwfile, `${superPassword}\n`, { mode: 0o644 });
  // Local (socket) connections trusted, TCP ones with a password: the service's role logs in
  // with its password over TCP, as it would in a cluster.
  await asServerUser(dir, join(bin, "initdb"), ["-D", data, "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256", `--pwfile=${pwfile}`, "-E", "UTF8", "--no-sync"]);
  rmSync(pwfile);
  const port = await freePort();
  const log = join(dir, "postgres.log");
  const options = `-c listen_addresses=127.0.0.1 -p ${port} -c unix_socket_directories=${dir} ${o.fsync ? "" : "-c fsync=off -c full_page_writes=off "}-c max_connections=60 -c shared_buffers=64MB`;
  const server: PostgresServer = {
    host: "127.0.0.1",
    port,
    socketDir: dir,
    dir,
    running: false,
    async start() {
      await asServerUser(dir, join(bin, "pg_ctl"), ["-D", data, "-l", log, "-o", options, "-w", "-t", "90", "start"]);
      server.running = true;
      running.set(dir, () => {
        try {
          const root = process.getuid?.() === 0;
          const args = ["-D", data, "-m", "immediate", "-w", "-t", "30", "stop"];
          execFileSync(root ? "runuser" : join(bin, "pg_ctl"), root ? ["-u", UNPRIVILEGED_USER, "--", join(bin, "pg_ctl"), ...args] : args, { stdio: "ignore", timeout: 35_000 });
          rmSync(dir, { recursive: true, force: true });
        } catch {
          // exiting anyway
        }
      });
    },
    async stop() {
      server.running = false;
      running.delete(dir);
      await asServerUser(dir, join(bin, "pg_ctl"), ["-D", data, "-m", "fast", "-w", "-t", "60", "stop"]);
    },
    async admin(database = "postgres") {
      const c = new pg.Client({ host: dir, port, user: "postgres", database, connectionTimeoutMillis: 30_000 });
      c.on("error", () => undefined);
      await c.connect();
      return c;
    },
    async createDatabase(name) {
      const c = await server.admin();
      const role = `${name}_app`;
      const password = randomBytes(12).toString("hex");
      try {
        await c.query(`CREATE DATABASE "${name}"`);
        await c.query(`CREATE ROLE "${role}" LOGIN PASSWORD '${password}'`);
      } finally {
        await c.end();
      }
      return { database: name, role, password };
    },
    async cpuMs() {
      const postmaster = Number(readFileSync(join(data, "postmaster.pid"), "utf8").split("\n")[0]);
      const { stdout } = await run("ps", ["-o", "pid=", "--ppid", String(postmaster)]);
      const children = stdout
        .split("\n")
        .map((x) => Number(x.trim()))
        .filter((x) => x > 0);
      return procCpuMs(postmaster, true) + children.reduce((sum, pid) => sum + procCpuMs(pid, false), 0);
    },
    async destroy() {
      if (server.running) await server.stop().catch(() => undefined);
      rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    await server.start();
  } catch (e) {
    const text = existsSync(log) ? readFileSync(log, "utf8") : "";
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`PostgreSQL did not start: ${(e as Error).message}\n${text}`);
  }
  return server;
}

/** The GRANTs the README documents for the service's role: INSERT and SELECT, nothing else. */
export async function grantAuditRole(server: PostgresServer, database: string, role: string): Promise<void> {
  const c = await server.admin(database);
  try {
    await c.query(`GRANT SELECT, INSERT ON audit_records, audit_checkpoints, audit_replicas TO "${role}"`);
    await c.query(`GRANT SELECT ON audit_schema_version TO "${role}"`);
  } finally {
    await c.end();
  }
}

let shared: Promise<PostgresServer> | undefined;

/** One PostgreSQL server per mocha run (a database per test file), stopped by the root hooks. */
export function getPostgres(): Promise<PostgresServer> {
  shared ??= startPostgres();
  return shared;
}

export async function closePostgres(): Promise<void> {
  if (!shared) return;
  const s = shared;
  shared = undefined;
  await (await s.catch(() => undefined))?.destroy();
}
