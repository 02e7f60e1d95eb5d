/** Structured JSON logs, one object a line. Callers pass fields, never secrets; known secret keys are redacted anyway. */
import { AsyncLocalStorage } from "node:async_hooks";

export type LogLevel = "debug" | "info" | "warn" | "error";
const ORDER: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };
const SECRET_KEYS = /pin|password|secret|token|private_?key|authorization/i;

export interface Logger {
  /** Whether a level is written, so a hot path can skip building its fields. */
  enabled(level: LogLevel): boolean;
  debug(msg: string, fields?: Record<string, unknown>): void;
  info(msg: string, fields?: Record<string, unknown>): void;
  warn(msg: string, fields?: Record<string, unknown>): void;
  error(msg: string, fields?: Record<string, unknown>): void;
}

function redact(fields: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(fields)) {
    if (SECRET_KEYS.test(k)) out[k] = "[redacted]";
    else if (v instanceof Error) out[k] = { name: v.name, message: v.message, stack: v.stack };
    else out[k] = v;
  }
  return out;
}

/** Fields of the request being handled (its request id), carried through every await that follows. */
const context = new AsyncLocalStorage<Readonly<Record<string, unknown>>>();

/**
 * Runs `fn` with `fields` (e.g. { requestId }) added to every line that any logger writes while
 * `fn`, and everything it awaits or schedules, runs: code deep in the HSM or the audit log
 * need not know which request it serves. Fields given at the call site win over these.
 */
export function withLogContext<T>(fields: Record<string, unknown>, fn: () => T): T {
  const outer = context.getStore();
  return context.run(outer ? { ...outer, ...fields } : fields, fn);
}

/** Runs `fn` outside any request's log context: for timers that outlive the request that set them up. */
export function withoutLogContext<T>(fn: () => T): T {
  return context.exit(fn);
}

/** The fields withLogContext() set for the code running now, if any. */
export function logContext(): Readonly<Record<string, unknown>> | undefined {
  return context.getStore();
}

export function createLogger(level: LogLevel = "info", write: (line: string) => void = (l) => process.stdout.write(l)): Logger {
  const min = ORDER[level];
  const emit = (lvl: LogLevel, msg: string, fields?: Record<string, unknown>): void => {
    if (ORDER[lvl] < min) return;
    const ctx = context.getStore();
    const all = ctx ? { ...ctx, ...fields } : fields;
    write(`${JSON.stringify({ time: new Date().toISOString(), level: lvl, msg, ...(all ? redact(all) : {}) })}\n`);
  };
  return {
    enabled: (lvl) => ORDER[lvl] >= min,
    debug: (m, f) => emit("debug", m, f),
    info: (m, f) => emit("info", m, f),
    warn: (m, f) => emit("warn", m, f),
    error: (m, f) => emit("error", m, f),
  };
}

export const silentLogger: Logger = { enabled: () => false, debug() {}, info() {}, warn() {}, error() {} };
