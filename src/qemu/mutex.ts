// A promise-chain mutex: the per-domain lock, the define lock, agent sessions.

/** Serialises async sections: each `run` starts after the previous one settled. */
export class AsyncMutex {
  private tail: Promise<void> = Promise.resolve();
  private held = 0;

  get locked(): boolean {
    return this.held > 0;
  }

  run<T>(fn: () => Promise<T>): Promise<T> {
    const result = this.tail.then(async () => {
      this.held++;
      try {
        return await fn();
      } finally {
        this.held--;
      }
    });
    this.tail = result.then(() => undefined, () => undefined);
    return result;
  }
}
