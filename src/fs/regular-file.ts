// Reading a file that a setting names (the service's configuration, the policy and JWKS files, the plugin's pluginConfig).
// A bottom layer like errors/ and log/: it imports node:fs and nothing of the project.
import { closeSync, constants, fstatSync, openSync, readSync } from "node:fs";

/** The largest file a setting may name: certificates, keys, CA bundles, a PIN, a policy, a JWKS, a token are far smaller. */
export const MAX_SETTING_FILE_BYTES = 1024 * 1024;

/** The largest certificate revocation list file (tls.clientCrlFile): a large CA's CRLs run to megabytes. */
export const MAX_CRL_FILE_BYTES = 64 * 1024 * 1024;

/** Why a file was not read: the errno code, what it is instead of a regular file, or that it is too large (than `limit` bytes). */
export type RegularFileProblem = { kind: "unreadable"; code: string } | { kind: "not-regular"; what: string } | { kind: "too-large"; size: number | undefined; limit: number };

/**
 * The bytes of a regular file (a symlink to one is fine) of at most `maxBytes`, or why not. Opened non-blocking and checked with fstat on the open descriptor (no race with a path
 * swapped in between) before any read, so a FIFO with no writer, a device (/dev/zero, a
 * terminal) or a socket is refused at once instead of hanging, or never ending.
 */
export function readRegularFile(path: string, maxBytes = MAX_SETTING_FILE_BYTES): Buffer | RegularFileProblem {
  const unreadable = (e: unknown): RegularFileProblem => ({ kind: "unreadable", code: (e as NodeJS.ErrnoException).code ?? (e as Error).message });
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK | constants.O_NOCTTY);
  } catch (e) {
    return unreadable(e);
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile())
      return { kind: "not-regular", what: st.isDirectory() ? "a directory" : st.isFIFO() ? "a FIFO" : st.isCharacterDevice() ? "a character device" : st.isSocket() ? "a socket" : "a device" };
    if (st.size > maxBytes) return { kind: "too-large", size: st.size, limit: maxBytes };
    // Read to the end, whatever fstat said (a file that grows meanwhile), but never past the limit.
    let buf = Buffer.allocUnsafe(Math.min(maxBytes, st.size + 4096) + 1);
    let n = 0;
    for (let r = -1; r !== 0; n += r) {
      if (n > maxBytes) return { kind: "too-large", size: undefined, limit: maxBytes };
      if (n === buf.length) buf = Buffer.concat([buf, Buffer.allocUnsafe(Math.min(buf.length, maxBytes + 1 - buf.length))]);
      r = readSync(fd, buf, n, buf.length - n, null);
    }
    return Buffer.from(buf.subarray(0, n));
  } catch (e) {
    return unreadable(e);
  } finally {
    closeSync(fd);
  }
}

/** What a refusal says: "cannot read P (ENOENT)", "P is not a regular file (a FIFO)", "P is larger than the limit...". */
export function regularFileProblem(path: string, r: RegularFileProblem): string {
  if (r.kind === "unreadable") return `cannot read ${path} (${r.code})`;
  if (r.kind === "not-regular") return `${path} is not a regular file (${r.what})`;
  return `${path} is larger than the limit of ${r.limit} bytes (${r.limit / (1024 * 1024)} MiB)`;
}

/**
 * The bytes of a file a setting names, or the problem ("cannot read P (ENOENT)", "P is not a
 * regular file (a FIFO)", "P is larger than the limit..."): see readRegularFile.
 */
export function readSettingFile(path: string, maxBytes?: number): Buffer | string {
  const r = readRegularFile(path, maxBytes);
  return Buffer.isBuffer(r) ? r : regularFileProblem(path, r);
}

/** readSettingFile, its problem prefixed with the setting's name ("tls.certFile: ..."). */
export function readRegular(setting: string, path: string, maxBytes?: number): Buffer | string {
  const r = readSettingFile(path, maxBytes);
  return typeof r === "string" ? `${setting}: ${r}` : r;
}
