// STARTTLS's cleartext delivered into one reused buffer (as plain sockets read):
// every byte arrives, in order, through the callback, and no 'data' event fires.
// If a Node release drops the fields this relies on, startTls falls back to
// 'data' events and the first assertion here says so.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { promisify } from 'node:util';
import { startTls } from '../../src/nbd/tls.js';

const run = promisify(execFile);

test('startTls over a plain socket reads cleartext into the given buffer', async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vb-nbd-tls-'));
  const server = tls.createServer({});
  try {
    const keyFile = path.join(dir, 'key.pem');
    const certFile = path.join(dir, 'cert.pem');
    await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyFile, '-out', certFile, '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost']);
    const cert = await readFile(certFile);
    server.setSecureContext({ key: await readFile(keyFile), cert });
    // 4 MiB in uneven writes: many TLS records, reads cut anywhere
    const payload = randomBytes(4 << 20);
    server.on('secureConnection', (s) => {
      for (let at = 0; at < payload.length; ) {
        const n = Math.min(payload.length - at, 1000 + ((at * 7) % 70000));
        s.write(payload.subarray(at, at + n));
        at += n;
      }
      s.end();
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as net.AddressInfo).port;
    const raw = net.connect(port, '127.0.0.1');
    await new Promise((resolve) => raw.once('connect', resolve));
    const buffer = Buffer.alloc(256 * 1024);
    const got = createHash('sha256');
    let bytes = 0;
    let reads = 0;
    let done!: () => void;
    const all = new Promise<void>((resolve) => (done = resolve));
    const onread = {
      buffer,
      callback: (n: number, buf: Uint8Array) => {
        assert.equal(buf.buffer, buffer.buffer, 'the buffer we gave');
        got.update(buf.subarray(0, n));
        bytes += n;
        reads++;
        buffer.fill(0xee); // reused: what was delivered must already be consumed
        if (bytes === payload.length) done();
        return true;
      },
    };
    const { secure, reads: mode } = await startTls(raw, { ca: cert }, 'localhost', 'nbd://test', onread);
    assert.equal(mode, 'buffer', 'this Node lets a wrapped TLS socket read into a user buffer');
    let dataEvents = 0;
    secure.on('data', () => dataEvents++);
    await all;
    assert.equal(got.digest('hex'), createHash('sha256').update(payload).digest('hex'), 'every byte, in order');
    assert.ok(reads > 1);
    assert.equal(dataEvents, 0);
    secure.destroy();
  } finally {
    server.close();
    await rm(dir, { recursive: true, force: true });
  }
});
