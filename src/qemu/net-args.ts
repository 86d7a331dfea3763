// -netdev/-device arguments for a domain's <interface>s (pure). Names follow
// libvirt's: netdev `hostnet<N>`, device id (alias) `net<N>`. Bridge and
// ethernet interfaces name their tap (net.ts creates the bridge ones).

import { virErr } from '../errors.js';
import type { InterfaceDef, NicModel } from '../xml/domain-net.js';

const DEVICE_OF_MODEL: Record<NicModel, string> = {
  virtio: 'virtio-net-pci',
  e1000: 'e1000',
  rtl8139: 'rtl8139',
};

/** slirp's hostfwd rule: proto:hostaddr:hostport-guestaddr:guestport (guest address: slirp's DHCP lease). */
function hostfwd(i: InterfaceDef): { str: string }[] {
  return i.portForwards.map((f) => ({ str: `${f.proto}:${f.address ?? ''}:${f.hostPort}-:${f.guestPort}` }));
}

/** -netdev and -device for each interface; `bootIndex` goes on the first (<boot dev='network'/>). */
export function netArgs(ifaces: readonly InterfaceDef[], bootIndex?: number): string[] {
  const args: string[] = [];
  ifaces.forEach((i, n) => {
    const id = `hostnet${n}`;
    let netdev: object;
    if (i.type === 'user') {
      netdev = { type: 'user', id, ...(i.portForwards.length > 0 ? { hostfwd: hostfwd(i) } : {}) };
    } else {
      if (i.tap === null) throw virErr('INTERNAL_ERROR', 'QEMU', `interface ${n} has no tap`);
      netdev = { type: 'tap', id, ifname: i.tap, script: 'no', downscript: 'no' };
    }
    args.push('-netdev', JSON.stringify(netdev), '-device', JSON.stringify({
      driver: DEVICE_OF_MODEL[i.model], netdev: id, id: `net${n}`, mac: i.mac,
      ...(n === 0 && bootIndex !== undefined ? { bootindex: bootIndex } : {}),
    }));
  });
  return args;
}
