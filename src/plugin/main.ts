import { PluginError } from "./contract.js";
import { describeKey, generateSignature, getPluginMetadata } from "./commands.js";

const COMMANDS = ["get-plugin-metadata", "describe-key", "generate-signature"] as const;
/** notation sends small documents; anything this large is not a request. */
const MAX_STDIN_BYTES = 64 * 1024 * 1024;

async function readStdin(): Promise<string> {
  if (process.stdin.isTTY) return "";
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of process.stdin) {
    size += (c as Buffer).length;
    if (size > MAX_STDIN_BYTES) throw new PluginError("VALIDATION_ERROR", "the request on standard input is larger than 64 MiB");
    chunks.push(c as Buffer);
  }
  return Buffer.concat(chunks).toString("utf8");
}

function parseRequest(text: string, command: string): Record<string, unknown> {
  if (text.trim() === "") {
    if (command === "get-plugin-metadata") return {};
    throw new PluginError("VALIDATION_ERROR", `${command}: the request on standard input is empty; notation sends a JSON object`);
  }
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new PluginError("VALIDATION_ERROR", `${command}: the request on standard input is not valid JSON: ${(e as Error).message}`);
  }
  if (typeof v !== "object" || v === null || Array.isArray(v)) throw new PluginError("VALIDATION_ERROR", `${command}: the request must be a JSON object`);
  return v as Record<string, unknown>;
}

/**
 * The plugin process: one command, one JSON response on stdout and exit 0, or one error object
 * on stderr and exit 1; nothing else is ever written to either stream (§1.5).
 */
export async function main(argv: string[]): Promise<number> {
  let out: Record<string, unknown>;
  try {
    const command = argv[0] ?? "";
    if (argv.length !== 1 || !(COMMANDS as readonly string[]).includes(command)) {
      throw new PluginError("VALIDATION_ERROR", `usage: notation-hsm-signer <${COMMANDS.join("|")}> with the request on standard input (got: ${argv.join(" ") || "no command"})`);
    }
    const req = parseRequest(await readStdin(), command);
    if (command === "get-plugin-metadata") out = getPluginMetadata();
    else if (command === "describe-key") out = await describeKey(req);
    else out = await generateSignature(req);
  } catch (e) {
    const err = e instanceof PluginError ? e : new PluginError("ERROR", `unexpected failure: ${(e as Error).message}`);
    process.stderr.write(JSON.stringify({ errorCode: err.errorCode, errorMessage: err.message }));
    return 1;
  }
  process.stdout.write(JSON.stringify(out));
  return 0;
}
