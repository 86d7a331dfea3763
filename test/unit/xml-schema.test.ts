// Our RelaxNG schemas against libvirt's: same accept/reject on every fixture
// and on a few hundred mutations of them (xmllint with libvirt's schemas is
// the oracle), and everything our formatters print validates with xmllint.
//
// libvirt's copied domainbackup.rng predates transport='fd' (libvirt 11.3),
// which we implement; the oracle is therefore libvirt's schema with the 11.3
// fd alternative added, in a temporary copy (the shared data is not touched).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ErrorCode, VirError } from '../../src/errors.js';
import { alignBackupDisks, formatBackupXML, parseBackupXML } from '../../src/xml/backup.js';
import { formatCheckpointXML, parseCheckpointXML } from '../../src/xml/checkpoint.js';
import { packageRoot, schemaPath, validateXml } from '../../src/xml/schema.js';
import type { SchemaName } from '../../src/xml/schema.js';
import { formatXml, parseXml } from '../../src/xml/tree.js';
import { LIBVIRT_SCHEMAS, OUR_SCHEMAS, REPO_ROOT, allFixtures, mutateTree, prng, readFixture } from './xml-helpers.js';

let tmp = '';
let libvirtBackupRng = '';
let libvirtCheckpointRng = '';

before(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'virtback-xml-schema-'));
  const schemas = path.join(tmp, 'libvirt-schemas');
  fs.mkdirSync(schemas);
  for (const f of fs.readdirSync(LIBVIRT_SCHEMAS)) fs.copyFileSync(path.join(LIBVIRT_SCHEMAS, f), path.join(schemas, f));
  const backup = path.join(schemas, 'domainbackup.rng');
  const text = fs.readFileSync(backup, 'utf8');
  const fd =
    '<group><attribute name="transport"><value>fd</value></attribute><attribute name="fdgroup"><text/></attribute></group>';
  const patched = text.replace(/(<value>unix<\/value>[\s\S]*?<\/group>)/, `$1${fd}`);
  assert.notEqual(patched, text, 'fd patch applied');
  fs.writeFileSync(backup, patched);
  libvirtBackupRng = backup;
  libvirtCheckpointRng = path.join(schemas, 'domaincheckpoint.rng');
});

after(() => {
  if (tmp) fs.rmSync(tmp, { recursive: true, force: true });
});

/** Validate many files in one xmllint run; returns file -> valid. */
function xmllint(schema: string, files: string[]): Map<string, boolean> {
  // xmllint reports "<file> validates" / "<file> fails to validate" on stderr
  const run = spawnSync('xmllint', ['--noout', '--relaxng', schema, ...files], { encoding: 'utf8' });
  const out = `${run.stdout}${run.stderr}`;
  const result = new Map<string, boolean>();
  for (const line of out.split('\n')) {
    const m = /^(.*) (validates|fails to validate)$/.exec(line);
    if (m && m[1] !== undefined) result.set(m[1], m[2] === 'validates');
  }
  for (const f of files) assert.ok(result.has(f), `xmllint said nothing about ${f}:\n${out.slice(0, 2000)}`);
  return result;
}

function oursAccepts(xml: string, schema: SchemaName): boolean {
  try {
    validateXml(xml, schema);
    return true;
  } catch (e) {
    assert.ok(e instanceof VirError, String(e));
    assert.equal(e.code, ErrorCode.XML_INVALID_SCHEMA, e.message);
    return false;
  }
}

function writeTmp(name: string, xml: string): string {
  const f = path.join(tmp, name);
  fs.writeFileSync(f, xml);
  return f;
}

test('schemas are found at the package root', () => {
  assert.equal(packageRoot(), REPO_ROOT);
  assert.equal(schemaPath('domainbackup'), path.join(OUR_SCHEMAS, 'domainbackup.rng'));
});

test('every fixture: our validator agrees with xmllint + libvirt schema', () => {
  const fixtures = allFixtures();
  assert.equal(fixtures.length, 33);
  const backups = fixtures.filter((f) => f.startsWith('backup-xml/'));
  const checkpoints = fixtures.filter((f) => f.startsWith('checkpoint-xml/'));
  const conf = path.resolve(LIBVIRT_SCHEMAS, '..');
  const lintB = xmllint(libvirtBackupRng, backups.map((f) => path.join(conf, f)));
  const lintC = xmllint(libvirtCheckpointRng, checkpoints.map((f) => path.join(conf, f)));
  let rejected = 0;
  for (const f of backups) {
    const ours = oursAccepts(readFixture(f), 'domainbackup');
    assert.equal(ours, lintB.get(path.join(conf, f)), f);
    assert.equal(ours, !f.endsWith('-invalid.xml'), f);
    if (!ours) rejected++;
  }
  for (const f of checkpoints) {
    const ours = oursAccepts(readFixture(f), 'domaincheckpoint');
    assert.equal(ours, lintC.get(path.join(conf, f)), f);
    assert.equal(ours, !f.endsWith('-invalid.xml'), f);
    if (!ours) rejected++;
  }
  assert.equal(rejected, 6);
});

test('mutated fixtures: our validator agrees with xmllint + libvirt schema', () => {
  const rand = prng(20250101);
  const cases: { file: string; xml: string; schema: SchemaName }[] = [];
  // the embedded <domain> is deliberately checked more loosely than libvirt's domain.rng: leave it out
  const sources = allFixtures().filter((f) => !readFixture(f).includes('<domain '));
  let n = 0;
  for (const src of sources) {
    const tree = parseXml(readFixture(src));
    const schema: SchemaName = src.startsWith('backup') ? 'domainbackup' : 'domaincheckpoint';
    for (let i = 0; i < 16; i++) {
      let t = mutateTree(tree, rand);
      if (rand() < 0.5) t = mutateTree(t, rand);
      const xml = formatXml(t);
      cases.push({ file: writeTmp(`m${n++}.xml`, xml), xml, schema });
    }
  }
  const lintB = xmllint(libvirtBackupRng, cases.filter((c) => c.schema === 'domainbackup').map((c) => c.file));
  const lintC = xmllint(libvirtCheckpointRng, cases.filter((c) => c.schema === 'domaincheckpoint').map((c) => c.file));
  let accepted = 0;
  for (const c of cases) {
    const libvirt = (c.schema === 'domainbackup' ? lintB : lintC).get(c.file);
    const ours = oursAccepts(c.xml, c.schema);
    assert.equal(ours, libvirt, `${c.schema}: ours ${ours}, libvirt ${libvirt}:\n${c.xml}`);
    if (ours) accepted++;
  }
  // both outcomes must be well represented, or the comparison proves little
  assert.ok(accepted > cases.length * 0.2 && accepted < cases.length * 0.8, `${accepted}/${cases.length} accepted`);
});

test('our output validates: libvirt schema without our additions, our extension schema with them', () => {
  const files: string[] = [];
  const withId: string[] = [];
  const conf = path.resolve(LIBVIRT_SCHEMAS, '..');
  for (const f of allFixtures().filter((x) => x.startsWith('backup-xml/in/') && !x.includes('internal'))) {
    const def = parseBackupXML(fs.readFileSync(path.join(conf, f), 'utf8'));
    const names = [...def.disks.map((d) => d.name), 'vdz'];
    alignBackupDisks(def, { disks: names.map((n) => ({ target: n, source: `/x/${n}`, readonly: false, type: 'file' })) }, 'S');
    files.push(writeTmp(`out-${path.basename(f)}`, formatBackupXML(def)));
    def.id = 42;
    const xml = formatBackupXML(def);
    assert.match(xml, /^<domainbackup mode='(push|pull)' id='42'>/);
    withId.push(writeTmp(`id-${path.basename(f)}`, xml));
  }
  for (const [f, ok] of xmllint(libvirtBackupRng, files)) assert.ok(ok, f);
  for (const [f, ok] of xmllint(libvirtBackupRng, withId)) assert.ok(!ok, `libvirt's schema has no id: ${f}`);
  for (const [f, ok] of xmllint(path.join(OUR_SCHEMAS, 'virtback-domainbackup-output.rng'), [...files, ...withId])) assert.ok(ok, f);

  const cps: string[] = [];
  const marked: string[] = [];
  for (const name of ['empty', 'sample', 'size', 'disk-default']) {
    const def = parseCheckpointXML(readFixture(`checkpoint-xml/in/${name}.xml`), { redefine: false, now: 1700000000 });
    cps.push(writeTmp(`cp-${name}.xml`, formatCheckpointXML(def)));
    def.inconsistent = 'bitmap missing on disk vda';
    const xml = formatCheckpointXML(def);
    marked.push(writeTmp(`cpm-${name}.xml`, xml));
    // our metadata files read it back
    assert.equal(parseCheckpointXML(xml, { redefine: true, internal: true }).inconsistent, 'bitmap missing on disk vda');
    // the public parser rejects it, as libvirt would
    assert.throws(() => parseCheckpointXML(xml, { redefine: true }), (e: unknown) => e instanceof VirError && e.code === ErrorCode.XML_INVALID_SCHEMA);
  }
  const redefine = parseCheckpointXML(readFixture('checkpoint-xml/out/redefine.xml'), { redefine: true });
  cps.push(writeTmp('cp-redefine.xml', formatCheckpointXML(redefine, { secure: true })));
  for (const [f, ok] of xmllint(libvirtCheckpointRng, cps)) assert.ok(ok, f);
  for (const [f, ok] of xmllint(libvirtCheckpointRng, marked)) assert.ok(!ok, f);
  for (const [f, ok] of xmllint(path.join(OUR_SCHEMAS, 'virtback-domaincheckpoint-output.rng'), [...cps, ...marked])) assert.ok(ok, f);
});

test('validation errors name the schema and the element', () => {
  try {
    parseBackupXML("<domainbackup mode='pull'><disks><disk name='vda'/></disks></domainbackup>");
    assert.fail('accepted pull without <server>');
  } catch (e) {
    assert.ok(e instanceof VirError);
    assert.equal(e.code, ErrorCode.XML_INVALID_SCHEMA);
    assert.match(e.message, /^XML document failed to validate against schema: Unable to validate doc against domainbackup\.rng: /);
    assert.match(e.message, /domainbackup|server|disks/);
  }
  try {
    parseCheckpointXML("<domaincheckpoint><disks><disk name='vda' checkpoint='maybe'/></disks></domaincheckpoint>", { redefine: false });
    assert.fail('accepted checkpoint=maybe');
  } catch (e) {
    assert.ok(e instanceof VirError);
    assert.equal(e.code, ErrorCode.XML_INVALID_SCHEMA);
    assert.match(e.message, /disk/);
  }
});
