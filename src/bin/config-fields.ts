// Field schemas the service configuration's sections share (config.ts, audit-cluster-config.ts),
// and the reading of the file itself (config.ts, audit-pg-command.ts).
import { readFileSync } from "node:fs";
import * as v from "valibot";
import { SignerError } from "../errors/index.js";
import { readSettingFile } from "../fs/regular-file.js";
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

/**
 * A variable's name as the settings that name one (hsm.pinEnv, audit.postgres.passwordEnv and
 * urlEnv) expect it: POSIX's convention for environment variables, upper-case letters, digits and
 * `_`, and short. A value of any other form is likely the secret itself pasted in its place.
 */
const VARIABLE_NAME = /^[A-Z_][A-Z0-9_]{0,63}$/;

export const looksLikeVariableName = (name: string): boolean => VARIABLE_NAME.test(name);

/**
 * The problem of a setting that names an environment variable which is not set: the name, when
 * it looks like one; else nothing of the value (a password, a PIN or a connection string written
 * where its variable's name goes would be echoed on stderr and into the start-up log).
 */
export function variableNotSet(name: string): string {
  return looksLikeVariableName(name)
    ? `the environment variable ${name} is not set`
    : "is not the name of a set environment variable, nor does it look like one (upper-case letters, digits and _): it may be the secret itself (a password, a PIN, a connection string), so it is not shown; give the NAME of a variable that holds the secret";
}

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
export function readablePath(resolvePath: (p: string) => string, maxBytes?: number) {
  return v.pipe(
    optionalPath(resolvePath),
    v.rawCheck(({ dataset, addIssue }) => {
      if (!dataset.typed || dataset.value === undefined) return;
      const problem = readProblem(dataset.value, maxBytes);
      if (problem !== undefined) addIssue({ message: problem });
    }),
  );
}

/** Why `path` cannot be read as a setting's file ("cannot read P (ENOENT)", "P is not a regular file (a FIFO)"...), or undefined when it can. */
export function readProblem(path: string, maxBytes?: number): string | undefined {
  const r = readSettingFile(path, maxBytes);
  return typeof r === "string" ? r : undefined;
}
