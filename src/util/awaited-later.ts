// A promise started now and awaited later: its failure must surface where
// it is awaited, not as an unhandled rejection in the meantime.

/** `p`, whose failure is thrown where it is awaited later, not reported as unhandled meanwhile. */
export function awaitedLater<T>(p: Promise<T>): Promise<T> {
  p.catch(() => {});
  return p;
}
