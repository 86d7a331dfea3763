// backup-restore and backup-verify through the CLI's main(): a full qcow2
// backup and an incremental on it, built with qemu-img/qemu-io next to a
// "live" disk that receives the same writes, with manifests. No daemon: these
// commands work on files. One run under a pseudo-terminal checks the bars.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { writeManifest, type BackupManifestInput } from '../../src/repository/index.js';
import type { QemuDriver } from '../../src/qemu/driver.js';
import { runMain, startCliDaemon } from '../helpers/cli.js';
import { hmpWrite, imageHasPattern, makeTestDomain, makeTestEnv, waitFor } from '../helpers/qemu-env.js';
import { MiB, copyChain, fingerprint, img, manifestInput, map, qemuIo, rawContent, sha } from './repository-helpers.js';
import { programCommand } from '../helpers/entry.js';

const SIZE = 64 * MiB;

/**
 * main(argv) with the CLI's output captured. Unlike test/helpers/cli.ts's
 * runMain, only string writes are taken: the test runner of a `--test` child
 * reports to the parent through the same stdout as Buffers, and those must
 * neither land in the result nor get lost.
 */
describe('virtback backup-restore / backup-verify', { timeout: 90_000 }, () => {
  let dir = '';
  let full = '';
  let inc = '';
  const refs: string[] = []; // sha256 of the live disk's content at each backup point
  let untouched: Record<string, string> = {};

  const input = (target: string, over: Partial<BackupManifestInput>): BackupManifestInput => manifestInput(target, SIZE, over);

  const copyChainTo = (name: string): Promise<string> => copyChain(dir, name, /^(full|inc)\.qcow2/);

  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'vb-clirepo-'));
    const live = path.join(dir, 'live.qcow2');
    full = path.join(dir, 'full.qcow2');
    inc = path.join(dir, 'inc.qcow2');
    await img('create', '-q', '-f', 'qcow2', live, String(SIZE));
    await qemuIo('qcow2', live, 'write -P 0x11 0 4M', 'write -P 0x22 20M 1M');
    await img('convert', '-O', 'qcow2', live, full);
    refs.push(sha(await rawContent(live, dir)));
    const t1 = ['write -P 0x33 2M 1M', 'write -z 20M 512k', 'write -P 0x44 40M 64k'];
    await qemuIo('qcow2', live, ...t1);
    await img('create', '-q', '-f', 'qcow2', '-b', 'full.qcow2', '-F', 'qcow2', inc);
    await qemuIo('qcow2', inc, ...t1);
    refs.push(sha(await rawContent(live, dir)));
    await writeManifest(input(full, { checkpoint: 'c1' }));
    await writeManifest(input(inc, { checkpoint: 'c2', incrementalFrom: 'c1', parentBackup: full, jobId: 2 }));
    untouched = await fingerprint([full, inc]);
  });

  after(async () => {
    if (dir) await fs.rm(dir, { recursive: true, force: true });
  });

  test('backup-restore of the incremental to qcow2 and of the full one to raw: byte-exact, progress lines, summary', async () => {
    const outQ = path.join(dir, 'restored.qcow2');
    let r = await runMain(['backup-restore', inc, outQ]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stderr, '');
    const lines = r.stdout.trimEnd().split('\n');
    assert.match(lines[0]!, /^restored\.qcow2: \d+% \(\d+\.\d\/64\.0 MiB\)$/);
    assert.equal(lines.at(-2), 'restored.qcow2: completed');
    assert.equal(lines.at(-1), `Backup '${inc}' (2 images) restored to '${outQ}' (qcow2, 64.0 MiB)`);
    assert.equal(JSON.parse(await img('info', '--output=json', outQ)).format, 'qcow2');
    assert.equal(JSON.parse(await img('info', '--output=json', outQ))['backing-filename'], undefined, 'standalone');
    assert.equal(sha(await rawContent(outQ, dir)), refs[1]);

    const outR = path.join(dir, 'restored-full.raw');
    r = await runMain(['backup-restore', full, outR, '--format', 'raw']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /\(1 image\) restored to '.*restored-full\.raw' \(raw, 64\.0 MiB\)\n$/);
    assert.equal(sha(await fs.readFile(outR)), refs[0]);
    // sparse: only the written 5 MiB are data
    const data = (await map(outR, 'raw')).filter((e) => e.data).reduce((n, e) => n + e.length, 0);
    assert.ok(data <= 5 * MiB, `raw output has ${data} bytes of data`);
  });

  test('backup-restore --in-place overwrites an existing image completely', async () => {
    const target = path.join(dir, 'inplace.raw');
    await fs.writeFile(target, Buffer.alloc(SIZE, 0x5a));
    const r = await runMain(['backup-restore', inc, target, '--format', 'raw', '--in-place']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /restored in place onto '.*inplace\.raw' \(raw, 64\.0 MiB\)\n$/);
    assert.equal(sha(await fs.readFile(target)), refs[1]);
  });

  test('backup-restore failures: existing output and broken chain exit 1, bad usage exits 2', async () => {
    const exists = path.join(dir, 'exists.qcow2');
    await fs.writeFile(exists, 'keep me');
    let r = await runMain(['backup-restore', inc, exists]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^error: restore output '.*exists\.qcow2' already exists \(restore in place to overwrite it\)\n$/);
    assert.equal(await fs.readFile(exists, 'utf8'), 'keep me');
    assert.doesNotMatch(r.stdout, /restored/);

    const d = await copyChainTo('missing');
    await fs.rm(path.join(d, 'full.qcow2'));
    r = await runMain(['backup-restore', path.join(d, 'inc.qcow2'), path.join(d, 'out.qcow2')]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^error: backup chain of '.*missing\/inc\.qcow2' is broken: backing file '.*missing\/full\.qcow2' of '.*missing\/inc\.qcow2' does not exist\n$/);
    await assert.rejects(fs.stat(path.join(d, 'out.qcow2')));

    r = await runMain(['backup-restore', inc, path.join(dir, 'x.vmdk'), '--format', 'vmdk']);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /argument 'vmdk' is invalid\. Allowed choices are qcow2, raw/);
    r = await runMain(['backup-restore', inc]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /missing required argument 'output'/);
  });

  test('backup-verify of an intact chain: one line per image, exit 0; --json', async () => {
    let r = await runMain(['backup-verify', inc]);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trimEnd().split('\n');
    assert.ok(lines.includes(`${inc}: ok`), r.stdout);
    assert.ok(lines.includes(`${full}: ok`), r.stdout);
    assert.ok(lines.includes('full.qcow2: completed') && lines.includes('inc.qcow2: completed'), 'progress per image');
    assert.equal(lines.at(-1), `backup '${inc}' verified: 2 images match their manifests`);

    r = await runMain(['backup-verify', inc, '--json']);
    assert.equal(r.code, 0, r.stderr);
    const j = JSON.parse(r.stdout) as { ok: boolean; chain: { file: string; status: string }[] };
    assert.equal(j.ok, true);
    assert.deepEqual(j.chain.map((l) => [l.file, l.status]), [[inc, 'ok'], [full, 'ok']]);
  });

  test('backup-verify of a corrupted chain exits 1 naming the damaged file and the first bad range', async () => {
    const d = await copyChainTo('corrupt');
    const m = await map(path.join(d, 'full.qcow2'));
    const hit = m.find((e) => e.data && e.start <= 20 * MiB && e.start + e.length > 20 * MiB)!;
    assert.ok(hit?.offset !== undefined, 'guest 20M lies in full.qcow2');
    const fh = await fs.open(path.join(d, 'full.qcow2'), 'r+');
    await fh.write(Buffer.from([0x99]), 0, 1, hit.offset! + (20 * MiB - hit.start) + 600 * 1024); // in the half inc does not cover
    await fh.close();
    const r = await runMain(['backup-verify', path.join(d, 'inc.qcow2')]);
    assert.equal(r.code, 1);
    assert.match(r.stdout, /corrupt\/full\.qcow2: BAD; first bad range offset 20971520 length 1048576/);
    assert.match(r.stderr, /^error: backup '.*corrupt\/inc\.qcow2' is damaged: '.*corrupt\/full\.qcow2' disagrees with '.*corrupt\/full\.qcow2\.manifest\.json' first at offset 20971520 length 1048576\n$/);
  });

  test('backup-verify without manifests or without the target exits 1', async () => {
    const d = await copyChainTo('bare');
    await fs.rm(path.join(d, 'inc.qcow2.manifest.json'));
    let r = await runMain(['backup-verify', path.join(d, 'inc.qcow2')]);
    assert.equal(r.code, 1);
    assert.match(r.stdout, /bare\/inc\.qcow2: no manifest, not verified/);
    assert.match(r.stderr, /^error: backup '.*bare\/inc\.qcow2' could not be verified\n$/);
    r = await runMain(['backup-verify', path.join(d, 'nope.qcow2')]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /nope\.qcow2' does not exist/);
  });

  test('on a terminal: progress bars (run under script(1))', async () => {
    const out = path.join(dir, 'tty.qcow2');
    const cmd = `${programCommand('cli/virtback')} backup-restore ${inc} ${out}`;
    const { stdout } = await promisify(execFile)('script', ['-qec', cmd, '/dev/null'], { env: { ...process.env, COLUMNS: '120' } });
    assert.match(stdout, /tty\.qcow2 \[[█░]+\] 100% \| 64\.0\/64\.0 MiB \| completed/);
    assert.match(stdout, /restored to '.*tty\.qcow2'/);
    assert.equal(sha(await rawContent(out, dir)), refs[1]);
  });

  test('the backup files were never modified', async () => {
    assert.deepEqual(await fingerprint([full, inc]), untouched);
  });
});

describe('virtback backup-pull on real QEMU', { timeout: 120_000 }, () => {
  test('a full then an incremental pull into backup files with manifests; the chain restores and verifies', async (t) => {
    const env = await makeTestEnv(t);
    const dom = await makeTestDomain(env.dir, { disks: 2, sizeMiB: 64 });
    let driver: QemuDriver | null = null;
    const cli = await startCliDaemon(t, { dir: env.dir, openDriver: async () => (driver = await env.openDriver()) });
    const d = driver!;
    const run = (...args: string[]) => runMain(['-c', cli.uri, ...args]);
    const { uuid } = await d.domainDefineXML(dom.xml, 0);
    await d.domainCreate(uuid, 0);
    t.after(() => d.domainDestroy(uuid, 0).catch(() => {}));
    const out = path.join(env.dir, 'bk');
    await fs.mkdir(out);

    // full pull with checkpoint c1, over a unix socket
    await hmpWrite(d, uuid, 'sda', 0x11, 0, 2 * MiB);
    await hmpWrite(d, uuid, 'sdb', 0x22, 8 * MiB, MiB);
    const sock = path.join(env.dir, 'nbd.sock');
    const id1 = await d.backupBegin(uuid, `<domainbackup mode='pull'><server transport='unix' socket='${sock}'/></domainbackup>`, '<domaincheckpoint><name>c1</name></domaincheckpoint>', 0);
    await hmpWrite(d, uuid, 'sda', 0x99, 0, MiB); // after the instant: must not be in the backup
    let r = await run('backup-pull', dom.name, '--output', out);
    assert.equal(r.code, 0, r.stderr);
    const sda1 = path.join(out, `${dom.name}-sda.c1.qcow2`);
    const sdb1 = path.join(out, `${dom.name}-sdb.c1.qcow2`);
    assert.match(r.stdout, new RegExp(`^sda: ${sda1.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} \\(full; 2\\.0 MiB read\\)$`, 'm'));
    assert.match(r.stdout, new RegExp(`Backup job ${id1} pulled: 2 disks into '${out}'\\n$`));
    assert.equal(await d.backupEnd(uuid, id1, 0), 1);
    assert.equal(await imageHasPattern(sda1, 0x11, 0, 2 * MiB), true, 'sda holds the data of the instant');
    assert.equal(await imageHasPattern(sdb1, 0x22, 8 * MiB, MiB), true);
    const m1 = JSON.parse(await fs.readFile(`${sda1}.manifest.json`, 'utf8')) as Record<string, unknown>;
    assert.deepEqual([m1.mode, m1.checkpoint, m1.incrementalFrom, m1.parentBackup, m1.jobId, m1.disk], ['pull', 'c1', null, null, id1, 'sda']);

    // incremental from c1 with c2, over TCP (port picked by the driver)
    await hmpWrite(d, uuid, 'sdb', 0x33, 20 * MiB, 64 * 1024);
    const id2 = await d.backupBegin(uuid, "<domainbackup mode='pull'><incremental>c1</incremental><server name='127.0.0.1'/></domainbackup>", '<domaincheckpoint><name>c2</name></domaincheckpoint>', 0);
    r = await run('backup-pull', dom.name, '--output', out, '--id', String(id2));
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^sdb: .*-sdb\.c2\.qcow2 \(incremental from c1, backed by .*-sdb\.c1\.qcow2; 0\.1 MiB read\)$/m);
    assert.match(r.stdout, /^sda: .*-sda\.c2\.qcow2 \(incremental from c1, backed by .*-sda\.c1\.qcow2; 1\.0 MiB read\)$/m);
    await d.backupEnd(uuid, id2, 0);
    await d.domainDestroy(uuid, 0);

    // the chains verify against their manifests and restore to the disks as they are now (nothing was written after c2)
    for (const disk of dom.disks) {
      const top = path.join(out, `${dom.name}-${disk.target}.c2.qcow2`);
      r = await run('backup-verify', top);
      assert.equal(r.code, 0, r.stdout + r.stderr);
      assert.match(r.stdout, /verified: 2 images match their manifests\n$/);
      const restored = path.join(env.dir, `${disk.target}-restored.raw`);
      r = await run('backup-restore', top, restored, '--format', 'raw');
      assert.equal(r.code, 0, r.stderr);
      assert.equal(sha(await fs.readFile(restored)), sha(await rawContent(disk.path, env.dir)), `${disk.target} restored equals the disk`);
    }

    // no backup of the base checkpoint in the folder: refused before anything is written
    await d.domainCreate(uuid, 0);
    const empty = path.join(env.dir, 'empty');
    await fs.mkdir(empty);
    const id3 = await d.backupBegin(uuid, `<domainbackup mode='pull'><incremental>c2</incremental><server transport='unix' socket='${sock}'/></domainbackup>`, null, 0);
    r = await run('backup-pull', dom.name, '--output', empty);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^error: disk 'sda' is incremental from checkpoint 'c2', but '.*empty' holds no backup of that checkpoint for it\n$/);
    assert.deepEqual(await fs.readdir(empty), []);
    await d.backupEnd(uuid, id3, 0);
    // a push job has nothing to pull
    const id4 = await d.backupBegin(uuid, null, null, 0);
    r = await run('backup-pull', dom.name, '--output', empty, '--id', String(id4));
    assert.equal(r.code, 1);
    assert.match(r.stderr, new RegExp(`^error: backup job ${id4} is not a pull backup`));
    r = await run('backup-pull', dom.name, '--output', path.join(env.dir, 'nope'));
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^error: backup-pull output '.*nope' is not a folder\n$/);
    r = await run('backup-pull', dom.name);
    assert.equal(r.code, 2, 'missing --output is bad usage');
    await waitFor(async () => (await d.listJobIds(uuid)).length === 0 || (await d.getJobStats(uuid, 0)).type === 0, 'push job done');
    await d.backupEnd(uuid, id4, 0).catch(() => {});
    await d.domainDestroy(uuid, 0);
    await cli.daemon.stop();
    await env.assertClean();
  });

  test('backup-pull --json: JSON lines only; the backup and its manifest are 0600', async (t) => {
    const env = await makeTestEnv(t);
    const dom = await makeTestDomain(env.dir, { disks: 1, sizeMiB: 16 });
    let driver: QemuDriver | null = null;
    const cli = await startCliDaemon(t, { dir: env.dir, openDriver: async () => (driver = await env.openDriver()) });
    const d = driver!;
    const { uuid } = await d.domainDefineXML(dom.xml, 0);
    await d.domainCreate(uuid, 0);
    t.after(() => d.domainDestroy(uuid, 0).catch(() => {}));
    await hmpWrite(d, uuid, 'sda', 0x11, 0, MiB);
    const out = path.join(env.dir, 'bk');
    await fs.mkdir(out);
    const sock = path.join(env.dir, 'nbd.sock');
    const id = await d.backupBegin(uuid, `<domainbackup mode='pull'><server transport='unix' socket='${sock}'/></domainbackup>`, '<domaincheckpoint><name>c1</name></domaincheckpoint>', 0);
    const r = await runMain(['-c', cli.uri, 'backup-pull', dom.name, '--output', out, '--json']);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trimEnd().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
    const file = path.join(out, `${dom.name}-sda.c1.qcow2`);
    assert.deepEqual(lines.at(-2), { type: 'pulled', disk: 'sda', output: file, format: 'qcow2', incrementalFrom: null, parentBackup: null, bytesRead: MiB });
    assert.deepEqual(lines.at(-1), { type: 'completed', jobId: id, checkpoint: 'c1', dir: out, disks: 1 });
    assert.ok(lines.slice(0, -2).every((l) => l.type === 'progress'), r.stdout);
    assert.ok(lines.length - 2 <= 12, `${lines.length - 2} progress lines`);
    assert.equal((await fs.stat(file)).mode & 0o777, 0o600);
    assert.equal((await fs.stat(`${file}.manifest.json`)).mode & 0o777, 0o600);
    await d.backupEnd(uuid, id, 0);
    await d.domainDestroy(uuid, 0);
    await cli.daemon.stop();
    await env.assertClean();
  });
});
