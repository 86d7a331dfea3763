// QMP-level errors, and their translation to VirError at the driver edge.

import { virErr, isVirError, type VirError } from '../../errors.js';

/** QEMU answered a command with an "error" reply; the connection stays usable. */
export class QmpCommandError extends Error {
  readonly errorClass: string;
  readonly desc: string;
  readonly command: string;
  readonly args: unknown;
  readonly reply: unknown;

  constructor(command: string, args: unknown, reply: { error: { class: string; desc: string } }) {
    super(`QMP command '${command}' failed: ${reply.error.class}: ${reply.error.desc}`);
    this.name = 'QmpCommandError';
    this.errorClass = reply.error.class;
    this.desc = reply.error.desc;
    this.command = command;
    this.args = args;
    this.reply = reply;
  }
}

/** The monitor connection failed or closed: every pending call rejects with it. */
export class QmpConnectionError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'QmpConnectionError';
  }
}

/**
 * No reply (or event) in time. The connection stays open and a late reply is
 * dropped; a subclass of QmpConnectionError because the caller cannot know
 * whether QEMU acted on the command.
 */
export class QmpTimeoutError extends QmpConnectionError {
  readonly command: string | undefined;
  readonly timeoutMs: number;
  constructor(message: string, command: string | undefined, timeoutMs: number) {
    super(message);
    this.name = 'QmpTimeoutError';
    this.command = command;
    this.timeoutMs = timeoutMs;
  }
}

/**
 * Any error from this layer as a VirError (domain QEMU), with libvirt's wording:
 * a QMP error reply -> INTERNAL_ERROR "unable to execute QEMU command 'X': desc";
 * a timeout -> OPERATION_TIMEOUT; a lost connection -> OPERATION_FAILED.
 * `context`, when given, is put in front ("context: ...").
 */
export function qmpErrorToVirError(e: unknown, context?: string): VirError {
  if (isVirError(e)) return e;
  const prefix = context ? `${context}: ` : '';
  if (e instanceof QmpCommandError) {
    return virErr('INTERNAL_ERROR', 'QEMU', `${prefix}unable to execute QEMU command '${e.command}': ${e.desc}`, e);
  }
  if (e instanceof QmpTimeoutError) {
    return virErr('OPERATION_TIMEOUT', 'QEMU', `${prefix}${e.message}`, e);
  }
  if (e instanceof QmpConnectionError) {
    return virErr('OPERATION_FAILED', 'QEMU', `${prefix}${e.message}`, e);
  }
  const message = e instanceof Error ? e.message : String(e);
  return virErr('INTERNAL_ERROR', 'QEMU', `${prefix}${message}`, e);
}
