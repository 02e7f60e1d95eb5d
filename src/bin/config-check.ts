import { createPrivateKey, X509Certificate, type KeyObject } from "node:crypto";
import { accessSync, constants, statSync, type Stats } from "node:fs";
import { dirname } from "node:path";
import { createLocalJWKSet } from "jose";
import { parseJwks } from "../auth/jwks-source.js";
import { Policy, PolicyInvalidError } from "../auth/policy.js";
import { loadTlsMaterial } from "../server/tls-material.js";
import { parseCaBundle } from "../tls/peer-certificate.js";
import { loadConfig, readPin, type ConfigFiles } from "./config.js";
import { variableNotSet } from "./config-fields.js";
import { readRegular, readSettingFile } from "../fs/regular-file.js";

/**
 * `hsm-signer config check`: the configuration (loadConfig) and what serve opens at start-up
 * from it, so that a configuration said to be valid does not then fail to serve. Throws
 * CONFIG_INVALID listing every problem at once; returns what was checked.
 */
export function checkConfig(file: string, env: NodeJS.ProcessEnv = process.env): string[] {
  const checked: string[] = [];
  loadConfig(file, env, (files, e) => {
    const problems = checkFiles(files, e);
    checked.push(...whatIsChecked(files));
    return problems;
  });
  return checked;
}

function whatIsChecked(f: ConfigFiles): string[] {
  const out = ["settings", "policy", f.hsm.pinFile ? "PIN file" : `PIN variable ${f.hsm.pinEnv}`, "PKCS#11 module"];
  if (f.tls.certFile || f.tls.keyFile || f.tls.clientCaFile || f.admin.listen) out.push("TLS files");
  if (f.tls.clientCrlFile || (f.admin.listen && f.admin.clientCrlFile)) out.push("client CRLs");
  if (f.jwt.some((j) => j.jwksFile || j.jwksCaFile)) out.push("JWKS files");
  // What was checked of the audit: the directory, or the database's settings and the files and
  // variables they name (password, connection string, CA), without connecting.
  if (f.auditDir) out.push("audit directory");
  if (f.auditPostgres) out.push("audit database settings (not connected)");
  return out;
}

/** Every problem serve would meet opening these; files loadConfig could not read are already reported there. */
export function checkFiles(f: ConfigFiles, env: NodeJS.ProcessEnv): string[] {
  const problems: string[] = [];
  problems.push(...checkModule(f.hsm.module));
  problems.push(...checkPin(f.hsm, env));
  if (f.policyFile) problems.push(...checkPolicy(f.policyFile));
  problems.push(...checkTls(f));
  f.jwt.forEach((j, i) => {
    if (j.jwksFile) problems.push(...checkJwks(`auth.jwt[${i}].jwksFile`, j.jwksFile));
    if (j.jwksCaFile) {
      const r = readRegular(`auth.jwt[${i}].jwksCaFile`, j.jwksCaFile);
      if (typeof r === "string") problems.push(r);
      else if (certificates(r).length === 0) problems.push(`auth.jwt[${i}].jwksCaFile: ${j.jwksCaFile} holds no PEM certificate`);
    }
  });
  if (f.auditDir) problems.push(...checkAuditDir(f.auditDir));
  return problems;
}

const errno = (e: unknown): string => (e as NodeJS.ErrnoException).code ?? (e as Error).message;

function statOf(path: string): Stats | string {
  try {
    return statSync(path);
  } catch (e) {
    return errno(e);
  }
}

function checkModule(module: string | undefined): string[] {
  if (!module) return [];
  const st = statOf(module);
  if (typeof st === "string") return [`hsm.module: ${module} ${st === "ENOENT" ? "does not exist" : `cannot be read (${st})`} (the PKCS#11 library, e.g. /usr/lib/softhsm/libsofthsm2.so)`];
  if (!st.isFile()) return [`hsm.module: ${module} is not a regular file (the PKCS#11 library itself, e.g. /usr/lib/softhsm/libsofthsm2.so)`];
  try {
    accessSync(module, constants.R_OK);
  } catch (e) {
    return [`hsm.module: ${module} cannot be read (${errno(e)})`];
  }
  return [];
}

/** readPin, as serve calls it at start-up; the PIN itself is never shown. */
function checkPin(hsm: ConfigFiles["hsm"], env: NodeJS.ProcessEnv): string[] {
  if (!hsm.pinFile && !env[hsm.pinEnv]) return [`hsm.pinEnv: ${variableNotSet(hsm.pinEnv)} (and there is no hsm.pinFile): serve would have no HSM PIN`];
  try {
    readPin(hsm, env);
    return [];
  } catch (e) {
    return [(e as Error).message];
  }
}

function checkPolicy(file: string): string[] {
  const r = readRegular("policy.file", file);
  if (typeof r === "string") return [r];
  try {
    Policy.parse(r.toString("utf8"), file);
    return [];
  } catch (e) {
    if (e instanceof PolicyInvalidError) return e.problems.map((p) => `policy.file: ${file}: ${p}`);
    return [`policy.file: ${file}: ${(e as Error).message}`];
  }
}

function certificates(pem: Buffer): X509Certificate[] {
  try {
    return parseCaBundle(pem);
  } catch {
    return [];
  }
}

/** Files loadConfig could not read were reported there; here: what they hold. */
function readable(path: string | undefined): Buffer | undefined {
  const r = path ? readSettingFile(path) : undefined;
  return typeof r === "string" ? undefined : r;
}

/** TLS certificates, keys and CA bundles parse, each key fits its certificate; each file is reported once (admin falls back to tls). */
function checkTls(f: ConfigFiles): string[] {
  const problems: string[] = [];
  const reported = new Set<string>();
  const once = (path: string, problem: string): void => {
    if (!reported.has(path)) problems.push(problem);
    reported.add(path);
  };
  const leafOf = (setting: string, path: string | undefined): X509Certificate | undefined => {
    const pem = readable(path);
    if (!path || !pem) return undefined;
    const leaf = certificates(pem)[0];
    if (!leaf) once(path, `${setting}: ${path} holds no PEM certificate`);
    else if (Date.parse(leaf.validTo) < Date.now()) once(path, `${setting}: the certificate in ${path} expired on ${new Date(leaf.validTo).toISOString()}`);
    return leaf;
  };
  const keyIn = (setting: string, path: string | undefined): KeyObject | undefined => {
    const pem = readable(path);
    if (!path || !pem) return undefined;
    try {
      return createPrivateKey(pem);
    } catch (e) {
      once(path, `${setting}: ${path} is not a PEM private key (${(e as Error).message})`);
      return undefined;
    }
  };
  const pair = (section: string, certFile: string | undefined, keyFile: string | undefined, caFile: string | undefined): void => {
    const leaf = leafOf(`${section}.certFile`, certFile);
    const key = keyIn(`${section}.keyFile`, keyFile);
    if (leaf && key && keyFile && !leaf.checkPrivateKey(key)) once(`${certFile}\0${keyFile}`, `${section}.keyFile: ${keyFile} is not the private key of the certificate in ${certFile}`);
    const caPem = readable(caFile);
    if (caFile && caPem && certificates(caPem).length === 0) once(caFile, `${section}.clientCaFile: ${caFile} holds no PEM certificate`);
  };
  // With CRLs, the whole material as serve loads it (which CA each CRL is from, its signature, its nextUpdate).
  const crls = (section: string, x: { certFile: string | undefined; keyFile: string | undefined; clientCaFile: string | undefined; clientCrlFile: string | undefined }): void => {
    const { certFile, keyFile, clientCaFile, clientCrlFile } = x;
    if (!certFile || !keyFile || !clientCrlFile || problems.length > 0 || reported.has(clientCrlFile)) return;
    try {
      const m = loadTlsMaterial({ section, certFile, keyFile, clientCaFile, clientCrlFile });
      for (const w of m.warnings) once(`${clientCrlFile}\0${w}`, w);
    } catch (e) {
      once(clientCrlFile, (e as Error).message);
    }
    reported.add(clientCrlFile);
  };
  pair("tls", f.tls.certFile, f.tls.keyFile, f.tls.clientCaFile);
  if (f.admin.listen !== undefined) pair("admin", f.admin.certFile, f.admin.keyFile, f.admin.clientCaFile);
  crls("tls", f.tls);
  if (f.admin.listen !== undefined) crls("admin", f.admin);
  return problems;
}

function checkJwks(setting: string, file: string): string[] {
  const r = readRegular(setting, file);
  if (typeof r === "string") return [r];
  let jwks: unknown;
  try {
    jwks = JSON.parse(r.toString("utf8"));
  } catch {
    return [`${setting}: ${file} is not valid JSON`];
  }
  const keys = (jwks as { keys?: unknown } | null)?.keys;
  if (!Array.isArray(keys) || keys.length === 0) return [`${setting}: ${file} is not a JWKS (a JSON object with a non-empty "keys" list)`];
  try {
    // The rule serve applies when it loads and reloads the file, so both refuse the same files.
    createLocalJWKSet(parseJwks(r.toString("utf8")));
  } catch (e) {
    return [`${setting}: ${file}: ${(e as Error).message}`];
  }
  return [];
}

/** The audit directory, or where serve would create it: a directory it can write. */
function checkAuditDir(dir: string): string[] {
  let at = dir;
  for (;;) {
    const st = statOf(at);
    if (typeof st !== "string") {
      if (!st.isDirectory()) return [`audit.dir: ${at} ${at === dir ? "is" : `(on the way to ${dir}) is`} not a directory`];
      try {
        accessSync(at, constants.W_OK | constants.X_OK);
      } catch (e) {
        return [`audit.dir: ${at === dir ? dir : `${dir} cannot be created: ${at}`} is not writable (${errno(e)})`];
      }
      return [];
    }
    if (st !== "ENOENT" && st !== "ENOTDIR") return [`audit.dir: cannot use ${at} (${st})`];
    const up = dirname(at);
    if (up === at) return [`audit.dir: no existing parent of ${dir}`];
    at = up;
  }
}
