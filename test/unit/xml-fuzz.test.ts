// Property tests: thousands of random and mutated documents. Each one is
// either accepted and round-trips to a fixed point (format(parse(x)) parses
// again and formats to the same bytes), or rejected with a VirError; nothing
// else may ever be thrown.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { VirError } from '../../src/errors.js';
import { alignBackupDisks, formatBackupXML, parseBackupXML } from '../../src/xml/backup.js';
import { alignCheckpointDisks, formatCheckpointXML, parseCheckpointXML } from '../../src/xml/checkpoint.js';
import { formatDomainXML, parseDomainXML } from '../../src/xml/domain.js';
import type { DiskDef } from '../../src/xml/domain.js';
import { formatXml, parseXml } from '../../src/xml/tree.js';
import type { XmlElement, XmlNode } from '../../src/xml/tree.js';
import { ATTR_POOL, ELEMENT_POOL, EXTRA_DISK, TARGET_SUFFIX, VALUE_POOL, allFixtures, harnessDomain, mutateTree, prng, readFixture } from './xml-helpers.js';

/** Run `fn`; a VirError means "rejected", anything else fails the property. */
function acceptedOrVirError<T>(fn: () => T): T | null {
  try {
    return fn();
  } catch (e) {
    if (e instanceof VirError) return null;
    throw new Error(`non-VirError thrown: ${e instanceof Error ? e.stack : String(e)}`, { cause: e });
  }
}

/** The fixtures' harness domain for any disk list a mutation produced (duplicates collapse, EXTRA_DISK once). */
function fakeDomain(names: readonly string[]): { disks: DiskDef[] } {
  return harnessDomain([...new Set([...names, EXTRA_DISK])], false);
}

/** Every parser on one input: accept and reach a fixed point, or reject with a VirError. */
function checkDocument(xml: string): void {
  const tree = acceptedOrVirError(() => parseXml(xml));
  if (tree !== null) {
    const once = formatXml(tree);
    assert.equal(formatXml(parseXml(once)), once, 'tree fixed point');
  }

  for (const internal of [false, true]) {
    const def = acceptedOrVirError(() => parseBackupXML(xml, { internal }));
    if (def === null) continue;
    const out = formatBackupXML(def, { internal });
    assert.equal(formatBackupXML(parseBackupXML(out, { internal }), { internal }), out, `backup fixed point (internal=${internal})`);
    const aligned = acceptedOrVirError(() => {
      alignBackupDisks(def, fakeDomain(def.disks.map((d) => d.name)), TARGET_SUFFIX);
      return formatBackupXML(def, { internal });
    });
    if (aligned !== null) {
      assert.equal(formatBackupXML(parseBackupXML(aligned, { internal }), { internal }), aligned, 'aligned backup fixed point');
    }
  }

  for (const redefine of [false, true]) {
    const def = acceptedOrVirError(() => parseCheckpointXML(xml, { redefine, now: 1700000000 }));
    if (def === null) continue;
    const out = formatCheckpointXML(def, { secure: true });
    assert.equal(formatCheckpointXML(parseCheckpointXML(out, { redefine: true }), { secure: true }), out, 'checkpoint fixed point');
    const aligned = acceptedOrVirError(() => {
      alignCheckpointDisks(def, fakeDomain(def.disks.map((d) => d.name).filter((n) => !n.startsWith('/'))));
      return formatCheckpointXML(def, { secure: true });
    });
    if (aligned !== null) {
      assert.equal(formatCheckpointXML(parseCheckpointXML(aligned, { redefine: true }), { secure: true }), aligned, 'aligned checkpoint fixed point');
    }
  }

  const dom = acceptedOrVirError(() => parseDomainXML(xml, { generateUUID: () => '00000000-0000-0000-0000-000000000001' }));
  if (dom !== null) {
    const out = formatDomainXML(dom, { secure: true });
    assert.equal(formatDomainXML(parseDomainXML(out), { secure: true }), out, 'domain fixed point');
  }
}

const fixtureTrees = allFixtures().map((f) => parseXml(readFixture(f)));
const DOMAIN_SAMPLE = `<domain type='qemu'><name>d</name><memory unit='MiB'>64</memory><os><kernel>/k</kernel></os><devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='/a.qcow2'/><target dev='vda' bus='virtio'/></disk><channel type='unix'><source mode='bind'/><target type='virtio' name='org.qemu.guest_agent.0'/></channel></devices></domain>`;
fixtureTrees.push(parseXml(DOMAIN_SAMPLE));

/** A fixture with 1-4 structural mutations (seeded, so fast-check can shrink the seed). */
const mutatedFixture = fc
  .tuple(fc.nat(fixtureTrees.length - 1), fc.integer(), fc.integer({ min: 1, max: 4 }))
  .map(([i, seed, n]) => {
    const rand = prng(seed);
    let t = fixtureTrees[i] as XmlElement;
    for (let k = 0; k < n; k++) t = mutateTree(t, rand);
    return formatXml(t);
  });

/** String-level damage to a (mutated) fixture: random bytes, truncation, duplication. */
const damagedFixture = fc
  .tuple(mutatedFixture, fc.nat(), fc.string({ unit: 'binary', maxLength: 8 }), fc.constantFrom('insert', 'truncate', 'duplicate', 'entity'))
  .map(([xml, pos, junk, how]) => {
    const at = pos % (xml.length + 1);
    switch (how) {
      case 'insert':
        return xml.slice(0, at) + junk + xml.slice(at);
      case 'truncate':
        return xml.slice(0, at);
      case 'duplicate':
        return xml.slice(0, at) + xml.slice(at, at + 40) + xml.slice(at);
      default:
        return xml.slice(0, at) + pickEntity(pos) + xml.slice(at);
    }
  });

function pickEntity(n: number): string {
  const ents = ['&amp;', '&lt;', '&#65;', '&#x0;', '&#xD800;', '&lol;', '&#1114112;', '<![CDATA[]]>', '<!--x-->', '<?pi x?>', ']]>', '&'];
  return ents[n % ents.length] as string;
}

/** Random small trees built from the names and values of libvirt's formats. */
const randomTree: fc.Arbitrary<XmlElement> = fc.letrec<{ el: XmlElement }>((tie) => ({
  el: fc.record({
    name: fc.constantFrom(...ELEMENT_POOL, 'domain', 'devices', 'disk', 'source', 'target', 'memory', 'os', 'kernel'),
    attrs: fc.uniqueArray(fc.tuple(fc.constantFrom(...ATTR_POOL), fc.constantFrom(...VALUE_POOL)), { maxLength: 4, selector: ([k]) => k }),
    children: fc.oneof(
      { depthSize: 'small' },
      fc.array(fc.constantFrom(...VALUE_POOL).filter((v) => v.trim() !== ''), { maxLength: 1 }),
      fc.array(tie('el'), { maxLength: 4 }),
    ) as fc.Arbitrary<XmlNode[]>,
  }),
})).el;

const hostile = fc.oneof(
  fc.string({ unit: 'binary', maxLength: 200 }),
  fc.string({ unit: fc.constantFrom('<', '>', '/', '=', "'", '"', '&', ';', '!', '?', ' ', 'a', 'b', 'disk', 'domainbackup', '\n'), maxLength: 60 }),
  fc.integer({ min: 1, max: 3000 }).map((n) => '<disks>'.repeat(n) + '</disks>'.repeat(n)),
  fc.integer({ min: 1, max: 50 }).map((n) => `<!DOCTYPE d [<!ENTITY a "${'x'.repeat(n)}">]><domainbackup>&a;</domainbackup>`),
  fc.integer({ min: 1, max: 10 }).map((n) => `<domainbackup><incremental>${'&amp;'.repeat(n * 1000)}</incremental></domainbackup>`),
);

const runs = { numRuns: 0, seed: 424242 } as const;

test('fuzz: mutated fixtures parse to a fixed point or fail with a VirError', () => {
  fc.assert(fc.property(mutatedFixture, (xml) => checkDocument(xml)), { ...runs, numRuns: 1500 });
});

test('fuzz: damaged fixtures (bytes, truncation, entities) never throw anything but a VirError', () => {
  fc.assert(fc.property(damagedFixture, (xml) => checkDocument(xml)), { ...runs, numRuns: 600 });
});

test('fuzz: random trees and hostile strings', () => {
  fc.assert(fc.property(randomTree.map((t) => formatXml(t)), (xml) => checkDocument(xml)), { ...runs, numRuns: 600 });
  fc.assert(fc.property(hostile, (xml) => checkDocument(xml)), { ...runs, numRuns: 300 });
});

test('fuzz sanity: the generators produce both accepted and rejected documents', () => {
  let accepted = 0;
  const samples = fc.sample(mutatedFixture, { numRuns: 300, seed: 7 });
  for (const xml of samples) {
    if (acceptedOrVirError(() => parseBackupXML(xml)) || acceptedOrVirError(() => parseCheckpointXML(xml, { redefine: false }))) accepted++;
  }
  assert.ok(accepted > 30 && accepted < 270, `${accepted}/300 accepted`);
});
