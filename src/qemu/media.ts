// Removable media: a CD-ROM drive's image changed or ejected
// (virDomainUpdateDeviceFlags with a <disk device='cdrom'>, what virsh
// change-media sends: the drive's own <disk> with a new <source>, or none to
// eject). Live, as libvirt's qemuDomainChangeMediaBlockdev: open the tray,
// remove the medium, add the new image's nodes, insert them, close the tray,
// delete the old nodes; the status file follows. In the definition: the
// disk's source replaced.

import { virErr } from '../errors.js';
import { DeviceModifyFlags } from '../flags.js';
import { parseDomainXML, type DiskDef, type DomainDef } from '../xml/domain.js';
import type { DiskNodes } from './command-line.js';
import type { DomainObject } from './domain-object.js';
import { qmpErrorToVirError, type QmpClient } from './qmp/client.js';

/** What a media change says: which drive, and the new image (null: eject). */
export interface MediaChange {
  target: string;
  source: string | null;
  type: 'file' | 'block';
  format: DiskDef['format'];
}

/** The <disk> of an update, read with every check of a definition (schema, supported parts). */
export function parseMediaChange(diskXml: string): MediaChange {
  const trimmed = diskXml.trim();
  if (!/^<disk[\s>]/.test(trimmed)) {
    throw virErr('OPERATION_UNSUPPORTED', 'DOMAIN', 'only disk devices can be updated');
  }
  const def = parseDomainXML(`<domain type='qemu'><name>update</name><memory>1</memory><devices>${trimmed}</devices></domain>`);
  const d = def.disks[0]!;
  return { target: d.target, source: d.source, type: d.type, format: d.format };
}

/** The drive `change` names, which must be a CD-ROM drive of `def`. */
function cdrom(def: DomainDef, change: MediaChange): DiskDef {
  const disk = def.disks.find((d) => d.target === change.target);
  if (disk === undefined) throw virErr('INVALID_ARG', 'DOMAIN', `disk '${change.target}' not found in domain`);
  if (disk.device !== 'cdrom') {
    throw virErr('OPERATION_UNSUPPORTED', 'DOMAIN', `disk '${change.target}': only the media of a cdrom can be changed`);
  }
  return disk;
}

/** `def` with the drive's new medium (the persistent definition, CONFIG). */
export function withMedia(def: DomainDef, change: MediaChange): DomainDef {
  cdrom(def, change);
  const disks = def.disks.map((d) => (d.target === change.target ? { ...d, source: change.source, type: change.type, format: change.format } : d));
  return { ...def, disks };
}

/** libvirt's virDomainObjUpdateModificationImpact: CURRENT is the live domain when running, else the definition. */
export function modificationImpact(dom: DomainObject, flags: number): { live: boolean; config: boolean } {
  let live = (flags & DeviceModifyFlags.LIVE) !== 0;
  let config = (flags & DeviceModifyFlags.CONFIG) !== 0;
  if (!live && !config) {
    live = dom.active;
    config = !dom.active;
  }
  if (live && !dom.active) throw virErr('OPERATION_INVALID', 'DOMAIN', 'Requested operation is not valid: domain is not running');
  if (config && !dom.persistent) {
    throw virErr('OPERATION_INVALID', 'DOMAIN', 'Requested operation is not valid: transient domains do not have any persistent config');
  }
  return { live, config };
}

export interface LiveMediaHost {
  qmp: QmpClient;
  allocateNodeIndex(): Promise<number>;
  /** persist the new live definition and node names */
  save(def: DomainDef, disks: DiskNodes[]): Promise<void>;
}

/** Change the medium of a running domain's drive; returns the new live definition. */
export async function changeMediaLive(dom: DomainObject, host: LiveMediaHost, change: MediaChange, force: boolean): Promise<DomainDef> {
  const live = dom.liveDef!;
  const def = withMedia(live, change);
  const disks = dom.disks;
  const nodes = disks.find((d) => d.target === change.target);
  if (nodes === undefined) throw virErr('INTERNAL_ERROR', 'QEMU', `no device for disk '${change.target}'`);
  const { qmp } = host;
  const id = nodes.qdevId;
  const step = async <T>(what: string, run: () => Promise<T>): Promise<T> => {
    try {
      return await run();
    } catch (e) {
      throw qmpErrorToVirError(e, `cannot change the medium of '${change.target}' (${what})`);
    }
  };
  await step('open tray', () => qmp.execute('blockdev-open-tray', { id, force }));
  await step('remove medium', () => qmp.execute('blockdev-remove-medium', { id }));
  let next: DiskNodes = { ...nodes, storageNode: null, formatNode: null, nodeIndex: null };
  if (change.source !== null) {
    const n = await host.allocateNodeIndex();
    next = { ...nodes, storageNode: `libvirt-${n}-storage`, formatNode: `libvirt-${n}-format`, nodeIndex: n };
    const storage = next.storageNode!;
    const format = next.formatNode!;
    const driver = change.type === 'block' ? 'host_device' : 'file';
    await step('open image', () => qmp.execute('blockdev-add', { driver, filename: change.source!, 'node-name': storage, 'auto-read-only': true, 'read-only': true }));
    await step('open image', () => qmp.execute('blockdev-add', { driver: change.format, 'node-name': format, 'read-only': true, file: storage }));
    await step('insert medium', () => qmp.execute('blockdev-insert-medium', { id, 'node-name': format }));
  }
  await step('close tray', () => qmp.execute('blockdev-close-tray', { id }));
  // the old image's nodes: no device uses them any more
  for (const node of [nodes.formatNode, nodes.storageNode]) {
    if (node !== null) await qmp.execute('blockdev-del', { 'node-name': node }).catch(() => undefined);
  }
  await host.save(def, disks.map((d) => (d.target === change.target ? next : d)));
  return def;
}
