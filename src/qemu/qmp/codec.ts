// QMP wire codec: bytes in, whole messages out, and commands to bytes.
// Pure (no sockets), so the framing is tested by splitting streams at every
// byte. QEMU ends each message with CRLF, but a peer may pretty-print over
// several lines, so framing follows the JSON structure (brace depth outside
// strings), not line ends. Structural characters are ASCII, so scanning
// bytes is safe for UTF-8: multi-byte sequences never contain them.

export interface QmpVersion {
  qemu: { major: number; minor: number; micro: number };
  package: string;
}

export interface QmpGreeting {
  QMP: { version: QmpVersion; capabilities: string[] };
}

export interface QmpReturn {
  return: unknown;
  id?: unknown;
}

export interface QmpErrorReply {
  error: { class: string; desc: string };
  id?: unknown;
}

export interface QmpEvent {
  event: string;
  /** Always an object: events that QEMU sends without data get `{}`. */
  data: any; // eslint-disable-line @typescript-eslint/no-explicit-any
  timestamp: { seconds: number; microseconds: number };
}

export type QmpMessage = QmpGreeting | QmpReturn | QmpErrorReply | QmpEvent;

export function isGreeting(m: QmpMessage): m is QmpGreeting {
  return 'QMP' in m;
}
export function isReturn(m: QmpMessage): m is QmpReturn {
  return 'return' in m;
}
export function isErrorReply(m: QmpMessage): m is QmpErrorReply {
  return 'error' in m;
}
export function isEvent(m: QmpMessage): m is QmpEvent {
  return 'event' in m;
}

/** The stream cannot be framed or parsed; the connection is unusable after it. */
export class QmpDecodeError extends Error {
  /** Messages completed in the same push() before the failure, in order. */
  readonly messages: QmpMessage[];
  constructor(message: string, messages: QmpMessage[] = []) {
    super(message);
    this.name = 'QmpDecodeError';
    this.messages = messages;
  }
}

export const DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024;

const LBRACE = 0x7b;
const RBRACE = 0x7d;
const LBRACKET = 0x5b;
const RBRACKET = 0x5d;
const QUOTE = 0x22;
const BACKSLASH = 0x5c;
/** qemu-ga's guest-sync-delimited puts 0xFF (never valid in UTF-8) before its reply. */
const SYNC_DELIMITER = 0xff;

function isSpace(b: number): boolean {
  return b === 0x20 || b === 0x0a || b === 0x0d || b === 0x09;
}

export interface QmpDecoderOptions {
  /** Largest message accepted, in bytes (default 16 MiB). Bounds the read buffer. */
  maxBuffer?: number;
  /** Skip 0xFF bytes between messages (guest agent streams). */
  syncDelimiter?: boolean;
}

export class QmpDecoder {
  private readonly maxBuffer: number;
  private readonly syncDelimiter: boolean;
  /** Pieces of the message being framed, from earlier chunks. */
  private parts: Buffer[] = [];
  private partsLength = 0;
  private inMessage = false;
  private depth = 0;
  private inString = false;
  private escaped = false;
  private failed: QmpDecodeError | undefined;

  constructor(opts: QmpDecoderOptions = {}) {
    this.maxBuffer = opts.maxBuffer ?? DEFAULT_MAX_MESSAGE_BYTES;
    this.syncDelimiter = opts.syncDelimiter ?? false;
  }

  /** Bytes held for an incomplete message. */
  get buffered(): number {
    return this.partsLength;
  }

  push(chunk: Buffer): QmpMessage[] {
    if (this.failed) throw this.failed;
    const out: QmpMessage[] = [];
    let start = 0;
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i]!;
      if (!this.inMessage) {
        if (isSpace(b) || (this.syncDelimiter && b === SYNC_DELIMITER)) continue;
        if (b !== LBRACE) {
          return this.fail(`unexpected byte 0x${b.toString(16).padStart(2, '0')} between QMP messages`, out);
        }
        this.inMessage = true;
        this.depth = 1;
        start = i;
        continue;
      }
      if (this.inString) {
        if (this.escaped) this.escaped = false;
        else if (b === BACKSLASH) this.escaped = true;
        else if (b === QUOTE) this.inString = false;
        continue;
      }
      if (b === QUOTE) this.inString = true;
      else if (b === LBRACE || b === LBRACKET) this.depth++;
      else if (b === RBRACE || b === RBRACKET) {
        this.depth--;
        if (this.depth === 0) {
          const size = this.partsLength + (i + 1 - start);
          if (size > this.maxBuffer) return this.fail(this.oversize(size), out);
          const piece = chunk.subarray(start, i + 1);
          const bytes = this.parts.length === 0 ? piece : Buffer.concat([...this.parts, piece], size);
          this.parts = [];
          this.partsLength = 0;
          this.inMessage = false;
          const msg = this.parse(bytes, out);
          out.push(msg);
        }
      }
    }
    if (this.inMessage) {
      const rest = chunk.subarray(start);
      if (this.partsLength + rest.length > this.maxBuffer) {
        return this.fail(this.oversize(this.partsLength + rest.length), out);
      }
      // Copy: the caller may reuse its chunk buffer.
      this.parts.push(Buffer.from(rest));
      this.partsLength += rest.length;
    }
    return out;
  }

  private oversize(size: number): string {
    return `QMP message of at least ${size} bytes exceeds the limit of ${this.maxBuffer} bytes`;
  }

  private parse(bytes: Buffer, out: QmpMessage[]): QmpMessage {
    let v: unknown;
    try {
      v = JSON.parse(bytes.toString('utf8'));
    } catch (e) {
      return this.fail(`malformed JSON in QMP message: ${(e as Error).message}`, out);
    }
    if (typeof v !== 'object' || v === null || Array.isArray(v)) {
      return this.fail('QMP message is not a JSON object', out);
    }
    const o = v as Record<string, unknown>;
    if ('event' in o) {
      if (typeof o.event !== 'string') return this.fail('QMP event name is not a string', out);
      if (o.data === undefined) o.data = {};
      return o as unknown as QmpEvent;
    }
    if ('return' in o || 'QMP' in o) return o as unknown as QmpMessage;
    if ('error' in o) {
      const err = o.error as Record<string, unknown> | null;
      if (typeof err !== 'object' || err === null || typeof err.class !== 'string' || typeof err.desc !== 'string') {
        return this.fail('QMP error reply lacks class or desc', out);
      }
      return o as unknown as QmpErrorReply;
    }
    return this.fail(`unknown QMP message with keys ${Object.keys(o).join(', ') || '(none)'}`, out);
  }

  private fail(message: string, out: QmpMessage[]): never {
    this.failed = new QmpDecodeError(message, out);
    this.parts = [];
    this.partsLength = 0;
    throw this.failed;
  }
}

/** One command as QEMU reads it: compact JSON, CRLF-terminated. */
export function encodeCommand(execute: string, args: object | undefined, id: string): Buffer {
  const cmd: Record<string, unknown> = { execute };
  if (args !== undefined) cmd.arguments = args;
  cmd.id = id;
  return Buffer.from(JSON.stringify(cmd) + '\r\n', 'utf8');
}
