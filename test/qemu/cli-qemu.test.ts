// virtback's domain and checkpoint commands end to end against virtbackd
// running the real QEMU driver: the effects are checked in QEMU (bitmaps
// through query-named-block-nodes) and on disk (qemu-img), the output
// against virsh's formats; a push backup followed with --wait is checked
// byte-wise in its target.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { cliOnQemu } from '../helpers/cli-qemu.js';
import { hmpWrite, imageHasPattern, makeTestDomain } from '../helpers/qemu-env.js';

const run = promisify(execFile);


test('domain and checkpoint commands on real QEMU', { timeout: 90_000 }, async (t) => {
  const { env, cli, qemu: driverOf } = await cliOnQemu(t);
  const dom = await makeTestDomain(env.dir, { disks: 2, sizeMiB: 16, name: 'cli-vm' });
  const [sda, sdb] = dom.disks;
  const file = path.join(env.dir, 'cli-vm.xml');
  await writeFile(file, dom.xml);

  const bitmaps = async (target: string): Promise<string[]> => {
    const node = driverOf().diskNodes(dom.uuid).find((d) => d.target === target)!.formatNode!;
    const r = await cli.run('qemu-monitor-command', 'cli-vm', '{"execute":"query-named-block-nodes","arguments":{"flat":true}}');
    assert.equal(r.code, 0, r.stderr);
    const nodes = (JSON.parse(r.stdout) as { return: { 'node-name': string; 'dirty-bitmaps'?: { name: string }[] }[] }).return;
    return (nodes.find((n) => n['node-name'] === node)?.['dirty-bitmaps'] ?? []).map((b) => b.name).sort();
  };

  assert.deepEqual(await cli.run('define', file), { code: 0, stdout: `Domain 'cli-vm' defined from ${file}\n`, stderr: '' });
  assert.equal((await cli.run('list', '--all')).stdout, ' Id   Name     State\n-------------------------\n -    cli-vm   shut off\n');
  assert.equal(
    (await cli.run('domblklist', 'cli-vm')).stdout,
    ` Target   Source\n${'-'.repeat(6 + 3 + sda!.path.length + 3)}\n sda      ${sda!.path}\n sdb      ${sdb!.path}\n`,
  );
  assert.deepEqual(await cli.run('start', 'cli-vm'), { code: 0, stdout: "Domain 'cli-vm' started\n", stderr: '' });
  const info = await cli.run('dominfo', 'cli-vm');
  const pid = /^Id:\s+(\d+)\n/.exec(info.stdout)?.[1];
  assert.ok(pid !== undefined, info.stdout);
  assert.match((await run('ps', ['-o', 'comm=', '-p', pid])).stdout, /qemu-system/);
  assert.match(info.stdout, /State: {10}running\n/);
  // the QEMU driver reports no running reason (DomainSummary.reason is 0 while running)
  assert.match((await cli.run('domstate', 'cli-vm', '--reason')).stdout, /^running \((booted|unknown)\)\n$/);
  assert.match((await cli.run('dumpxml', 'cli-vm')).stdout, new RegExp(`<source file='${sda!.path}'/>`));

  const status = await cli.run('qemu-monitor-command', 'cli-vm', '--pretty', '{"execute":"query-status"}');
  assert.equal((JSON.parse(status.stdout) as { return: { status: string } }).return.status, 'running');
  const hmp = await cli.run('qemu-monitor-command', 'cli-vm', '--hmp', 'info', 'status');
  assert.equal(hmp.stdout.trim(), 'VM status: running');

  // checkpoints: bitmaps appear and disappear in QEMU
  assert.deepEqual(await cli.run('checkpoint-create-as', 'cli-vm', '--name', 'c1', '--diskspec', 'sda,checkpoint=bitmap', '--diskspec', 'sdb,checkpoint=no'), {
    code: 0,
    stdout: 'Domain checkpoint c1 created\n',
    stderr: '',
  });
  assert.deepEqual(await bitmaps('sda'), ['c1']);
  assert.deepEqual(await bitmaps('sdb'), []);
  const cpFile = path.join(env.dir, 'c2.xml');
  await writeFile(cpFile, '<domaincheckpoint><name>c2</name><description>second</description></domaincheckpoint>');
  assert.equal((await cli.run('checkpoint-create', 'cli-vm', cpFile)).stdout, `Domain checkpoint c2 created from '${cpFile}'\n`);
  assert.deepEqual(await bitmaps('sda'), ['c1', 'c2']);
  assert.deepEqual(await bitmaps('sdb'), ['c2']);

  const xml = (await cli.run('checkpoint-dumpxml', 'cli-vm', 'c2', '--no-domain', '--size')).stdout;
  assert.match(xml, /<parent>\s*<name>c1<\/name>/);
  assert.match(xml, /<disk name='sda' checkpoint='bitmap' bitmap='c2' size='\d+'\/>/);
  assert.doesNotMatch(xml, /<domain[ >]/, 'no <domain> with --no-domain');
  assert.match((await cli.run('checkpoint-dumpxml', 'cli-vm', 'c1')).stdout, /<domain type='qemu'>/);
  assert.equal((await cli.run('checkpoint-parent', 'cli-vm', 'c2')).stdout, 'c1\n');
  assert.equal(
    (await cli.run('checkpoint-info', 'cli-vm', 'c1')).stdout,
    'Name:           c1\nDomain:         cli-vm\nParent:         -\nChildren:       1\nDescendants:    1\n',
  );
  assert.equal((await cli.run('checkpoint-list', 'cli-vm', '--tree')).stdout, 'c1\n  |\n  +- c2\n    \n');
  assert.equal((await cli.run('checkpoint-list', 'cli-vm', '--leaves', '--name')).stdout, 'c2\n');
  assert.equal((await cli.run('checkpoint-list', 'cli-vm', '--no-leaves', '--name')).stdout, 'c1\n');
  assert.equal((await cli.run('list', '--with-checkpoint', '--name')).stdout, 'cli-vm\n');

  // deleting the root merges nothing away from c2 but removes c1's bitmap
  assert.equal((await cli.run('checkpoint-delete', 'cli-vm', 'c1')).stdout, 'Domain checkpoint c1 deleted\n');
  assert.deepEqual(await bitmaps('sda'), ['c2']);
  assert.deepEqual(await cli.run('checkpoint-parent', 'cli-vm', 'c2'), { code: 1, stdout: '', stderr: "error: checkpoint 'c2' has no parent\n" });

  // a bitmap removed behind our back: the checkpoint is marked inconsistent after a restart
  assert.equal((await cli.run('destroy', 'cli-vm')).stdout, "Domain 'cli-vm' destroyed\n");
  await run('qemu-img', ['bitmap', '--remove', sda!.path, 'c2']);
  assert.equal((await cli.run('start', 'cli-vm')).code, 0);
  const table = await cli.run('checkpoint-list', 'cli-vm');
  assert.match(table.stdout, /^ Name {3}Creation Time +Inconsistent\n-+\n c2 +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d [+-]\d{4} {3}.*sda.*c2.*\n$/);
  assert.match((await cli.run('checkpoint-info', 'cli-vm', 'c2')).stdout, /\nInconsistent: +.*sda/);
  assert.equal((await cli.run('checkpoint-list', 'cli-vm', '--tree')).stdout, 'c2 (inconsistent)\n\n');
  assert.equal(table.stderr, '', 'no unknown bitmaps yet');

  // a bitmap no checkpoint knows is reported by checkpoint-list, and adopted with --redefine
  // (node names count down like libvirt's: sdb, the last disk, is libvirt-1-format)
  await cli.run('qemu-monitor-command', 'cli-vm', JSON.stringify({ execute: 'block-dirty-bitmap-add', arguments: { node: 'libvirt-1-format', name: 'stray', persistent: true } }));
  const warned = await cli.run('checkpoint-list', 'cli-vm', '--name');
  assert.equal(warned.stderr, "warning: bitmap 'stray' on disk 'sdb' belongs to no checkpoint (adopt it with 'checkpoint-create --redefine', or remove it with qemu-img bitmap --remove when the domain is off)\n");
  await writeFile(path.join(env.dir, 'stray.xml'), `<domaincheckpoint><name>stray</name><creationTime>${Math.floor(Date.now() / 1000) + 5}</creationTime>` +
    "<disks><disk name='sdb'/></disks></domaincheckpoint>");
  assert.equal((await cli.run('checkpoint-create', 'cli-vm', path.join(env.dir, 'stray.xml'), '--redefine', '--redefine-validate')).code, 0);
  const adopted = await cli.run('checkpoint-list', 'cli-vm', '--name');
  assert.deepEqual([adopted.stdout, adopted.stderr], ['c2\nstray\n', '']);
  assert.equal((await cli.run('checkpoint-delete', 'cli-vm', 'stray')).code, 0);

  // undefine refuses while checkpoint metadata exists, unless asked to drop it
  assert.equal((await cli.run('destroy', 'cli-vm')).code, 0);
  assert.deepEqual(await cli.run('undefine', 'cli-vm'), { code: 1, stdout: '', stderr: 'error: Requested operation is not valid: cannot delete inactive domain with 1 checkpoints\n' });
  assert.deepEqual(await cli.run('undefine', 'cli-vm', '--checkpoints-metadata'), { code: 0, stdout: "Domain 'cli-vm' has been undefined\n", stderr: '' });
  assert.equal((await cli.run('list', '--all', '--name')).stdout, '');
  await cli.daemon.stop();
  await env.assertClean();
});

test('push backup with --wait, job commands and backup-end on real QEMU', { timeout: 90_000 }, async (t) => {
  const { env, cli, qemu: driverOf } = await cliOnQemu(t);
  const dom = await makeTestDomain(env.dir, { disks: 2, sizeMiB: 16, name: 'bk-vm' });
  const file = path.join(env.dir, 'bk-vm.xml');
  await writeFile(file, dom.xml);
  assert.equal((await cli.run('define', file)).code, 0);
  assert.equal((await cli.run('start', 'bk-vm')).code, 0);
  await hmpWrite(driverOf(), dom.uuid, 'sda', 0xab, 0, 65536);

  const target = path.join(env.dir, 'bk-sda.qcow2');
  const backupXml = path.join(env.dir, 'backup.xml');
  await writeFile(
    backupXml,
    `<domainbackup mode='push'><disks><disk name='sda' type='file'><driver type='qcow2'/><target file='${target}'/></disk>` +
      "<disk name='sdb' backup='no'/></disks></domainbackup>",
  );
  const cpXml = path.join(env.dir, 'cp.xml');
  await writeFile(cpXml, '<domaincheckpoint><name>full</name></domaincheckpoint>');
  const r = await cli.run('backup-begin', 'bk-vm', '--backupxml', backupXml, '--checkpointxml', cpXml, '--wait');
  assert.equal(r.code, 0, r.stderr);
  const id = /^Backup started, job id (\d+)\n/.exec(r.stdout)?.[1];
  assert.ok(id !== undefined, r.stdout);
  assert.match(r.stdout, /\nsda: completed\n(.*\n)*Backup job \d+ completed\n$/);
  assert.ok(!r.stdout.includes('sdb'), 'sdb is not backed up');
  assert.equal(await imageHasPattern(target, 0xab, 0, 65536), true);

  const done = await cli.run('domjobinfo', 'bk-vm', '--completed', '--keep-completed');
  assert.match(done.stdout, /^Job type: {9}Completed {3}\nOperation: {8}Backup {6}\n/);
  assert.match(done.stdout, /\nFile total: {7}16\.000 MiB\n/);
  assert.match((await cli.run('domjobinfo', 'bk-vm', '--completed', '--rawstats')).stdout, /^Job type: 3\n\noperation: 9\n(.*\n)*success: yes\n/);
  assert.equal((await cli.run('checkpoint-list', 'bk-vm', '--name')).stdout, 'full\n', 'the checkpoint of --checkpointxml');
  // a finished push job is released by backup-end
  const ids = await driverOf().listJobIds(dom.uuid);
  if (ids.length > 0) {
    assert.match((await cli.run('backup-dumpxml', 'bk-vm', '--id', id)).stdout, new RegExp(`<target file='${target}'`));
    assert.deepEqual(await cli.run('backup-end', 'bk-vm', '--id', id), { code: 0, stdout: `Backup job ${id} ended, backup complete\n`, stderr: '' });
  }
  assert.deepEqual(await driverOf().listJobIds(dom.uuid), []);
  assert.equal((await cli.run('blockjob', 'bk-vm', 'sda', '--info')).stdout, 'No current block job for sda\n');
  const abort = await cli.run('domjobabort', 'bk-vm');
  assert.equal(abort.code, 1);
  assert.match(abort.stderr, /^error: .*no job is active on the domain\n$/);
  assert.equal((await cli.run('destroy', 'bk-vm')).code, 0);
  await cli.daemon.stop();
  await env.assertClean();
});
