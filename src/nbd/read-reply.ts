// What a READ's reply may be: one simple reply with the data, or structured
// chunks (data, holes, errors) that together cover the request exactly once.
// The checks of one reply, apart from the connection (client.ts) that routes it.

import { chunkTypeName, type Chunk } from './codec.js';
import { protocolError, type NbdError } from './errors.js';
import * as P from './protocol.js';

/** How a pending request takes its reply: a simple reply, or structured chunks until `done`. */
export interface ReplyHandlers {
  onChunk(msg: { done: boolean; chunk: Chunk }): void;
  onSimple(error: number, data: Buffer | undefined): void;
}

export interface ReadRequest {
  /** For messages: 'read of N bytes at offset O from URI'. */
  what: string;
  offset: number;
  /** The destination, exactly the request's length; OFFSET_DATA may already have been decoded into it (inPlace). */
  into: Buffer;
  structuredReplies: boolean;
  /** The error for a failed request (the client's: NBD_ESHUTDOWN also ends the connection). */
  replyError(error: number, message: string): NbdError;
}

/**
 * Handlers for one READ: holes zero-filled, data copied unless decoded in place,
 * and the pieces checked to tile [offset, offset + length) with no gap or overlap.
 * A violation throws (the connection dies); a server error rejects this read only.
 */
export function readReplyHandlers(r: ReadRequest, resolve: () => void, reject: (e: NbdError) => void): ReplyHandlers {
  const { what, offset, into } = r;
  const length = into.length;
  const pieces: Array<[number, number]> = [];
  let failure: NbdError | undefined;
  const within = (start: number, n: number, kind: string) => {
    if (start < offset || start + n > offset + length) {
      throw protocolError(`${kind} chunk ${start}+${n} lies outside the ${what}`);
    }
    pieces.push([start, n]);
  };
  return {
    onSimple: (error, data) => {
      if (error !== 0) return reject(r.replyError(error, ''));
      if (r.structuredReplies) throw protocolError(`simple reply with data to the ${what} although structured replies were negotiated`);
      data!.copy(into);
      resolve();
    },
    onChunk: ({ done, chunk }) => {
      switch (chunk.type) {
        case 'offsetData':
          within(chunk.offset, chunk.data.length, 'data');
          if (!chunk.inPlace) chunk.data.copy(into, chunk.offset - offset);
          break;
        case 'offsetHole':
          within(chunk.offset, chunk.length, 'hole');
          into.fill(0, chunk.offset - offset, chunk.offset - offset + chunk.length); // holes read as zeroes
          break;
        case 'none':
          break;
        case 'error':
        case 'errorOffset':
          failure ??= r.replyError(chunk.error, chunk.message);
          break;
        default:
          throw protocolError(`${chunkTypeName(P.NBD_REPLY_TYPE_BLOCK_STATUS)} chunk in reply to the ${what}`);
      }
      if (!done) return;
      if (failure) return reject(failure);
      pieces.sort((a, b) => a[0] - b[0]);
      let at = offset;
      for (const [s, n] of pieces) {
        if (s !== at) throw protocolError(`reply to the ${what} ${s < at ? 'overlaps itself' : 'leaves a gap'} at offset ${Math.min(s, at)}`);
        at = s + n;
      }
      if (at !== offset + length) throw protocolError(`reply to the ${what} ends at offset ${at}`);
      resolve();
    },
  };
}
