// libvirt's own round-trip fixtures (shared/libvirt-conformance), run through
// our parse -> align -> format with the harness libvirt's tests use
// (tests/genericxml2xmltest.c, tests/qemudomaincheckpointxml2xmltest.c).

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { ErrorCode, VirError } from '../../src/errors.js';
import { alignBackupDisks, formatBackupXML, parseBackupXML } from '../../src/xml/backup.js';
import { alignCheckpointDisks, formatCheckpointXML, parseCheckpointXML } from '../../src/xml/checkpoint.js';
import { domainDiskRefs } from '../../src/xml/domain.js';
import { CONFORMANCE, fixtureNames, harnessDomain, readFixture } from './xml-helpers.js';


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

const backupNames = fixtureNames('backup-xml/in');

test('backup fixtures: in -> parse -> align -> format == out (byte for byte)', () => {
  assert.equal(backupNames.length, 10);
  for (const name of backupNames) {
    const internal = name === 'backup-pull-internal-invalid';
    const def = parseBackupXML(readFixture(`backup-xml/in/${name}.xml`), { internal });
    alignBackupDisks(def, harnessDomain(def.disks.map((d) => d.name)), 'SUFFIX');
    assert.equal(formatBackupXML(def, { internal }), readFixture(`backup-xml/out/${name}.xml`), name);
  }
});

test('backup fixtures: out -> parse -> format == out', () => {
  for (const name of fixtureNames('backup-xml/out')) {
    const internal = name === 'backup-pull-internal-invalid';
    const out = readFixture(`backup-xml/out/${name}.xml`);
    assert.equal(formatBackupXML(parseBackupXML(out, { internal }), { internal }), out, name);
  }
});

test('backup fixtures: the internal one is rejected by the public parser with XML_INVALID_SCHEMA', () => {
  for (const dir of ['in', 'out']) {
    const e = expectVirError(
      () => parseBackupXML(readFixture(`backup-xml/${dir}/backup-pull-internal-invalid.xml`)),
      ErrorCode.XML_INVALID_SCHEMA,
    );
    assert.match(e.message, /domainbackup\.rng/);
  }
});

test('backup fixtures: aligned defs carry the resolved values', () => {
  const def = parseBackupXML(readFixture('backup-xml/in/backup-pull.xml'));
  alignBackupDisks(def, harnessDomain(def.disks.map((d) => d.name)), 'SUFFIX');
  assert.equal(def.mode, 'pull');
  assert.deepEqual(def.server, { transport: 'tcp', name: 'localhost', port: 10809, socket: null, fdgroup: null, tls: null });
  const byName = new Map(def.disks.map((d) => [d.name, d]));
  assert.equal(byName.get('vde')?.incremental, 'blah');
  assert.equal(byName.get('vdc')?.backupmode, 'full');
  assert.equal(byName.get('vdc')?.incremental, null);
  assert.equal(byName.get('hda')?.backup, false);
  assert.equal(byName.get('vdextradisk')?.backup, false);

  const fd = parseBackupXML(readFixture('backup-xml/in/backup-pull-fd.xml'));
  assert.deepEqual(fd.server, { transport: 'fd', name: null, port: null, socket: null, fdgroup: 'nbdfd', tls: null });

  const enc = parseBackupXML(readFixture('backup-xml/in/backup-pull-encrypted.xml'));
  assert.equal(enc.server?.tls, true);
  assert.equal(enc.disks[2]?.type, 'block');
  assert.equal(enc.disks[2]?.path, '/dev/block');
  assert.equal(enc.disks[2]?.storeExtra[0]?.name, 'encryption');

  const internal = parseBackupXML(readFixture('backup-xml/in/backup-pull-internal-invalid.xml'), { internal: true });
  assert.deepEqual(internal.disks.map((d) => d.state), ['running', 'complete', 'running']);
  assert.equal(internal.tlsAlias, 'test-tlsobj');
  assert.equal(internal.tlsSecretAlias, 'test-tlskey');
});

// --- checkpoints

interface CheckpointCase {
  name: string;
  time: number;
  parent: boolean;
  size: boolean;
}

// libvirt's DO_TEST_INOUT list: mocked creation time, hard-coded parent, SIZE flag.
const checkpointCases: CheckpointCase[] = [
  { name: 'empty', time: 1525889631, parent: false, size: false },
  { name: 'disk-default', time: 1525889631, parent: true, size: false },
  { name: 'sample', time: 1525889631, parent: true, size: false },
  { name: 'size', time: 1553648510, parent: true, size: true },
];

test('checkpoint fixtures: in -> parse -> align -> format == out (byte for byte)', () => {
  for (const c of checkpointCases) {
    const def = parseCheckpointXML(readFixture(`checkpoint-xml/in/${c.name}.xml`), { redefine: false, now: c.time });
    assert.equal(def.parent, null, 'parent is never taken from a new checkpoint');
    if (c.parent) def.parent = '1525111885';
    // libvirt's harness hard-codes vda; we align for real against a domain with
    // the disks named in the input (vda when none), which must give the same.
    const names = def.disks.length > 0 ? def.disks.map((d) => d.name) : ['vda'];
    alignCheckpointDisks(def, harnessDomain(names, false));
    if (c.size) def.disks[0]!.size = 1048576;
    const out = formatCheckpointXML(def, { secure: true, noDomain: def.domain === null, size: c.size });
    assert.equal(out, readFixture(`checkpoint-xml/out/${c.name}.xml`), c.name);
  }
});

test('checkpoint fixtures: without SIZE the size is not printed', () => {
  const def = parseCheckpointXML(readFixture('checkpoint-xml/out/size.xml'), { redefine: true });
  def.disks[0]!.size = 1048576;
  assert.doesNotMatch(formatCheckpointXML(def), /size=/);
  assert.match(formatCheckpointXML(def, { size: true }), / size='1048576'/);
});

test('checkpoint fixtures: out -> parse (REDEFINE) -> format == out', () => {
  for (const name of ['disk-default', 'empty', 'sample', 'size', 'redefine']) {
    const out = readFixture(`checkpoint-xml/out/${name}.xml`);
    const def = parseCheckpointXML(out, { redefine: true });
    if (name === 'size') def.disks[0]!.size = 1048576;
    assert.equal(formatCheckpointXML(def, { secure: true, size: name === 'size' }), out, name);
  }
});

test('checkpoint fixtures: redefine keeps the embedded domain and aligns against it', () => {
  const out = readFixture('checkpoint-xml/out/redefine.xml');
  const def = parseCheckpointXML(out, { redefine: true });
  assert.equal(def.name, 'c1');
  assert.equal(def.creationTime, 1553647812);
  assert.ok(def.domain);
  const refs = domainDiskRefs(def.domain);
  assert.deepEqual(
    refs.map((r) => [r.target, r.source, r.readonly]),
    [
      ['hda', '/dev/HostVG/QEMUGuest1', false],
      ['hdc', '/dev/HostVG/QEMUGuest2', true],
      ['vda', '/tmp/data.img', false],
      ['vdb', '/tmp/logs.img', false],
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
  for (const name of ['disk-invalid', 'name-invalid']) {
    const xml = readFixture(`checkpoint-xml/in/${name}.xml`);
    expectVirError(() => parseCheckpointXML(xml, { redefine: false, now: 1 }), ErrorCode.XML_INVALID_SCHEMA, /domaincheckpoint\.rng/);
    expectVirError(() => parseCheckpointXML(xml, { redefine: true }), ErrorCode.XML_INVALID_SCHEMA);
  }
  for (const name of ['internal-active-invalid', 'internal-inactive-invalid']) {
    const e = expectVirError(
      () => parseCheckpointXML(readFixture(`checkpoint-xml/out/${name}.xml`), { redefine: true }),
      ErrorCode.XML_INVALID_SCHEMA,
    );
    assert.match(e.message, /active/);
  }
});

test('fixture directory is found relative to the repository', () => {
  assert.ok(fs.existsSync(path.join(CONFORMANCE, 'README.md')));
});
