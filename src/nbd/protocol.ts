// Every NBD wire constant in one place, named as in the protocol spec
// (NetworkBlockDevice/nbd doc/proto.md). All fields are big-endian on the wire.

/** "NBDMAGIC": first 8 bytes the server sends. */
export const NBD_MAGIC = 0x4e42444d41474943n;
/** "IHAVEOPT": second 8 bytes of a newstyle greeting, and prefix of every option. */
export const NBD_NEW_VERSION = 0x49484156454f5054n;
/** Oldstyle greeting's second magic; we refuse oldstyle servers. */
export const NBD_OLD_VERSION = 0x0000420281861253n;
/** Prefix of every fixed-newstyle option reply. */
export const NBD_REP_MAGIC = 0x0003e889045565a9n;

export const NBD_REQUEST_MAGIC = 0x25609513;
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;

/** Longest string the spec allows in any handshake field (export names, context names, messages). */
export const NBD_MAX_STRING = 4096;

// Handshake flags (server, 16 bits).
export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_NO_ZEROES = 1 << 1;

// Client flags (32 bits), answering the handshake flags.
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;

// Transmission (per-export) flags, 16 bits.
export const NBD_FLAG_HAS_FLAGS = 1 << 0;
export const NBD_FLAG_READ_ONLY = 1 << 1;
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
export const NBD_FLAG_SEND_FUA = 1 << 3;
export const NBD_FLAG_ROTATIONAL = 1 << 4;
export const NBD_FLAG_SEND_TRIM = 1 << 5;
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
export const NBD_FLAG_SEND_DF = 1 << 7;
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
export const NBD_FLAG_SEND_RESIZE = 1 << 9;
export const NBD_FLAG_SEND_CACHE = 1 << 10;
export const NBD_FLAG_SEND_FAST_ZERO = 1 << 11;

// Options.
export const NBD_OPT_EXPORT_NAME = 1;
export const NBD_OPT_ABORT = 2;
export const NBD_OPT_LIST = 3;
export const NBD_OPT_STARTTLS = 5;
export const NBD_OPT_INFO = 6;
export const NBD_OPT_GO = 7;
export const NBD_OPT_STRUCTURED_REPLY = 8;
export const NBD_OPT_LIST_META_CONTEXT = 9;
export const NBD_OPT_SET_META_CONTEXT = 10;

export const OPTION_NAMES: Readonly<Record<number, string>> = {
  [NBD_OPT_EXPORT_NAME]: 'NBD_OPT_EXPORT_NAME',
  [NBD_OPT_ABORT]: 'NBD_OPT_ABORT',
  [NBD_OPT_LIST]: 'NBD_OPT_LIST',
  [NBD_OPT_STARTTLS]: 'NBD_OPT_STARTTLS',
  [NBD_OPT_INFO]: 'NBD_OPT_INFO',
  [NBD_OPT_GO]: 'NBD_OPT_GO',
  [NBD_OPT_STRUCTURED_REPLY]: 'NBD_OPT_STRUCTURED_REPLY',
  [NBD_OPT_LIST_META_CONTEXT]: 'NBD_OPT_LIST_META_CONTEXT',
  [NBD_OPT_SET_META_CONTEXT]: 'NBD_OPT_SET_META_CONTEXT',
};

// Option reply types. Bit 31 marks an error.
export const NBD_REP_ERR_BIT = 0x80000000;
export const NBD_REP_ACK = 1;
export const NBD_REP_SERVER = 2;
export const NBD_REP_INFO = 3;
export const NBD_REP_META_CONTEXT = 4;
export const NBD_REP_ERR_UNSUP = (NBD_REP_ERR_BIT | 1) >>> 0;
export const NBD_REP_ERR_POLICY = (NBD_REP_ERR_BIT | 2) >>> 0;
export const NBD_REP_ERR_INVALID = (NBD_REP_ERR_BIT | 3) >>> 0;
export const NBD_REP_ERR_PLATFORM = (NBD_REP_ERR_BIT | 4) >>> 0;
export const NBD_REP_ERR_TLS_REQD = (NBD_REP_ERR_BIT | 5) >>> 0;
export const NBD_REP_ERR_UNKNOWN = (NBD_REP_ERR_BIT | 6) >>> 0;
export const NBD_REP_ERR_SHUTDOWN = (NBD_REP_ERR_BIT | 7) >>> 0;
export const NBD_REP_ERR_BLOCK_SIZE_REQD = (NBD_REP_ERR_BIT | 8) >>> 0;
export const NBD_REP_ERR_TOO_BIG = (NBD_REP_ERR_BIT | 9) >>> 0;

export function isRepError(reply: number): boolean {
  return (reply & NBD_REP_ERR_BIT) !== 0;
}

export const REPLY_NAMES: Readonly<Record<number, string>> = {
  [NBD_REP_ACK]: 'NBD_REP_ACK',
  [NBD_REP_SERVER]: 'NBD_REP_SERVER',
  [NBD_REP_INFO]: 'NBD_REP_INFO',
  [NBD_REP_META_CONTEXT]: 'NBD_REP_META_CONTEXT',
  [NBD_REP_ERR_UNSUP]: 'NBD_REP_ERR_UNSUP',
  [NBD_REP_ERR_POLICY]: 'NBD_REP_ERR_POLICY',
  [NBD_REP_ERR_INVALID]: 'NBD_REP_ERR_INVALID',
  [NBD_REP_ERR_PLATFORM]: 'NBD_REP_ERR_PLATFORM',
  [NBD_REP_ERR_TLS_REQD]: 'NBD_REP_ERR_TLS_REQD',
  [NBD_REP_ERR_UNKNOWN]: 'NBD_REP_ERR_UNKNOWN',
  [NBD_REP_ERR_SHUTDOWN]: 'NBD_REP_ERR_SHUTDOWN',
  [NBD_REP_ERR_BLOCK_SIZE_REQD]: 'NBD_REP_ERR_BLOCK_SIZE_REQD',
  [NBD_REP_ERR_TOO_BIG]: 'NBD_REP_ERR_TOO_BIG',
};

// Information types in NBD_OPT_INFO / NBD_OPT_GO requests and NBD_REP_INFO replies.
export const NBD_INFO_EXPORT = 0;
export const NBD_INFO_NAME = 1;
export const NBD_INFO_DESCRIPTION = 2;
export const NBD_INFO_BLOCK_SIZE = 3;

// Commands.
export const NBD_CMD_READ = 0;
export const NBD_CMD_WRITE = 1;
export const NBD_CMD_DISC = 2;
export const NBD_CMD_FLUSH = 3;
export const NBD_CMD_TRIM = 4;
export const NBD_CMD_CACHE = 5;
export const NBD_CMD_WRITE_ZEROES = 6;
export const NBD_CMD_BLOCK_STATUS = 7;
export const NBD_CMD_RESIZE = 8;

// Command flags (16 bits).
export const NBD_CMD_FLAG_FUA = 1 << 0;
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;
export const NBD_CMD_FLAG_DF = 1 << 2;
export const NBD_CMD_FLAG_REQ_ONE = 1 << 3;
export const NBD_CMD_FLAG_FAST_ZERO = 1 << 4;

// Structured reply flags and chunk types. Bit 15 of the type marks an error chunk.
export const NBD_REPLY_FLAG_DONE = 1 << 0;
export const NBD_REPLY_TYPE_ERR_BIT = 1 << 15;
export const NBD_REPLY_TYPE_NONE = 0;
export const NBD_REPLY_TYPE_OFFSET_DATA = 1;
export const NBD_REPLY_TYPE_OFFSET_HOLE = 2;
export const NBD_REPLY_TYPE_BLOCK_STATUS = 5;
export const NBD_REPLY_TYPE_ERROR = NBD_REPLY_TYPE_ERR_BIT | 1;
export const NBD_REPLY_TYPE_ERROR_OFFSET = NBD_REPLY_TYPE_ERR_BIT | 2;

// Error values carried by simple replies and error chunks (errno-like, fixed by the spec).
export const NBD_SUCCESS = 0;
export const NBD_EPERM = 1;
export const NBD_EIO = 5;
export const NBD_ENOMEM = 12;
export const NBD_EINVAL = 22;
export const NBD_ENOSPC = 28;
export const NBD_EOVERFLOW = 75;
export const NBD_ENOTSUP = 95;
export const NBD_ESHUTDOWN = 108;

export const ERROR_NAMES: Readonly<Record<number, string>> = {
  [NBD_EPERM]: 'EPERM',
  [NBD_EIO]: 'EIO',
  [NBD_ENOMEM]: 'ENOMEM',
  [NBD_EINVAL]: 'EINVAL',
  [NBD_ENOSPC]: 'ENOSPC',
  [NBD_EOVERFLOW]: 'EOVERFLOW',
  [NBD_ENOTSUP]: 'ENOTSUP',
  [NBD_ESHUTDOWN]: 'ESHUTDOWN',
};

/** The name of an NBD error value, e.g. 'EIO'; unknown values read as 'error 42'. */
export function nbdErrorName(error: number): string {
  return ERROR_NAMES[error] ?? `error ${error}`;
}

// Metadata contexts.
export const CONTEXT_BASE_ALLOCATION = 'base:allocation';
/** Prefix of QEMU's per-bitmap contexts: `qemu:dirty-bitmap:<bitmap name>`. */
export const CONTEXT_QEMU_DIRTY_BITMAP = 'qemu:dirty-bitmap:';
export const CONTEXT_QEMU_ALLOCATION_DEPTH = 'qemu:allocation-depth';

// Status flags of `base:allocation`.
export const NBD_STATE_HOLE = 1 << 0;
export const NBD_STATE_ZERO = 1 << 1;
// Status flag of `qemu:dirty-bitmap:*`.
export const NBD_STATE_DIRTY = 1 << 0;

// Fixed sizes of wire structures.
export const GREETING_SIZE = 18; // NBDMAGIC + IHAVEOPT + 16-bit handshake flags
export const OPTION_HEADER_SIZE = 16; // IHAVEOPT + option + length
export const OPTION_REPLY_HEADER_SIZE = 20; // magic + option + reply type + length
export const REQUEST_SIZE = 28;
export const SIMPLE_REPLY_SIZE = 16;
export const STRUCTURED_REPLY_HEADER_SIZE = 20;

/**
 * Spec default maximum payload when the server does not advertise one,
 * and the length no peer may treat as a denial of service.
 */
export const DEFAULT_MAX_PAYLOAD = 1 << 25;
