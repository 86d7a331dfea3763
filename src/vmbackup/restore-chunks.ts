// The data chunks of one disk index, read (and hash-checked: readChunk) with a
// few in flight and handed to a writer at their offsets; the first failure
// stops the others. Shared by the restore into images and onto block devices.

import type { ChunkRepository, DiskIndex } from '../chunkstore/repo.js';
import { ZERO_CHUNK } from '../chunkstore/repo.js';
import { virErr } from '../errors.js';

export async function forEachDataChunk(
  repo: ChunkRepository,
  index: DiskIndex,
  concurrency: number,
  write: (data: Buffer, offset: number) => Promise<void>,
): Promise<void> {
  const todo = index.chunks.map((id, i) => ({ id, i })).filter((c) => c.id !== ZERO_CHUNK);
  let next = 0;
  let failed = false;
  const worker = async () => {
    while (!failed && next < todo.length) {
      const { id, i } = todo[next++]!;
      const offset = i * index.chunkSize;
      const length = Math.min(index.chunkSize, index.size - offset);
      try {
        const data = await repo.readChunk(id);
        if (data.length !== length) throw virErr('INTERNAL_ERROR', 'STORAGE', `chunk ${id} (disk ${index.target}, chunk ${i}) holds ${data.length} bytes, the index expects ${length}`);
        await write(data, offset);
      } catch (e) {
        failed = true;
        throw e;
      }
    }
  };
  const results = await Promise.allSettled(Array.from({ length: concurrency }, worker));
  const bad = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (bad) throw bad.reason;
}
