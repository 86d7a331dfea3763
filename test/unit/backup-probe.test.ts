// The end-of-pull probe over TLS, where no QEMU is needed: which credentials
// it takes from the server's folder, and when it cannot check the view at
// all (a server that verifies peers and no client pair: no connection, one
// warning naming the missing files, the job's verdict left alone). The probe
// against a real QEMU: test/qemu/backup-pull-guard-tls.test.ts.

import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import test from 'node:test';
import type { BackupJobDisk, BackupJobRecord } from '../../src/qemu/backup-job.js';
import { failBrokenSnapshots } from '../../src/qemu/backup-probe.js';
import { backupServerTarget } from '../../src/nbd/target.js';
import { recordingLogger } from '../helpers/qemu-env.js';

/** A TCP server that counts its connections and closes each at once (no NBD: any probe of it gets no verdict). */
async function counter(t: test.TestContext): Promise<{ port: number; connections: () => number }> {
  let n = 0;
  const server = net.createServer((s) => {
    n++;
    s.destroy();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return { port: (server.address() as net.AddressInfo).port, connections: () => n };
}

function pullRecord(port: number): BackupJobRecord {
  const disk = { target: 'sda', path: '/scratch/sda.scratch', snapshot: { cbwNode: 'cbw', snapNode: 'snap' }, state: 'running', error: null } as BackupJobDisk;
  return {
    id: 7, mode: 'pull', phase: 'running', startedAt: 0, endedAt: null, checkpoint: null, disks: [disk], steps: [], stopping: 'end', end: null, errmsg: null,
    xml: `<domainbackup mode='pull' id='7'><server transport='tcp' tls='yes' name='127.0.0.1' port='${port}'/>` +
      "<disks><disk name='sda' backup='yes' type='file' exportname='sda'><scratch file='/scratch/sda.scratch'/></disk></disks></domainbackup>",
  };
}

async function tlsDir(t: test.TestContext, files: string[]): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'vb-probe-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  for (const f of files) await writeFile(path.join(dir, f), `not a real ${f}\n`);
  return dir;
}

test('TLS pull, verify-peer on, no client pair in the folder: no probe, one warning naming the missing files', async (t) => {
  const server = await counter(t);
  const { log, entries } = recordingLogger();
  const rec = pullRecord(server.port);
  const dir = await tlsDir(t, ['ca-cert.pem', 'server-cert.pem', 'server-key.pem']);
  await failBrokenSnapshots(rec, { tls: { dir, verify: true }, log });
  assert.equal(server.connections(), 0, 'nothing connected');
  assert.equal(rec.disks[0]!.state, 'running', 'the job\'s verdict is left alone');
  const warns = entries.filter((e) => e.level === 'warn');
  assert.equal(warns.length, 1, JSON.stringify(entries));
  assert.match(warns[0]!.msg, /frozen view of TLS pull job 7 cannot be checked/);
  assert.match(warns[0]!.msg, new RegExp(`server verifies client certificates .* '${dir}' has no client-cert\\.pem and client-key\\.pem`));
  // no folder at all (a driver restarted without one): warned too, and why
  entries.length = 0;
  await failBrokenSnapshots(rec, { tls: { dir: null, verify: true }, log });
  assert.equal(server.connections(), 0);
  assert.deepEqual(entries.map((e) => [e.level, /no backup TLS folder is configured/.test(e.msg)]), [['warn', true]]);
});

test('TLS pull: the CA alone when the server verifies no peer, the client pair when the folder has one (both connect)', async (t) => {
  const server = await counter(t);
  const { log, entries } = recordingLogger();
  const rec = pullRecord(server.port);
  await failBrokenSnapshots(rec, { tls: { dir: await tlsDir(t, ['ca-cert.pem']), verify: false }, log });
  assert.equal(server.connections(), 1, 'verify-peer off: probed with the CA only');
  await failBrokenSnapshots(rec, { tls: { dir: await tlsDir(t, ['ca-cert.pem', 'client-cert.pem', 'client-key.pem']), verify: true }, log });
  assert.equal(server.connections(), 2, 'verify-peer on, client pair present: probed');
  // a connection that fails is no verdict on the view, but said
  assert.equal(rec.disks[0]!.state, 'running');
  assert.deepEqual(entries.filter((e) => e.level === 'warn').map((e) => e.msg), Array(2).fill('the frozen view of pull job 7 could not be checked at its end'));
  // half a client pair: not guessed at
  entries.length = 0;
  await failBrokenSnapshots(rec, { tls: { dir: await tlsDir(t, ['ca-cert.pem', 'client-cert.pem']), verify: false }, log });
  assert.equal(server.connections(), 2);
  assert.match(entries[0]!.msg, /only one of client-cert\.pem and client-key\.pem/);
});

test('backupServerTarget: the one address rule of QEMU, the probe and backup-pull', () => {
  assert.deepEqual(backupServerTarget({ transport: 'unix', socket: '/run/n.sock', name: null, port: null }), { socketPath: '/run/n.sock' });
  assert.deepEqual(backupServerTarget({ transport: null, socket: null, name: 'h', port: 10809 }), { host: 'h', port: 10809 });
  assert.deepEqual(backupServerTarget({ transport: 'tcp', socket: null, name: null, port: 1 }), { host: 'localhost', port: 1 });
  for (const port of [null, 0, NaN, 1.5]) assert.equal(backupServerTarget({ transport: 'tcp', socket: null, name: 'h', port }), null, String(port));
  assert.equal(backupServerTarget({ transport: 'unix', socket: null, name: null, port: null }), null);
  assert.equal(backupServerTarget({ transport: 'fd', socket: null, name: null, port: null }), null);
});
