import { createHash, createPrivateKey, randomBytes, X509Certificate } from "node:crypto";
import { closeSync, existsSync, fsyncSync, linkSync, lstatSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, statSync, writeFileSync, type Stats } from "node:fs";
import { basename, dirname, isAbsolute, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { assertNever } from "../errors/index.js";
import { toPem } from "../signing/pem.js";
import { ADMIN_USAGE, AdminUsageError, parseAdminArgs, type AdminCommand, type ConnectionOptions } from "./admin-args.js";
import { GrpcCallError, KeyAdminClient, Status, type InventoryKey, type KeyAdminClientOptions } from "../client/index.js";
import { describeCallFailure } from "./describe-call-failure.js";
import { chainToPem, DEFAULT_WARN_DAYS, describeChain, formatInventory, formatJson, formatSlots } from "./admin-format.js";
import { defaultNotationDir, notationCertAddCommand, notationKeyAddCommand, shellQuote, subjectIdentityProblems, trustPolicyFor, trustStoreRootPath } from "./notation-setup.js";

export { ADMIN_USAGE };

/** What the commands need of KeyAdmin (KeyAdminClient; tests may pass a stand-in). */
export type KeyAdminApi = Pick<
  KeyAdminClient,
  | "endpoint"
  | "close"
  | "listSlots"
  | "generateKey"
  | "rotateKey"
  | "createCsr"
  | "importCertificateChain"
  | "createTestChain"
  | "setKeyState"
  | "destroyKeyVersion"
  | "getInventory"
  | "getCertificateChain"
>;

export interface AdminIo {
  env: NodeJS.ProcessEnv;
  /** Writes to stdout; a newline is added when the text has none. */
  out(text: string): void;
  err(text: string): void;
  connect(options: KeyAdminClientOptions): KeyAdminApi;
  /** The directory paths are printed relative to (default: process.cwd()). */
  cwd?: string;
  /** Where the plugin package is (default: dist/ of this installation, where npm run package-plugin writes it). */
  pluginPackageFile?: string;
}

/**
 * What the command may take beyond --timeout: every KeyAdmin call shares the deadline, so this
 * only catches what is not a call (the margin keeps a call's own deadline message first).
 */
const COMMAND_TIMEOUT_MARGIN_MS = 2_000;

/** A failure on this side (a file that cannot be read or written): exit 1 with the message. */
export class AdminFailure extends Error {
  override name = "AdminFailure";
}

function line(write: (s: string) => boolean): (text: string) => void {
  return (text) => {
    write(text.endsWith("\n") ? text : `${text}\n`);
  };
}

/** Handles `hsm-signer slots|keys|certs ...`; argv starts at the command word ("slots", "keys", "certs"). Returns the exit code (0 ok, 1 failure reported, 2 usage). */
export async function runAdminCommand(argv: string[]): Promise<number> {
  return runAdmin(argv, {
    env: process.env,
    out: line((s) => process.stdout.write(s)),
    err: line((s) => process.stderr.write(s)),
    connect: (o) => new KeyAdminClient(o),
  });
}

/** runAdminCommand with its environment, output and connection given (for tests). */
export async function runAdmin(argv: string[], io: AdminIo): Promise<number> {
  let client: KeyAdminApi | undefined;
  let connection: ConnectionOptions | undefined;
  let command: AdminCommand | undefined;
  try {
    const parsed = parseAdminArgs(argv, io.env);
    if (parsed.help) {
      io.out(parsed.usage);
      return 0;
    }
    connection = parsed.connection;
    command = parsed.command;
    client = io.connect(clientOptions(connection));
    await withinBudget(execute(parsed.command, client, io, parsed.json, { "--cert": connection.certFile, "--key": connection.keyFile, "--ca": connection.caFile }), connection);
    return 0;
  } catch (e) {
    if (e instanceof AdminUsageError) {
      io.err(`hsm-signer: ${e.message}\n\n${e.usage}`);
      return 2;
    }
    if (e instanceof GrpcCallError && connection) {
      const hint = isTimeout(e) && command ? unfinishedChange(command) : "";
      io.err(`hsm-signer: ${describeCallFailure(e, { endpoint: connection.endpoint, timeoutMs: connection.timeoutMs, caGiven: connection.caFile !== undefined })}${hint}`);
      return 1;
    }
    if (e instanceof AdminFailure) {
      const hint = e instanceof CommandTimeout && command ? unfinishedChange(command) : "";
      io.err(`hsm-signer: ${e.message}${hint}`);
      return 1;
    }
    io.err(`hsm-signer: unexpected failure: ${(e as Error).message}`);
    return 1;
  } finally {
    client?.close();
  }
}

/** The command's own --timeout budget ran out (not a call's deadline). */
class CommandTimeout extends AdminFailure {
  override name = "CommandTimeout";
}

function isTimeout(e: GrpcCallError): boolean {
  return e.errorCode !== undefined ? e.errorCode === "DEADLINE_EXCEEDED" : e.code === Status.DEADLINE_EXCEEDED;
}

/**
 * After a change timed out, the service may still make it (a key generation runs to its end
 * whatever the caller's deadline): what to look at before running the command again, which for
 * a rotation would make one more version.
 */
function unfinishedChange(cmd: AdminCommand): string {
  switch (cmd.kind) {
    case "keys-generate":
    case "keys-rotate":
    case "keys-set-state":
    case "keys-destroy":
    case "keys-test-chain":
    case "certs-import":
      return `; the service may still make the change: look with hsm-signer keys list --key-id ${shellQuote(cmd.keyId)} before running the command again${cmd.kind === "keys-rotate" ? " (another rotate makes another version)" : ""}`;
    default:
      return "";
  }
}

/** The command's work, or a failure once --timeout (and a margin) has passed. */
async function withinBudget<T>(work: Promise<T>, c: ConnectionOptions): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new CommandTimeout(`the command did not finish within ${c.timeoutMs / 1000}s (--timeout) against KeyAdmin at ${c.endpoint}`)),
      c.timeoutMs + COMMAND_TIMEOUT_MARGIN_MS,
    );
  });
  try {
    return await Promise.race([work, expired]);
  } finally {
    clearTimeout(timer);
  }
}

function readFile(path: string, what: string): Buffer {
  try {
    return readFileSync(path);
  } catch (e) {
    throw new AdminFailure(`cannot read ${what} ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

/** The file's stat (of a symbolic link itself with `follow` false), or undefined when there is none. */
function statOf(path: string, follow = true): Stats | undefined {
  try {
    return follow ? statSync(path) : lstatSync(path);
  } catch {
    return undefined;
  }
}

/**
 * A new file beside `path` (owner-only, 0600), written in full and flushed, so that a failure
 * leaves no half-written file at its name; the caller renames or links it into place.
 */
function writeTemporary(path: string, data: string): string {
  const tmp = join(dirname(path), `.${basename(path)}.${randomBytes(6).toString("hex")}.tmp`);
  const fd = openSync(tmp, "wx", 0o600);
  let done = false;
  try {
    writeFileSync(fd, data);
    fsyncSync(fd);
    done = true;
  } finally {
    closeSync(fd);
    if (!done) rmSync(tmp, { force: true });
  }
  return tmp;
}

/**
 * Writes an output file (--out, --root-out) whole or not at all, readable by its owner only. It
 * replaces a regular file, never one of the command's own inputs (--cert, --key, --ca): an --out
 * that names the mTLS key would otherwise destroy it.
 */
function writeFile(path: string, data: string, what: string, inputs: Partial<Record<string, string>>): void {
  const target = statOf(path);
  if (target && !target.isFile()) throw new AdminFailure(`refusing to write ${what} ${path}: it exists and is not a regular file`);
  if (target) {
    for (const [flag, input] of Object.entries(inputs)) {
      const s = input === undefined ? undefined : statOf(input);
      if (s && s.dev === target.dev && s.ino === target.ino) throw new AdminFailure(`refusing to write ${what} ${path}: it is the ${flag} file of this command`);
    }
  }
  let tmp: string | undefined;
  try {
    tmp = writeTemporary(path, data);
    renameSync(tmp, path);
  } catch (e) {
    if (tmp) rmSync(tmp, { force: true });
    throw new AdminFailure(`cannot write ${what} ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

/**
 * A private key (PEM of any kind, or PKCS#8, SEC1 or PKCS#1 DER) given among the certificate
 * files would leave this machine in the request and could reach the service's logs and audit.
 */
function holdsPrivateKey(data: Buffer): boolean {
  if (/-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----/.test(data.toString("latin1"))) return true;
  for (const type of ["pkcs8", "sec1", "pkcs1"] as const) {
    try {
      createPrivateKey({ key: data, format: "der", type });
      return true;
    } catch {
      // not this encoding
    }
  }
  return false;
}

/** A file to import, read before any call; a private key is refused, its bytes never sent. */
function certificateFile(path: string): Buffer {
  const data = readFile(path, "certificate file");
  if (holdsPrivateKey(data)) throw new AdminFailure(`refusing to send ${path}: it holds a private key, not a certificate; nothing was sent`);
  return data;
}

function clientOptions(c: ConnectionOptions): KeyAdminClientOptions {
  return {
    endpoint: c.endpoint,
    ca: c.caFile ? readFile(c.caFile, "--ca") : undefined,
    cert: readFile(c.certFile, "--cert"),
    key: readFile(c.keyFile, "--key"),
    serverName: c.serverName,
    timeoutMs: c.timeoutMs,
  };
}

const ref = (keyId: string, version: number): string => `${keyId}@v${version}`;

function keyTable(key: InventoryKey | undefined): string[] {
  return key ? ["", formatInventory([key])] : [];
}

async function execute(cmd: AdminCommand, client: KeyAdminApi, io: AdminIo, json: boolean, inputs: Partial<Record<string, string>>): Promise<void> {
  const print = (response: unknown, text: () => string): void => io.out(json ? formatJson(response) : text());
  switch (cmd.kind) {
    case "slots": {
      const r = await client.listSlots();
      print(r, () => formatSlots(r.slots));
      return;
    }
    case "keys-list": {
      const r = await client.getInventory({ keyId: cmd.keyId ?? "", expiryWarningDays: cmd.warnDays ?? 0 });
      print(r, () => formatInventory(r.keys, cmd.warnDays ?? DEFAULT_WARN_DAYS));
      return;
    }
    case "keys-generate": {
      const r = await client.generateKey({ keyId: cmd.keyId, keySpec: cmd.keySpec, tokenLabel: cmd.tokenLabel ?? "" });
      print(r, () =>
        [
          `generated key "${cmd.keyId}" version ${r.keyVersion} (${cmd.keySpec})`,
          ...keyTable(r.key),
          "",
          `next: hsm-signer certs csr --key-id ${shellQuote(cmd.keyId)} --subject "CN=..., O=..., ST=..., C=..." and import the issued chain`,
          `      with hsm-signer certs import, or make a test chain with hsm-signer keys test-chain`,
        ].join("\n"),
      );
      return;
    }
    case "keys-rotate": {
      const r = await client.rotateKey({ keyId: cmd.keyId, keySpec: cmd.keySpec ?? "" });
      print(r, () =>
        [
          `key "${cmd.keyId}" has a new version ${r.keyVersion}; signing moves to it once it has a certificate chain`,
          ...keyTable(r.key),
          "",
          `next: hsm-signer certs csr --key-id ${shellQuote(cmd.keyId)} --version ${r.keyVersion} --subject "CN=..., O=..., ST=..., C=..."`,
        ].join("\n"),
      );
      return;
    }
    case "keys-set-state": {
      const r = await client.setKeyState({ keyId: cmd.keyId, keyVersion: cmd.version, enabled: cmd.enabled, reason: cmd.reason ?? "" });
      const what = cmd.version ? ref(cmd.keyId, cmd.version) : `key "${cmd.keyId}" (every version)`;
      print(r, () => [`${cmd.enabled ? "enabled" : "disabled"} ${what}`, ...keyTable(r.key)].join("\n"));
      return;
    }
    case "keys-destroy": {
      const r = await client.destroyKeyVersion({
        keyId: cmd.keyId,
        keyVersion: cmd.version,
        confirm: cmd.confirm,
        destroyCertificate: cmd.destroyCertificate,
        acknowledgeSigned: cmd.acknowledgeSigned,
      });
      print(r, () => [`destroyed ${ref(cmd.keyId, cmd.version)}: ${r.destroyed.join(", ") || "nothing"}`, ...keyTable(r.key)].join("\n"));
      return;
    }
    case "keys-test-chain": {
      const r = await client.createTestChain({
        keyId: cmd.keyId,
        keySpec: cmd.keySpec,
        rootKeyId: cmd.rootKeyId ?? "",
        rootKeySpec: cmd.rootKeySpec ?? "",
        organization: cmd.organization ?? "",
        state: cmd.state ?? "",
        country: cmd.country ?? "",
        validityDays: cmd.validityDays ?? 0,
      });
      const root = r.certificateChain[r.certificateChain.length - 1];
      if (cmd.rootOut) {
        if (!root) throw new AdminFailure(`KeyAdmin returned no certificates for "${cmd.keyId}"; nothing written to ${cmd.rootOut}`);
        writeFile(cmd.rootOut, toPem(root), "--root-out", inputs);
      }
      print(r, () => {
        const lines = [
          `key "${cmd.keyId}" (${cmd.keySpec}) version ${r.keyVersion}: chain of ${r.certificateChain.length} certificates on the token; ${r.created.length ? `created ${r.created.join(", ")}` : "nothing to create, all present"}`,
          ...describeChain(r.certificateChain),
        ];
        if (cmd.rootOut) lines.push(`root certificate written to ${cmd.rootOut} (for: notation cert add --type ca --store <name> ${shellQuote(cmd.rootOut)})`);
        return lines.join("\n");
      });
      return;
    }
    case "certs-csr": {
      const r = await client.createCsr({ keyId: cmd.keyId, keyVersion: cmd.version, subject: cmd.subject });
      if (cmd.out) writeFile(cmd.out, r.csrPem, "--out", inputs);
      if (json) io.out(formatJson(r));
      else io.out(cmd.out ? `CSR for ${ref(cmd.keyId, r.keyVersion)} written to ${cmd.out}` : r.csrPem);
      return;
    }
    case "certs-import": {
      const certificates = cmd.files.map((f) => certificateFile(f));
      const r = await client.importCertificateChain({ keyId: cmd.keyId, keyVersion: cmd.version, certificates, strictOrder: cmd.strictOrder });
      print(r, () =>
        [
          `stored a chain of ${r.certificateChain.length} certificates for ${ref(r.keyId || cmd.keyId, r.keyVersion)} (${writtenSummary(r.stored, r.certificateChain.length)}):`,
          ...describeChain(r.certificateChain),
        ].join("\n"),
      );
      return;
    }
    case "certs-chain": {
      const r = await client.getCertificateChain({ keyId: cmd.keyId, keyVersion: cmd.version });
      if (cmd.out) writeFile(cmd.out, chainToPem(r.certificateChain), "--out", inputs);
      if (json) io.out(formatJson(r));
      else io.out(cmd.out ? `chain of ${r.certificateChain.length} certificates for ${ref(r.keyId || cmd.keyId, r.keyVersion)} written to ${cmd.out}` : chainToPem(r.certificateChain));
      return;
    }
    case "keys-notation-setup":
      await notationSetup(cmd, client, io, json);
      return;
    default:
      assertNever(cmd);
  }
}

/** "all 3 written", "1 written, 2 already on the token", "none written, all 2 already on the token". */
export function writtenSummary(stored: number, total: number): string {
  if (stored >= total) return total === 1 ? "written to the token" : `all ${total} written to the token`;
  if (stored === 0) return total === 1 ? "already on the token, nothing written" : `all ${total} already on the token, nothing written`;
  return `${stored} written, ${total - stored} already on the token`;
}

function packageVersion(): string {
  try {
    return (JSON.parse(readFileSync(new URL("../../../package.json", import.meta.url), "utf8")) as { version: string }).version;
  } catch {
    return "<version>";
  }
}

/**
 * The plugin package as a path that works from the current directory (relative below it,
 * absolute otherwise), and its SHA-256 when it is there (npm run build removes it).
 */
function pluginPackage(io: AdminIo): { file: string; shown: string; root: string; sha256: string | undefined } {
  // dist/src/admin/ -> the installation's root, where package-plugin writes dist/notation-hsm-signer_<version>.tar.gz.
  const root = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
  const file = resolve(io.pluginPackageFile ?? resolve(root, "dist", `notation-hsm-signer_${packageVersion()}.tar.gz`));
  const rel = relative(io.cwd ?? process.cwd(), file);
  const shown = rel && !rel.startsWith("..") && !isAbsolute(rel) ? rel : file;
  let sha256: string | undefined;
  try {
    if (statSync(file).isFile()) sha256 = createHash("sha256").update(readFileSync(file)).digest("hex");
  } catch {
    sha256 = undefined;
  }
  return { file, shown, root, sha256 };
}

/** Parses a trust store file notation would load (PEM or DER); undefined when it is neither. */
function certificateIn(data: Buffer): X509Certificate | undefined {
  try {
    return new X509Certificate(data);
  } catch {
    return undefined;
  }
}

/** A file already at the root's name: the same root is fine (false: nothing written), anything else is refused. */
function keepExistingRoot(path: string, root: Buffer): false {
  const existing = certificateIn(readFile(path, "trust store file"));
  if (existing && existing.raw.equals(root)) return false;
  throw new AdminFailure(
    `refusing to overwrite ${path}: it holds ${existing ? `another certificate (${existing.subject.split("\n").join(", ")}, SHA-256 ${existing.fingerprint256})` : "something that is not a certificate"}; remove it first if it should be replaced`,
  );
}

/** Writes the root into notation's trust store once; the same root already there is fine, another is refused. */
function installRoot(path: string, root: Buffer): boolean {
  const storeDir = dirname(path);
  if (existsSync(storeDir) && lstatSync(storeDir).isSymbolicLink()) {
    throw new AdminFailure(`${storeDir} is a symbolic link, which notation refuses as a trust store (notation-plugin-protocol.md §6.1)`);
  }
  // lstat: a dangling symbolic link is there too (and the link below would meet it).
  if (statOf(path, false)) return keepExistingRoot(path, root);
  let tmp: string | undefined;
  try {
    // Owner-only, as notation cert add makes its store (0700 folders, 0600 files).
    mkdirSync(storeDir, { recursive: true, mode: 0o700 });
    tmp = writeTemporary(path, toPem(root));
    // A hard link puts the whole file at its name at once, and never replaces a file that
    // appeared since the check above (EEXIST): it is then checked as any existing one.
    linkSync(tmp, path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "EEXIST" && tmp !== undefined) return keepExistingRoot(path, root);
    throw new AdminFailure(`cannot write ${path}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  } finally {
    if (tmp) rmSync(tmp, { force: true });
  }
  return true;
}

async function notationSetup(cmd: Extract<AdminCommand, { kind: "keys-notation-setup" }>, client: KeyAdminApi, io: AdminIo, json: boolean): Promise<void> {
  const chain = await client.getCertificateChain({ keyId: cmd.keyId, keyVersion: 0 });
  const root = chain.certificateChain[chain.certificateChain.length - 1];
  if (!root) throw new AdminFailure(`key "${cmd.keyId}" has no certificate chain yet (hsm-signer certs import, or hsm-signer keys test-chain)`);
  const problems = subjectIdentityProblems(chain.leafSubject);
  if (problems.length) {
    throw new AdminFailure(
      `the leaf subject "${chain.leafSubject}" of ${ref(cmd.keyId, chain.keyVersion)} cannot be a notation x509.subject identity: ${problems.join("; ")} (notation-plugin-protocol.md §5.4); issue a leaf with C, ST and O`,
    );
  }
  // key_spec lets the plugin answer describe-key without a call (src/plugin/plugin-config.ts).
  const inventory = await client.getInventory({ keyId: cmd.keyId, expiryWarningDays: 0 });
  const keySpec = inventory.keys.find((k) => k.keyId === cmd.keyId)?.versions.find((v) => v.version === chain.keyVersion)?.keySpec || undefined;

  const notationDir = resolve(cmd.notationDir ?? defaultNotationDir(io.env));
  const rootFile = trustStoreRootPath(notationDir, cmd.store, cmd.keyId);
  const written = installRoot(rootFile, root);
  const rootCert = certificateIn(root);

  const pkg = pluginPackage(io);
  const abs = (f: string | undefined): string | undefined => (f ? resolve(f) : undefined);
  const commands = {
    pluginInstall: pkg.sha256
      ? `notation plugin install --file ${shellQuote(pkg.shown)} --sha256sum ${pkg.sha256}`
      : `notation plugin install --file ${shellQuote(pkg.shown)} --sha256sum "$(cut -d' ' -f1 ${shellQuote(`${pkg.shown}.sha256`)})"`,
    keyAdd: notationKeyAddCommand({
      keyName: cmd.keyName,
      keyId: cmd.keyId,
      endpoint: cmd.pluginEndpoint,
      caFile: abs(cmd.caFile),
      clientCertFile: abs(cmd.clientCertFile),
      clientKeyFile: abs(cmd.clientKeyFile),
      keySpec,
    }),
    // For another machine: notation cert add copies FILE into the store and refuses an existing name.
    certAdd: notationCertAddCommand(cmd.store, basename(rootFile)),
  };
  const trustPolicy = trustPolicyFor(cmd.keyId, cmd.store, chain.leafSubject);
  if (json) {
    io.out(
      formatJson({
        keyId: cmd.keyId,
        keyVersion: chain.keyVersion,
        leafSubject: chain.leafSubject,
        keySpec: keySpec ?? "",
        rootFile,
        written,
        rootCertificate: toPem(root),
        pluginPackage: pkg.file,
        pluginPackageBuilt: pkg.sha256 !== undefined,
        commands,
        trustPolicy,
      }),
    );
    return;
  }
  io.out(
    [
      `root certificate of ${ref(cmd.keyId, chain.keyVersion)}: ${rootCert ? `${rootCert.subject.split("\n").join(", ")}, SHA-256 ${rootCert.fingerprint256}` : "(unparsable)"}`,
      written ? `written to ${rootFile}` : `already in ${rootFile} (unchanged)`,
      "",
      pkg.sha256
        ? `1. Install the plugin (the package npm run package-plugin built in ${dirname(pkg.file)}):`
        : `1. Install the plugin: ${pkg.file} is not built yet; build it with: (cd ${shellQuote(pkg.root)} && npm run package-plugin), then:`,
      `  ${commands.pluginInstall}`,
      "",
      `2. Add the signing key${keySpec ? ` (update key_spec if the key is rotated to another spec)` : ""}:`,
      `  ${commands.keyAdd}`,
      "",
      `3. Trust the root: done above for this notation directory. Elsewhere, copy ${basename(rootFile)} there and run:`,
      `  ${commands.certAdd}`,
      "",
      `4. Trust policy: replace "*" in registryScopes with your repositories (e.g. registry.example.com/team/app),`,
      `   save it as trustpolicy.json and run: notation policy import trustpolicy.json`,
      JSON.stringify(trustPolicy, null, 2),
    ].join("\n"),
  );
}
