// The original backup design's job API emulated over shipped libvirt, per
// connection: libvirt's backupBegin returns nothing and has no job ids,
// backupEnd or NO_METADATA. Here a job gets a positive id when this
// connection begins it (or first sees it: a job another client began), ids
// increase per connection, and backupEnd is libvirt's end: abortJob of a
// pull, abortJob of a push with ABORT, the outcome of a finished push.
// A push this connection began also gets what virtbackd gives it: the target
// of an incremental disk is created backed by the previous backup (found by
// the injected locator) and handed to libvirt with REUSE_EXTERNAL, so the
// backups form a chain restore can read; when the job completes the injected
// afterPushComplete (manifests) runs once the targets are closed.

import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import type { FinishedPush, JobStats } from '../api/driver.js';
import { ErrorCode, isVirError, virErr } from '../errors.js';
import { BackupBeginFlags, BackupEndFlags, checkFlags, JobStatsFlags, JobType } from '../flags.js';
import { errField, type Logger } from '../log.js';
import { alignBackupDisks, applyBackupDefaults, formatBackupXML, parseBackupXML, type BackupDef } from '../xml/backup.js';
import { domainDiskRefs } from '../xml/domain.js';
import { attr, childElements, childText, element, firstChild, formatXml, parseXml } from '../xml/tree.js';
import type { LibvirtClient } from './client.js';
import { Program } from './packet.js';
import { domain, nonnullString, type Procedure, type TypedParam, type WireDomain } from './procedures.js';
import { backupBeginFlagsToWire, paramsToJobStats, WireBackupBeginFlags } from './semantics.js';
import { struct, uhyper, uint } from './xdr.js';

const run = promisify(execFile);

/** Finds the push backup an incremental continues (repository/push-manifests.ts findPushBackup). */
export type LocatePreviousBackup = (q: {
  uuid: string; disk: string; checkpoint: string; dirs: readonly string[];
}) => Promise<{ path: string; format: string } | null>;

/** Work after a push this connection began completed, its targets closed (manifests). */
export type AfterPushComplete = (info: FinishedPush, liveSources: ReadonlySet<string>) => Promise<void>;

export interface BackupJobHooks {
  afterPushComplete?: AfterPushComplete;
  locatePreviousBackup?: LocatePreviousBackup;
  log?: Logger;
}

/** What the jobs need of the driver: the connection, domain references, and the job-completed registration. */
export interface JobHost {
  readonly client: LibvirtClient;
  wireDomain(uuid: string): Promise<WireDomain>;
  /** registers for JOB_COMPLETED on the connection (before a job begins, so a fast one is not missed) */
  watchJobs(): Promise<void>;
}

/** VIR_DOMAIN_GET_BLOCK_INFO (194): a disk's virtual size, as libvirt knows it (not in the server's table). */
const domainGetBlockInfo: Procedure<{ dom: WireDomain; path: string; flags: number }, { allocation: bigint; capacity: bigint; physical: bigint }> = {
  proc: 194,
  api: 'virDomainGetBlockInfo',
  args: struct({ dom: domain, path: nonnullString, flags: uint }),
  ret: struct({ allocation: uhyper, capacity: uhyper, physical: uhyper }),
  access: 'read',
};

interface JobRecord {
  id: number;
  uuid: string;
  name: string;
  mode: 'push' | 'pull';
  /** libvirt's <domainbackup> of the job, kept for backupGetXMLDesc after libvirt forgot the job */
  xml: string | null;
  /** the push this connection began: what afterPushComplete learns; null for others */
  push: FinishedPush | null;
  /** the domain's disks, source path -> target (block-job events name paths) */
  liveSources: Map<string, string>;
  /** targets we created (REUSE_EXTERNAL): removed again when the job fails */
  created: string[];
  abortRequested: boolean;
  end: 'completed' | 'failed' | 'cancelled' | null;
  errmsg: string | null;
  settled: Promise<void>;
  settle: () => void;
  afterPush: Promise<void>;
}

const RUNNING: readonly number[] = [JobType.BOUNDED, JobType.UNBOUNDED];

function noSupport(what: string): Error {
  return virErr('NO_SUPPORT', 'DOMAIN', `this function is not supported by the connection driver: ${what}`);
}

/** The checkpoint XML with a <name> (libvirt would name it after the time: we need to know it), and the name. */
function namedCheckpoint(xml: string): { xml: string; name: string; excluded: Set<string> } {
  const root = parseXml(xml);
  let name = childText(root, 'name');
  if (name === null) {
    name = String(Math.floor(Date.now() / 1000));
    root.children.unshift(element('name', [], [name]));
    xml = formatXml(root);
  }
  const disks = firstChild(root, 'disks');
  const excluded = new Set(
    (disks === null ? [] : childElements(disks, 'disk')).filter((d) => attr(d, 'checkpoint') === 'no').map((d) => attr(d, 'name') ?? ''),
  );
  return { xml, name, excluded };
}

/** Waits until no process holds the image's write lock (libvirt reports job-completed before it closes targets). */
async function waitUnlocked(file: string, timeoutMs = 60_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    try {
      await run('qemu-img', ['info', '--output=json', file]);
      return;
    } catch (e) {
      if (Date.now() > end) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

export class BackupJobs {
  private nextId = 1;
  private readonly current = new Map<string, JobRecord>();
  /** per domain: the id of the job whose completed stats libvirt keeps */
  private readonly lastCompleted = new Map<string, number>();
  /** afterPushComplete runs one at a time; the next begin waits (it may look for the manifests) */
  private afterPushQueue: Promise<void> = Promise.resolve();

  constructor(
    private readonly host: JobHost,
    private readonly hooks: BackupJobHooks,
  ) {}

  private get log(): Logger | undefined {
    return this.hooks.log;
  }

  private record(uuid: string, name: string, mode: 'push' | 'pull'): JobRecord {
    let settle!: () => void;
    const settled = new Promise<void>((r) => (settle = r));
    const rec: JobRecord = {
      id: this.nextId++, uuid, name, mode, xml: null, push: null, liveSources: new Map(), created: [],
      abortRequested: false, end: null, errmsg: null, settled, settle, afterPush: Promise.resolve(),
    };
    return rec;
  }

  async backupBegin(uuid: string, backupXml: string | null, checkpointXml: string | null, flags: number): Promise<number> {
    if (flags & BackupBeginFlags.NO_METADATA) throw noSupport('virDomainBackupBegin with NO_METADATA: libvirt always keeps checkpoint metadata');
    if (flags & BackupBeginFlags.PRESERVE_SHUTDOWN_DOMAIN) throw noSupport('virDomainBackupBegin with PRESERVE_SHUTDOWN_DOMAIN (libvirt 9.0 has no such flag)');
    const { client } = this.host;
    const dom = await this.host.watchJobs().then(() => this.host.wireDomain(uuid));
    await this.afterPushQueue;
    const cp = checkpointXml === null ? null : namedCheckpoint(checkpointXml);
    const def = backupXml === null ? null : parseBackupXML(backupXml);
    const mode = def?.mode ?? 'push';
    let wireXml = backupXml;
    let wireFlags = backupBeginFlagsToWire(flags);
    const prev = this.current.get(uuid);
    // registered before the call: the job-completed event of a fast job may come before the reply
    const rec = this.record(uuid, dom.name, mode);
    this.current.set(uuid, rec);
    try {
      if (mode === 'push') {
        const prepared = await this.preparePush(dom, def, cp, (flags & BackupBeginFlags.REUSE_EXTERNAL) !== 0, rec);
        wireXml = prepared.xml;
        if (prepared.reuse) wireFlags |= WireBackupBeginFlags.REUSE_EXTERNAL;
      }
      const frozen = flags & BackupBeginFlags.QUIESCE ? await this.freeze(dom) : false;
      try {
        if (rec.push) rec.push.time = Date.now();
        await client.call('domainBackupBegin', { dom, backup_xml: wireXml ?? '<domainbackup/>', checkpoint_xml: cp?.xml ?? null, flags: wireFlags });
      } finally {
        if (frozen) await client.call('domainFSThaw', { dom, mountpoints: [], flags: 0 }).catch((e) => this.log?.warn(errField(e), 'fsThaw after backupBegin failed'));
      }
    } catch (e) {
      this.current.delete(uuid);
      if (prev) this.current.set(uuid, prev);
      await this.removeCreated(rec);
      throw e;
    }
    rec.xml = await client.call('domainBackupGetXMLDesc', { dom, flags: 0 }).then((r) => r.xml, () => wireXml);
    return rec.id;
  }

  /**
   * libvirt's alignment done here (the same xml/backup.ts), so the targets are
   * known; an incremental qcow2 target is created backed by the previous
   * backup, and then every target (libvirt's REUSE_EXTERNAL is all or none).
   */
  private async preparePush(
    dom: WireDomain, given: BackupDef | null, cp: { name: string; excluded: Set<string> } | null, userReuse: boolean, rec: JobRecord,
  ): Promise<{ xml: string; reuse: boolean }> {
    const { client } = this.host;
    const domainXml = (await client.call('domainGetXMLDesc', { dom, flags: 0 })).xml;
    const disks = domainDiskRefs(parseXml(domainXml));
    for (const d of disks) if (d.source !== null) rec.liveSources.set(d.source, d.target);
    const def = given ?? { mode: 'push', incremental: null, server: null, disks: [], id: null, tlsAlias: null, tlsSecretAlias: null };
    alignBackupDisks(def, { disks }, cp ? cp.name : String(Math.floor(Date.now() / 1000)));
    applyBackupDefaults(def);
    const chain = !userReuse && this.hooks.locatePreviousBackup !== undefined &&
      def.disks.some((d) => d.backup && d.backupmode === 'incremental' && d.format === 'qcow2');
    const push: FinishedPush = { uuid: rec.uuid, name: dom.name, jobId: rec.id, time: Date.now(), disks: [] };
    const plans: { path: string; format: string; size: bigint; backing: { path: string; format: string } | null }[] = [];
    for (const d of def.disks) {
      if (!d.backup || d.path === null) continue;
      const source = disks.find((x) => x.target === d.name)?.source ?? null;
      const capacity = await this.capacity(dom, d.name, source);
      const incremental = d.backupmode === 'incremental' ? d.incremental : null;
      let backing: { path: string; format: string } | null = null;
      if (chain) {
        if (existsSync(d.path)) throw virErr('INVALID_ARG', 'QEMU', `store '${d.path}' for backup of '${d.name}' exists`);
        if (incremental !== null && d.format === 'qcow2') backing = await this.chainParent(rec.uuid, d.name, incremental, d.path, source);
        plans.push({ path: d.path, format: d.format ?? 'qcow2', size: capacity, backing });
      }
      push.disks.push({
        target: d.name, path: d.path, format: d.format ?? 'qcow2',
        checkpoint: cp && !cp.excluded.has(d.name) ? cp.name : null,
        incremental, backingFile: backing?.path ?? null, virtualSize: Number(capacity),
      });
    }
    rec.push = push;
    for (const p of plans) {
      const backingArgs = p.backing ? ['-b', p.backing.path, '-F', p.backing.format] : [];
      await run('qemu-img', ['create', '-q', '-f', p.format, ...backingArgs, p.path, String(p.size)]).catch((e: Error) => {
        throw virErr('OPERATION_FAILED', 'STORAGE', `cannot create backup target '${p.path}': ${e.message}`, e);
      });
      rec.created.push(p.path);
    }
    // the aligned XML: libvirt generates the same names, but only ours are known before the job begins
    return { xml: formatBackupXML(def), reuse: chain };
  }

  /**
   * A disk's virtual size: libvirt's (GET_BLOCK_INFO), else, from a daemon
   * without that procedure (virtbackd's libvirt socket), the image's own.
   */
  private async capacity(dom: WireDomain, target: string, source: string | null): Promise<bigint> {
    try {
      return (await this.host.client.callRow(Program.REMOTE, domainGetBlockInfo, { dom, path: target, flags: 0 })).capacity;
    } catch (e) {
      const code = (e as { code?: number }).code;
      if ((code !== ErrorCode.RPC && code !== ErrorCode.NO_SUPPORT) || source === null) throw e;
      const { stdout } = await run('qemu-img', ['info', '-U', '--output=json', source]);
      return BigInt((JSON.parse(stdout) as { 'virtual-size': number })['virtual-size']);
    }
  }

  /** The backup an incremental continues; none is refused as the QEMU driver refuses it. */
  private async chainParent(uuid: string, disk: string, checkpoint: string, target: string, source: string | null): Promise<{ path: string; format: string }> {
    const dirs = [target, source].filter((p): p is string => p !== null).map((p) => path.dirname(p));
    const found = await this.hooks.locatePreviousBackup!({ uuid, disk, checkpoint, dirs });
    if (found) return found;
    throw virErr('OPERATION_INVALID', 'QEMU',
      `incremental backup of disk '${disk}' since checkpoint '${checkpoint}' needs the push backup taken with ` +
      `'${checkpoint}' (e.g. '${source ?? disk}.${checkpoint}'), which was not found: take a full backup, ` +
      'or give your own target with REUSE_EXTERNAL');
  }

  private async freeze(dom: WireDomain): Promise<boolean> {
    await this.host.client.call('domainFSFreeze', { dom, mountpoints: [], flags: 0 });
    return true;
  }

  private async removeCreated(rec: JobRecord): Promise<void> {
    for (const f of rec.created.splice(0)) await rm(f, { force: true }).catch(() => {});
  }

  /** A job-completed event: the record's end, its after-push work; returns the id the event carries. */
  onJobCompleted(uuid: string, name: string, params: readonly TypedParam[]): { jobId: number; stats: JobStats } {
    let rec = this.current.get(uuid);
    // a job another client began, seen only now: it gets an id for the event, nothing more
    if (!rec || rec.end !== null) rec = this.record(uuid, name, 'push');
    const raw = paramsToJobStats(JobType.COMPLETED, params);
    const end = raw.success === true ? 'completed' : rec.abortRequested ? 'cancelled' : 'failed';
    const stats: JobStats = { ...raw, type: end === 'completed' ? JobType.COMPLETED : end === 'cancelled' ? JobType.CANCELLED : JobType.FAILED, id: rec.id };
    this.finish(rec, end, raw.errmsg ?? null);
    return { jobId: rec.id, stats };
  }

  private finish(rec: JobRecord, end: NonNullable<JobRecord['end']>, errmsg: string | null): void {
    if (rec.end !== null) return;
    rec.end = end;
    rec.errmsg = errmsg;
    this.lastCompleted.set(rec.uuid, rec.id);
    rec.settle();
    if (rec.mode !== 'push' || rec.push === null) return;
    if (end !== 'completed') {
      void this.removeCreated(rec);
      return;
    }
    const hook = this.hooks.afterPushComplete;
    if (!hook) return;
    const info = { ...rec.push, jobId: rec.id };
    rec.afterPush = this.afterPushQueue = this.afterPushQueue
      .then(async () => {
        for (const d of info.disks) await waitUnlocked(d.path);
        await hook(info, new Set(rec.liveSources.keys()));
      })
      .catch((e) => this.log?.warn({ domain: { name: rec.name, uuid: rec.uuid }, jobId: rec.id, ...errField(e) }, 'afterPushComplete failed'));
  }

  /** The domain's job: ours, else one libvirt reports running (another client's), which gets an id now. */
  private async find(uuid: string, id: number): Promise<JobRecord> {
    let rec = this.current.get(uuid);
    if (!rec) {
      const dom = await this.host.wireDomain(uuid);
      // an inactive domain has no job (libvirt answers "domain is not running")
      const live = await this.host.client.call('domainGetJobStats', { dom, flags: 0 }).catch((e: unknown) => {
        if ((e as { code?: number }).code === ErrorCode.OPERATION_INVALID) return { type: JobType.NONE, params: [] };
        throw e;
      });
      if (RUNNING.includes(live.type)) {
        await this.host.watchJobs();
        const xml = (await this.host.client.call('domainBackupGetXMLDesc', { dom, flags: 0 })).xml;
        rec = this.record(uuid, dom.name, attr(parseXml(xml), 'mode') === 'pull' ? 'pull' : 'push');
        rec.xml = xml;
        this.current.set(uuid, rec);
      }
    }
    if (!rec) throw virErr('NO_DOMAIN_BACKUP', 'DOMAIN', 'no domain backup job present');
    if (id !== 0 && id !== rec.id) {
      throw virErr('NO_DOMAIN_BACKUP', 'DOMAIN', `no domain backup job with id ${id} present (the domain's backup job is ${rec.id})`);
    }
    return rec;
  }

  async listJobIds(uuid: string): Promise<number[]> {
    try {
      return [(await this.find(uuid, 0)).id];
    } catch (e) {
      if ((e as { code?: number }).code === 104) return [];
      throw e;
    }
  }

  async backupGetXMLDesc(uuid: string, id: number, flags: number): Promise<string> {
    const rec = await this.find(uuid, id);
    if (rec.end === null) {
      const dom = await this.host.wireDomain(uuid);
      return (await this.host.client.call('domainBackupGetXMLDesc', { dom, flags })).xml;
    }
    if (rec.xml === null) throw virErr('NO_DOMAIN_BACKUP', 'DOMAIN', 'no domain backup job present');
    return rec.xml;
  }

  async backupEnd(uuid: string, id: number, flags: number): Promise<number> {
    checkFlags(flags, BackupEndFlags.ABORT, 'virDomainBackupEnd');
    const rec = await this.find(uuid, id);
    if (rec.end === null) {
      if (rec.mode === 'push' && !(flags & BackupEndFlags.ABORT)) {
        throw virErr('OPERATION_INVALID', 'QEMU', `backup job ${rec.id} is still copying: wait for job-completed or end it with ABORT`);
      }
      rec.abortRequested = rec.mode === 'push';
      const dom = await this.host.wireDomain(uuid);
      try {
        await this.host.client.call('domainAbortJob', { dom });
      } catch (e) {
        // "no job is active": the job ended on its own before the abort reached it; its outcome decides
        if (!isVirError(e, 'OPERATION_INVALID')) throw e;
      }
      await this.awaitEnd(rec);
    }
    if (this.current.get(uuid) === rec) this.current.delete(uuid);
    await rec.afterPush;
    if (rec.end === 'completed') return 1;
    if (rec.end === 'cancelled') return 0;
    throw virErr('OPERATION_FAILED', 'QEMU', `backup job ${rec.id} failed: ${rec.errmsg ?? 'unknown error'}`);
  }

  /** The job-completed event, or (should it not come) libvirt's completed-job stats. */
  private async awaitEnd(rec: JobRecord): Promise<void> {
    const timeout = new Promise<void>((r) => setTimeout(r, 30_000).unref());
    await Promise.race([rec.settled, timeout]);
    if (rec.end !== null) return;
    const dom = await this.host.wireDomain(rec.uuid);
    const done = await this.host.client.call('domainGetJobStats', { dom, flags: JobStatsFlags.COMPLETED | JobStatsFlags.KEEP_COMPLETED });
    const stats = paramsToJobStats(done.type, done.params);
    this.finish(rec, stats.success === true ? 'completed' : rec.abortRequested ? 'cancelled' : 'failed', stats.errmsg ?? null);
  }

  async getJobStats(uuid: string, flags: number): Promise<JobStats> {
    const dom = await this.host.wireDomain(uuid);
    const r = await this.host.client.call('domainGetJobStats', { dom, flags });
    const stats = paramsToJobStats(r.type, r.params);
    const rec = this.current.get(uuid);
    if (flags & JobStatsFlags.COMPLETED && rec && rec.end === null && stats.type !== JobType.NONE) {
      // Our job's event may still be on its way while a poller (virtback backup-begin
      // --wait) already sees it over: when libvirt runs no job any more, these stats
      // are ours, and the job ends here so its manifests are written before close.
      const active = await this.host.client.call('domainGetJobStats', { dom, flags: 0 });
      if (paramsToJobStats(active.type, active.params).type === JobType.NONE) {
        this.finish(rec, stats.success === true ? 'completed' : rec.abortRequested ? 'cancelled' : 'failed', stats.errmsg ?? null);
      }
    }
    // A job whose event has come may still run in libvirt for a moment (it
    // finishes after emitting): until backupEnd forgets it, running stats are its.
    const id = flags & JobStatsFlags.COMPLETED ? this.lastCompleted.get(uuid) : rec ? rec.id : undefined;
    if (id !== undefined && stats.type !== JobType.NONE) stats.id = id;
    return stats;
  }

  async abortJob(uuid: string, flags: number): Promise<void> {
    const rec = this.current.get(uuid);
    if (rec && rec.end === null && rec.mode === 'push') rec.abortRequested = true;
    const dom = await this.host.wireDomain(uuid);
    if (flags === 0) await this.host.client.call('domainAbortJob', { dom });
    else await this.host.client.call('domainAbortJobFlags', { dom, flags });
  }

  /** The domain's running job and the disk target of `path` in it: what a block-job event carries (0 and the path when unknown). */
  blockJobOf(uuid: string, path: string): { jobId: number; disk: string } {
    const rec = this.current.get(uuid);
    if (!rec || rec.end !== null) return { jobId: 0, disk: path };
    return { jobId: rec.id, disk: rec.liveSources.get(path) ?? path };
  }

  /** Every after-push work started: close() waits for it, so the manifests are on disk when the connection is gone. */
  drain(): Promise<void> {
    return this.afterPushQueue;
  }
}
