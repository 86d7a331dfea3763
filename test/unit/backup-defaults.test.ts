// Every default of a backup in one place (applyBackupDefaults) and what
// checkBackupDef refuses before anything is allocated.

import assert from 'node:assert/strict';
import test from 'node:test';
import { ErrorCode } from '../../src/errors.js';
import { checkBackupDef } from '../../src/qemu/backup-plan.js';
import { alignBackupDisks, applyBackupDefaults, backupBitmapName, formatBackupXML, parseBackupXML, type BackupDef } from '../../src/xml/backup.js';

const domain = {
  disks: [
    { target: 'sda', source: '/v/a.qcow2', readonly: false, type: 'file' },
    { target: 'sdb', source: '/v/b.qcow2', readonly: false, type: 'file' },
  ],
};

function prepared(xml: string): BackupDef {
  const def = parseBackupXML(xml);
  alignBackupDisks(def, domain, 'c2');
  applyBackupDefaults(def);
  return def;
}

test('push: qcow2 unless given; no export names', () => {
  const def = prepared("<domainbackup><disks><disk name='sda'/><disk name='sdb' type='file'><driver type='raw'/><target file='/w/b.raw'/></disk></disks></domainbackup>");
  assert.deepEqual(def.disks.map((d) => [d.name, d.format, d.exportname, d.exportbitmap]), [['sda', 'qcow2', null, null], ['sdb', 'raw', null, null]]);
  checkBackupDef(def, { tlsConfigured: false });
});

test('pull: export name = target, export bitmap backup-<target> for incremental disks only, given values kept', () => {
  const def = prepared("<domainbackup mode='pull'><server name='localhost'/><disks>" +
    "<disk name='sda' backupmode='incremental' incremental='c1'/><disk name='sdb' exportname='e' /></disks></domainbackup>");
  assert.deepEqual(def.disks.map((d) => [d.name, d.format, d.exportname, d.exportbitmap]),
    [['sda', 'qcow2', 'sda', backupBitmapName('sda')], ['sdb', 'qcow2', 'e', null]]);
  assert.equal(backupBitmapName('sda'), 'backup-sda');
  const given = prepared("<domainbackup mode='pull'><incremental>c1</incremental><server name='localhost'/><disks><disk name='sda' exportbitmap='mine'/><disk name='sdb' backup='no'/></disks></domainbackup>");
  assert.equal(given.disks[0]!.exportbitmap, 'mine');
  assert.equal(given.disks[1]!.format, null, 'a disk not backed up gets no defaults');
  // the job XML shows them
  assert.match(formatBackupXML(given), /<disk name='sda' backup='yes' type='file' backupmode='incremental' incremental='c1' exportname='sda' exportbitmap='mine'>\n\s*<driver type='qcow2'\/>/);
});

test('checkBackupDef: refusals before anything is allocated', () => {
  const refuse = (xml: string, code: number, message: RegExp, tls = false): void => {
    assert.throws(() => checkBackupDef(prepared(xml), { tlsConfigured: tls }), (e: { code: number; message: string }) => e.code === code && message.test(e.message), xml);
  };
  const rawPull = prepared("<domainbackup mode='pull'><server name='localhost'/><disks><disk name='sda'/><disk name='sdb' backup='no'/></disks></domainbackup>");
  rawPull.disks[0]!.format = 'raw'; // the schema already refuses <driver type='raw'/> in a pull
  assert.throws(() => checkBackupDef(rawPull, { tlsConfigured: false }),
    { code: ErrorCode.CONFIG_UNSUPPORTED, message: "pull mode backup for disk 'sda' requires qcow2 driver" });
  refuse("<domainbackup><disks><disk name='sda' type='file'><driver type='vmdk'/></disk></disks></domainbackup>",
    ErrorCode.CONFIG_UNSUPPORTED, /unsupported backup target format 'vmdk'/);
  // a block-device target is accepted (issue 13); prepare checks the device itself
  checkBackupDef(prepared("<domainbackup><disks><disk name='sda' type='block'><target dev='/dev/x'/></disk><disk name='sdb' backup='no'/></disks></domainbackup>"), { tlsConfigured: false });
  refuse("<domainbackup><disks><disk name='sda' backup='no'/><disk name='sdb' backup='no'/></disks></domainbackup>",
    ErrorCode.CONFIG_UNSUPPORTED, /no disks selected for backup/);
  refuse("<domainbackup mode='pull'><server name='localhost' tls='yes'/></domainbackup>",
    ErrorCode.OPERATION_INVALID, /backup TLS directory not configured/);
  checkBackupDef(prepared("<domainbackup mode='pull'><server name='localhost' tls='yes'/></domainbackup>"), { tlsConfigured: true });
  // without the defaults, the planner's input is refused as an internal error
  const raw = parseBackupXML('<domainbackup/>');
  alignBackupDisks(raw, domain, 'c2');
  assert.throws(() => checkBackupDef(raw, { tlsConfigured: false }), { code: ErrorCode.INTERNAL_ERROR });
});
