// When to re-read files the service loaded at start (the policy, the listeners' TLS material).
// A bottom layer like errors/ and log/: it imports node:fs and node:path and nothing of the project.
import { watch, type FSWatcher } from "node:fs";
import { basename, dirname, resolve } from "node:path";

/** Wait after the last file event or SIGHUP before reloading: editors and tools write a file in several steps. */
export const RELOAD_DEBOUNCE_MS = 300;

export interface ReloadTriggerOptions {
  /**
   * Re-reads the files. `force`: the operator asked (SIGHUP), reload even if nothing changed;
   * otherwise a file event, which may be a false alarm. Runs one at a time; a rejection goes to onError.
   */
  reload: (force: boolean) => Promise<unknown>;
  /** A reload that threw. */
  onError: (e: unknown) => void;
  /** A directory could not be watched (then only SIGHUP reloads). */
  onWatchError: (dir: string, e: unknown) => void;
  debounceMs?: number;
}

/**
 * Runs `reload` on SIGHUP and when one of `files` changes, debounced, one reload at a time. It
 * watches the files' directories, not the files: editors replace a file, and Kubernetes swaps a
 * "..data" symlink in a mounted ConfigMap or Secret instead of touching the file itself.
 */
export class ReloadTrigger {
  private readonly watchers: FSWatcher[] = [];
  private timer: NodeJS.Timeout | undefined;
  /** A pending SIGHUP reloads even unchanged files: the operator asked, so they get a log line. */
  private forceNext = false;
  private queue: Promise<unknown> = Promise.resolve();
  private started = false;
  private readonly onSighup = (): void => this.schedule(true);

  constructor(
    private readonly files: readonly string[],
    private readonly o: ReloadTriggerOptions,
  ) {}

  start(): void {
    if (this.started) return;
    this.started = true;
    const byDir = new Map<string, Set<string>>();
    for (const f of this.files.map((x) => resolve(x))) {
      const names = byDir.get(dirname(f)) ?? new Set<string>();
      names.add(basename(f));
      byDir.set(dirname(f), names);
    }
    for (const [dir, names] of byDir) {
      try {
        const w = watch(dir, { persistent: false }, (_event, filename) => {
          if (filename === null || names.has(filename) || filename.startsWith("..")) this.schedule(false);
        });
        w.on("error", (e) => {
          this.o.onWatchError(dir, e);
          w.close();
        });
        this.watchers.push(w);
      } catch (e) {
        this.o.onWatchError(dir, e);
      }
    }
    process.on("SIGHUP", this.onSighup);
  }

  /** Runs a reload now, after any already running. */
  run<T>(reload: () => Promise<T>): Promise<T> {
    const next = this.queue.then(reload, reload);
    this.queue = next.catch(() => undefined);
    return next;
  }

  close(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    for (const w of this.watchers) w.close();
    this.watchers.length = 0;
    process.off("SIGHUP", this.onSighup);
    this.started = false;
  }

  private schedule(force: boolean): void {
    this.forceNext ||= force;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      const forced = this.forceNext;
      this.forceNext = false;
      this.run(() => this.o.reload(forced)).catch(this.o.onError);
    }, this.o.debounceMs ?? RELOAD_DEBOUNCE_MS);
    this.timer.unref();
  }
}
