// Backup jobs on QEMU (libvirt's qemu_backup.c, in the original job-id shape
// plus libvirt's later getJobStats/abortJob): backupBegin plans with
// backup-plan.ts, executes step by step recording what each step created
// (undone in reverse on failure), and returns once the QEMU jobs run.
// Completion arrives as JOB_STATUS_CHANGE events and is reconciled with
// query-jobs; targets are closed (blockdev-del flushes) before job-completed
// is published, so a listener may open them at once.

import { existsSync } from 'node:fs';
import { lstat, open, rm, unlink } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import type { DriverEvent, JobStats } from '../api/driver.js';
import { toVirError, virErr } from '../errors.js';
import { BackupBeginFlags, BackupEndFlags, BlockJobStatus, BlockJobType, checkFlags, JobStatsFlags, JobType, ShutoffReason } from '../flags.js';
import { alignBackupDisks, formatBackupXML, parseBackupXML, type BackupDef } from '../xml/backup.js';
import {
  BackupJob,
  BackupJobTable,
  BackupMetaStore,
  decideEnd,
  firstError,
  jobStats,
  previousBackup,
  type BackupJobDisk,
  type BackupJobRecord,
  type BackupResource,
  type PushCompleteInfo,
} from './backup-job.js';
import { planBackup, type BackupTlsInput, type PlanDiskInput } from './backup-plan.js';
import type { BackupPerf } from './qmp/commands.js';
import type { DomainObject } from './domain-object.js';
import type { BackupOps, CheckpointAccess, DomainHost } from './host.js';
import { QmpCommandError, qmpErrorToVirError, type QmpClient } from './qmp/client.js';
import type { BlockDeviceInfo, BlockdevCreateOptions, JobInfo } from './qmp/commands.js';

export type { PushCompleteInfo } from './backup-job.js';

export interface QemuBackupsOptions {
  /** called after a push completed and its targets are closed; runs in the background (one at a time), backupEnd waits for it */
  afterPushComplete?: (info: PushCompleteInfo) => Promise<void>;
  /** initial rate limit of every push disk job, bytes/s (default none; tests slow jobs down with it) */
  speed?: number;
  /** blockdev-backup x-perf options (default BACKUP_PERF; null = QEMU's defaults) */
  perf?: BackupPerf | null;
  /**
   * qemu.conf backup_tls_x509_cert_dir: ca-cert.pem, server-cert.pem and
   * server-key.pem for pull exports with <server tls='yes'> (unset: refused)
   */
  tlsX509CertDir?: string | null;
  /** qemu.conf backup_tls_x509_verify: clients must present a certificate signed by the CA (default true) */
  tlsX509Verify?: boolean;
}

const EXTRA_KEY = 'backupJob';
const JOB_WAIT_MS = 60_000;

function warn(msg: string, e?: unknown): void {
  process.emitWarning(`virtback backup: ${msg}${e === undefined ? '' : `: ${e instanceof Error ? e.message : String(e)}`}`);
}

function noBackup(): Error {
  return virErr('NO_DOMAIN_BACKUP', 'DOMAIN', 'no domain backup job present');
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** A TCP port that is free right now on `host` (bind 0, read, release). */
export function freePort(host: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, host, () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

function stoppedWhy(reason: number): string {
  switch (reason) {
    case ShutoffReason.CRASHED: return 'crashed';
    case ShutoffReason.DESTROYED: return 'was destroyed';
    case ShutoffReason.SHUTDOWN: return 'shut down';
    default: return 'stopped';
  }
}

export class QemuBackups implements BackupOps {
  private readonly watchers = new Map<string, { qmp: QmpClient; off: () => void }>();
  /** domains whose job is being recovered inside QemuDriver.open() */
  private readonly recovering = new Set<string>();
  private readonly recoveredList: DriverEvent[] = [];
  /** manifest writing after pushes: one at a time, in completion order */
  private afterPushQueue: Promise<void> = Promise.resolve();
  /** per finished push job (uuid/id): its manifests are written once this settles */
  private readonly afterPushDone = new Map<string, Promise<void>>();
  /** domains this instance saw running (started or reconnected); a stop of any other one was found by open() */
  private readonly seenLive = new Set<string>();

  constructor(
    private readonly driver: DomainHost,
    private readonly checkpoints: CheckpointAccess,
    private readonly opts: QemuBackupsOptions = {},
  ) {
    driver.addHooks({
      onLoaded: async (dom) => {
        const table = new BackupJobTable(new BackupMetaStore(this.metaDir(dom.uuid)));
        await table.store.load();
        dom.backupJobs = table;
        // manifests of pushes that finished before a daemon stop got in their way
        for (const info of table.store.meta.pendingAfterPush) this.queueAfterPush(table.store, info);
      },
      onStarted: (dom) => {
        this.seenLive.add(dom.uuid);
      },
      onReconnected: (dom) => {
        this.seenLive.add(dom.uuid);
        return this.recover(dom);
      },
      onRemoved: (dom) => rm(this.metaDir(dom.uuid), { recursive: true, force: true }),
      onStopped: async (dom, reason) => {
        const foundAtOpen = !this.seenLive.delete(dom.uuid);
        if (foundAtOpen) this.recovering.add(dom.uuid);
        try {
          await this.domainStopped(dom, reason);
        } finally {
          if (foundAtOpen) this.recovering.delete(dom.uuid);
        }
      },
    });
  }

  /**
   * Events published while QemuDriver.open() recovered jobs (a push that
   * finished while no driver ran): nobody may have listened yet, so a daemon
   * replays these to its subscribers. Drains the list.
   */
  recoveredEvents(): DriverEvent[] {
    return this.recoveredList.splice(0);
  }

  private metaDir(uuid: string): string {
    return path.join(this.driver.paths.dirs.stateDir, 'backups', uuid);
  }

  private table(dom: DomainObject): BackupJobTable {
    if (dom.backupJobs instanceof BackupJobTable) return dom.backupJobs;
    const t = new BackupJobTable(new BackupMetaStore(this.metaDir(dom.uuid)));
    dom.backupJobs = t;
    return t;
  }

  private publish(dom: DomainObject, ev: DriverEvent): void {
    if (this.recovering.has(dom.uuid)) this.recoveredList.push(ev);
    this.driver.emit(ev);
  }

  /** Persist the job record in the domain's status file (atomically, by the driver). */
  private async persist(dom: DomainObject, rec: BackupJobRecord | null): Promise<void> {
    if (!dom.run) return;
    if (rec === null) delete dom.run.status.extra[EXTRA_KEY];
    else dom.run.status.extra[EXTRA_KEY] = structuredClone(rec);
    await this.driver.saveStatus(dom);
  }

  /** Follow JOB_STATUS_CHANGE of our jobs on the domain's current monitor. */
  private watch(dom: DomainObject, qmp: QmpClient): void {
    const w = this.watchers.get(dom.uuid);
    if (w?.qmp === qmp) return;
    w?.off();
    const off = qmp.on('JOB_STATUS_CHANGE', (ev) => {
      const { id, status } = ev.data;
      if (!id.startsWith('backup-') || (status !== 'concluded' && status !== 'null')) return;
      this.schedule(dom.uuid);
    });
    this.watchers.set(dom.uuid, { qmp, off });
  }

  private unwatch(uuid: string): void {
    this.watchers.get(uuid)?.off();
    this.watchers.delete(uuid);
  }

  /** Reconcile the job with QEMU under the domain lock (from events and timers). */
  private schedule(uuid: string): void {
    this.driver
      .withDomainLock(uuid, (dom) => this.reconcile(dom))
      .catch((e) => warn(`processing backup job events of domain ${uuid} failed`, e));
  }

  // ------------------------------------------------------------------ begin

  async backupBegin(uuid: string, backupXml: string | null, checkpointXml: string | null, flags: number): Promise<number> {
    checkFlags(flags, BackupBeginFlags.NO_METADATA | BackupBeginFlags.QUIESCE | BackupBeginFlags.REUSE_EXTERNAL, 'virDomainBackupBegin');
    if (flags & BackupBeginFlags.NO_METADATA && checkpointXml === null) {
      throw virErr('INVALID_ARG', 'DOMAIN', 'checkpointXml in virDomainBackupBegin must not be NULL with NO_METADATA');
    }
    return this.driver.withDomainLock(uuid, (dom) => this.begin(dom, backupXml, checkpointXml, flags));
  }

  private async begin(dom: DomainObject, backupXml: string | null, checkpointXml: string | null, flags: number): Promise<number> {
    if (!dom.active || dom.liveDef === null) {
      throw virErr('OPERATION_UNSUPPORTED', 'QEMU', 'cannot perform disk backup for inactive domain');
    }
    const table = this.table(dom);
    if (table.hasActiveJob()) throw virErr('OPERATION_INVALID', 'QEMU', 'another backup job is already running');
    const reuse = (flags & BackupBeginFlags.REUSE_EXTERNAL) !== 0;
    const def: BackupDef = backupXml === null
      ? { mode: 'push', incremental: null, server: null, disks: [], id: null, tlsAlias: null, tlsSecretAlias: null }
      : parseBackupXML(backupXml);
    const prep = checkpointXml === null
      ? null
      : this.checkpoints.prepare(dom, checkpointXml, { noMetadata: (flags & BackupBeginFlags.NO_METADATA) !== 0 });
    const suffix = prep ? prep.def.name : String(Math.floor(Date.now() / 1000));
    const live = dom.liveDef;
    alignBackupDisks(def, live, suffix);
    const pull = def.mode === 'pull';
    const tlsDir = this.opts.tlsX509CertDir ?? null;
    if (def.server?.tls === true && tlsDir === null) {
      throw virErr('OPERATION_INVALID', 'QEMU', 'backup TLS directory not configured');
    }
    // QOM id of the credentials; it names the job once the id is known
    const tlsFor = (job: number): BackupTlsInput | null => pull && def.server?.tls === true && tlsDir !== null
      ? { id: `virtback-backup-tls-${job}`, dir: path.resolve(tlsDir), verifyPeer: this.opts.tlsX509Verify ?? true }
      : null;
    const selected = def.disks.filter((d) => d.backup);
    if (selected.length === 0) throw virErr('CONFIG_UNSUPPORTED', 'QEMU', 'no disks selected for backup');

    const qmp = await this.driver.monitor(dom.uuid);
    let nodes: BlockDeviceInfo[];
    try {
      nodes = await qmp.execute('query-named-block-nodes', { flat: true });
    } catch (e) {
      throw qmpErrorToVirError(e, 'cannot query block nodes');
    }
    // Everything that can be refused is checked before anything is created.
    const inputs: Omit<PlanDiskInput, 'nodeIndex'>[] = [];
    for (const bd of selected) {
      const dn = dom.disks.find((d) => d.target === bd.name);
      const ld = live.disks.find((d) => d.target === bd.name);
      if (!dn?.formatNode || !ld || ld.source === null) {
        throw virErr('CONFIG_UNSUPPORTED', 'QEMU', `disk '${bd.name}' has no media`);
      }
      bd.format ??= 'qcow2';
      if (pull) bd.exportname ??= bd.name;
      const incremental = bd.backupmode === 'incremental' ? bd.incremental : null;
      if (pull && incremental !== null) bd.exportbitmap ??= `backup-${bd.name}`;
      const base = incremental !== null ? await this.checkpoints.ensureUsable(dom, incremental, bd.name) : null;
      const node = nodes.find((n) => n['node-name'] === dn.formatNode);
      if (!node) throw virErr('INTERNAL_ERROR', 'QEMU', `block node '${dn.formatNode}' of disk '${bd.name}' not found`);
      if (!reuse && bd.path !== null && existsSync(bd.path)) {
        throw virErr('INVALID_ARG', 'QEMU', `store '${bd.path}' for backup of '${bd.name}' exists`);
      }
      const prev = !pull && incremental !== null && bd.format === 'qcow2'
        ? previousBackup(table.store.meta.finished, bd.name, incremental, existsSync)
        : null;
      inputs.push({
        target: bd.name,
        diskNode: dn.formatNode,
        diskPath: ld.source,
        diskFormat: ld.format,
        virtualSize: node.image['virtual-size'],
        base,
        previous: prev ? { path: prev.path, format: prev.format } : null,
      });
    }
    let autoPort = false;
    let port: number | null = null;
    if (pull && def.server?.transport === 'tcp' && (def.server.port ?? 0) === 0) {
      autoPort = true;
      port = await freePort(def.server.name ?? 'localhost');
    }
    // Dry run: configuration errors surface before node indexes and ids are spent.
    planBackup({ def, disks: inputs.map((i) => ({ ...i, nodeIndex: 0 })), checkpointActions: [], reuseExternal: reuse, port, speed: this.opts.speed, perf: this.opts.perf, tls: tlsFor(0) });

    const withIdx: PlanDiskInput[] = [];
    for (const i of inputs) withIdx.push({ ...i, nodeIndex: await this.driver.allocateNodeIndex(dom.uuid) });
    const id = await table.store.nextJobId();
    const tls = tlsFor(id);
    let plan = planBackup({ def, disks: withIdx, checkpointActions: prep?.actions ?? [], reuseExternal: reuse, port, speed: this.opts.speed, perf: this.opts.perf, tls });

    def.id = id;
    def.tlsAlias = tls?.id ?? null;
    if (pull && def.server?.transport === 'tcp' && port !== null) def.server.port = port;
    const rec: BackupJobRecord = {
      id,
      mode: def.mode,
      phase: 'starting',
      startedAt: Date.now(),
      endedAt: null,
      xml: formatBackupXML(def),
      checkpoint: prep ? prep.def.name : null,
      disks: plan.disks.map((p): BackupJobDisk => ({
        target: p.target,
        source: live.disks.find((d) => d.target === p.target)?.source ?? '',
        diskNode: p.diskNode,
        jobId: p.jobId,
        path: p.path,
        format: p.format,
        formatNode: p.formatNode,
        storageNode: p.storageNode,
        incremental: p.incremental,
        backingFile: p.backingFile,
        virtualSize: p.virtualSize,
        createdFile: p.createFile,
        state: 'running',
        current: 0,
        total: 0,
        error: null,
      })),
      created: [],
      stopping: null,
      end: null,
      errmsg: null,
    };
    const previous = table.current;
    const job = new BackupJob(rec);
    table.current = job;
    const record = async (r: BackupResource): Promise<void> => {
      rec.created.push(r);
      await this.persist(dom, rec);
    };
    const forget = async (pred: (r: BackupResource) => boolean): Promise<void> => {
      rec.created = rec.created.filter((r) => !pred(r));
      await this.persist(dom, rec);
    };
    this.watch(dom, qmp);
    try {
      await this.persist(dom, rec);
      for (const d of plan.disks) {
        if (d.createFile) {
          await this.createFile(d.path, d.target, d.format === 'raw' ? d.virtualSize : 0);
          await record({ kind: 'file', path: d.path });
        }
        await qmp.execute('blockdev-add', d.addStorage);
        await record({ kind: 'node', name: d.storageNode });
        if (d.create) {
          await record({ kind: 'job', id: d.create.jobId });
          await this.runCreateJob(qmp, d.create.jobId, d.create.options);
          await forget((r) => r.kind === 'job' && r.id === d.create!.jobId);
        }
        await qmp.execute('blockdev-add', d.addFormat);
        await record({ kind: 'node', name: d.formatNode });
      }
      if (plan.tlsCreds) {
        // recorded first: a driver dying in between must not leak it (object-del tolerates "not found")
        await record({ kind: 'object', id: plan.tlsCreds.id });
        await qmp.execute('object-add', plan.tlsCreds);
      }
      if (plan.nbdServer) {
        for (let attempt = 0; ; attempt++) {
          try {
            await qmp.execute('nbd-server-start', plan.nbdServer!);
            break;
          } catch (e) {
            const busy = e instanceof QmpCommandError && /in use/i.test(e.desc);
            if (!autoPort || !busy || attempt >= 5) throw e;
            port = await freePort(def.server?.name ?? 'localhost');
            def.server!.port = port;
            plan = planBackup({ def, disks: withIdx, checkpointActions: prep?.actions ?? [], reuseExternal: reuse, port, speed: this.opts.speed, perf: this.opts.perf, tls });
            rec.xml = formatBackupXML(def);
          }
        }
        const addr = plan.nbdServer!.addr;
        const sock = addr.type === 'unix' ? addr.data.path : null;
        await record({ kind: 'nbd-server', socket: sock });
      }

      const transaction = async (): Promise<void> => {
        await qmp.execute('transaction', { actions: plan.transaction });
      };
      if (flags & BackupBeginFlags.QUIESCE) await this.checkpoints.quiesced(dom, transaction);
      else await transaction();
      // What the transaction created: checkpoint bitmaps, temporary bitmaps on disk nodes, the jobs.
      for (const a of prep?.actions ?? []) {
        if (a.type === 'block-dirty-bitmap-add') rec.created.push({ kind: 'bitmap', node: a.data.node, name: a.data.name });
      }
      for (const d of plan.disks) {
        if (d.tempBitmap && d.tempBitmap.node === d.diskNode) rec.created.push({ kind: 'bitmap', ...d.tempBitmap });
        rec.created.push({ kind: 'job', id: d.jobId });
      }
      await this.persist(dom, rec);
      if (prep) {
        await prep.commit();
        // from here on the checkpoint stays, whatever happens to the backup (as libvirt)
        const cpBitmaps = new Set(prep.actions.map((a) => `${(a.data as { node: string }).node}/${prep.def.name}`));
        await forget((r) => r.kind === 'bitmap' && cpBitmaps.has(`${r.node}/${r.name}`));
      }
      for (const d of plan.disks) {
        if (!d.export) continue;
        await qmp.execute('block-export-add', d.export);
        await record({ kind: 'export', id: d.export.id });
      }
      rec.phase = 'running';
      await this.persist(dom, rec);
    } catch (e) {
      const err = qmpErrorToVirError(e, 'cannot start backup');
      await this.undo(dom, qmp, rec, () => false).catch((u) => warn('undoing a failed backup start', u));
      table.current = previous;
      await this.persist(dom, previous?.record.phase === 'done' ? previous.record : null).catch(() => {});
      throw err;
    }
    // Jobs of small disks may have concluded already: look once the lock is free.
    this.schedule(dom.uuid);
    return id;
  }

  private async createFile(file: string, disk: string, size: number): Promise<void> {
    let fh;
    try {
      fh = await open(file, 'wx', 0o600);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'EEXIST') {
        throw virErr('INVALID_ARG', 'QEMU', `store '${file}' for backup of '${disk}' exists`);
      }
      throw virErr('SYSTEM_ERROR', 'QEMU', `failed to create image file '${file}': ${(e as Error).message}`, e);
    }
    try {
      if (size > 0) await fh.truncate(size);
    } finally {
      await fh.close();
    }
  }

  /** blockdev-create is a job: wait for it to conclude, check its error, dismiss it. */
  private async runCreateJob(qmp: QmpClient, jobId: string, options: BlockdevCreateOptions): Promise<void> {
    const w = qmp.waitForEvent(
      (ev) => ev.event === 'JOB_STATUS_CHANGE' && (ev.data as { id?: string }).id === jobId && (ev.data as { status?: string }).status === 'concluded',
      { timeoutMs: JOB_WAIT_MS },
    );
    try {
      await qmp.execute('blockdev-create', { 'job-id': jobId, options });
    } catch (e) {
      w.cancel();
      throw e;
    }
    await w.promise;
    const info = (await qmp.execute('query-jobs')).find((j) => j.id === jobId);
    await qmp.execute('job-dismiss', { id: jobId });
    if (info?.error) throw virErr('OPERATION_FAILED', 'QEMU', `cannot format backup image: ${info.error}`);
  }

  // ------------------------------------------------------------------ undo

  /**
   * Undo what the record says was created, in reverse order, best effort (every
   * step is tried; the first failure is rethrown at the end). `keep` spares
   * resources (a finished push keeps its target files). qmp null: QEMU is gone,
   * only files are left to remove.
   */
  private async undo(dom: DomainObject, qmp: QmpClient | null, rec: BackupJobRecord, keep: (r: BackupResource) => boolean): Promise<void> {
    let first: unknown = null;
    for (const r of [...rec.created].reverse()) {
      try {
        if (!keep(r)) await this.undoOne(qmp, r);
      } catch (e) {
        first ??= e;
        warn(`cannot undo ${r.kind} of backup job ${rec.id}`, e);
      }
      rec.created = rec.created.filter((x) => x !== r);
    }
    await this.persist(dom, rec).catch(() => {});
    if (first !== null) throw first;
  }

  private async undoOne(qmp: QmpClient | null, r: BackupResource): Promise<void> {
    if (r.kind === 'file') {
      await unlink(r.path).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== 'ENOENT') throw e;
      });
      return;
    }
    if (r.kind === 'nbd-server' && r.socket !== null) {
      if (qmp && !qmp.isClosed) await qmp.execute('nbd-server-stop').catch(() => {});
      await removeSocket(r.socket);
      return;
    }
    if (!qmp || qmp.isClosed) return; // QEMU is gone and took these with it
    switch (r.kind) {
      case 'nbd-server':
        await qmp.execute('nbd-server-stop');
        return;
      case 'object':
        try {
          await qmp.execute('object-del', { id: r.id });
        } catch (e) {
          // already gone is what we wanted
          if (!(e instanceof QmpCommandError && /not found/i.test(e.desc))) throw e;
        }
        return;
      case 'export': {
        const exists = (await qmp.execute('query-block-exports')).some((x) => x.id === r.id);
        if (!exists) return;
        const w = qmp.waitForEvent(
          (ev) => ev.event === 'BLOCK_EXPORT_DELETED' && (ev.data as { id?: string }).id === r.id, { timeoutMs: JOB_WAIT_MS });
        try {
          await qmp.execute('block-export-del', { id: r.id, mode: 'hard' });
        } catch (e) {
          w.cancel();
          throw e;
        }
        await w.promise;
        return;
      }
      case 'job':
        await this.cancelAndDismiss(qmp, r.id);
        return;
      case 'bitmap':
        await qmp.execute('block-dirty-bitmap-remove', { node: r.node, name: r.name });
        return;
      case 'node':
        await qmp.execute('blockdev-del', { 'node-name': r.name });
        return;
    }
  }

  private async cancelAndDismiss(qmp: QmpClient, id: string): Promise<void> {
    const info = (await qmp.execute('query-jobs')).find((j) => j.id === id);
    if (!info) return;
    if (info.status !== 'concluded') {
      const w = qmp.waitForEvent(
        (ev) => ev.event === 'JOB_STATUS_CHANGE' && (ev.data as { id?: string }).id === id && (ev.data as { status?: string }).status === 'concluded',
        { timeoutMs: JOB_WAIT_MS },
      );
      try {
        if (id.startsWith('create-')) await qmp.execute('job-cancel', { id });
        else await qmp.execute('block-job-cancel', { device: id, force: true });
      } catch (e) {
        // it may have concluded in between
        w.cancel();
        const again = (await qmp.execute('query-jobs')).find((j) => j.id === id);
        if (again?.status !== 'concluded') throw e;
      }
      await w.promise.catch(() => {});
    }
    await qmp.execute('job-dismiss', { id });
  }

  // ------------------------------------------------------------------ completion

  /** Bring the job in step with QEMU's jobs; terminate it once no disk runs. Lock held. */
  private async reconcile(dom: DomainObject): Promise<void> {
    const job = this.table(dom).current;
    if (!job || job.record.phase !== 'running' || !dom.run) return;
    const rec = job.record;
    const qmp = await this.driver.monitor(dom.uuid);
    this.watch(dom, qmp);
    const jobs = await qmp.execute('query-jobs');
    let changed = false;
    for (const d of rec.disks) {
      if (d.state !== 'running' && d.state !== 'cancelling') continue;
      const q = jobs.find((j) => j.id === d.jobId);
      if (!q) {
        d.state = d.state === 'cancelling' ? 'cancelled' : 'failed';
        if (d.state === 'failed') d.error ??= `QEMU job '${d.jobId}' vanished`;
        changed = true;
      } else if (q.status === 'concluded') {
        d.current = q['current-progress'];
        d.total = q['total-progress'];
        if (d.state === 'cancelling') d.state = 'cancelled';
        else if (q.error !== undefined) {
          d.state = /cancel/i.test(q.error) ? 'cancelled' : 'failed';
          d.error = q.error;
        } else d.state = 'complete';
        await qmp.execute('job-dismiss', { id: d.jobId });
        rec.created = rec.created.filter((r) => !(r.kind === 'job' && r.id === d.jobId));
        changed = true;
      }
    }
    // one disk failed or was cancelled: the others are cancelled too (libvirt)
    if (rec.disks.some((d) => d.state === 'failed' || d.state === 'cancelled')) {
      for (const d of rec.disks) {
        if (d.state !== 'running') continue;
        await qmp.execute('block-job-cancel', { device: d.jobId, force: true }).catch(() => {});
        d.state = 'cancelling';
        changed = true;
      }
    }
    if (changed) await this.persist(dom, rec);
    if (rec.disks.every((d) => d.state !== 'running' && d.state !== 'cancelling')) {
      await this.terminate(dom, job, qmp, null);
    }
  }

  /**
   * End the job: close and remove what it created (targets of a completed push
   * are kept), record finished targets, then publish job-completed and the
   * per-disk block-job events. Lock held.
   */
  private async terminate(dom: DomainObject, job: BackupJob, qmp: QmpClient | null, forced: { errmsg: string } | null): Promise<void> {
    const rec = job.record;
    if (rec.phase === 'done') return;
    rec.end = forced ? 'failed' : decideEnd(rec);
    rec.errmsg = forced ? forced.errmsg : firstError(rec);
    const keepTargets = rec.mode === 'push' && rec.end === 'completed';
    try {
      await this.undo(dom, qmp, rec, (r) => keepTargets && r.kind === 'file');
    } catch (e) {
      // a target that cannot be closed is not a backup we can vouch for
      if (keepTargets) {
        rec.end = 'failed';
        rec.errmsg = `cannot close backup targets: ${toVirError(e).message}`;
        for (const d of rec.disks) if (d.createdFile) await unlink(d.path).catch(() => {});
      }
    }
    const store = this.table(dom).store;
    if (rec.mode === 'push' && rec.end === 'completed') {
      store.addFinished(rec.disks.map((d) => ({
        disk: d.target, path: d.path, format: d.format, checkpoint: rec.checkpoint, incremental: d.incremental, jobId: rec.id, time: rec.startedAt,
      })));
      if (this.opts.afterPushComplete) {
        // Manifests read the finished targets back (seconds for large disks): they run
        // in one background queue, so job-completed is not delayed and memory stays
        // bounded; backupEnd of the job waits for them (see afterPushDone).
        const info: PushCompleteInfo = {
          uuid: dom.uuid,
          name: dom.name,
          jobId: rec.id,
          time: rec.startedAt,
          disks: rec.disks.map((d) => ({
            target: d.target, path: d.path, format: d.format, checkpoint: rec.checkpoint, incremental: d.incremental,
            backingFile: d.backingFile, virtualSize: d.virtualSize,
          })),
        };
        // recorded in meta.json (saved below, before the event) so a daemon stop cannot lose it
        store.meta.pendingAfterPush.push(info);
        this.queueAfterPush(store, info);
      }
    }
    rec.phase = 'done';
    rec.endedAt = Date.now();
    const stats = jobStats(rec, rec.endedAt);
    job.finalStats = stats;
    store.meta.lastCompleted = stats;
    await store.save().catch((e) => warn('cannot save backup metadata', e));
    await this.persist(dom, rec).catch((e) => warn('cannot save the backup job record', e));
    const domain = { name: dom.name, uuid: dom.uuid };
    this.publish(dom, { type: 'job-completed', domain, jobId: rec.id, stats });
    for (const d of rec.disks) {
      this.publish(dom, {
        type: 'block-job',
        domain,
        jobId: rec.id,
        disk: d.target,
        path: d.source,
        blockJobType: BlockJobType.BACKUP,
        status: d.state === 'complete' ? BlockJobStatus.COMPLETED : d.state === 'cancelled' ? BlockJobStatus.CANCELED : BlockJobStatus.FAILED,
      });
    }
    job.markFinished();
  }

  /** Run afterPushComplete for a finished push in the background queue, then drop it from the pending list. */
  private queueAfterPush(store: BackupMetaStore, info: PushCompleteInfo): void {
    const hook = this.opts.afterPushComplete;
    if (!hook) return;
    const key = `${info.uuid}/${info.jobId}`;
    const done = this.afterPushQueue
      .then(() => hook(info))
      .catch((e) => warn(`afterPushComplete of backup job ${info.jobId} failed`, e))
      .then(async () => {
        store.meta.pendingAfterPush = store.meta.pendingAfterPush.filter((p) => !(p.uuid === info.uuid && p.jobId === info.jobId));
        await store.save().catch((e) => warn('cannot save backup metadata', e));
      });
    this.afterPushQueue = done;
    this.afterPushDone.set(key, done);
    void done.then(() => {
      if (this.afterPushDone.get(key) === done) this.afterPushDone.delete(key);
    });
  }

  /** Ask the running job to stop (push abort / pull end) and wait until it ended. */
  private async stop(uuid: string, job: BackupJob, how: 'abort' | 'end'): Promise<void> {
    await this.driver.withDomainLock(uuid, async (dom) => {
      const rec = job.record;
      if (rec.phase !== 'running') return;
      rec.stopping = how;
      const qmp = await this.driver.monitor(uuid);
      for (const d of rec.disks) {
        if (d.state !== 'running') continue;
        try {
          await qmp.execute('block-job-cancel', { device: d.jobId, force: true });
        } catch {
          // concluded meanwhile: reconcile picks it up
        }
        d.state = 'cancelling';
      }
      await this.persist(dom, rec);
      await this.reconcile(dom);
    });
    // Completion comes from events; poll as a safety net (a lost event must not hang the caller).
    while (job.active) {
      await Promise.race([job.finished, sleep(1000)]);
      if (job.active) await this.driver.withDomainLock(uuid, (dom) => this.reconcile(dom)).catch(() => {});
    }
  }

  // ------------------------------------------------------------------ lifecycle

  private async recover(dom: DomainObject): Promise<void> {
    const raw = dom.run?.status.extra[EXTRA_KEY] as BackupJobRecord | undefined;
    if (!raw || typeof raw.id !== 'number') return;
    const table = this.table(dom);
    const job = new BackupJob(raw);
    table.current = job;
    if (raw.phase === 'done') return;
    this.recovering.add(dom.uuid);
    try {
      const qmp = await this.driver.monitor(dom.uuid);
      this.watch(dom, qmp);
      if (raw.phase === 'starting') {
        // the driver stopped in the middle of backupBegin: roll back
        await this.undo(dom, qmp, raw, () => false).catch((e) => warn('rolling back an interrupted backup start', e));
        table.current = null;
        await this.persist(dom, null);
        return;
      }
      await this.reconcile(dom);
    } catch (e) {
      warn(`cannot recover backup job ${raw.id} of domain '${dom.name}'`, e);
    } finally {
      this.recovering.delete(dom.uuid);
    }
  }

  private async domainStopped(dom: DomainObject, reason: number): Promise<void> {
    this.unwatch(dom.uuid);
    const table = this.table(dom);
    if (!table.current) {
      const raw = dom.run?.status.extra[EXTRA_KEY] as BackupJobRecord | undefined;
      if (raw && typeof raw.id === 'number') table.current = new BackupJob(raw);
    }
    const job = table.current;
    if (!job || !job.active) return;
    for (const d of job.record.disks) {
      if (d.state === 'running' || d.state === 'cancelling') d.state = d.state === 'cancelling' ? 'cancelled' : 'failed';
    }
    const errmsg = `domain '${dom.name}' ${stoppedWhy(reason)} during the backup`;
    await this.terminate(dom, job, null, { errmsg });
  }

  // ------------------------------------------------------------------ queries and end

  private find(dom: DomainObject, id: number): BackupJob {
    const job = this.table(dom).current;
    if (!job || (id !== 0 && id !== job.id)) throw noBackup();
    return job;
  }

  async backupGetXMLDesc(uuid: string, id: number, flags: number): Promise<string> {
    checkFlags(flags, 0, 'virDomainBackupGetXMLDesc');
    return this.find(this.driver.getDomain(uuid), id).record.xml;
  }

  async backupEnd(uuid: string, id: number, flags: number): Promise<number> {
    checkFlags(flags, BackupEndFlags.ABORT, 'virDomainBackupEnd');
    const dom = this.driver.getDomain(uuid);
    const job = this.find(dom, id);
    if (job.active) {
      if (job.record.mode === 'push' && !(flags & BackupEndFlags.ABORT)) {
        throw virErr('OPERATION_INVALID', 'QEMU', `backup job ${job.id} is still copying: wait for job-completed or end it with ABORT`);
      }
      await this.stop(uuid, job, job.record.mode === 'push' ? 'abort' : 'end');
    }
    await this.forget(uuid, job);
    const rec = job.record;
    await this.afterPushDone.get(`${uuid}/${rec.id}`);
    if (rec.end === 'completed') return 1;
    if (rec.end === 'cancelled') return 0;
    throw virErr('OPERATION_FAILED', 'QEMU', `backup job ${rec.id} failed: ${rec.errmsg ?? 'unknown error'}`);
  }

  /** Drop an ended job from the table and the status file. */
  private async forget(uuid: string, job: BackupJob): Promise<void> {
    await this.driver.withDomainLock(uuid, async (dom) => {
      const table = this.table(dom);
      if (table.current !== job) return;
      table.current = null;
      const saved = dom.run?.status.extra[EXTRA_KEY] as BackupJobRecord | undefined;
      if (saved?.id === job.id) await this.persist(dom, null);
    });
  }

  async listJobIds(uuid: string): Promise<number[]> {
    const job = this.table(this.driver.getDomain(uuid)).current;
    return job ? [job.id] : [];
  }

  async getJobStats(uuid: string, flags: number): Promise<JobStats> {
    checkFlags(flags, JobStatsFlags.COMPLETED | JobStatsFlags.KEEP_COMPLETED, 'virDomainGetJobStats');
    const dom = this.driver.getDomain(uuid);
    const table = this.table(dom);
    if (flags & JobStatsFlags.COMPLETED) {
      const stats = table.store.meta.lastCompleted;
      if (!stats) return { type: JobType.NONE };
      if (!(flags & JobStatsFlags.KEEP_COMPLETED)) {
        table.store.meta.lastCompleted = null;
        await table.store.save();
      }
      return { ...stats };
    }
    const job = table.current;
    if (!job || !job.active) return { type: JobType.NONE };
    let live: JobInfo[] = [];
    try {
      live = await (await this.driver.monitor(uuid)).execute('query-jobs');
    } catch {
      // no live numbers: the recorded ones are still right
    }
    return jobStats(job.record, Date.now(), live);
  }

  async abortJob(uuid: string, flags: number): Promise<void> {
    checkFlags(flags, 0, 'virDomainAbortJobFlags');
    const dom = this.driver.getDomain(uuid);
    const job = this.table(dom).current;
    if (!job || !job.active) throw virErr('OPERATION_INVALID', 'QEMU', 'no job is active on the domain');
    await this.stop(uuid, job, job.record.mode === 'push' ? 'abort' : 'end');
    await this.forget(uuid, job);
  }
}

async function removeSocket(p: string): Promise<void> {
  try {
    if ((await lstat(p)).isSocket()) await unlink(p);
  } catch {
    // gone already
  }
}
