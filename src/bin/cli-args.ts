import { isKeySpec, type KeySpec } from "../signing/key-spec.js";

/** A command line mistake: the command prints its usage and exits 2. */
export class UsageError extends Error {}

export function need(v: string | undefined, flag: string): string {
  if (!v) throw new UsageError(`${flag} is required`);
  return v;
}

export function spec(v: string | undefined, flag: string): KeySpec | undefined {
  if (v === undefined) return undefined;
  if (!isKeySpec(v)) throw new UsageError(`${flag} must be one of RSA-2048, RSA-3072, RSA-4096, EC-256, EC-384, EC-521`);
  return v;
}
