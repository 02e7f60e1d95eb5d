/** Counts running handlers, so that a shutdown can wait for them before it closes the audit. */
export class InFlight {
  private count = 0;
  private waiters: (() => void)[] = [];

  enter(): void {
    this.count++;
  }

  leave(): void {
    this.count--;
    if (this.count === 0) for (const w of this.waiters.splice(0)) w();
  }

  /** Resolves once no handler runs, or after `ms`. */
  async idle(ms: number): Promise<void> {
    if (this.count === 0) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      new Promise<void>((res) => this.waiters.push(res)),
      new Promise<void>((res) => {
        timer = setTimeout(res, ms);
      }),
    ]);
    clearTimeout(timer);
  }
}
