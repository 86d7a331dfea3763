// <os><boot dev='network'/>: the first interface gets QEMU's bootindex and the
// firmware runs its option ROM (Debian's iPXE, package ipxe-qemu): the NIC's
// first packets are iPXE's PXE DHCP requests, captured on the domain's
// netdev with QEMU's filter-dump while the guest has nothing else to boot.

import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import test from 'node:test';
import { DomainCreateFlags } from '../../src/flags.js';
import { qdevIdForDisk } from '../../src/qemu/command-line.js';
import { parseDomainXML } from '../../src/xml/domain.js';
import { makeTestDomain, makeTestEnv, waitFor } from '../helpers/qemu-env.js';

const MAC = '52:54:00:5e:00:42';

test("<boot dev='network'/> then 'hd': the NIC is bootindex 1, the disk 2, and iPXE asks DHCP for a boot file", { timeout: 180_000 }, async (t) => {
  const env = await makeTestEnv(t);
  const dom = await makeTestDomain(env.dir, {
    disks: 1,
    sizeMiB: 16,
    bus: 'virtio',
    osXml: "<os><type arch='x86_64' machine='q35'>hvm</type><boot dev='network'/><boot dev='hd'/></os>",
    devicesXml: `    <interface type='user'><mac address='${MAC}'/><model type='virtio'/></interface>\n`,
  });
  const driver = await env.openDriver();
  const { uuid } = await driver.domainDefineXML(dom.xml, 0);
  assert.match(await driver.domainGetXMLDesc(uuid, 0), /<boot dev='network'\/>\s*<boot dev='hd'\/>/, 'kept in the definition');
  await driver.domainCreate(uuid, DomainCreateFlags.PAUSED);
  const qmp = async (execute: string, args: object): Promise<unknown> => {
    const out = JSON.parse(await driver.qemuMonitorCommand(uuid, JSON.stringify({ execute, arguments: args }), 0)) as { return?: unknown; error?: { desc: string } };
    if (out.error) throw new Error(`${execute}: ${out.error.desc}`);
    return out.return;
  };
  // what QEMU was given (and hands the firmware as its boot order)
  assert.equal(await qmp('qom-get', { path: '/machine/peripheral/net0', property: 'bootindex' }), 1);
  const disk = qdevIdForDisk(parseDomainXML(dom.xml), dom.disks[0]!.target);
  assert.equal(await qmp('qom-get', { path: `/machine/peripheral/${disk}`, property: 'bootindex' }), 2);

  // capture the NIC's traffic from its first packet on, then let the firmware run
  const pcap = path.join(env.dir, 'net0.pcap');
  await qmp('object-add', { 'qom-type': 'filter-dump', id: 'dump0', netdev: 'hostnet0', file: pcap });
  await driver.domainResume(uuid);
  const dump = await waitFor(async () => {
    const b = await readFile(pcap).catch(() => Buffer.alloc(0));
    return b.includes('PXEClient') ? b : undefined;
  }, "iPXE's DHCP request", 150_000);
  assert.ok(dump.includes(Buffer.from(MAC.split(':').map((h) => parseInt(h, 16)))), 'sent by the domain\'s NIC');
  assert.ok(dump.includes('iPXE'), 'by iPXE (its user class)');
  await driver.domainDestroy(uuid, 0);
  await env.assertClean();
});
