// What each libvirt procedure does on virtbackd: one handler per row of
// remoteProcedures (and the QEMU program's monitor command), mapping the
// wire's arguments onto the Driver and its results back. The table is typed
// against the procedure table, so a procedure without a handler, or a
// handler returning the wrong struct, does not compile. Domain references
// resolve by uuid, as libvirtd does; reply references carry the current
// name and id (−1 when shut off). Semantics are shipped libvirt's: see
// libvirt/semantics.ts for the values that differ from virtback's own API.

import type { DomainRef, DomainSummary } from '../api/driver.js';
import type { CheckedDriver } from '../api/checked-driver.js';
import { virErr } from '../errors.js';
import { DomainState, ListDomainsFlags } from '../flags.js';
import {
  AuthType,
  DriverFeature,
  REMOTE,
  qemuProcedures,
  remoteProcedures,
  type Procedure,
  type ProcArgs,
  type ProcRet,
  type RemoteProcedureName,
  type WireDomain,
} from './procedures.js';
import {
  LIB_VERSION_NUMBER,
  backupBeginFlagsFromWire,
  bytesToUuid,
  jobStatsToJobInfo,
  jobStatsToParams,
  splitListDomainsFlags,
  uuidToBytes,
} from './semantics.js';
import type { Infer } from './xdr.js';

/** What the host says of itself (CONNECT_GET_HOSTNAME, CONNECT_GET_VERSION). */
export interface HostFacts {
  hostname: string;
  /** QEMU's version as major·10⁶ + minor·10³ + micro; 0 when unknown */
  hypervisorVersion: number;
  /** /dev/kvm is usable: domains of type='kvm' can run */
  kvm?: boolean;
}

/** The connection a call arrives on, as its handler sees it. */
export interface CallConnection {
  /** the connection's Driver: CheckedDriver, read-only on the read-only socket or after CONNECT_OPEN with RO */
  readonly driver: CheckedDriver;
  readonly host: HostFacts;
  /** CONNECT_OPEN: checks the URI and flags, moves the connection to open */
  open(name: string | null, flags: number): void;
  /** the URI the connection was opened with (CONNECT_GET_URI); qemu:///system for a NULL name */
  readonly openedUri: string;
  /** CONNECT_CLOSE: back to before open; registrations dropped */
  close(): void;
  /** CONNECT_SUPPORTS_FEATURE: noted (keepalive) and answered */
  supportsFeature(feature: number): boolean;
  registerEvent(eventID: number, uuid: string | null): number;
  deregisterEvent(callbackID: number): void;
  /** after a successful start: START_AUTODESTROY domains die with this connection */
  domainStarted(uuid: string, flags: number): Promise<void>;
}

export type Handler<A, R> = (c: CallConnection, args: A) => Promise<R>;

/**
 * virConnectGetCapabilities: the host and the one guest kind virtbackd runs
 * (x86_64 hvm on q35; kvm listed only where /dev/kvm is usable), in
 * libvirt's capabilities format, for tools that look before they define.
 */
export function capabilitiesXml(host: HostFacts): string {
  const kvm = host.kvm ? "\n      <domain type='kvm'/>" : '';
  return `<capabilities>
  <host>
    <cpu>
      <arch>x86_64</arch>
    </cpu>
  </host>
  <guest>
    <os_type>hvm</os_type>
    <arch name='x86_64'>
      <wordsize>64</wordsize>
      <emulator>/usr/bin/qemu-system-x86_64</emulator>
      <machine>q35</machine>
      <domain type='qemu'/>${kvm}
    </arch>
  </guest>
</capabilities>
`;
}

/** The features CONNECT_SUPPORTS_FEATURE answers 1 for; anything else is 0. */
export const SUPPORTED_FEATURES: ReadonlySet<number> = new Set([
  DriverFeature.PROGRAM_KEEPALIVE,
  DriverFeature.REMOTE_EVENT_CALLBACK,
  DriverFeature.REMOTE_CLOSE_CALLBACK,
]);

const uuidOf = (d: WireDomain): string => bytesToUuid(d.uuid);

function toWire(s: Pick<DomainSummary, 'name' | 'uuid' | 'id'>): WireDomain {
  return { name: s.name, uuid: uuidToBytes(s.uuid), id: s.id };
}

/** A reference with its current name and id: domain references always carry one. */
async function wireDomain(c: CallConnection, ref: Pick<DomainRef, 'uuid'>): Promise<{ dom: WireDomain }> {
  return { dom: toWire(await c.driver.domainGetInfo(ref.uuid)) };
}

/** The domain must exist (libvirtd's lookup before every domain call) even where the answer is a constant. */
async function exists(c: CallConnection, dom: WireDomain): Promise<void> {
  await c.driver.domainLookupByUUID(uuidOf(dom));
}

/** A count or size as an unsigned hyper; what the driver leaves out is 0. */
const u64 = (n: number | undefined): bigint => BigInt(Math.max(0, Math.trunc(n ?? 0)));

/** `need_results = 0` is "count only": no list, just its length. */
function counted<T>(items: T[], needResults: number, max: number): { items: T[]; ret: number } {
  if (needResults !== 0 && items.length > max) {
    throw virErr('INTERNAL_ERROR', 'RPC', `too many items to return: ${items.length} (the protocol allows ${max})`);
  }
  return { items: needResults === 0 ? [] : items, ret: items.length };
}

function checkpointList(dom: WireDomain, names: string[], needResults: number) {
  const { items, ret } = counted(names, needResults, REMOTE.CHECKPOINT_LIST_MAX);
  return { list: items.map((name) => ({ name, dom })), ret };
}

async function listAllDomains(c: CallConnection, needResults: number, flags: number) {
  const split = splitListDomainsFlags(flags);
  // nothing has a managed save image or a snapshot here
  if (split.managedSave === true || split.snapshot === true) return { domains: [], ret: 0 };
  let doms = await c.driver.listAllDomains(split.driverFlags);
  const autostart = split.autostart;
  if (autostart !== null) {
    const marks = await Promise.all(doms.map((d) => c.driver.domainGetAutostart(d.uuid)));
    doms = doms.filter((_, i) => marks[i] === autostart);
  }
  const { items, ret } = counted(doms, needResults, REMOTE.DOMAIN_LIST_MAX);
  return { domains: items.map(toWire), ret };
}

async function lookupByID(c: CallConnection, id: number) {
  const found = (await c.driver.listAllDomains(ListDomainsFlags.ACTIVE)).find((d) => d.id === id);
  if (!found) throw virErr('NO_DOMAIN', 'QEMU', `no domain with matching id ${id}`);
  return { dom: toWire(found) };
}

type RemoteHandlers = { [N in RemoteProcedureName]: Handler<ProcArgs<N>, ProcRet<N>> };

export const remoteHandlers: RemoteHandlers = {
  // ---- connection ----
  authList: async () => ({ types: [AuthType.NONE] }),
  connectSupportsFeature: async (c, a) => ({ supported: c.supportsFeature(a.feature) ? 1 : 0 }),
  connectOpen: async (c, a) => c.open(a.name, a.flags),
  connectClose: async (c) => c.close(),
  connectGetType: async () => ({ type: 'QEMU' }),
  connectGetVersion: async (c) => ({ hv_ver: BigInt(c.host.hypervisorVersion) }),
  connectGetLibVersion: async () => ({ lib_ver: BigInt(LIB_VERSION_NUMBER) }),
  connectGetHostname: async (c) => ({ hostname: c.host.hostname }),
  connectGetURI: async (c) => ({ uri: c.openedUri }),
  connectGetCapabilities: async (c) => ({ capabilities: capabilitiesXml(c.host) }),
  connectRegisterCloseCallback: async () => undefined,
  connectUnregisterCloseCallback: async () => undefined,
  connectDomainEventCallbackRegisterAny: async (c, a) => ({
    callbackID: c.registerEvent(a.eventID, a.dom === null ? null : uuidOf(a.dom)),
  }),
  connectDomainEventCallbackDeregisterAny: async (c, a) => c.deregisterEvent(a.callbackID),

  // ---- domains ----
  connectListAllDomains: (c, a) => listAllDomains(c, a.need_results, a.flags),
  domainLookupByID: (c, a) => lookupByID(c, a.id),
  domainLookupByName: async (c, a) => wireDomain(c, await c.driver.domainLookupByName(a.name)),
  domainLookupByUUID: async (c, a) => wireDomain(c, await c.driver.domainLookupByUUID(bytesToUuid(a.uuid))),
  domainDefineXML: async (c, a) => wireDomain(c, await c.driver.domainDefineXML(a.xml, 0)),
  domainDefineXMLFlags: async (c, a) => wireDomain(c, await c.driver.domainDefineXML(a.xml, a.flags)),
  domainUndefine: (c, a) => c.driver.domainUndefine(uuidOf(a.dom), 0),
  domainUndefineFlags: (c, a) => c.driver.domainUndefine(uuidOf(a.dom), a.flags),
  domainCreate: async (c, a) => {
    await c.driver.domainCreate(uuidOf(a.dom), 0);
  },
  domainCreateWithFlags: async (c, a) => {
    const uuid = uuidOf(a.dom);
    await c.driver.domainCreate(uuid, a.flags);
    await c.domainStarted(uuid, a.flags);
    return wireDomain(c, { uuid });
  },
  domainDestroy: (c, a) => c.driver.domainDestroy(uuidOf(a.dom), 0),
  domainDestroyFlags: (c, a) => c.driver.domainDestroy(uuidOf(a.dom), a.flags),
  domainShutdown: (c, a) => c.driver.domainShutdown(uuidOf(a.dom), 0),
  domainShutdownFlags: (c, a) => c.driver.domainShutdown(uuidOf(a.dom), a.flags),
  domainReboot: (c, a) => c.driver.domainReboot(uuidOf(a.dom), a.flags),
  domainSuspend: (c, a) => c.driver.domainSuspend(uuidOf(a.dom)),
  domainResume: (c, a) => c.driver.domainResume(uuidOf(a.dom)),
  domainGetAutostart: async (c, a) => ({ autostart: (await c.driver.domainGetAutostart(uuidOf(a.dom))) ? 1 : 0 }),
  domainUpdateDeviceFlags: (c, a) => c.driver.domainUpdateDevice(uuidOf(a.dom), a.xml, a.flags),
  domainSetAutostart: (c, a) => c.driver.domainSetAutostart(uuidOf(a.dom), a.autostart !== 0),
  // libvirt's daemon refuses more than the .x maximum; maxerrors 0 asks only how many to ask for
  // (libvirt's QEMU driver answers its number of disks, we the number of errors: either is the API's "preferred size")
  domainGetDiskErrors: async (c, a) => {
    if (a.maxerrors > REMOTE.DOMAIN_DISK_ERRORS_MAX) throw virErr('RPC', 'RPC', 'maxerrors too large');
    const errors = await c.driver.domainGetDiskErrors(uuidOf(a.dom), a.flags);
    if (a.maxerrors === 0) return { errors: [], nerrors: errors.length };
    const some = errors.slice(0, a.maxerrors);
    return { errors: some, nerrors: some.length };
  },
  domainGetBlockJobInfo: async (c, a) => {
    const info = await c.driver.domainGetBlockJobInfo(uuidOf(a.dom), a.path, a.flags);
    return { found: info.found ? 1 : 0, type: info.type, bandwidth: u64(info.bandwidth), cur: u64(info.cur), end: u64(info.end) };
  },
  domainGetXMLDesc: async (c, a) => ({ xml: await c.driver.domainGetXMLDesc(uuidOf(a.dom), a.flags) }),
  domainGetState: async (c, a) => {
    const s = await c.driver.domainGetInfo(uuidOf(a.dom));
    return { state: s.state, reason: s.reason };
  },
  domainGetInfo: async (c, a) => {
    const s = await c.driver.domainGetInfo(uuidOf(a.dom));
    return { state: s.state, maxMem: u64(s.maxMem), memory: u64(s.memory), nrVirtCpu: s.nrVirtCpu ?? 0, cpuTime: u64(s.cpuTime) };
  },
  domainIsActive: async (c, a) => ({ active: (await c.driver.domainGetInfo(uuidOf(a.dom))).state !== DomainState.SHUTOFF ? 1 : 0 }),
  domainIsPersistent: async (c, a) => ({ persistent: (await c.driver.domainGetInfo(uuidOf(a.dom))).persistent ? 1 : 0 }),
  domainGetOSType: async (c, a) => {
    await exists(c, a.dom);
    return { type: 'hvm' };
  },
  domainHasManagedSaveImage: async (c, a) => {
    await exists(c, a.dom);
    return { result: 0 };
  },
  domainSnapshotNum: async (c, a) => {
    await exists(c, a.dom);
    return { num: 0 };
  },
  domainGetMessages: async (c, a) => {
    await exists(c, a.dom);
    return { msgs: [] };
  },
  domainFSFreeze: async (c, a) => ({ filesystems: await c.driver.domainFSFreeze(uuidOf(a.dom), a.mountpoints, a.flags) }),
  domainFSThaw: async (c, a) => ({ filesystems: await c.driver.domainFSThaw(uuidOf(a.dom), a.mountpoints, a.flags) }),

  // ---- checkpoints ----
  domainCheckpointCreateXML: async (c, a) => ({
    checkpoint: { name: await c.driver.checkpointCreateXML(uuidOf(a.dom), a.xml_desc, a.flags), dom: a.dom },
  }),
  domainCheckpointGetXMLDesc: async (c, a) => ({
    xml: await c.driver.checkpointGetXMLDesc(uuidOf(a.checkpoint.dom), a.checkpoint.name, a.flags),
  }),
  domainListAllCheckpoints: async (c, a) => {
    const { list, ret } = checkpointList(a.dom, await c.driver.listAllCheckpoints(uuidOf(a.dom), a.flags), a.need_results);
    return { checkpoints: list, ret };
  },
  domainCheckpointListAllChildren: async (c, a) => {
    const cp = a.checkpoint;
    const names = await c.driver.checkpointListAllChildren(uuidOf(cp.dom), cp.name, a.flags);
    const { list, ret } = checkpointList(cp.dom, names, a.need_results);
    return { children: list, ret };
  },
  domainCheckpointLookupByName: async (c, a) => ({
    checkpoint: { name: await c.driver.checkpointLookupByName(uuidOf(a.dom), a.name, a.flags), dom: a.dom },
  }),
  // a root answers the driver's NO_DOMAIN_CHECKPOINT (103): virsh's checkpoint-list --tree reads it as "root"
  domainCheckpointGetParent: async (c, a) => ({
    parent: { name: await c.driver.checkpointGetParent(uuidOf(a.checkpoint.dom), a.checkpoint.name, a.flags), dom: a.checkpoint.dom },
  }),
  domainCheckpointDelete: (c, a) => c.driver.checkpointDelete(uuidOf(a.checkpoint.dom), a.checkpoint.name, a.flags),

  // ---- backup jobs: shipped libvirt's, without job ids ----
  domainBackupBegin: async (c, a) => {
    await c.driver.backupBegin(uuidOf(a.dom), a.backup_xml, a.checkpoint_xml, backupBeginFlagsFromWire(a.flags));
  },
  domainBackupGetXMLDesc: async (c, a) => ({ xml: await c.driver.backupGetXMLDesc(uuidOf(a.dom), 0, a.flags) }),
  domainGetJobStats: async (c, a) => {
    const stats = await c.driver.getJobStats(uuidOf(a.dom), a.flags);
    return { type: stats.type, params: jobStatsToParams(stats) };
  },
  domainGetJobInfo: async (c, a) => jobStatsToJobInfo(await c.driver.getJobStats(uuidOf(a.dom), 0)),
  domainAbortJob: (c, a) => c.driver.abortJob(uuidOf(a.dom), 0),
  domainAbortJobFlags: (c, a) => c.driver.abortJob(uuidOf(a.dom), a.flags),
};

export const qemuHandlers: {
  domainMonitorCommand: Handler<Infer<typeof qemuProcedures.domainMonitorCommand.args>, { result: string }>;
} = {
  domainMonitorCommand: async (c, a) => ({ result: await c.driver.qemuMonitorCommand(uuidOf(a.dom), a.cmd, a.flags) }),
};

/** A procedure and its handler, looked up by number when a call arrives. */
export interface Dispatch {
  row: Procedure;
  handler: Handler<unknown, unknown>;
}

function byNumber(rows: Record<string, Procedure>, handlers: Record<string, Handler<never, unknown>>): ReadonlyMap<number, Dispatch> {
  return new Map(
    Object.entries(rows).map(([name, row]) => [row.proc, { row, handler: handlers[name] as Handler<unknown, unknown> }]),
  );
}

export const remoteDispatch = byNumber(remoteProcedures, remoteHandlers);
export const qemuDispatch = byNumber(qemuProcedures, qemuHandlers);
