// A daemon's unix listening socket with exactly the requested mode, shared by
// virtbackd's own sockets and its libvirt sockets. The socket is created
// under a restrictive umask so it is never reachable with looser
// permissions, then chmod'ed. An existing file at the path is removed first
// (the caller holds the daemon lock, so it is a leftover of a dead daemon).

import * as fs from 'node:fs';
import * as net from 'node:net';
import type { Logger } from '../log.js';

export async function listenUnixSocket(
  path: string,
  mode: number,
  onConnection: (socket: net.Socket) => void,
  log: Logger,
): Promise<net.Server> {
  removeSocketFile(path);
  const server = net.createServer(onConnection);
  const oldMask = process.umask(0o177);
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(path, () => {
        server.off('error', reject);
        resolve();
      });
    });
  } finally {
    process.umask(oldMask);
  }
  fs.chmodSync(path, mode);
  server.on('error', (e) => log.error({ socket: path, err: e }, 'listener failed'));
  return server;
}

/** Removes a socket file; a missing one is fine. */
export function removeSocketFile(path: string): void {
  try {
    fs.unlinkSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
  }
}

/** Removes the socket files a closing server listened on, best effort (the listeners are closed either way); empties the list. */
export function removeSocketFiles(paths: string[]): void {
  for (const p of paths) {
    try {
      removeSocketFile(p);
    } catch {
      // best effort: the listener is closed either way
    }
  }
  paths.length = 0;
}
