// A guest console as a stream of bytes (libvirt's virDomainOpenConsole with
// its virStream): the local driver opens the domain's pty, the remote
// driver carries the bytes over the daemon's socket (remote/stream.ts).

import type { VirError } from '../errors.js';

/** virDomainConsoleFlags */
export const ConsoleFlags = {
  /** take the console from another session that holds it */
  FORCE: 1,
  /** libvirt: only with a console that can be made exclusive; every virtback console is */
  SAFE: 2,
} as const;

export interface ConsoleStream {
  /** guest output, in order */
  onData(listener: (data: Uint8Array) => void): void;
  /** the stream ended: closed by either side (err null), the domain stopped, or a forced console took over */
  onEnd(listener: (err: VirError | null) => void): void;
  /** bytes for the guest (what is typed) */
  write(data: Uint8Array): void;
  /** stop delivering guest output until resume() (a slow reader) */
  pause(): void;
  resume(): void;
  close(): void;
}
