import { spawnCollect, type ProcessResult } from "./process.js";
import { join } from "node:path";
import { PROJECT_ROOT } from "./softhsm.js";

/** The built plugin executable (npm run build), run through its own shebang like notation does. */
export const PLUGIN_PATH = join(PROJECT_ROOT, "dist/plugin/notation-hsm-signer");
/** A plugin run that takes longer than this is killed (and reported as timedOut). */
export const PLUGIN_KILL_AFTER_MS = 20_000;

export type PluginResult = ProcessResult;

export interface RunOptions {
  /** Full environment for the child (default: this process's environment). */
  env?: NodeJS.ProcessEnv;
  /** Another copy of the plugin to run (default PLUGIN_PATH). */
  executable?: string;
  /** Run the plugin through this program instead of its shebang: file args... PLUGIN COMMAND (e.g. node --require X). */
  prefix?: { file: string; args: string[] };
  /** Extra arguments instead of the single command (for usage-error tests); undefined means [command]. */
  argv?: string[];
  /** Keep stdin open and write nothing (stdinText is ignored), as a caller that never sends its request. */
  holdStdin?: boolean;
}

/**
 * Runs the plugin as notation does (§1.5): exec(plugin, COMMAND), the request written to stdin
 * with no trailing newline, stdin closed, stdout and stderr collected to the end.
 */
export function runPlugin(command: string | undefined, stdinText: string, env?: NodeJS.ProcessEnv, o: RunOptions = {}): Promise<PluginResult> {
  const args = o.argv ?? (command === undefined ? [] : [command]);
  const plugin = o.executable ?? PLUGIN_PATH;
  const file = o.prefix ? o.prefix.file : plugin;
  const argv = o.prefix ? [...o.prefix.args, plugin, ...args] : args;
  return spawnCollect(file, argv, stdinText, { env: env ?? o.env ?? process.env, timeoutMs: PLUGIN_KILL_AFTER_MS, holdStdin: o.holdStdin });
}
