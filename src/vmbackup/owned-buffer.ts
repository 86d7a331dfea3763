// Moving a Buffer's memory to a worker thread instead of copying it (a
// postMessage transfer list) is safe only when the Buffer is all of its
// ArrayBuffer: Node's small Buffers share one pooled ArrayBuffer, and moving it
// would take (and detach) the others along. Kept apart from the pool so that
// the worker loads nothing else.

/** The ArrayBuffer behind `u` when `u` is all of it, else null (copy instead). */
export function ownedBuffer(u: Uint8Array): ArrayBuffer | null {
  return u.byteOffset === 0 && u.byteLength === u.buffer.byteLength && u.buffer instanceof ArrayBuffer ? u.buffer : null;
}
