// virtbackd's logger: pino behind the Logger contract of src/log.ts.
// JSON lines (one object per line: level label, ISO time, pid, fields, msg)
// to a file or to stderr; readable lines (pino-pretty, formatted in-process)
// when stderr is a terminal and no file was given. Every line is written
// synchronously, so the last lines before an exit are never lost (the
// detached daemon has no one to flush for it after process.exit).

import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import { pino, type DestinationStream } from 'pino';
import type { prettyFactory as PrettyFactory } from 'pino-pretty';
import type { Logger } from '../log.js';

/** pino-pretty only for a terminal: a detached daemon (JSON to a file) never pays its memory. */
function loadPrettyFactory(): typeof PrettyFactory {
  return (createRequire(import.meta.url)('pino-pretty') as { prettyFactory: typeof PrettyFactory }).prettyFactory;
}

export const LOG_LEVELS = ['error', 'warn', 'info', 'debug'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export function isLogLevel(s: string): s is LogLevel {
  return (LOG_LEVELS as readonly string[]).includes(s);
}

export interface DaemonLogOptions {
  level: LogLevel;
  /** JSON lines appended to this file (created 0600); null: stderr. */
  file: string | null;
  /** Readable lines instead of JSON (default: when logging to stderr and it is a terminal). */
  pretty?: boolean;
}

export interface DaemonLogger extends Logger {
  /** Stops writing and closes the log file, if any. */
  close(): void;
}

/** Opens the log (the file is created or appended to); throws if the file cannot be opened. */
export function openDaemonLogger(opts: DaemonLogOptions): DaemonLogger {
  const fd = opts.file === null ? 2 : fs.openSync(opts.file, 'a', 0o600);
  const out = pino.destination({ fd, sync: true });
  out.on('error', () => {}); // a log that cannot be written has nowhere left to report it
  const pretty = opts.pretty ?? (opts.file === null && process.stderr.isTTY === true);
  const format = pretty ? loadPrettyFactory()({ colorize: true, singleLine: true, translateTime: 'SYS:yyyy-mm-dd HH:MM:ss.l' }) : null;
  let open = true;
  const dest: DestinationStream = {
    write(line: string) {
      if (open) out.write(format ? format(line) : line);
    },
  };
  const log = pino(
    {
      level: opts.level,
      base: { pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      // Level names, not pino's numbers: the file is read by people and grep as much as by tools.
      formatters: { level: (label) => ({ level: label }) },
    },
    dest,
  );
  return Object.assign(log as Logger, {
    close(): void {
      if (!open) return;
      open = false;
      if (fd !== 2) fs.closeSync(fd);
    },
  });
}
