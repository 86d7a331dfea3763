// job-completed of a push is published only once its targets are closed and
// flushed: a listener may open them at that instant. The listener below starts
// `qemu-img check` on every target from inside the event callback (no -U: it
// cannot open an image QEMU still holds for writing) and the targets must
// then hold what the disks held, for a full and an incremental push, on two domains
// whose jobs finish together.

import assert from 'node:assert/strict';
import path from 'node:path';
import test from 'node:test';
import type { DriverEvent } from '../../src/api/driver.js';
import { hmpWrite, imageHasPattern, makeTestDomain, makeTestEnv, type TestDomain } from '../helpers/qemu-env.js';
import { run } from './backup-util.js';

const MiB = 1024 * 1024;
const SIZE = 32 * MiB;

/** [pattern, offset, length] of disk k of domain i at the full and at the incremental backup */
function expected(i: number, k: number, suffix: string): Array<[number, number, number]> {
  const first = 0x21 + 2 * i + k;
  if (suffix === 'full') return [[first, 0, 12 * MiB], [0, 12 * MiB, SIZE - 12 * MiB]];
  return [[first, 0, 12 * MiB], [0, 12 * MiB, 8 * MiB], [0x61 + 2 * i + k, 20 * MiB, 4 * MiB], [0, 24 * MiB, SIZE - 24 * MiB]];
}

/** qemu-img check of the target, run at the instant of the event: { ok, output } */
type Checked = Promise<{ ok: boolean; output: string }>;

function checkNow(file: string): Checked {
  return run('qemu-img', ['check', '-f', 'qcow2', file]).then(
    (r) => ({ ok: true, output: r.stdout }),
    (e: { stdout?: string; stderr?: string }) => ({ ok: false, output: `${e.stdout ?? ''}${e.stderr ?? ''}` }),
  );
}

test('push: at job-completed every target is closed, consistent and holds the disk at the backup instant', async (t) => {
  const env = await makeTestEnv(t);
  const doms: TestDomain[] = [];
  for (let i = 0; i < 2; i++) {
    const td = await makeTestDomain(env.dir, { disks: 2, sizeMiB: SIZE / MiB, name: `order-${i}` });
    for (const [k, d] of td.disks.entries()) {
      await run('qemu-io', ['-f', 'qcow2', '-c', `write -P 0x${(0x21 + 2 * i + k).toString(16)} 0 12M`, d.path]);
    }
    doms.push(td);
  }
  /** target file -> the check started when its job-completed was delivered */
  const checks = new Map<string, Checked>();
  const targetsOf = new Map<string, string[]>();
  const driver = await env.openDriver({
    listener: (ev: DriverEvent) => {
      if (ev.type !== 'job-completed') return;
      for (const f of targetsOf.get(`${ev.domain.uuid}/${ev.jobId}`) ?? []) checks.set(f, checkNow(f));
    },
  });
  for (const td of doms) {
    await driver.domainDefineXML(td.xml, 0);
    await driver.domainCreate(td.uuid, 0);
  }

  const push = async (suffix: string, incremental: string | null, checkpoint: string): Promise<void> => {
    const ids = await Promise.all(doms.map(async (td) => {
      const disks = td.disks.map((d) => `<disk name='${d.target}' type='file'><target file='${d.path}.${suffix}'/><driver type='qcow2'/></disk>`);
      const xml = `<domainbackup>${incremental ? `<incremental>${incremental}</incremental>` : ''}<disks>${disks.join('')}</disks></domainbackup>`;
      const id = await driver.backupBegin(td.uuid, xml, `<domaincheckpoint><name>${checkpoint}</name></domaincheckpoint>`, 0);
      targetsOf.set(`${td.uuid}/${id}`, td.disks.map((d) => `${d.path}.${suffix}`));
      return id;
    }));
    for (const [i, td] of doms.entries()) {
      const deadline = Date.now() + 60_000;
      while (!env.events.some((e) => e.type === 'job-completed' && e.domain.uuid === td.uuid && e.jobId === ids[i])) {
        assert.ok(Date.now() < deadline, `job-completed of ${td.name}`);
        await new Promise((r) => setTimeout(r, 20));
      }
      const ev = env.events.find((e) => e.type === 'job-completed' && e.domain.uuid === td.uuid && e.jobId === ids[i]);
      assert.ok(ev?.type === 'job-completed' && ev.stats.success === true, `backup of ${td.name} succeeded`);
      for (const d of td.disks) {
        const checked = await checks.get(`${d.path}.${suffix}`);
        assert.ok(checked, `a check ran at the event for ${d.path}.${suffix}`);
        assert.equal(checked.ok, true, `qemu-img check at job-completed: ${checked.output}`);
        assert.match(checked.output, /No errors were found/);
      }
      for (const [k, d] of td.disks.entries()) {
        // what the disk held at the backup's instant (the guest runs no OS; the live disk's
        // qcow2 metadata may still sit in QEMU's cache, so the model is checked, not the file)
        for (const [pattern, offset, len] of expected(i, k, suffix)) {
          assert.ok(await imageHasPattern(`${d.path}.${suffix}`, pattern, offset, len), `${d.path}.${suffix}: 0x${pattern.toString(16)} at ${offset}+${len}`);
        }
      }
      assert.equal(await driver.backupEnd(td.uuid, ids[i]!, 0), 1);
    }
  };

  await push('full', null, 'c1');
  // 4 MiB more per disk, then an incremental: its target is backed by the full one
  for (const [i, td] of doms.entries()) {
    for (const [k, d] of td.disks.entries()) await hmpWrite(driver, td.uuid, d.target, 0x61 + 2 * i + k, 20 * MiB, 4 * MiB);
  }
  await push('inc', 'c1', 'c2');
  for (const td of doms) {
    for (const d of td.disks) assert.equal(path.basename((await run('qemu-img', ['info', '-U', '--output=json', `${d.path}.inc`]).then((r) => JSON.parse(r.stdout) as { 'backing-filename'?: string }))['backing-filename'] ?? ''), path.basename(`${d.path}.full`));
  }
  for (const td of doms) await driver.domainDestroy(td.uuid, 0);
  await env.assertClean();
});
