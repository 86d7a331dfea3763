// The libvirt client driver's whole scenario (test/helpers/libvirt-scenario.ts)
// against virtbackd's own libvirt socket instead of a real libvirtd: virtback
// talks libvirt to virtback, through the same codec in both directions.

import { test } from 'node:test';
import path from 'node:path';
import { libvirtClientScenario } from '../helpers/libvirt-scenario.js';
import { makeDaemonEnv } from './daemon-util.js';
import { libvirtUri, virshMissing } from '../helpers/libvirt-clients.js';

// virtbackd runs q35 (the machine libvirt's own default domain names 'pc' is refused there)
const q35Domain = (name: string, disk: string): string => `<domain type='qemu'>
  <name>${name}</name>
  <memory unit='MiB'>96</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='${disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <memballoon model='none'/>
  </devices>
</domain>
`;

test("libvirt driver: the same scenario against virtbackd's libvirt socket", { skip: virshMissing(), timeout: 300_000 }, async (t) => {
  const env = await makeDaemonEnv(t);
  await env.start();
  await libvirtClientScenario({
    uri: libvirtUri(env.runDir),
    roSocket: path.join(env.runDir, 'libvirt-sock-ro'),
    dir: env.dir,
    domainXml: q35Domain,
  });
});
