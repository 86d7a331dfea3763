// The <domain> inside a redefined checkpoint is judged by libvirt's own
// installed domain schema (libvirt0's /usr/share/libvirt/schemas/domain.rng),
// as libvirt judges it: a VM of a libvirt host is accepted whole, what
// libvirt's grammar rejects is rejected with XML_INVALID_SCHEMA.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ErrorCode, VirError } from '../../src/errors.js';
import { formatCheckpointXML, parseCheckpointXML } from '../../src/xml/checkpoint.js';
import { formatDomainXML, parseDomainXML } from '../../src/xml/domain.js';
import { libvirtSchemasDir } from '../../src/xml/schema.js';

const installed = fs.existsSync(path.join(libvirtSchemasDir(), 'domain.rng'));
const skip = installed ? false : `libvirt's schemas are not installed in ${libvirtSchemasDir()} (Debian package libvirt0)`;

// A domain as a libvirt host's dumpxml shows it: devices virtback does not run are fine here (metadata only).
const hostDomain = (inner = '', onCrash = 'destroy'): string => `<domain type='kvm'>
    <name>ledger</name>
    <uuid>4d1f7a52-3c9e-4b08-9e61-7a2b5c8d0f13</uuid>
    <memory unit='KiB'>524288</memory>
    <vcpu placement='static'>2</vcpu>
    <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type><boot dev='hd'/></os>
    <on_poweroff>destroy</on_poweroff>
    <on_crash>${onCrash}</on_crash>
    <devices>
      <disk type='file' device='disk'>
        <driver name='qemu' type='qcow2'/>
        <source file='/var/lib/libvirt/images/ledger.qcow2'/>
        <target dev='vda' bus='virtio'/>
      </disk>
      <interface type='network'><source network='default'/><model type='virtio'/></interface>
      <graphics type='vnc' port='-1' autoport='yes'/>
      ${inner}
    </devices>
  </domain>`;

const checkpoint = (domain: string): string =>
  `<domaincheckpoint><name>c1</name><creationTime>1733050800</creationTime>` +
  `<disks><disk name='vda' checkpoint='bitmap' bitmap='c1'/></disks>${domain}</domaincheckpoint>`;

const redefine = (xml: string) => parseCheckpointXML(xml, { redefine: true });

function schemaError(xml: string, re: RegExp): void {
  assert.throws(() => redefine(xml), (e: unknown) => {
    assert.ok(e instanceof VirError, String(e));
    assert.equal(e.code, ErrorCode.XML_INVALID_SCHEMA, e.message);
    assert.match(e.message, re);
    return true;
  });
}

test("a libvirt host's domain is accepted whole inside a redefined checkpoint", { skip }, () => {
  const def = redefine(checkpoint(hostDomain()));
  assert.equal(def.domain?.name, 'domain');
});

test("what libvirt's domain schema rejects is rejected, naming the culprit", { skip }, () => {
  // text in <on_crash> that is not one of libvirt's actions
  schemaError(checkpoint(hostDomain('', 'explode')), /on_crash/);
  // an unknown attribute on <on_poweroff>
  schemaError(checkpoint(hostDomain().replace('<on_poweroff>', "<on_poweroff when='later'>")), /on_poweroff/);
  // an unknown attribute on a disk's <source>
  schemaError(checkpoint(hostDomain().replace("<source file=", "<source colour='red' file=")), /devices|source|disk/); // libxml2 names the enclosing interleave
  // an unknown element
  // (our domain.rng, which the checkpoint schema includes, refuses names that are not libvirt's before libvirt's schema runs)
  schemaError(checkpoint(hostDomain('<teleporter/>')), /teleporter|devices|domain/);
  schemaError(checkpoint(hostDomain().replace('<vcpu', '<flux/><vcpu')), /flux|domain/);
});

test("a checkpoint's own XML, domain included, is accepted back by REDEFINE", { skip }, () => {
  const dom = parseDomainXML(
    `<domain type='qemu'><name>a</name><memory unit='MiB'>64</memory><devices><disk type='file' device='disk'>` +
      `<driver name='qemu' type='qcow2'/><source file='/tmp/a.qcow2'/><target dev='vda' bus='virtio'/></disk></devices></domain>`,
  );
  const domainXml = formatDomainXML(dom, { secure: true });
  const created = redefine(checkpoint(domainXml));
  const printed = formatCheckpointXML({ ...created, inconsistent: null }, { secure: true });
  assert.equal(redefine(printed).domain !== null, true);
});

test("without libvirt's schemas installed, only our own schema applies (documented fallback)", () => {
  const empty = fs.mkdtempSync(path.join(os.tmpdir(), 'no-libvirt-schemas-'));
  const saved = process.env.VIRTBACK_LIBVIRT_SCHEMAS;
  process.env.VIRTBACK_LIBVIRT_SCHEMAS = empty;
  try {
    assert.equal(redefine(checkpoint(hostDomain('', 'explode'))).name, 'c1');
  } finally {
    if (saved === undefined) delete process.env.VIRTBACK_LIBVIRT_SCHEMAS;
    else process.env.VIRTBACK_LIBVIRT_SCHEMAS = saved;
    fs.rmSync(empty, { recursive: true });
  }
});
