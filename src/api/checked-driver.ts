// libvirt's public-wrapper checks (src/libvirt-domain.c,
// src/libvirt-domain-checkpoint.c) as a Driver that wraps a Driver: argument
// and flag checks and read-only refusal run before the inner driver is
// called. The SDK (api/public.ts) calls through it on the client side, and
// virtbackd calls through it again for every client, so a client that skips
// or lies about its checks gains nothing.

import type { Driver, DomainRef, DomainSummary, EventListener, JobStats, UnknownBitmap } from './driver.js';
import { virErr, type ErrorDomainName } from '../errors.js';
import { BackupBeginFlags, CheckpointCreateFlags, CheckpointDeleteFlags, CheckpointXMLFlags, DomainXMLFlags, checkFlags } from '../flags.js';
import {
  BackupBeginOptionFlags,
  BackupEndOptionFlags,
  CheckpointCreateOptionFlags,
  CheckpointDeleteOptionFlags,
  CheckpointXMLOptionFlags,
  DomainXMLOptionFlags,
  JobStatsOptionFlags,
  ListChildrenOptionFlags,
  ListCheckpointsOptionFlags,
  ListDomainsOptionFlags,
  MonitorCommandOptionFlags,
  UndefineOptionFlags,
  allBits,
} from './options.js';

/** The wording of the read-only refusal (OPERATION_DENIED). */
export const READ_ONLY_MESSAGE = 'operation forbidden for read only access';

const UUID_RE = /^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$/i;

/** A UUID in its canonical form (lowercase, dashed), or null if `s` is not one. */
export function canonicalUUID(s: string): string | null {
  const t = s.trim();
  if (!UUID_RE.test(t)) return null;
  const h = t.replace(/-/g, '').toLowerCase();
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function denyReadOnly(domain: ErrorDomainName): never {
  throw virErr('OPERATION_DENIED', domain, READ_ONLY_MESSAGE);
}

/** virCheckNonNullArgGoto, plus: empty strings are refused too. */
function nonEmpty(value: unknown, arg: string, fn: string, domain: ErrorDomainName): string {
  if (value === null || value === undefined) throw virErr('INVALID_ARG', domain, `${arg} in ${fn} must not be NULL`);
  if (typeof value !== 'string') throw virErr('INVALID_ARG', domain, `${arg} in ${fn} must be a string`);
  if (value.length === 0) throw virErr('INVALID_ARG', domain, `${arg} in ${fn} must not be empty`);
  return value;
}

/** A string or NULL (backupXml, checkpointXml); empty means NULL, as virsh treats it. */
function optionalString(value: unknown, arg: string, fn: string, domain: ErrorDomainName): string | null {
  if (value === null || value === undefined || value === '') return null;
  if (typeof value !== 'string') throw virErr('INVALID_ARG', domain, `${arg} in ${fn} must be a string or NULL`);
  return value;
}

/** virCheckNonNegativeArgGoto */
function nonNegative(value: unknown, arg: string, fn: string, domain: ErrorDomainName): number {
  if (typeof value !== 'number' || !Number.isInteger(value)) {
    throw virErr('INVALID_ARG', domain, `${arg} in ${fn} must be an integer`);
  }
  if (value < 0) throw virErr('INVALID_ARG', domain, `${arg} in ${fn} must be zero or greater`);
  return value;
}

/** VIR_EXCLUSIVE_FLAGS_GOTO */
function exclusive(flags: number, a: number, aName: string, b: number, bName: string, domain: ErrorDomainName): void {
  if ((flags & a) !== 0 && (flags & b) !== 0) {
    throw virErr('INVALID_ARG', domain, `Flags '${aName}' and '${bName}' are mutually exclusive`);
  }
}

/** VIR_REQUIRE_FLAG_GOTO: `flag` needs `required`. */
function requires(flags: number, flag: number, flagName: string, required: number, requiredName: string, domain: ErrorDomainName): void {
  if ((flags & flag) !== 0 && (flags & required) === 0) {
    throw virErr('INVALID_ARG', domain, `Flag '${requiredName}' is required by flag '${flagName}'`);
  }
}

export class CheckedDriver implements Driver {
  constructor(
    readonly inner: Driver,
    readonly readOnly: boolean,
  ) {}

  get uri(): string {
    return this.inner.uri;
  }

  close(): Promise<void> {
    return this.inner.close();
  }

  subscribe(listener: EventListener): () => void {
    return this.inner.subscribe(listener);
  }

  // ---- domains ----

  async domainDefineXML(xml: string, flags: number): Promise<DomainRef> {
    const fn = 'virDomainDefineXMLFlags';
    if (this.readOnly) denyReadOnly('DOMAIN');
    nonEmpty(xml, 'xml', fn, 'DOMAIN');
    checkFlags(flags, 0, fn);
    return this.inner.domainDefineXML(xml, flags);
  }

  async domainUndefine(uuid: string, flags: number): Promise<void> {
    const fn = 'virDomainUndefineFlags';
    if (this.readOnly) denyReadOnly('DOMAIN');
    nonEmpty(uuid, 'uuid', fn, 'DOMAIN');
    checkFlags(flags, allBits(UndefineOptionFlags), fn);
    return this.inner.domainUndefine(uuid, flags);
  }

  async domainCreate(uuid: string, flags: number): Promise<void> {
    const fn = 'virDomainCreateWithFlags';
    if (this.readOnly) denyReadOnly('DOMAIN');
    nonEmpty(uuid, 'uuid', fn, 'DOMAIN');
    checkFlags(flags, 0, fn);
    return this.inner.domainCreate(uuid, flags);
  }

  async domainDestroy(uuid: string, flags: number): Promise<void> {
    const fn = 'virDomainDestroyFlags';
    if (this.readOnly) denyReadOnly('DOMAIN');
    nonEmpty(uuid, 'uuid', fn, 'DOMAIN');
    checkFlags(flags, 0, fn);
    return this.inner.domainDestroy(uuid, flags);
  }

  async domainLookupByName(name: string): Promise<DomainRef> {
    nonEmpty(name, 'name', 'virDomainLookupByName', 'DOMAIN');
    return this.inner.domainLookupByName(name);
  }

  async domainLookupByUUID(uuid: string): Promise<DomainRef> {
    const fn = 'virDomainLookupByUUIDString';
    nonEmpty(uuid, 'uuidstr', fn, 'DOMAIN');
    const canonical = canonicalUUID(uuid);
    if (canonical === null) throw virErr('INVALID_ARG', 'DOMAIN', `uuidstr in ${fn} must be a valid UUID, not '${uuid}'`);
    return this.inner.domainLookupByUUID(canonical);
  }

  async listAllDomains(flags: number): Promise<DomainSummary[]> {
    checkFlags(flags, allBits(ListDomainsOptionFlags), 'virConnectListAllDomains');
    return this.inner.listAllDomains(flags);
  }

  async domainGetInfo(uuid: string): Promise<DomainSummary> {
    nonEmpty(uuid, 'uuid', 'virDomainGetInfo', 'DOMAIN');
    return this.inner.domainGetInfo(uuid);
  }

  async domainGetXMLDesc(uuid: string, flags: number): Promise<string> {
    const fn = 'virDomainGetXMLDesc';
    nonEmpty(uuid, 'uuid', fn, 'DOMAIN');
    if (this.readOnly && (flags & DomainXMLFlags.SECURE) !== 0) {
      throw virErr('OPERATION_DENIED', 'DOMAIN', 'virDomainGetXMLDesc with secure flag');
    }
    checkFlags(flags, allBits(DomainXMLOptionFlags), fn);
    return this.inner.domainGetXMLDesc(uuid, flags);
  }

  async qemuMonitorCommand(uuid: string, command: string, flags: number): Promise<string> {
    const fn = 'virDomainQemuMonitorCommand';
    if (this.readOnly) denyReadOnly('DOMAIN');
    nonEmpty(uuid, 'uuid', fn, 'DOMAIN');
    nonEmpty(command, 'cmd', fn, 'DOMAIN');
    checkFlags(flags, allBits(MonitorCommandOptionFlags), fn);
    return this.inner.qemuMonitorCommand(uuid, command, flags);
  }

  async domainFSFreeze(uuid: string, mountpoints: string[], flags: number): Promise<number> {
    const fn = 'virDomainFSFreeze';
    if (this.readOnly) denyReadOnly('DOMAIN');
    nonEmpty(uuid, 'uuid', fn, 'DOMAIN');
    this.checkMountpoints(mountpoints, fn);
    checkFlags(flags, 0, fn);
    return this.inner.domainFSFreeze(uuid, mountpoints, flags);
  }

  async domainFSThaw(uuid: string, mountpoints: string[], flags: number): Promise<number> {
    const fn = 'virDomainFSThaw';
    if (this.readOnly) denyReadOnly('DOMAIN');
    nonEmpty(uuid, 'uuid', fn, 'DOMAIN');
    this.checkMountpoints(mountpoints, fn);
    checkFlags(flags, 0, fn);
    return this.inner.domainFSThaw(uuid, mountpoints, flags);
  }

  private checkMountpoints(mountpoints: unknown, fn: string): void {
    if (!Array.isArray(mountpoints)) throw virErr('INVALID_ARG', 'DOMAIN', `mountpoints in ${fn} must be an array`);
    for (const m of mountpoints) nonEmpty(m, 'mountpoints', fn, 'DOMAIN');
  }

  // ---- checkpoints ----

  async checkpointCreateXML(uuid: string, xml: string, flags: number): Promise<string> {
    const fn = 'virDomainCheckpointCreateXML';
    const d = 'DOMAIN_CHECKPOINT';
    nonEmpty(uuid, 'domain', fn, d);
    nonEmpty(xml, 'xmlDesc', fn, d);
    if (this.readOnly) denyReadOnly(d);
    exclusive(
      flags,
      CheckpointCreateFlags.REDEFINE,
      'VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE',
      CheckpointCreateFlags.QUIESCE,
      'VIR_DOMAIN_CHECKPOINT_CREATE_QUIESCE',
      d,
    );
    requires(
      flags,
      CheckpointCreateFlags.REDEFINE_VALIDATE,
      'VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE_VALIDATE',
      CheckpointCreateFlags.REDEFINE,
      'VIR_DOMAIN_CHECKPOINT_CREATE_REDEFINE',
      d,
    );
    checkFlags(flags, allBits(CheckpointCreateOptionFlags), fn);
    return this.inner.checkpointCreateXML(uuid, xml, flags);
  }

  async checkpointGetXMLDesc(uuid: string, name: string, flags: number): Promise<string> {
    const fn = 'virDomainCheckpointGetXMLDesc';
    const d = 'DOMAIN_CHECKPOINT';
    nonEmpty(uuid, 'domain', fn, d);
    nonEmpty(name, 'checkpoint', fn, d);
    if (this.readOnly && (flags & CheckpointXMLFlags.SECURE) !== 0) {
      throw virErr('OPERATION_DENIED', d, 'virDomainCheckpointGetXMLDesc with secure flag');
    }
    checkFlags(flags, allBits(CheckpointXMLOptionFlags), fn);
    return this.inner.checkpointGetXMLDesc(uuid, name, flags);
  }

  async listAllCheckpoints(uuid: string, flags: number): Promise<string[]> {
    const fn = 'virDomainListAllCheckpoints';
    nonEmpty(uuid, 'domain', fn, 'DOMAIN_CHECKPOINT');
    checkFlags(flags, allBits(ListCheckpointsOptionFlags), fn);
    return this.inner.listAllCheckpoints(uuid, flags);
  }

  async checkpointListAllChildren(uuid: string, name: string, flags: number): Promise<string[]> {
    const fn = 'virDomainCheckpointListAllChildren';
    nonEmpty(uuid, 'domain', fn, 'DOMAIN_CHECKPOINT');
    nonEmpty(name, 'checkpoint', fn, 'DOMAIN_CHECKPOINT');
    checkFlags(flags, allBits(ListChildrenOptionFlags), fn);
    return this.inner.checkpointListAllChildren(uuid, name, flags);
  }

  async checkpointLookupByName(uuid: string, name: string, flags: number): Promise<string> {
    const fn = 'virDomainCheckpointLookupByName';
    nonEmpty(uuid, 'domain', fn, 'DOMAIN_CHECKPOINT');
    nonEmpty(name, 'name', fn, 'DOMAIN_CHECKPOINT');
    checkFlags(flags, 0, fn);
    return this.inner.checkpointLookupByName(uuid, name, flags);
  }

  async checkpointGetParent(uuid: string, name: string, flags: number): Promise<string> {
    const fn = 'virDomainCheckpointGetParent';
    nonEmpty(uuid, 'domain', fn, 'DOMAIN_CHECKPOINT');
    nonEmpty(name, 'checkpoint', fn, 'DOMAIN_CHECKPOINT');
    checkFlags(flags, 0, fn);
    return this.inner.checkpointGetParent(uuid, name, flags);
  }

  async checkpointDelete(uuid: string, name: string, flags: number): Promise<void> {
    const fn = 'virDomainCheckpointDelete';
    const d = 'DOMAIN_CHECKPOINT';
    nonEmpty(uuid, 'domain', fn, d);
    nonEmpty(name, 'checkpoint', fn, d);
    if (this.readOnly) denyReadOnly(d);
    exclusive(
      flags,
      CheckpointDeleteFlags.CHILDREN,
      'VIR_DOMAIN_CHECKPOINT_DELETE_CHILDREN',
      CheckpointDeleteFlags.CHILDREN_ONLY,
      'VIR_DOMAIN_CHECKPOINT_DELETE_CHILDREN_ONLY',
      d,
    );
    checkFlags(flags, allBits(CheckpointDeleteOptionFlags), fn);
    return this.inner.checkpointDelete(uuid, name, flags);
  }

  async listUnknownBitmaps(uuid: string): Promise<UnknownBitmap[]> {
    nonEmpty(uuid, 'domain', 'virtbackListUnknownBitmaps', 'DOMAIN_CHECKPOINT');
    return this.inner.listUnknownBitmaps(uuid);
  }

  // ---- backup jobs ----

  async backupBegin(uuid: string, backupXml: string | null, checkpointXml: string | null, flags: number): Promise<number> {
    const fn = 'virDomainBackupBegin';
    nonEmpty(uuid, 'domain', fn, 'DOMAIN');
    if (this.readOnly) denyReadOnly('DOMAIN');
    const bx = optionalString(backupXml, 'backupXml', fn, 'DOMAIN');
    const cx = optionalString(checkpointXml, 'checkpointXml', fn, 'DOMAIN');
    checkFlags(flags, allBits(BackupBeginOptionFlags), fn);
    if ((flags & BackupBeginFlags.NO_METADATA) !== 0 && cx === null) {
      throw virErr('INVALID_ARG', 'DOMAIN', `checkpointXml in ${fn} must not be NULL`);
    }
    return this.inner.backupBegin(uuid, bx, cx, flags);
  }

  async backupGetXMLDesc(uuid: string, id: number, flags: number): Promise<string> {
    const fn = 'virDomainBackupGetXMLDesc';
    nonEmpty(uuid, 'domain', fn, 'DOMAIN');
    nonNegative(id, 'id', fn, 'DOMAIN');
    checkFlags(flags, 0, fn);
    return this.inner.backupGetXMLDesc(uuid, id, flags);
  }

  async backupEnd(uuid: string, id: number, flags: number): Promise<number> {
    const fn = 'virDomainBackupEnd';
    nonEmpty(uuid, 'domain', fn, 'DOMAIN');
    if (this.readOnly) denyReadOnly('DOMAIN');
    nonNegative(id, 'id', fn, 'DOMAIN');
    checkFlags(flags, allBits(BackupEndOptionFlags), fn);
    return this.inner.backupEnd(uuid, id, flags);
  }

  async listJobIds(uuid: string): Promise<number[]> {
    nonEmpty(uuid, 'domain', 'virDomainListJobIds', 'DOMAIN');
    return this.inner.listJobIds(uuid);
  }

  async getJobStats(uuid: string, flags: number): Promise<JobStats> {
    const fn = 'virDomainGetJobStats';
    nonEmpty(uuid, 'domain', fn, 'DOMAIN');
    checkFlags(flags, allBits(JobStatsOptionFlags), fn);
    return this.inner.getJobStats(uuid, flags);
  }

  async abortJob(uuid: string, flags: number): Promise<void> {
    const fn = 'virDomainAbortJobFlags';
    nonEmpty(uuid, 'domain', fn, 'DOMAIN');
    if (this.readOnly) denyReadOnly('DOMAIN');
    checkFlags(flags, 0, fn);
    return this.inner.abortJob(uuid, flags);
  }
}
