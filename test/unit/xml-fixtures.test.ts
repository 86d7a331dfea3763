// Our round-trip fixtures (test/fixtures/xml, one per case libvirt's own
// xml2xml tests cover), run through parse -> align -> format with a harness of
// the same shape as libvirt's (tests/genericxml2xmltest.c,
// tests/qemudomaincheckpointxml2xmltest.c): mocked creation time, fixed
// parent, one qcow2 disk per named disk plus one extra.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { ErrorCode, VirError } from '../../src/errors.js';
import { alignBackupDisks, formatBackupXML, parseBackupXML } from '../../src/xml/backup.js';
import { alignCheckpointDisks, formatCheckpointXML, parseCheckpointXML } from '../../src/xml/checkpoint.js';
import { domainDiskRefs } from '../../src/xml/domain.js';
import { EXTRA_DISK, FIXTURES, TARGET_SUFFIX, fixtureNames, harnessDomain, readFixture } from './xml-helpers.js';


function expectVirError(fn: () => unknown, code: number, re?: RegExp): VirError {
  try {
    fn();
  } catch (e) {
    assert.ok(e instanceof VirError, `expected a VirError, got ${String(e)}`);
    assert.equal(e.code, code, `code ${e.code} (${e.message})`);
    if (re) assert.match(e.message, re);
    return e;
  }
  assert.fail('expected an error');
}

const backupNames = fixtureNames('backup/in');
// parsed as libvirt's status XML (state='...', <privateData>), which the public parser refuses
const STATUS = 'pull-status-invalid';

test('backup fixtures: in -> parse -> align -> format == out (byte for byte)', () => {
  assert.equal(backupNames.length, 10);
  assert.deepEqual(fixtureNames('backup/out'), backupNames);
  for (const name of backupNames) {
    const internal = name === STATUS;
    const def = parseBackupXML(readFixture(`backup/in/${name}.xml`), { internal });
    alignBackupDisks(def, harnessDomain(def.disks.map((d) => d.name)), TARGET_SUFFIX);
    assert.equal(formatBackupXML(def, { internal }), readFixture(`backup/out/${name}.xml`), name);
  }
});

test('backup fixtures: out -> parse -> format == out', () => {
  for (const name of fixtureNames('backup/out')) {
    const internal = name === STATUS;
    const out = readFixture(`backup/out/${name}.xml`);
    assert.equal(formatBackupXML(parseBackupXML(out, { internal }), { internal }), out, name);
  }
});

test('backup fixtures: the status one is rejected by the public parser with XML_INVALID_SCHEMA', () => {
  for (const dir of ['in', 'out']) {
    const e = expectVirError(
      () => parseBackupXML(readFixture(`backup/${dir}/${STATUS}.xml`)),
      ErrorCode.XML_INVALID_SCHEMA,
    );
    assert.match(e.message, /domainbackup\.rng/);
  }
});

test('backup fixtures: aligned defs carry the resolved values', () => {
  const def = parseBackupXML(readFixture('backup/in/pull-tcp.xml'));
  alignBackupDisks(def, harnessDomain(def.disks.map((d) => d.name)), TARGET_SUFFIX);
  assert.equal(def.mode, 'pull');
  // transport left out of the input: tcp
  assert.deepEqual(def.server, { transport: 'tcp', name: 'backup-host.example', port: 10810, socket: null, fdgroup: null, tls: null });
  const byName = new Map(def.disks.map((d) => [d.name, d]));
  assert.equal(byName.get('vdc')?.incremental, 'daily-0412', 'backupmode=incremental alone takes the backup-wide checkpoint');
  assert.equal(byName.get('vdd')?.incremental, 'weekly-2');
  assert.equal(byName.get('vde')?.backupmode, 'incremental', 'incremental= alone implies backupmode=incremental');
  assert.equal(byName.get('vdb')?.backupmode, 'full');
  assert.equal(byName.get('vdb')?.incremental, null);
  assert.equal(byName.get('sda')?.backup, false);
  assert.equal(byName.get(EXTRA_DISK)?.backup, false, 'a disk the input does not list is left out');

  const unix = parseBackupXML(readFixture('backup/in/pull-unix-socket.xml'));
  assert.deepEqual(unix.server, { transport: 'unix', name: null, port: null, socket: '/run/vb/export.sock', fdgroup: null, tls: null });

  const fd = parseBackupXML(readFixture('backup/in/pull-fd-group.xml'));
  assert.deepEqual(fd.server, { transport: 'fd', name: null, port: null, socket: null, fdgroup: 'exportfds', tls: null });

  const enc = parseBackupXML(readFixture('backup/in/pull-tls-luks.xml'));
  assert.equal(enc.server?.tls, true);
  assert.equal(enc.disks[0]?.exportname, 'system');
  assert.equal(enc.disks[0]?.exportbitmap, 'vb-delta');
  assert.equal(enc.disks[2]?.type, 'block');
  assert.equal(enc.disks[2]?.path, '/dev/vg0/vb-scratch');
  assert.equal(enc.disks[2]?.storeExtra[0]?.name, 'encryption');

  const push = parseBackupXML(readFixture('backup/in/push-targets.xml'));
  alignBackupDisks(push, harnessDomain(push.disks.map((d) => d.name)), TARGET_SUFFIX);
  assert.deepEqual(
    push.disks.map((d) => [d.name, d.backup, d.type, d.path]),
    [
      ['vda', true, 'file', '/backup/vda.img'],
      ['vdb', true, 'file', '/vm/vdb.qcow2.bk1'],
      ['vdc', true, 'file', '/vm/vdc.qcow2.bk1'],
      ['vdd', true, 'file', '/vm/vdd.qcow2.bk1'],
      ['sda', false, null, null],
      [EXTRA_DISK, false, null, null],
    ],
  );

  const bare = parseBackupXML(readFixture('backup/in/bare.xml'));
  alignBackupDisks(bare, harnessDomain([]), TARGET_SUFFIX);
  assert.equal(bare.mode, 'push');
  assert.deepEqual(bare.disks.map((d) => [d.name, d.backupmode, d.path]), [[EXTRA_DISK, 'full', '/vm/vdx.qcow2.bk1']]);

  const status = parseBackupXML(readFixture(`backup/in/${STATUS}.xml`), { internal: true });
  assert.deepEqual(status.disks.map((d) => d.state), ['complete', 'running', 'running']);
  assert.equal(status.tlsAlias, 'vb-tls-creds0');
  assert.equal(status.tlsSecretAlias, 'vb-tls-secret0');
});

// --- checkpoints

interface CheckpointCase {
  name: string;
  time: number;
  parent: boolean;
  size: boolean;
}

// Like libvirt's DO_TEST_INOUT list: mocked creation time, fixed parent, the SIZE flag.
const PARENT = '1733223600';
const SIZE = 2097152;
const checkpointCases: CheckpointCase[] = [
  { name: 'bare', time: 1733310000, parent: false, size: false },
  { name: 'implicit-bitmap', time: 1733310000, parent: true, size: false },
  { name: 'mixed-disks', time: 1733310000, parent: true, size: false },
  { name: 'named-sized', time: 1733400000, parent: true, size: true },
];

test('checkpoint fixtures: in -> parse -> align -> format == out (byte for byte)', () => {
  const invalid = ['nameless-disk-invalid', 'path-name-invalid'];
  assert.deepEqual(fixtureNames('checkpoint/in'), [...checkpointCases.map((c) => c.name), ...invalid].sort());
  for (const c of checkpointCases) {
    const def = parseCheckpointXML(readFixture(`checkpoint/in/${c.name}.xml`), { redefine: false, now: c.time });
    assert.equal(def.parent, null, 'parent is never taken from a new checkpoint');
    if (c.parent) def.parent = PARENT;
    // libvirt's harness hard-codes vda; we align for real against a domain with
    // the disks named in the input (vda when none), which must give the same.
    const names = def.disks.length > 0 ? def.disks.map((d) => d.name) : ['vda'];
    alignCheckpointDisks(def, harnessDomain(names, false));
    if (c.size) def.disks[0]!.size = SIZE;
    const out = formatCheckpointXML(def, { secure: true, noDomain: def.domain === null, size: c.size });
    assert.equal(out, readFixture(`checkpoint/out/${c.name}.xml`), c.name);
  }
});

test('checkpoint fixtures: without SIZE the size is not printed', () => {
  const def = parseCheckpointXML(readFixture('checkpoint/out/named-sized.xml'), { redefine: true });
  def.disks[0]!.size = SIZE;
  assert.doesNotMatch(formatCheckpointXML(def), /size=/);
  assert.match(formatCheckpointXML(def, { size: true }), / size='2097152'/);
});

test('checkpoint fixtures: out -> parse (REDEFINE) -> format == out', () => {
  const valid = fixtureNames('checkpoint/out').filter((n) => !n.endsWith('-invalid'));
  assert.deepEqual(valid, [...checkpointCases.map((c) => c.name), 'redefined-with-domain'].sort());
  for (const name of valid) {
    const out = readFixture(`checkpoint/out/${name}.xml`);
    const def = parseCheckpointXML(out, { redefine: true });
    if (name === 'named-sized') def.disks[0]!.size = SIZE;
    assert.equal(formatCheckpointXML(def, { secure: true, size: name === 'named-sized' }), out, name);
  }
});

test('checkpoint fixtures: redefine keeps the embedded domain and aligns against it', () => {
  const out = readFixture('checkpoint/out/redefined-with-domain.xml');
  const def = parseCheckpointXML(out, { redefine: true });
  assert.equal(def.name, 'weekly-2');
  assert.equal(def.creationTime, 1733050800);
  assert.ok(def.domain);
  const refs = domainDiskRefs(def.domain);
  assert.deepEqual(
    refs.map((r) => [r.target, r.source, r.readonly]),
    [
      ['hda', '/dev/vg0/ledger-root', false],
      ['hdc', '/dev/vg0/ledger-iso', true],
      ['vda', '/var/lib/ledger/tables.qcow2', false],
      ['vdb', '/var/lib/ledger/wal.qcow2', false],
    ],
  );
  alignCheckpointDisks(def, { disks: refs });
  assert.equal(formatCheckpointXML(def, { secure: true }), out);
  // NO_DOMAIN drops the <domain> element and nothing else
  const noDom = formatCheckpointXML(def, { noDomain: true });
  assert.doesNotMatch(noDom, /<domain /);
  assert.equal(noDom, out.replace(/ {2}<domain [\s\S]*<\/domain>\n/, ''));
});

test('checkpoint fixtures: the invalid ones are rejected with XML_INVALID_SCHEMA', () => {
  const nameless = readFixture('checkpoint/in/nameless-disk-invalid.xml');
  const badName = readFixture('checkpoint/in/path-name-invalid.xml');
  for (const [xml, what] of [[nameless, /disk/], [badName, /name/]] as const) {
    expectVirError(() => parseCheckpointXML(xml, { redefine: false, now: 1 }), ErrorCode.XML_INVALID_SCHEMA, /domaincheckpoint\.rng/);
    expectVirError(() => parseCheckpointXML(xml, { redefine: true }), ErrorCode.XML_INVALID_SCHEMA, what);
  }
  for (const name of ['status-active-invalid', 'status-inactive-invalid']) {
    const e = expectVirError(
      () => parseCheckpointXML(readFixture(`checkpoint/out/${name}.xml`), { redefine: true }),
      ErrorCode.XML_INVALID_SCHEMA,
    );
    assert.match(e.message, /active/);
  }
});

test('the fixtures README describes every fixture', () => {
  const readme = fs.readFileSync(path.join(FIXTURES, 'README.md'), 'utf8');
  for (const dir of ['backup', 'checkpoint']) {
    const names = new Set([...fixtureNames(`${dir}/in`), ...fixtureNames(`${dir}/out`)]);
    for (const n of names) assert.ok(readme.includes(`\`${n}\``), `${dir}/${n} is not in test/fixtures/xml/README.md`);
  }
});
