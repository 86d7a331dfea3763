// Leveled logging for virtbackd: one line per message, to stderr or a file.

import * as fs from 'node:fs';

export const LOG_LEVELS = ['error', 'warn', 'info', 'debug'] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export function isLogLevel(s: string): s is LogLevel {
  return (LOG_LEVELS as readonly string[]).includes(s);
}

export class Logger {
  private readonly threshold: number;
  private fd: number | null;

  /** `file` null = stderr. The file is opened for appending, created 0600. */
  constructor(level: LogLevel, file: string | null) {
    this.threshold = LOG_LEVELS.indexOf(level);
    this.fd = file === null ? null : fs.openSync(file, 'a', 0o600);
  }

  /** Whether messages of `level` are written (to skip building costly ones). */
  enabled(level: LogLevel): boolean {
    return LOG_LEVELS.indexOf(level) <= this.threshold;
  }

  error(msg: string): void {
    this.write('error', msg);
  }
  warn(msg: string): void {
    this.write('warn', msg);
  }
  info(msg: string): void {
    this.write('info', msg);
  }
  debug(msg: string): void {
    this.write('debug', msg);
  }

  private write(level: LogLevel, msg: string): void {
    if (LOG_LEVELS.indexOf(level) > this.threshold) return;
    const line = `${new Date().toISOString()} ${process.pid}: ${level}: ${msg}\n`;
    try {
      // Synchronous so the last lines before an exit are not lost.
      fs.writeSync(this.fd ?? 2, line);
    } catch {
      // nowhere left to report it
    }
  }

  close(): void {
    if (this.fd !== null) {
      fs.closeSync(this.fd);
      this.fd = null;
    }
  }
}
