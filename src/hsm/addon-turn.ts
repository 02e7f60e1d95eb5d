/**
 * pkcs11js's addon initialization is not safe in several threads at once (a rare SIGSEGV in
 * napi_create_reference while four threads loaded it together): every thread that loads it (the
 * signing threads, the reader thread) starts in its turn, once the previous one is ready or gone.
 */
let turn: Promise<unknown> = Promise.resolve();

/** Runs `start` once every thread started before it has loaded the addon (or failed to). */
export function inAddonTurn<T>(start: () => Promise<T>): Promise<T> {
  const mine = turn.then(start);
  turn = mine.catch(() => undefined);
  return mine;
}
