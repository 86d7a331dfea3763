// The libvirt client driver's whole scenario (test/helpers/libvirt-scenario.ts)
// against virtbackd's own libvirt socket instead of a real libvirtd: virtback
// talks libvirt to virtback, through the same codec in both directions.

import { test } from 'node:test';
import path from 'node:path';
import { libvirtClientScenario } from '../helpers/libvirt-scenario.js';
import { makeDaemonEnv } from './daemon-util.js';
import { libvirtUri, virshMissing } from '../helpers/libvirt-clients.js';
import { smallDomainXml } from '../helpers/private-libvirtd.js';


test("libvirt driver: the same scenario against virtbackd's libvirt socket", { skip: virshMissing(), timeout: 300_000 }, async (t) => {
  const env = await makeDaemonEnv(t);
  // pushes at most 32 MiB/s: virtbackd copies with copy-range, which finishes 192 MiB before a QMP
  // throttle can reach it, and the scenario's abort step needs a push that is still copying
  await env.start(['--backup-speed-limit', String(32 * 1024 * 1024)]);
  await libvirtClientScenario({
    uri: libvirtUri(env.runDir),
    roSocket: path.join(env.runDir, 'libvirt-sock-ro'),
    dir: env.dir,
    domainXml: (name, disk) => smallDomainXml(name, disk, { machine: 'q35' }), // virtbackd runs q35, not libvirt's 'pc'
  });
});
