// Our RelaxNG schemas against libvirt's: same accept/reject on every fixture
// and on a few hundred mutations of them (xmllint with the schemas of the
// installed libvirt, Debian package libvirt0, is the oracle), and everything
// our formatters print validates with xmllint.
//
// Debian 12 installs libvirt 9.0, whose domainbackup.rng predates two things
// we implement: transport='fd' (libvirt 11.3) and a push <disk> with no store
// attributes. The backup oracle is therefore the installed schema with those
// alternatives added where missing, written to a temporary file that includes
// the rest of libvirt's schemas where they are installed.

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
import { LIBVIRT_SCHEMAS, OUR_SCHEMAS, REPO_ROOT, allFixtures, fixturePath, libvirtSchema, mutateTree, prng, readFixture } from './xml-helpers.js';

type NewerFeature = 'fd' | 'plain-push-disk';

/** Alternatives newer libvirt added to domainbackup.rng: a pattern telling whether a schema has one, and how to add it. */
const NEWER_ALTERNATIVES: Record<NewerFeature, { has: RegExp; add: (rng: string) => string }> = {
  // inside <element name="server">, next to the unix alternative
  fd: {
    has: /<value>fd<\/value>/,
    add: (rng) =>
      rng.replace(
        /(<value>unix<\/value>[\s\S]*?<\/group>)/,
        '$1<group><attribute name="transport"><value>fd</value></attribute><attribute name="fdgroup"><text/></attribute></group>',
      ),
  },
  // a push <disk> selected with nothing but name= (and optionally backup='yes')
  'plain-push-disk': {
    has: /<define name="backupDisksPush">[\s\S]*?<choice>\s*<group>[\s\S]*?<\/group>\s*<group>\s*<ref name="backupAttr"\/>\s*<\/group>/,
    add: (rng) =>
      rng.replace(/(<define name="backupDisksPush">[\s\S]*?<choice>\s*<group>[\s\S]*?<\/group>)/, '$1<group><ref name="backupAttr"/></group>'),
  },
};

/** Fixtures that use a newer alternative: the installed schema accepts them only if it has it. */
const NEWER_FIXTURES: Record<string, NewerFeature> = {
  'backup/in/pull-fd-group.xml': 'fd',
  'backup/out/pull-fd-group.xml': 'fd',
  'backup/in/push-targets.xml': 'plain-push-disk',
};

let tmp = '';
let installedBackupRng = '';
let libvirtBackupRng = '';
let libvirtCheckpointRng = '';
/** newer alternatives the installed schema lacks (added to the oracle) */
const added = new Set<NewerFeature>();

before(() => {
  installedBackupRng = libvirtSchema('domainbackup.rng');
  libvirtCheckpointRng = libvirtSchema('domaincheckpoint.rng');
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'virtback-xml-schema-'));
  const installed = fs.readFileSync(installedBackupRng, 'utf8');
  // the temporary copy includes libvirt's other schemas where they are installed
  let text = installed.replace(/<include href="([^"/]+)"\/>/g, (_m, f: string) => `<include href="${path.join(LIBVIRT_SCHEMAS, f)}"/>`);
  assert.notEqual(text, installed, 'include made absolute');
  for (const [feature, alt] of Object.entries(NEWER_ALTERNATIVES) as [NewerFeature, (typeof NEWER_ALTERNATIVES)[NewerFeature]][]) {
    if (alt.has.test(text)) continue;
    const patched = alt.add(text);
    assert.ok(patched !== text && alt.has.test(patched), `${feature} alternative added`);
    text = patched;
    added.add(feature);
  }
  libvirtBackupRng = path.join(tmp, 'domainbackup-oracle.rng');
  fs.writeFileSync(libvirtBackupRng, text);
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

test('without libvirt0 the tests fail saying what to install', () => {
  assert.throws(() => libvirtSchema('domaincheckpoint.rng', path.join(tmp, 'no-libvirt')), {
    message: new RegExp(`^libvirt's schema ${tmp}/no-libvirt/domaincheckpoint\\.rng is missing: install the Debian package libvirt0 `),
  });
});

test('every fixture against the installed libvirt schemas, as they are', () => {
  const fixtures = allFixtures();
  const backups = fixtures.filter((f) => f.startsWith('backup/'));
  const checkpoints = fixtures.filter((f) => f.startsWith('checkpoint/'));
  const lint = new Map([
    ...xmllint(installedBackupRng, backups.map(fixturePath)),
    ...xmllint(libvirtCheckpointRng, checkpoints.map(fixturePath)),
  ]);
  for (const f of fixtures) {
    const feature = NEWER_FIXTURES[f];
    // a fixture of a newer feature must really use it: the installed schema decides by whether it has it
    const expected = feature ? !added.has(feature) : !f.endsWith('-invalid.xml');
    assert.equal(lint.get(fixturePath(f)), expected, f);
  }
});

test('every fixture: our validator agrees with xmllint + libvirt schema, and with xmllint + our schema', () => {
  const fixtures = allFixtures();
  assert.equal(fixtures.length, 33);
  let rejected = 0;
  for (const [prefix, schema, oracle] of [
    ['backup/', 'domainbackup', libvirtBackupRng],
    ['checkpoint/', 'domaincheckpoint', libvirtCheckpointRng],
  ] as const) {
    const files = fixtures.filter((f) => f.startsWith(prefix));
    const libvirt = xmllint(oracle, files.map(fixturePath));
    const ourRng = xmllint(schemaPath(schema), files.map(fixturePath));
    for (const f of files) {
      const ours = oursAccepts(readFixture(f), schema);
      assert.equal(ours, libvirt.get(fixturePath(f)), f);
      assert.equal(ours, ourRng.get(fixturePath(f)), `${f}: our validator and xmllint disagree on ${schema}.rng`);
      assert.equal(ours, !f.endsWith('-invalid.xml'), f);
      if (!ours) rejected++;
    }
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
  for (const f of allFixtures().filter((x) => x.startsWith('backup/in/') && !x.endsWith('-invalid.xml'))) {
    const def = parseBackupXML(readFixture(f));
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
  for (const name of ['bare', 'mixed-disks', 'named-sized', 'implicit-bitmap']) {
    const def = parseCheckpointXML(readFixture(`checkpoint/in/${name}.xml`), { redefine: false, now: 1700000000 });
    cps.push(writeTmp(`cp-${name}.xml`, formatCheckpointXML(def)));
    def.inconsistent = 'bitmap missing on disk vda';
    const xml = formatCheckpointXML(def);
    marked.push(writeTmp(`cpm-${name}.xml`, xml));
    // our metadata files read it back
    assert.equal(parseCheckpointXML(xml, { redefine: true, internal: true }).inconsistent, 'bitmap missing on disk vda');
    // the public parser rejects it, as libvirt would
    assert.throws(() => parseCheckpointXML(xml, { redefine: true }), (e: unknown) => e instanceof VirError && e.code === ErrorCode.XML_INVALID_SCHEMA);
  }
  const redefine = parseCheckpointXML(readFixture('checkpoint/out/redefined-with-domain.xml'), { redefine: true });
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
