// The libvirt driver against a real libvirtd (started privately, see
// test/helpers/private-libvirtd.ts); the scenario is test/helpers/libvirt-scenario.ts.

import test from 'node:test';
import { libvirtClientScenario } from '../helpers/libvirt-scenario.js';
import { privateLibvirtdSkipReason, startPrivateLibvirtd } from '../helpers/private-libvirtd.js';

const skip = await privateLibvirtdSkipReason();

test('libvirt driver: the CLI and the SDK back up VMs of a real libvirtd', { skip, timeout: 300_000 }, async (t) => {
  const lv = await startPrivateLibvirtd();
  t.after(() => lv.stop());
  await libvirtClientScenario({ uri: lv.uri, roSocket: lv.roSocket, dir: lv.dir });
});
