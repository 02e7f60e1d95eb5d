// Field schemas the service configuration's sections share (config.ts, audit-cluster-config.ts),
// and the reading of the file itself (config.ts, audit-pg-command.ts).
import { closeSync, constants, fstatSync, openSync, readFileSync, readSync } from "node:fs";
import * as v from "valibot";
import { SignerError } from "../errors/index.js";
import { parseYamlText } from "../schema/index.js";

/**
 * The configuration file's YAML as a value; CONFIG_INVALID when it cannot be read or parsed. A
 * syntax error says where (line, column), never what the line holds: it may hold a secret.
 */
export function readConfigYaml(file: string): unknown {
  let yaml: ReturnType<typeof parseYamlText>;
  try {
    // What throws here (a read error, too many aliases) quotes none of the file's text.
    yaml = parseYamlText(readFileSync(file, "utf8"));
  } catch (e) {
    throw new SignerError("CONFIG_INVALID", `cannot read configuration ${file}: ${(e as Error).message}`);
  }
  if (!yaml.ok) throw new SignerError("CONFIG_INVALID", `cannot read configuration ${file}: ${yaml.problems.join("; ")}`);
  return yaml.value;
}

/**
 * A string setting that may be left out: missing, null and "" all mean unset (an environment
 * override set to "" unsets). Always run (its default is ""), so a check piped after it sees
 * `undefined` for a missing setting.
 */
export const optionalString = v.pipe(
  v.optional(v.nullable(v.string("must be a string")), ""),
  v.transform((s): string | undefined => (s === null || s === "" ? undefined : s)),
);

/** A whole number from min to max, `def` when missing. */
export function integer(min: number, max: number, def: number) {
  return v.optional(
    v.custom<number>((n) => typeof n === "number" && Number.isInteger(n) && n >= min && n <= max, `must be an integer from ${min} to ${max}`),
    def,
  );
}

/** A whole number of seconds from min to max (`def` when missing), as milliseconds. */
export function secondsAsMs(min: number, max: number, def: number) {
  return v.pipe(
    integer(min, max, def),
    v.transform((s) => s * 1000),
  );
}

const HOST_PORT = /^(\[[0-9a-fA-F:]+\]|[A-Za-z0-9.-]+):\d{1,5}$/;

/** host:port (a listener), optional. */
export const optionalHostPort = v.pipe(
  optionalString,
  v.check(
    (a) => a === undefined || HOST_PORT.test(a),
    (issue) => `"${String(issue.input)}" is not host:port`,
  ),
);

export const isHostPort = (a: unknown): a is string => typeof a === "string" && HOST_PORT.test(a);

/** A path setting that may be left out, resolved by `resolvePath` (relative to the configuration file's folder). */
export function optionalPath(resolvePath: (p: string) => string) {
  return v.pipe(
    optionalString,
    v.transform((p) => (p === undefined ? undefined : resolvePath(p))),
  );
}

/** The same, and a file that must be readable when given (serve reads it at once): see readSettingFile. */
export function readablePath(resolvePath: (p: string) => string) {
  return v.pipe(
    optionalPath(resolvePath),
    v.rawCheck(({ dataset, addIssue }) => {
      if (!dataset.typed || dataset.value === undefined) return;
      const problem = readProblem(dataset.value);
      if (problem !== undefined) addIssue({ message: problem });
    }),
  );
}

/** Why `path` cannot be read as a setting's file ("cannot read P (ENOENT)", "P is not a regular file (a FIFO)"...), or undefined when it can. */
export function readProblem(path: string): string | undefined {
  const r = readSettingFile(path);
  return typeof r === "string" ? r : undefined;
}

/** readSettingFile, its problem prefixed with the setting's name ("tls.certFile: ..."). */
export function readRegular(setting: string, path: string): Buffer | string {
  const r = readSettingFile(path);
  return typeof r === "string" ? `${setting}: ${r}` : r;
}

/** The largest file a setting may name: certificates, keys, CA bundles, a PIN, a policy, a JWKS are far smaller. */
export const MAX_SETTING_FILE_BYTES = 1024 * 1024;

/**
 * The bytes of a file a setting names, or the problem: a regular file (a symlink to one is fine)
 * of at most MAX_SETTING_FILE_BYTES, nothing else. Opened non-blocking and checked with fstat on
 * the open descriptor before any read, so a FIFO with no writer, a device (/dev/zero, a terminal)
 * or a socket is refused at once instead of hanging `config check` or `serve`, or never ending.
 */
export function readSettingFile(path: string): Buffer | string {
  const errno = (e: unknown): string => (e as NodeJS.ErrnoException).code ?? (e as Error).message;
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
  } catch (e) {
    return `cannot read ${path} (${errno(e)})`;
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile())
      return `${path} is not a regular file (${st.isDirectory() ? "a directory" : st.isFIFO() ? "a FIFO" : st.isCharacterDevice() ? "a character device" : st.isSocket() ? "a socket" : "a device"})`;
    const tooLarge = `${path} is larger than the limit of ${MAX_SETTING_FILE_BYTES} bytes (1 MiB)`;
    if (st.size > MAX_SETTING_FILE_BYTES) return tooLarge;
    // Read to the end, whatever fstat said (a file that grows meanwhile), but never past the limit.
    const buf = Buffer.allocUnsafe(MAX_SETTING_FILE_BYTES + 1);
    let n = 0;
    for (let r = -1; r !== 0; n += r) {
      if (n > MAX_SETTING_FILE_BYTES) return tooLarge;
      r = readSync(fd, buf, n, buf.length - n, null);
    }
    return Buffer.from(buf.subarray(0, n));
  } catch (e) {
    return `cannot read ${path} (${errno(e)})`;
  } finally {
    closeSync(fd);
  }
}
