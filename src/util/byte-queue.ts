// A FIFO of received bytes for the stream codecs (NBD, virtbackd frames):
// chunks are appended as they arrive and whole messages are taken off the
// front. Pure and below every codec; copies only when a message spans chunks
// (or when the caller asks for bytes that must not pin a large chunk).

export class ByteQueue {
  private chunks: Buffer[] = [];
  private total = 0;
  /** How many chunks at the tail were pushed since the last own() (still borrowed from the caller). */
  private borrowed = 0;

  /** Bytes held. */
  get length(): number {
    return this.total;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.total += chunk.length;
    this.borrowed++;
  }

  /** The first n bytes without consuming them, or undefined if fewer are held. */
  peek(n: number): Buffer | undefined {
    if (this.total < n) return undefined;
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[0]!;
    return first.length >= n ? first.subarray(0, n) : Buffer.concat(this.chunks, n);
  }

  /**
   * Exactly n bytes off the front, or undefined (consuming nothing) if fewer
   * are held. The result may share memory with a pushed chunk.
   */
  take(n: number): Buffer | undefined {
    if (this.total < n) return undefined;
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[0]!;
    if (first.length >= n) {
      this.consume(n);
      return first.subarray(0, n);
    }
    return this.gather(n);
  }

  /** Like take(), but the result never shares memory with a pushed chunk (it does not keep the chunk alive). */
  takeCopy(n: number): Buffer | undefined {
    if (this.total < n) return undefined;
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[0]!;
    if (first.length >= n) {
      const out = Buffer.from(first.subarray(0, n));
      this.consume(n);
      return out;
    }
    return this.gather(n);
  }

  /**
   * Copy what is held into memory of its own: the chunks pushed since the last
   * call are about to be reused (a socket read into one static buffer). Chunks
   * owned earlier are kept as they are, so a large message arriving over many
   * reads is copied once, not once per read. Returns the bytes copied.
   */
  own(): number {
    const n = Math.min(this.borrowed, this.chunks.length);
    this.borrowed = 0;
    if (n === 0) return 0;
    const tail = this.chunks.splice(this.chunks.length - n, n);
    const copy = Buffer.concat(tail);
    this.chunks.push(copy);
    return copy.length;
  }

  /** Drops everything held. */
  clear(): void {
    this.chunks = [];
    this.total = 0;
    this.borrowed = 0;
  }

  /** Removes n bytes that lie in the first chunk. */
  private consume(n: number): void {
    const first = this.chunks[0]!;
    if (first.length === n) this.chunks.shift();
    else this.chunks[0] = first.subarray(n);
    this.total -= n;
  }

  /** Copies n bytes that span several chunks into a new buffer and removes them. */
  private gather(n: number): Buffer {
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const c = this.chunks[0]!;
      const used = Math.min(c.length, n - filled);
      c.copy(out, filled, 0, used);
      filled += used;
      if (used === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(used);
    }
    this.total -= n;
    return out;
  }
}
