// Calls in flight on one connection, keyed by the id the peer echoes (QMP
// id, guest-agent sync id, virtbackd serial): each has what its reply needs
// to be understood (the command, the procedure), an optional timeout after
// which a late reply is simply not found, and all are rejected at once when
// the connection ends. The clients decide which key a reply answers.

export interface CallTimeout {
  ms: number;
  /** The rejection (and any side effect, e.g. "resynchronise before the next call"). */
  error: () => Error;
}

/** A call taken out of the table: the caller settles it. */
export interface TakenCall<T, C> {
  context: C;
  resolve(value: T): void;
  reject(err: Error): void;
}

interface Entry<T, C> extends TakenCall<T, C> {
  timer: NodeJS.Timeout | undefined;
}

function hasTimeout(ms: number): boolean {
  return ms > 0 && Number.isFinite(ms);
}

export class PendingCalls<K, T = unknown, C = undefined> {
  private readonly calls = new Map<K, Entry<T, C>>();

  get size(): number {
    return this.calls.size;
  }

  /** The oldest pending call's key and context (for one-call-at-a-time peers that may not echo ids). */
  oldest(): [K, C] | undefined {
    for (const [key, e] of this.calls) return [key, e.context];
    return undefined;
  }

  /**
   * Registers a call under `key` (a key still pending is a bug: it throws).
   * The promise settles through take(), the timeout (0 or Infinity: none)
   * or rejectAll().
   */
  add(key: K, context: C, timeout?: CallTimeout): Promise<T> {
    if (this.calls.has(key)) throw new Error(`pending call ${String(key)} registered twice`);
    return new Promise<T>((resolve, reject) => {
      const entry: Entry<T, C> = { context, resolve, reject, timer: undefined };
      if (timeout && hasTimeout(timeout.ms)) {
        entry.timer = setTimeout(() => {
          // Forgotten first: a late reply then finds nothing.
          this.calls.delete(key);
          reject(timeout.error());
        }, timeout.ms);
      }
      this.calls.set(key, entry);
    });
  }

  /** Removes the call answered by a reply; undefined if none (timed out, or never ours). */
  take(key: K): TakenCall<T, C> | undefined {
    const e = this.calls.get(key);
    if (!e) return undefined;
    this.calls.delete(key);
    clearTimeout(e.timer);
    return { context: e.context, resolve: e.resolve, reject: e.reject };
  }

  /** The connection ended: every pending call fails with `err`. */
  rejectAll(err: Error): void {
    const all = [...this.calls.values()];
    this.calls.clear();
    for (const e of all) {
      clearTimeout(e.timer);
      e.reject(err);
    }
  }
}
