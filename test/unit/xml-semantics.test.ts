// libvirt's semantic errors for <domainbackup> and <domaincheckpoint>
// (LIBVIRT-REFERENCE §2.1, §2.2, §4.13): exact wording and codes.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ErrorCode, ErrorDomain, VirError } from '../../src/errors.js';
import { alignBackupDisks, formatBackupXML, parseBackupXML } from '../../src/xml/backup.js';
import type { BackupAlignDisk } from '../../src/xml/backup.js';
import { alignCheckpointDisks, checkpointDomainUUID, formatCheckpointXML, parseCheckpointXML } from '../../src/xml/checkpoint.js';

function fails(fn: () => unknown, code: number, message: string | RegExp): VirError {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof VirError, `expected a VirError, got ${String(err)}`);
  assert.equal(err.code, code, err.message);
  if (typeof message === 'string') assert.equal(err.message, message);
  else assert.match(err.message, message);
  return err;
}

const dom = (...disks: Partial<BackupAlignDisk>[]): { disks: BackupAlignDisk[] } => ({
  disks: disks.map((d, i) => ({ target: `vd${'abcdefgh'[i]}`, source: `/img/${i}.qcow2`, readonly: false, type: 'file', ...d })),
});

const backup = (disks: string, mode = 'push', extra = ''): string =>
  `<domainbackup mode='${mode}'>${extra}${mode === 'pull' ? "<server name='localhost' port='10809'/>" : ''}<disks>${disks}</disks></domainbackup>`;

test('backup parse errors (after the schema) with libvirt wording', () => {
  // these only reach the semantic parser in internal mode: the schema stops them on input
  fails(() => parseBackupXML("<domainbackup mode='default'/>", { internal: true }), ErrorCode.CONFIG_UNSUPPORTED, "unknown backup mode 'default'");
  const e = fails(() => parseBackupXML("<domainbackup mode='push'><server name='h'/></domainbackup>", { internal: true }), ErrorCode.CONFIG_UNSUPPORTED, 'use of <server> requires pull mode backup');
  assert.equal(e.domain, ErrorDomain.DOMAIN);
  fails(() => parseBackupXML("<domainbackup mode='pull'><server transport='rdma' name='h'/></domainbackup>", { internal: true }), ErrorCode.CONFIG_UNSUPPORTED, 'transport rdma is not supported for <server>');
  fails(() => parseBackupXML("<domainbackup mode='pull'><server transport='unix' socket='rel/sock'/></domainbackup>", { internal: true }), ErrorCode.XML_ERROR, "backup socket path 'rel/sock' must be absolute");
  fails(() => parseBackupXML(backup("<disk name='vda' type='dir'/>"), { internal: true }), ErrorCode.XML_ERROR, "unsupported disk backup type 'dir'");
  fails(() => parseBackupXML(backup("<disk backup='yes'/>"), { internal: true }), ErrorCode.XML_ERROR, 'missing name from disk backup element');
  // and the schema does stop them on public input
  for (const xml of ["<domainbackup mode='default'/>", backup("<disk name='vda' type='dir'/>"), backup('<disk/>')]) {
    fails(() => parseBackupXML(xml), ErrorCode.XML_INVALID_SCHEMA, /domainbackup\.rng/);
  }
  fails(() => parseBackupXML('<domaincheckpoint/>'), ErrorCode.XML_ERROR, "expecting root element of 'domainbackup', not 'domaincheckpoint'");
});

test('backup align errors (virDomainBackupAlignDisks)', () => {
  fails(() => alignBackupDisks(parseBackupXML('<domainbackup/>'), { disks: [] }, 'S'), ErrorCode.CONFIG_UNSUPPORTED, 'domain must have at least one disk to perform backup');
  fails(() => alignBackupDisks(parseBackupXML(backup("<disk name='vdz'/>")), dom({}), 'S'), ErrorCode.CONFIG_UNSUPPORTED, "no disk named 'vdz'");
  fails(() => alignBackupDisks(parseBackupXML(backup("<disk name='vda'/><disk name='vda' backup='no'/>")), dom({}), 'S'), ErrorCode.CONFIG_UNSUPPORTED, "disk 'vda' specified twice");
  fails(
    () => alignBackupDisks(parseBackupXML(backup("<disk name='vda' backupmode='incremental'/>")), dom({}), 'S'),
    ErrorCode.CONFIG_UNSUPPORTED,
    "'incremental' backup mode of disk 'vda' requires setting 'incremental' field for disk or backup",
  );
  fails(() => alignBackupDisks(parseBackupXML(backup("<disk name='vda'/>")), dom({ source: null, readonly: true }), 'S'), ErrorCode.CONFIG_UNSUPPORTED, "disk 'vda' has no media");
  fails(() => alignBackupDisks(parseBackupXML(backup("<disk name='vda'/>")), dom({ type: 'block', source: '/dev/sdx' }), 'S'), ErrorCode.CONFIG_UNSUPPORTED, "refusing to generate file name for disk 'vda'");
  // a block device is fine when a target is given
  const ok = parseBackupXML(backup("<disk name='vda' type='block'><target dev='/dev/backup'/></disk>"));
  alignBackupDisks(ok, dom({ type: 'block', source: '/dev/sdx' }), 'S');
  assert.equal(ok.disks[0]?.path, '/dev/backup');
});

test('backup defaults: no <disks> backs up every writable non-empty disk; listed disks select', () => {
  const all = parseBackupXML('<domainbackup/>');
  alignBackupDisks(all, dom({}, { readonly: true }, { source: null }, {}), '1700000000');
  assert.deepEqual(
    all.disks.map((d) => [d.name, d.backup, d.path, d.backupmode]),
    [
      ['vda', true, '/img/0.qcow2.1700000000', 'full'],
      ['vdb', false, null, null],
      ['vdc', false, null, null],
      ['vdd', true, '/img/3.qcow2.1700000000', 'full'],
    ],
  );
  const some = parseBackupXML(backup("<disk name='vdb' incremental='c0'/>", 'pull', '<incremental>c1</incremental>'));
  alignBackupDisks(some, dom({}, {}), 'c2');
  assert.equal(
    formatBackupXML(some),
    `<domainbackup mode='pull'>
  <incremental>c1</incremental>
  <server transport='tcp' name='localhost' port='10809'/>
  <disks>
    <disk name='vdb' backup='yes' type='file' backupmode='incremental' incremental='c0'>
      <scratch file='/img/1.qcow2.c2'/>
    </disk>
    <disk name='vda' backup='no'/>
  </disks>
</domainbackup>
`,
  );
});

test('backup: job id and internal state travel through our status XML', () => {
  const def = parseBackupXML(backup("<disk name='vda'/>", 'pull'));
  alignBackupDisks(def, dom({}), 'S');
  def.id = 7;
  def.disks[0]!.state = 'running';
  def.tlsAlias = 'obj';
  const status = formatBackupXML(def, { internal: true });
  assert.match(status, /^<domainbackup mode='pull' id='7'>/);
  assert.match(status, /<disk name='vda' backup='yes' state='running' type='file'/);
  assert.match(status, /<TLSx509 alias='obj'\/>/);
  assert.deepEqual(parseBackupXML(status, { internal: true }), def);
  // the public output has the id but no internal state
  const pub = formatBackupXML(def);
  assert.doesNotMatch(pub, /state=|privateData/);
  assert.match(pub, / id='7'/);
});

test('checkpoint parse errors', () => {
  fails(() => parseCheckpointXML('<domaincheckpoint><creationTime>5</creationTime></domaincheckpoint>', { redefine: true }), ErrorCode.XML_ERROR, 'a redefined checkpoint must have a name');
  const e = fails(() => parseCheckpointXML('<domaincheckpoint><name>a</name></domaincheckpoint>', { redefine: true }), ErrorCode.INTERNAL_ERROR, 'missing creationTime from existing checkpoint');
  assert.equal(e.domain, ErrorDomain.DOMAIN_CHECKPOINT);
  // a new checkpoint ignores creationTime, parent and domain from the XML
  const def = parseCheckpointXML(
    "<domaincheckpoint><creationTime>5</creationTime><parent><name>p</name></parent><domain type='kvm'><name>x</name></domain></domaincheckpoint>",
    { redefine: false, now: 1234 },
  );
  assert.deepEqual([def.name, def.creationTime, def.parent, def.domain], ['1234', 1234, null, null]);
});

test('checkpoint align (virDomainCheckpointAlignDisks): paths become targets, defaults, errors', () => {
  const d = dom({}, {}, { readonly: true }, { source: null });
  const def = parseCheckpointXML("<domaincheckpoint><name>c</name><disks><disk name='/img/1.qcow2'/></disks></domaincheckpoint>", { redefine: false });
  alignCheckpointDisks(def, d);
  assert.deepEqual(
    def.disks.map((x) => [x.name, x.checkpoint, x.bitmap]),
    [
      ['vda', 'no', null],
      ['vdb', 'bitmap', 'c'],
      ['vdc', 'no', null],
      ['vdd', 'no', null],
    ],
  );
  const all = parseCheckpointXML('<domaincheckpoint><name>c</name></domaincheckpoint>', { redefine: false });
  alignCheckpointDisks(all, d);
  assert.deepEqual(all.disks.map((x) => x.checkpoint), ['bitmap', 'bitmap', 'no', 'no']);

  const cp = (disks: string) => parseCheckpointXML(`<domaincheckpoint><name>c</name><disks>${disks}</disks></domaincheckpoint>`, { redefine: false });
  fails(() => alignCheckpointDisks(cp("<disk name='vdz'/>"), d), ErrorCode.CONFIG_UNSUPPORTED, "no disk named 'vdz'");
  fails(() => alignCheckpointDisks(cp("<disk name='vda'/><disk name='/img/0.qcow2'/>"), d), ErrorCode.CONFIG_UNSUPPORTED, "disk '/img/0.qcow2' specified twice");
  fails(() => alignCheckpointDisks(cp("<disk name='vdc'/>"), d), ErrorCode.CONFIG_UNSUPPORTED, "disk 'vdc' is empty or readonly");
  fails(() => alignCheckpointDisks(cp("<disk name='vda'/><disk name='vdb'/>"), dom({})), ErrorCode.CONFIG_UNSUPPORTED, 'too many disk checkpoint requests for domain');
  fails(() => alignCheckpointDisks(cp("<disk name='vda'/>"), { disks: [] }), ErrorCode.CONFIG_UNSUPPORTED, 'too many disk checkpoint requests for domain');
  const none = parseCheckpointXML('<domaincheckpoint/>', { redefine: false });
  fails(() => alignCheckpointDisks(none, { disks: [] }), ErrorCode.CONFIG_UNSUPPORTED, 'domain must have at least one disk to perform checkpoints');
  // a path shared by two disks is ambiguous: libvirt finds no disk
  fails(() => alignCheckpointDisks(cp("<disk name='/same'/>"), dom({ source: '/same' }, { source: '/same' })), ErrorCode.CONFIG_UNSUPPORTED, "no disk named '/same'");
  // checkpoint='no' on a read-only disk is fine
  alignCheckpointDisks(cp("<disk name='vdc' checkpoint='no'/>"), d);
});

test('checkpoint: embedded domain uuid, secure output', () => {
  const xml = `<domaincheckpoint><name>c</name><creationTime>1</creationTime><domain type='kvm'><name>x</name><uuid>C7A5FDBDEDAF9455926AD65C16DB1809</uuid><devices><graphics type='vnc' passwd='pw'/></devices></domain></domaincheckpoint>`;
  const def = parseCheckpointXML(xml, { redefine: true });
  assert.equal(checkpointDomainUUID(def), 'c7a5fdbd-edaf-9455-926a-d65c16db1809');
  assert.doesNotMatch(formatCheckpointXML(def), /passwd/);
  assert.match(formatCheckpointXML(def, { secure: true }), /passwd='pw'/);
  assert.doesNotMatch(formatCheckpointXML(def, { noDomain: true }), /<domain /);
});
