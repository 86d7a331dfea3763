// The wire protocol's limits, enforced where domain and checkpoint XML is
// parsed: names a listing can carry, disk paths an event can carry, and
// documents that fit in a reply, including a checkpoint with the copy of its
// domain. The limits must stay those of src/remote/protocol.ts.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ErrorCode, VirError } from '../../src/errors.js';
import { LIMITS } from '../../src/remote/protocol.js';
import { alignCheckpointDisks, formatCheckpointXML, parseCheckpointXML } from '../../src/xml/checkpoint.js';
import { domainToElement, parseDomainXML } from '../../src/xml/domain.js';
import { CHECKPOINT_XML_CHARS, DOMAIN_XML_CHARS, WIRE_LIMITS } from '../../src/xml/limits.js';

const domainXml = (o: { name?: string; target?: string; source?: string; description?: string } = {}) => `<domain type='kvm'>
  <name>${o.name ?? 'vm1'}</name>
  <uuid>c7a5fdbd-cdaf-9455-926a-d65c16db1809</uuid>
  ${o.description === undefined ? '' : `<description>${o.description}</description>`}
  <memory unit='MiB'>64</memory>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='${o.source ?? '/images/a.qcow2'}'/>
      <target dev='${o.target ?? 'sda'}' bus='scsi'/>
    </disk>
  </devices>
</domain>`;

function tooLong(domain: number, re: RegExp) {
  return (e: unknown) => {
    assert.ok(e instanceof VirError, String(e));
    assert.equal(e.code, ErrorCode.XML_ERROR, e.message);
    assert.equal(e.domain, domain);
    assert.match(e.message, re);
    assert.ok(e.message.length < 200, 'the message quotes only the start of the value');
    return true;
  };
}

test('the limits are the wire protocol’s', () => {
  assert.equal(WIRE_LIMITS.nameChars, LIMITS.nameChars);
  assert.equal(WIRE_LIMITS.pathChars, LIMITS.pathChars);
  assert.equal(WIRE_LIMITS.xmlChars, LIMITS.xmlChars);
});

test('domain: name, disk target and source path are bounded; the definition fits half a reply', () => {
  assert.equal(parseDomainXML(domainXml({ name: 'n'.repeat(256) })).name.length, 256);
  assert.throws(() => parseDomainXML(domainXml({ name: 'n'.repeat(300) })), tooLong(20, /^domain name 'n{40}\.\.\.' is too long: 300 characters, at most 256$/));
  assert.throws(() => parseDomainXML(domainXml({ name: `a/${'n'.repeat(1000)}` })), tooLong(20, /too long: 1002 characters/));
  assert.throws(() => parseDomainXML(domainXml({ target: `sd${'a'.repeat(300)}` })), tooLong(20, /^disk target 'sda{38}\.\.\.' is too long: 302 characters, at most 256$/));
  assert.equal(parseDomainXML(domainXml({ source: `/${'p'.repeat(4095)}` })).disks[0]!.source!.length, 4096);
  assert.throws(() => parseDomainXML(domainXml({ source: `/${'p'.repeat(4096)}` })), tooLong(20, /^source of disk 'sda' is too long: 4097 characters, at most 4096$/));
  parseDomainXML(domainXml({ description: 'd'.repeat(DOMAIN_XML_CHARS - 1000) }));
  assert.throws(() => parseDomainXML(domainXml({ description: 'd'.repeat(DOMAIN_XML_CHARS) })), tooLong(20, /^definition of domain 'vm1' is too long: \d+ characters of XML, at most 524288$/));
  // escaping counts: 200 KiB of '<' is 800 KiB of XML
  assert.throws(() => parseDomainXML(domainXml({ description: '&lt;'.repeat(200 * 1024) })), tooLong(20, /characters of XML, at most 524288/));
});

test('checkpoint: names and the description are bounded; with its domain it always fits a reply', () => {
  const cp = (inner: string) => `<domaincheckpoint>${inner}</domaincheckpoint>`;
  assert.throws(() => parseCheckpointXML(cp(`<name>${'c'.repeat(257)}</name>`), { redefine: false }), tooLong(69, /^checkpoint name 'c{40}\.\.\.' is too long: 257 characters, at most 256$/));
  assert.throws(
    () => parseCheckpointXML(cp(`<name>c1</name><description>${'d'.repeat(1000 * 1000)}</description>`), { redefine: false }),
    tooLong(69, /^checkpoint 'c1' \(its name, description and disks\) is too long: \d+ characters of XML, at most 458752$/),
  );
  const redefine = cp(`<name>c2</name><parent><name>${'p'.repeat(300)}</name></parent><creationTime>1</creationTime>`);
  assert.throws(() => parseCheckpointXML(redefine, { redefine: true }), tooLong(69, /^parent checkpoint name 'p{40}\.\.\.' is too long: 300 characters/));

  // the largest of both still fits one reply, with the size attributes
  const dom = parseDomainXML(domainXml({ name: 'n'.repeat(256), description: 'd'.repeat(DOMAIN_XML_CHARS - 1200) }));
  const desc = 'd'.repeat(CHECKPOINT_XML_CHARS - 1200);
  const def = parseCheckpointXML(cp(`<name>${'c'.repeat(256)}</name><description>${desc}</description>`), { redefine: false });
  alignCheckpointDisks(def, dom);
  def.domain = domainToElement(dom, { secure: true });
  for (const d of def.disks) d.size = Number.MAX_SAFE_INTEGER;
  const full = formatCheckpointXML(def, { secure: true, size: true });
  assert.ok(full.length > WIRE_LIMITS.xmlChars * 0.9, `close to the limit (${full.length})`);
  assert.ok(full.length <= WIRE_LIMITS.xmlChars, `${full.length} characters fit in a reply`);
});
