// NBD_CMD_WRITE / WRITE_ZEROES / FLUSH against a writable qemu-nbd export,
// checked by reading the image back with qemu-img after qemu-nbd closed it.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { ErrorCode } from '../../src/errors.js';
import { NbdClient } from '../../src/nbd/client.js';
import { NbdError } from '../../src/nbd/errors.js';
import { startExport, type NbdExport } from '../../src/repository/tools.js';
import { MiB, img, map, qemuIo, rawContent } from './repository-helpers.js';

describe('NBD client writes against qemu-nbd', { timeout: 60_000 }, () => {
  let dir = '';
  const exports: NbdExport[] = [];
  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'virtback-nbdw-'));
  });
  after(async () => {
    for (const e of exports) await e.close().catch(() => undefined);
    if (dir) await fs.rm(dir, { recursive: true, force: true });
  });

  test('write, write zeroes and flush land in the qcow2 image', async () => {
    const image = path.join(dir, 'w.qcow2');
    await img('create', '-q', '-f', 'qcow2', image, String(8 * MiB));
    await qemuIo('qcow2', image, 'write -P 0x5a 4M 1M');
    const exp = await startExport({ image, format: 'qcow2', readOnly: false });
    exports.push(exp);
    const c = await NbdClient.connect({ socketPath: exp.socketPath }, { exportName: '' });
    assert.equal(c.readOnly, false);
    const big = Buffer.alloc(3 * MiB, 0x21);
    await Promise.all([c.write(0, big), c.write(3 * MiB + 512, Buffer.from('hello')), c.writeZeroes(4 * MiB + 64 * 1024, 128 * 1024)]);
    await c.flush();
    assert.deepEqual(await c.read(3 * MiB + 512, 5), Buffer.from('hello'));
    await assert.rejects(c.write(8 * MiB - 2, Buffer.alloc(4)), (e) => e instanceof NbdError && e.code === ErrorCode.INVALID_ARG && /beyond the end/.test(e.message));
    await c.disconnect();
    await exp.close();

    const content = await rawContent(image, dir);
    const want = Buffer.alloc(8 * MiB);
    want.fill(0x21, 0, 3 * MiB);
    want.write('hello', 3 * MiB + 512);
    want.fill(0x5a, 4 * MiB, 5 * MiB);
    want.fill(0, 4 * MiB + 64 * 1024, 4 * MiB + 192 * 1024);
    assert.ok(content.equals(want));
    const zeroed = (await map(image)).find((e) => e.start <= 4 * MiB + 64 * 1024 && e.start + e.length > 4 * MiB + 64 * 1024)!;
    assert.equal(zeroed.zero, true, 'write zeroes made zero clusters');
    assert.equal(zeroed.data, false);
  });

  test('writes to a read-only export fail before sending, and the connection stays usable', async () => {
    const image = path.join(dir, 'ro.qcow2');
    await img('create', '-q', '-f', 'qcow2', image, String(MiB));
    const exp = await startExport({ image, format: 'qcow2', readOnly: true });
    exports.push(exp);
    const c = await NbdClient.connect({ socketPath: exp.socketPath }, { exportName: '' });
    for (const p of [c.write(0, Buffer.alloc(512)), c.writeZeroes(0, 512), c.flush()]) {
      await assert.rejects(p, (e) => e instanceof NbdError && e.code === ErrorCode.INVALID_ARG && e.usable && /is read-only/.test(e.message));
    }
    assert.equal((await c.read(0, 512)).length, 512);
    await c.disconnect();
    await exp.close();
  });
});
