// Manifests, restore and verify against real qemu-img/qemu-nbd: a full qcow2
// backup and two incrementals with relative backing files, built with qemu-io
// from known patterns alongside a "live" disk that receives the same writes.

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { ErrorCode, VirError } from '../../src/errors.js';
import { CHECKSUM_ALGORITHM } from '../../src/repository/checksum.js';
import { manifestPath, readManifest, writeManifest, type BackupManifestInput } from '../../src/repository/manifest.js';
import { formatVerifyResult, restoreBackup, verifyBackup } from '../../src/repository/index.js';
import { MiB, copyChain, dataBytesIn, fingerprint, img, manifestInput, map, qemuIo, rawContent, referenceChecksum, run, sha } from './repository-helpers.js';

const SIZE = 64 * MiB;
const domain = { name: 'vm1', uuid: 'c7a5fdbd-cdaf-9455-926a-d65c16db1809' };

function rejectsWith(code: number, re: RegExp) {
  return (e: unknown) => {
    assert.ok(e instanceof VirError, `expected VirError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    assert.match(e.message, re);
    return true;
  };
}

/** The pid of a process that has ended (and was reaped). */
async function exitedPid(): Promise<number> {
  const child = spawn('true', { stdio: 'ignore' });
  await once(child, 'exit');
  return child.pid!;
}

describe('backup repository: manifests, restore, verify', { timeout: 90_000 }, () => {
  let dir = '';
  let full = '';
  let inc1 = '';
  let inc2 = '';
  let live = '';
  const refs: Buffer[] = [];
  let before0: Record<string, string> = {};

  const input = (target: string, over: Partial<BackupManifestInput>): BackupManifestInput => manifestInput(target, SIZE, { domain, disk: 'vda', ...over });

  /** Copy the whole chain into a fresh folder (backing names are relative, so the copy is self-contained). */
  const copyChainTo = (name: string): Promise<string> => copyChain(dir, name, /^(full|inc1|inc2)\.qcow2/);

  before(async () => {
    dir = await fs.mkdtemp(path.join(os.tmpdir(), 'virtback-repo-'));
    live = path.join(dir, 'live.qcow2');
    full = path.join(dir, 'full.qcow2');
    inc1 = path.join(dir, 'inc1.qcow2');
    inc2 = path.join(dir, 'inc2.qcow2');
    await img('create', '-q', '-f', 'qcow2', live, String(SIZE));
    await qemuIo('qcow2', live, 'write -P 0x11 0 4M', 'write -P 0x22 20M 1M', 'write -P 0x23 30M 4k');
    await img('convert', '-O', 'qcow2', live, full);
    refs.push(await rawContent(live, dir));

    const t1 = ['write -P 0x33 2M 1M', 'write -z 20M 512k', 'write -P 0x44 40M 64k'];
    await qemuIo('qcow2', live, ...t1);
    await img('create', '-q', '-f', 'qcow2', '-b', 'full.qcow2', '-F', 'qcow2', inc1);
    await qemuIo('qcow2', inc1, ...t1);
    refs.push(await rawContent(live, dir));

    const t2 = ['write -P 0x55 63M 1M', 'write -P 0x66 3M 4k'];
    await qemuIo('qcow2', live, ...t2);
    await img('create', '-q', '-f', 'qcow2', '-b', 'inc1.qcow2', '-F', 'qcow2', inc2);
    await qemuIo('qcow2', inc2, ...t2);
    refs.push(await rawContent(live, dir));

    await writeManifest(input(full, { checkpoint: 'c1' }));
    await writeManifest(input(inc1, { checkpoint: 'c2', incrementalFrom: 'c1', parentBackup: full, jobId: 2 }));
    await writeManifest(input(inc2, { checkpoint: 'c3', incrementalFrom: 'c2', parentBackup: inc1, jobId: 3 }));
    before0 = await fingerprint([full, inc1, inc2]);
  });

  after(async () => {
    if (dir) await fs.rm(dir, { recursive: true, force: true });
  });

  test('manifests record the chain and the content checksum of each backup point', async () => {
    const files = [full, inc1, inc2];
    for (let i = 0; i < 3; i++) {
      const m = (await readManifest(files[i]!))!;
      assert.equal(m.checksum!.algorithm, CHECKSUM_ALGORITHM);
      assert.equal(m.checksum!.sha256, referenceChecksum(refs[i]!), `checksum of ${files[i]}`);
      assert.equal(m.virtualSize, SIZE);
      assert.equal(m.checkpoint, `c${i + 1}`);
      assert.equal(m.parentBackup, i === 0 ? null : files[i - 1]);
    }
    const m0 = (await readManifest(full))!;
    // 64 blocks: data in 0-3, 20, 30; everything else is a zero run and has no digest.
    assert.deepEqual(m0.checksum!.zeroBlocks, [[4, 16], [21, 9], [31, 33]]);
    assert.equal(Buffer.from(m0.checksum!.digests, 'base64').length, 6 * 32);
    assert.equal(m0.timeISO, '2023-11-14T22:13:20.000Z');
    assert.equal(await readManifest(path.join(dir, 'nothing.qcow2')), null);
    // The atomic write leaves no temp files behind.
    assert.deepEqual((await fs.readdir(dir)).filter((f) => f.includes('.tmp')), []);
  });

  test('restore each point to qcow2 and raw: byte-exact and sparse', async () => {
    const files = [full, inc1, inc2];
    for (let i = 0; i < 3; i++) {
      const q = path.join(dir, `restored${i}.qcow2`);
      const r = path.join(dir, `restored${i}.raw`);
      const progress: number[] = [];
      const res = await restoreBackup({ target: files[i]!, output: q, format: 'qcow2', onProgress: (p) => progress.push(p.bytesDone) });
      assert.deepEqual(res.chain, files.slice(0, i + 1).reverse());
      assert.equal(progress.at(-1), SIZE);
      await restoreBackup({ target: files[i]!, output: r, format: 'raw' });
      assert.equal(sha(await fs.readFile(r)), sha(refs[i]!), `raw restore of ${files[i]}`);
      assert.equal(sha(await rawContent(q, dir)), sha(refs[i]!), `qcow2 restore of ${files[i]}`);
      const info = JSON.parse(await img('info', '--output=json', q)) as Record<string, unknown>;
      assert.equal(info['backing-filename'], undefined, 'restored qcow2 is standalone');
    }
    await img('compare', '-f', 'qcow2', '-F', 'raw', path.join(dir, 'restored2.qcow2'), path.join(dir, 'restored2.raw'));
    for (const [f, fmt] of [[path.join(dir, 'restored2.qcow2'), 'qcow2'], [path.join(dir, 'restored2.raw'), 'raw']] as const) {
      const m = await map(f, fmt);
      assert.equal(dataBytesIn(m, 5 * MiB, 20 * MiB), 0, `${f}: hole 5M-20M stays a hole`);
      assert.equal(dataBytesIn(m, 20 * MiB, 20 * MiB + 512 * 1024), 0, `${f}: zeroed 20M+512k is not data`);
      assert.ok(dataBytesIn(m, 40 * MiB, 41 * MiB) >= 64 * 1024, `${f}: data at 40M is data`);
    }
    const st = await fs.stat(path.join(dir, 'restored2.raw'));
    assert.ok(st.blocks * 512 < 12 * MiB, `raw restore is sparse (${st.blocks * 512} bytes allocated)`);
  });

  test('restore in place overwrites every byte of an existing image', async () => {
    const raw = path.join(dir, 'dev.raw');
    await img('create', '-q', '-f', 'raw', raw, String(SIZE));
    await qemuIo('raw', raw, 'write -P 0x77 0 64M');
    const q = path.join(dir, 'dev.qcow2');
    await img('create', '-q', '-f', 'qcow2', q, String(SIZE));
    await qemuIo('qcow2', q, 'write -P 0x78 0 64M');
    await restoreBackup({ target: inc2, output: raw, format: 'raw', inPlace: true });
    await restoreBackup({ target: inc1, output: q, format: 'qcow2', inPlace: true });
    assert.equal(sha(await fs.readFile(raw)), sha(refs[2]!));
    assert.equal(sha(await rawContent(q, dir)), sha(refs[1]!));
    const small = path.join(dir, 'small.raw');
    await img('create', '-q', '-f', 'raw', small, String(SIZE / 2));
    await assert.rejects(restoreBackup({ target: inc2, output: small, format: 'raw', inPlace: true }), rejectsWith(ErrorCode.INVALID_ARG, /small\.raw' has 33554432 bytes, less than/));
    await assert.rejects(restoreBackup({ target: inc2, output: path.join(dir, 'nope.raw'), format: 'raw', inPlace: true }), rejectsWith(ErrorCode.INVALID_ARG, /nope\.raw' does not exist/));
  });

  test('a restore removes the temp images that killed restores to its output left, no live one', async () => {
    const sub = await fs.mkdtemp(path.join(dir, 'temps-'));
    const dead = await exitedPid();
    const stale = `.out.raw.restore-${dead}-0a1b2c3d.tmp`;
    const kept = [
      `.out.raw.restore-${process.pid}-0a1b2c3d.tmp`, // a restore running beside this one
      `.out.raw.restore-${dead}-0a1b2c3.tmp`,
      `.out.raw.restore-${dead}-0a1b2c3d.tmp.keep`,
      `.out.raw.manifest.json.${dead}.tmp`,
      `.other.raw.restore-${dead}-0a1b2c3d.tmp`,
    ];
    for (const name of [stale, ...kept]) await fs.writeFile(path.join(sub, name), 'x');
    await restoreBackup({ target: inc1, output: path.join(sub, 'out.raw'), format: 'raw' });
    assert.equal(sha(await fs.readFile(path.join(sub, 'out.raw'))), sha(refs[1]!));
    assert.deepEqual((await fs.readdir(sub)).sort(), ['out.raw', ...kept].sort());
  });

  test('restore refuses to overwrite an existing file or a backup of the chain', async () => {
    await assert.rejects(restoreBackup({ target: inc2, output: path.join(dir, 'restored0.raw'), format: 'raw' }), rejectsWith(ErrorCode.INVALID_ARG, /already exists/));
    await assert.rejects(restoreBackup({ target: inc2, output: inc1, format: 'qcow2', inPlace: true }), rejectsWith(ErrorCode.INVALID_ARG, /is backup '.*inc1\.qcow2' of the chain/));
    await assert.rejects(restoreBackup({ target: path.join(dir, 'nothere.qcow2'), output: path.join(dir, 'x.raw'), format: 'raw' }), rejectsWith(ErrorCode.INVALID_ARG, /nothere\.qcow2' does not exist/));
  });

  test('verify passes on the intact chain and reads only what each layer holds', async () => {
    const seen = new Set<string>();
    const r = await verifyBackup({ target: inc2, onProgress: (p) => seen.add(path.basename(p.file)) });
    assert.equal(r.ok, true, formatVerifyResult(r).join('\n'));
    assert.deepEqual(r.chain.map((l) => [path.basename(l.file), l.status]), [['inc2.qcow2', 'ok'], ['inc1.qcow2', 'ok'], ['full.qcow2', 'ok']]);
    // full: 6 data blocks; inc1 holds blocks 2, 20, 40; inc2 holds 3, 63.
    assert.deepEqual(r.chain.map((l) => l.bytesRead / MiB), [2, 3, 6]);
    assert.deepEqual([...seen].sort(), ['full.qcow2', 'inc1.qcow2', 'inc2.qcow2']);
    assert.match(formatVerifyResult(r).at(-1)!, /verified: 3 images match/);
  });

  test('a corrupted data byte: verify names the damaged file and the first bad range', async () => {
    const d = await copyChainTo('corrupt');
    const m = await map(path.join(d, 'inc1.qcow2'));
    const hit = m.find((e) => e.depth === 0 && e.data && e.start <= 40 * MiB && e.start + e.length > 40 * MiB)!;
    assert.ok(hit?.offset !== undefined, 'guest 40M lies in inc1 itself');
    const host = hit.offset! + (40 * MiB - hit.start) + 1000;
    const fh = await fs.open(path.join(d, 'inc1.qcow2'), 'r+');
    await fh.write(Buffer.from([0x45]), 0, 1, host);
    await fh.close();
    const r = await verifyBackup({ target: path.join(d, 'inc2.qcow2') });
    assert.equal(r.ok, false);
    assert.deepEqual(r.chain.map((l) => l.status), ['bad', 'bad', 'ok']);
    assert.deepEqual(r.firstBad, { offset: 40 * MiB, length: MiB, file: path.join(d, 'inc1.qcow2'), manifest: manifestPath(path.join(d, 'inc1.qcow2')) });
    assert.deepEqual(r.chain[0]!.firstBad, { offset: 40 * MiB, length: MiB });
    assert.match(formatVerifyResult(r).at(-1)!, /corrupt\/inc1\.qcow2' disagrees with '.*inc1\.qcow2\.manifest\.json' first at offset 41943040 length 1048576/);
  });

  test('a missing middle file is named by restore and verify', async () => {
    const d = await copyChainTo('missing');
    await fs.rm(path.join(d, 'inc1.qcow2'));
    const re = /backing file '.*missing\/inc1\.qcow2' of '.*missing\/inc2\.qcow2' does not exist/;
    await assert.rejects(restoreBackup({ target: path.join(d, 'inc2.qcow2'), output: path.join(d, 'out.raw'), format: 'raw' }), rejectsWith(ErrorCode.OPERATION_INVALID, re));
    await assert.rejects(fs.stat(path.join(d, 'out.raw')));
    const r = await verifyBackup({ target: path.join(d, 'inc2.qcow2') });
    assert.equal(r.ok, false);
    assert.match(r.chainProblem!, re);
  });

  test('a link of the wrong virtual size is named', async () => {
    const d = await copyChainTo('size');
    await img('resize', '-q', path.join(d, 'full.qcow2'), String(SIZE * 2));
    await assert.rejects(
      restoreBackup({ target: path.join(d, 'inc2.qcow2'), output: path.join(d, 'out.raw'), format: 'raw' }),
      rejectsWith(ErrorCode.OPERATION_INVALID, /'.*size\/full\.qcow2' has virtual size 134217728, but '.*size\/inc2\.qcow2' has 67108864/),
    );
  });

  test('a loop made with qemu-img rebase -u is named', async () => {
    const d = await copyChainTo('loop');
    await img('rebase', '-u', '-b', 'inc2.qcow2', '-F', 'qcow2', path.join(d, 'full.qcow2'));
    await assert.rejects(
      restoreBackup({ target: path.join(d, 'inc2.qcow2'), output: path.join(d, 'out.raw'), format: 'raw' }),
      rejectsWith(ErrorCode.OPERATION_INVALID, /backing file '.*loop\/inc2\.qcow2' of '.*loop\/full\.qcow2' creates a loop/),
    );
  });

  test('a link whose manifest belongs to another disk is named', async () => {
    const d = await copyChainTo('foreign');
    const mf = manifestPath(path.join(d, 'inc1.qcow2'));
    const m = JSON.parse(await fs.readFile(mf, 'utf8')) as { disk: string };
    m.disk = 'vdb';
    await fs.writeFile(mf, JSON.stringify(m));
    await assert.rejects(
      restoreBackup({ target: path.join(d, 'inc2.qcow2'), output: path.join(d, 'out.raw'), format: 'raw' }),
      rejectsWith(ErrorCode.OPERATION_INVALID, /'.*foreign\/inc1\.qcow2' belongs to disk 'vdb' of domain 'vm1'.*not to disk 'vda'/),
    );
  });

  test('an incremental backed by the live disk is refused, naming the live disk', async () => {
    const d = path.join(dir, 'livechain');
    await fs.mkdir(d);
    const inc = path.join(d, 'inc.qcow2');
    await img('create', '-q', '-f', 'qcow2', '-b', live, '-F', 'qcow2', inc);
    await qemuIo('qcow2', inc, 'write -P 0x99 0 64k');
    await writeManifest(input(inc, { checkpoint: 'c9', incrementalFrom: 'c3', parentBackup: null }));
    await assert.rejects(
      restoreBackup({ target: inc, output: path.join(d, 'out.raw'), format: 'raw' }),
      rejectsWith(ErrorCode.OPERATION_INVALID, /incremental backup '.*inc\.qcow2' is backed by '.*live\.qcow2', which is not a backup.*live disk/),
    );
    // Its content at the backup point cannot be read back, so its manifest carries no checksum.
    assert.equal((await readManifest(inc))!.checksum, null);
    const r = await verifyBackup({ target: inc });
    assert.equal(r.ok, false);
    assert.match(r.chainProblem!, /live\.qcow2', which is not a backup/);
    assert.deepEqual(r.chain.map((l) => l.status), ['unverified', 'unverified']);
    assert.match(formatVerifyResult(r).join('\n'), /inc\.qcow2: no checksum, not verified/);
  });

  test('backup files were never modified', async () => {
    assert.deepEqual(await fingerprint([full, inc1, inc2]), before0);
    await run('qemu-img', ['check', '-q', inc2]);
  });
});
