// Assertions on VirErrors shared by the tests.

import assert from 'node:assert/strict';
import { VirError } from '../../src/errors.js';

/** `p` rejects with a VirError of `code` whose message equals `message` (a string) or matches it (a RegExp). */
export async function refused(p: Promise<unknown>, code: number, message: string | RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof VirError, `a VirError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    if (typeof message === 'string') assert.equal(e.message, message);
    else assert.match(e.message, message);
    return true;
  });
}
