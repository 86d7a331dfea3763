// The logger every layer may take: the subset of pino's API that virtback
// uses, declared here (below everything) so that pure and I/O layers log
// through an injected instance without importing pino. virtbackd injects a
// pino logger; library users get `silentLogger` unless they pass their own.

export type LogFields = Record<string, unknown>;

export interface LogFn {
  (fields: LogFields, msg: string): void;
  (msg: string): void;
}

export interface Logger {
  error: LogFn;
  warn: LogFn;
  info: LogFn;
  debug: LogFn;
  /** A logger whose lines all carry `bindings` (e.g. `{ domain, jobId }`). */
  child(bindings: LogFields): Logger;
}

const nothing: LogFn = () => {};

/** Drops everything: the default where no logger was injected. */
export const silentLogger: Logger = {
  error: nothing,
  warn: nothing,
  info: nothing,
  debug: nothing,
  child: () => silentLogger,
};

/** An error as log fields (pino's `err` key is serialised with message and stack). */
export function errField(e: unknown): LogFields {
  return { err: e instanceof Error ? e : new Error(String(e)) };
}
