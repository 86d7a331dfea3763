// A scripted QMP peer: a fake QEMU monitor on a unix socket (framed with the
// project's QMP codec) that models the block state a backup touches — nodes,
// dirty bitmaps, jobs, the NBD server, exports, QOM objects — well enough to
// answer what backupBegin, its undo and recovery send, with QEMU's error
// wording for what is missing or in the way. Failures can be injected at any
// mutating command, and leftovers() names everything that differs from the
// state the peer started with. Replies and events are the codec's message
// types; commands arrive one per line (the codec's encodeCommand). FakeHost is a DomainHost around it (one domain)
// whose status file can be "killed" at any save.

import { existsSync } from 'node:fs';
import net from 'node:net';
import type { DriverEvent } from '../../src/api/driver.js';
import { virErr } from '../../src/errors.js';
import type { LogFields, Logger } from '../../src/log.js';
import type { DiskNodes } from '../../src/qemu/command-line.js';
import { DomainObject } from '../../src/qemu/domain-object.js';
import { AsyncMutex } from '../../src/qemu/mutex.js';
import { QemuRuntime } from '../../src/qemu/runtime.js';
import type { CheckpointAccess, DomainHooks, DomainHost, PreparedCheckpoint } from '../../src/qemu/host.js';
import { QmpClient } from '../../src/qemu/qmp/client.js';
import type { TransactionAction } from '../../src/qemu/qmp/commands.js';
import type { QmpEvent, QmpGreeting, QmpErrorReply, QmpReturn } from '../../src/qemu/qmp/codec.js';
import { StatePaths, type DomainStatus } from '../../src/qemu/state.js';
import type { DomainDef } from '../../src/xml/domain.js';

type Args = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

interface FakeBitmap { granularity: number; persistent: boolean; disabled: boolean }
interface FakeNode { driver: string; file: string | null; backing: string | null; filename: string; size: number; bitmaps: Map<string, FakeBitmap> }
interface FakeJob { type: string; status: string; error?: string; device: string | null; target: string | null }

/** QEMU's GenericError with its wording. */
class QmpFail extends Error {}

/** Commands that only read state; everything else counts for failure injection. */
const QUERIES = new Set(['qmp_capabilities', 'query-named-block-nodes', 'query-jobs', 'query-block-exports', 'query-status', 'query-block']);

export class ScriptedQemu {
  readonly nodes = new Map<string, FakeNode>();
  readonly jobs = new Map<string, FakeJob>();
  readonly exports = new Map<string, { node: string; name: string }>();
  readonly objects = new Set<string>();
  /** guest devices (QOM path) -> the node they write to (qom-set drive moves them) */
  readonly devices = new Map<string, string>();
  /** the vCPUs run (stop/cont) */
  running = true;
  nbdServer: { addr: Args; listener: net.Server | null } | null = null;
  /** every command received, in order */
  readonly received: { cmd: string; args: Args }[] = [];
  /** fail the n-th mutating command (1-based) with a GenericError; 0 = never */
  failAt = 0;
  /** further mutating commands (1-based) that fail */
  readonly alsoFail = new Set<number>();
  private mutating = 0;
  private readonly clients = new Set<net.Socket>();
  private baseline = '';

  private constructor(readonly socketPath: string, private readonly server: net.Server) {}

  /** Listen on `socketPath`; `disks` are the domain's format nodes (with their bitmaps) over file nodes. */
  static async start(socketPath: string, disks: { node: string; file: string; size: number; bitmaps?: string[]; device?: string }[]): Promise<ScriptedQemu> {
    const server = net.createServer();
    const q = new ScriptedQemu(socketPath, server);
    for (const d of disks) {
      q.nodes.set(`${d.node}-storage`, { driver: 'file', file: null, backing: null, filename: d.file, size: d.size, bitmaps: new Map() });
      const bitmaps = new Map((d.bitmaps ?? []).map((b) => [b, { granularity: 65536, persistent: true, disabled: false }]));
      q.nodes.set(d.node, { driver: 'qcow2', file: `${d.node}-storage`, backing: null, filename: d.file, size: d.size, bitmaps });
      if (d.device) q.devices.set(d.device, d.node);
    }
    q.baseline = JSON.stringify(q.describe());
    server.on('connection', (s) => q.serve(s));
    await new Promise<void>((resolve) => server.listen(socketPath, resolve));
    return q;
  }

  /** How many mutating commands were received (the failure points of a run). */
  get mutatingCount(): number {
    return this.mutating;
  }

  resetCounters(): void {
    this.mutating = 0;
    this.received.length = 0;
  }

  /** The block state as sorted strings. */
  describe(): string[] {
    const out: string[] = [];
    for (const [name, n] of this.nodes) {
      out.push(`node ${name}`);
      for (const b of n.bitmaps.keys()) out.push(`bitmap ${name}/${b}`);
    }
    for (const id of this.jobs.keys()) out.push(`job ${id}`);
    for (const id of this.exports.keys()) out.push(`export ${id}`);
    for (const id of this.objects) out.push(`object ${id}`);
    for (const [dev, node] of this.devices) out.push(`device ${dev} on ${node}`);
    if (this.nbdServer) out.push('nbd-server');
    if (!this.running) out.push('paused');
    return out.sort();
  }

  /** What exists now and did not at start, and what is gone (prefixed '-'). */
  leftovers(): string[] {
    const base = new Set(JSON.parse(this.baseline) as string[]);
    const now = this.describe();
    return [...now.filter((x) => !base.has(x)), ...[...base].filter((x) => !now.includes(x)).map((x) => `-${x}`)];
  }

  /** Take the current state as the baseline (e.g. after a checkpoint was kept on purpose). */
  rebase(): void {
    this.baseline = JSON.stringify(this.describe());
  }

  /** Every running backup job finishes successfully. */
  concludeJobs(): void {
    for (const [id, j] of this.jobs) {
      if (j.status !== 'running') continue;
      for (const st of ['waiting', 'pending', 'concluded']) this.setStatus(id, j, st);
    }
  }

  /** Drop the driver's connections (its process died); QEMU's state stays. */
  dropClients(): void {
    for (const c of this.clients) c.destroy();
    this.clients.clear();
  }

  async close(): Promise<void> {
    this.dropClients();
    this.nbdServer?.listener?.close();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  // ------------------------------------------------------------ wire

  private serve(s: net.Socket): void {
    this.clients.add(s);
    let buf = '';
    s.on('error', () => {});
    s.on('close', () => this.clients.delete(s));
    this.write(s, { QMP: { version: { qemu: { major: 9, minor: 2, micro: 0 }, package: 'scripted' }, capabilities: [] } });
    s.on('data', (chunk) => {
      // the codec decodes what QEMU sends; commands are one compact JSON line each (encodeCommand)
      buf += chunk.toString('utf8');
      const lines = buf.split('\r\n');
      buf = lines.pop() ?? '';
      for (const line of lines) {
        if (line.trim() === '') continue;
        const { execute, arguments: args, id } = JSON.parse(line) as { execute: string; arguments?: Args; id?: unknown };
        this.received.push({ cmd: execute, args: args ?? {} });
        try {
          if (!QUERIES.has(execute)) {
            const n = ++this.mutating;
            if (n === this.failAt || this.alsoFail.has(n)) throw new QmpFail(`injected failure of '${execute}'`);
          }
          this.write(s, { return: this.command(execute, args ?? {}), id });
        } catch (e) {
          const cls = e instanceof QmpFail ? 'GenericError' : 'CommandNotFound';
          this.write(s, { error: { class: cls, desc: (e as Error).message }, id });
        }
      }
    });
  }

  private write(s: net.Socket, msg: QmpGreeting | QmpReturn | QmpErrorReply | QmpEvent): void {
    if (!s.destroyed) s.write(JSON.stringify(msg) + '\r\n');
  }

  private emit(event: string, data: object): void {
    const now = Date.now();
    const ev: QmpEvent = { event, data, timestamp: { seconds: Math.floor(now / 1000), microseconds: (now % 1000) * 1000 } };
    // after the reply to the command that caused it, as QEMU's monitor does for job transitions
    setImmediate(() => {
      for (const c of this.clients) this.write(c, ev);
    });
  }

  private setStatus(id: string, j: FakeJob, status: string): void {
    j.status = status;
    this.emit('JOB_STATUS_CHANGE', { id, status });
  }

  // ------------------------------------------------------------ commands

  private command(cmd: string, a: Args): unknown {
    switch (cmd) {
      case 'qmp_capabilities': return {};
      case 'query-status': return { running: this.running, status: this.running ? 'running' : 'paused' };
      case 'query-block': return [...this.devices].map(([qdev, node]) => ({ device: '', qdev, type: 'unknown', removable: false, locked: false, inserted: { 'node-name': node } }));
      case 'stop': return this.setRunning(false);
      case 'cont': return this.setRunning(true);
      case 'qom-set': return this.qomSet(a);
      case 'query-named-block-nodes': return this.queryNodes();
      case 'query-jobs':
        return [...this.jobs].map(([id, j]) => ({
          id, type: j.type, status: j.status, 'current-progress': j.status === 'concluded' ? 100 : 0, 'total-progress': 100,
          ...(j.error !== undefined ? { error: j.error } : {}),
        }));
      case 'query-block-exports':
        return [...this.exports].map(([id, e]) => ({ id, type: 'nbd', 'node-name': e.node, 'shutting-down': false }));
      case 'blockdev-add': return this.blockdevAdd(a);
      case 'blockdev-del': return this.blockdevDel(a['node-name']);
      case 'blockdev-create': return this.blockdevCreate(a);
      case 'job-dismiss': return this.jobDismiss(a.id);
      case 'job-cancel': return this.jobCancel(a.id);
      case 'block-job-cancel': return this.jobCancel(a.device);
      case 'transaction': return this.transaction(a.actions as TransactionAction[]);
      case 'block-dirty-bitmap-remove': return this.bitmapRemove(a.node, a.name);
      case 'nbd-server-start': return this.nbdStart(a);
      case 'nbd-server-stop': return this.nbdStop();
      case 'object-add': return this.objectAdd(a.id);
      case 'object-del': return this.objectDel(a.id);
      case 'block-export-add': return this.exportAdd(a);
      case 'block-export-del': return this.exportDel(a.id);
      default: throw new Error(`The command ${cmd} has not been found`);
    }
  }

  private queryNodes(): unknown[] {
    return [...this.nodes].map(([name, n]) => ({
      'node-name': name, file: n.filename, ro: false, drv: n.driver,
      image: { filename: n.filename, format: n.driver, 'virtual-size': n.size },
      'dirty-bitmaps': [...n.bitmaps].map(([b, v]) => ({
        name: b, granularity: v.granularity, recording: !v.disabled, persistent: v.persistent, busy: false, count: 0,
      })),
    }));
  }

  private node(name: string): FakeNode {
    const n = this.nodes.get(name);
    if (!n) throw new QmpFail(`Cannot find device='' nor node-name='${name}'`);
    return n;
  }

  private blockdevAdd(a: Args): object {
    const name = a['node-name'] as string;
    if (this.nodes.has(name)) throw new QmpFail(`Duplicate nodes with node-name='${name}'`);
    if (a.driver === 'file') {
      if (!existsSync(a.filename)) throw new QmpFail(`Could not open '${a.filename}': No such file or directory`);
      this.nodes.set(name, { driver: 'file', file: null, backing: null, filename: a.filename, size: 0, bitmaps: new Map() });
      return {};
    }
    const file = this.node(a.file);
    // a copy-before-write filter's target is held as a backing would be (it cannot go first)
    const backing = (a.backing ?? a.target ?? null) as string | null;
    if (backing) this.node(backing);
    this.nodes.set(name, { driver: a.driver, file: a.file, backing, filename: file.filename, size: file.size, bitmaps: new Map() });
    return {};
  }

  private setRunning(on: boolean): object {
    if (this.running !== on) this.emit(on ? 'RESUME' : 'STOP', {});
    this.running = on;
    return {};
  }

  /** qom-set of a device's 'drive': the device writes to another node from now on. */
  private qomSet(a: Args): object {
    if (!this.devices.has(a.path)) throw new QmpFail(`Device '${a.path}' not found`);
    if (a.property !== 'drive') throw new QmpFail(`Property '${a.property}' not modelled`);
    this.node(a.value);
    this.devices.set(a.path, a.value);
    return {};
  }

  /** Who holds `name`: a parent node, a job, an export. */
  private users(name: string): string[] {
    const out: string[] = [];
    for (const [n, v] of this.nodes) if (v.file === name || v.backing === name) out.push(`node ${n}`);
    for (const [id, j] of this.jobs) if (j.status !== 'concluded' && (j.device === name || j.target === name)) out.push(`job ${id}`);
    for (const [id, e] of this.exports) if (e.node === name) out.push(`export ${id}`);
    for (const [dev, node] of this.devices) if (node === name) out.push(`device ${dev}`);
    return out;
  }

  private blockdevDel(name: string): object {
    if (!this.nodes.has(name)) throw new QmpFail(`Failed to find node with node-name='${name}'`);
    const users = this.users(name);
    if (users.length > 0) throw new QmpFail(`Node '${name}' is busy: used by ${users.join(', ')}`);
    this.nodes.delete(name);
    return {};
  }

  private blockdevCreate(a: Args): object {
    const id = a['job-id'] as string;
    if (this.jobs.has(id)) throw new QmpFail(`Job ID '${id}' already in use`);
    const file = this.node(a.options.file);
    file.size = a.options.size;
    const j: FakeJob = { type: 'create', status: 'created', device: null, target: null };
    this.jobs.set(id, j);
    this.emit('JOB_STATUS_CHANGE', { id, status: 'created' });
    for (const st of ['running', 'waiting', 'pending', 'concluded']) this.setStatus(id, j, st);
    return {};
  }

  private jobDismiss(id: string): object {
    const j = this.jobs.get(id);
    if (!j) throw new QmpFail(`Job not found`);
    if (j.status !== 'concluded') throw new QmpFail(`Job '${id}' in state '${j.status}' cannot accept command verb 'dismiss'`);
    this.jobs.delete(id);
    this.emit('JOB_STATUS_CHANGE', { id, status: 'null' });
    return {};
  }

  private jobCancel(id: string): object {
    const j = this.jobs.get(id);
    if (!j) throw new QmpFail(`Block job '${id}' not found`);
    if (j.status === 'concluded') throw new QmpFail(`Job '${id}' in state 'concluded' cannot accept command verb 'cancel'`);
    j.error = 'Operation cancelled';
    this.setStatus(id, j, 'aborting');
    this.setStatus(id, j, 'concluded');
    return {};
  }

  /** All or nothing, as QEMU's transaction: check every action against the state it would see, then apply. */
  private transaction(actions: TransactionAction[]): object {
    const added = new Set<string>();
    const jobs = new Set<string>();
    for (const act of actions) {
      const d = act.data as Args;
      if (act.type === 'block-dirty-bitmap-add') {
        const key = `${d.node}/${d.name}`;
        if (this.node(d.node).bitmaps.has(d.name) || added.has(key)) throw new QmpFail(`Bitmap already exists: ${d.name}`);
        added.add(key);
      } else if (act.type === 'block-dirty-bitmap-merge') {
        if (!this.node(d.node).bitmaps.has(d.target) && !added.has(`${d.node}/${d.target}`)) throw new QmpFail(`Dirty bitmap '${d.target}' not found`);
        for (const b of d.bitmaps as { node: string; name: string }[]) {
          if (!this.node(b.node).bitmaps.has(b.name)) throw new QmpFail(`Dirty bitmap '${b.name}' not found`);
        }
      } else if (act.type === 'blockdev-backup') {
        const id = d['job-id'] as string;
        if (this.jobs.has(id) || jobs.has(id)) throw new QmpFail(`Job ID '${id}' already in use`);
        this.node(d.device);
        this.node(d.target);
        jobs.add(id);
      } else {
        throw new QmpFail(`transaction action '${act.type}' not modelled`);
      }
    }
    for (const act of actions) {
      const d = act.data as Args;
      if (act.type === 'block-dirty-bitmap-add') {
        this.node(d.node).bitmaps.set(d.name, { granularity: d.granularity ?? 65536, persistent: d.persistent ?? false, disabled: d.disabled ?? false });
      } else if (act.type === 'blockdev-backup') {
        const j: FakeJob = { type: 'backup', status: 'created', device: d.device, target: d.target };
        this.jobs.set(d['job-id'], j);
        this.emit('JOB_STATUS_CHANGE', { id: d['job-id'], status: 'created' });
        this.setStatus(d['job-id'], j, 'running');
      }
    }
    return {};
  }

  private bitmapRemove(node: string, name: string): object {
    if (!this.node(node).bitmaps.delete(name)) throw new QmpFail(`Dirty bitmap '${name}' not found`);
    return {};
  }

  private nbdStart(a: Args): object {
    if (this.nbdServer) throw new QmpFail('NBD server already running');
    let listener: net.Server | null = null;
    if (a.addr.type === 'unix') {
      listener = net.createServer((c) => c.destroy());
      listener.listen(a.addr.data.path);
    }
    this.nbdServer = { addr: a.addr, listener };
    return {};
  }

  private nbdStop(): object {
    if (!this.nbdServer) throw new QmpFail('NBD server not running');
    this.exports.clear();
    this.nbdServer.listener?.close();
    this.nbdServer = null;
    return {};
  }

  private objectAdd(id: string): object {
    if (this.objects.has(id)) throw new QmpFail(`attempt to add duplicate property '${id}' to object (type 'container')`);
    this.objects.add(id);
    return {};
  }

  private objectDel(id: string): object {
    if (!this.objects.delete(id)) throw new QmpFail(`object '${id}' not found`);
    return {};
  }

  private exportAdd(a: Args): object {
    if (!this.nbdServer) throw new QmpFail('NBD server not running');
    if (this.exports.has(a.id)) throw new QmpFail(`Block export id '${a.id}' is already in use`);
    if ([...this.exports.values()].some((e) => e.name === a.name)) throw new QmpFail(`NBD server already has export named '${a.name}'`);
    const node = this.node(a['node-name']);
    for (const b of (a.bitmaps ?? []) as string[]) if (!node.bitmaps.has(b)) throw new QmpFail(`Bitmap '${b}' is not found`);
    this.exports.set(a.id, { node: a['node-name'], name: a.name });
    return {};
  }

  private exportDel(id: string): object {
    if (!this.exports.delete(id)) throw new QmpFail(`Export '${id}' is not found`);
    this.emit('BLOCK_EXPORT_DELETED', { id });
    return {};
  }
}

// ---------------------------------------------------------------- the host

/** A Logger that keeps every line. */
export class CaptureLog implements Logger {
  readonly lines: { level: string; msg: string; fields: LogFields }[] = [];
  private line(level: string): Logger['info'] {
    return ((a: LogFields | string, b?: string) => {
      if (typeof a === 'string') this.lines.push({ level, msg: a, fields: {} });
      else this.lines.push({ level, msg: b ?? '', fields: a });
    }) as Logger['info'];
  }
  error = this.line('error');
  warn = this.line('warn');
  info = this.line('info');
  debug = this.line('debug');
  child(): Logger {
    return this;
  }
}

export interface FakeDisk { target: string; node: string; file: string; size: number }

/** Where a "kill" strikes: at the n-th status save (or mutating QMP command), before it lands or right after. */
export type KillPoint = { save: number; when: 'before' | 'after' } | { command: number; when: 'before' | 'after' };

/**
 * A DomainHost with one running domain on a ScriptedQemu. saveStatus keeps the
 * last status that "landed"; with `kill` set, the n-th save freezes this host
 * for good (a SIGKILL: nothing after it runs) and `killed` resolves.
 */
export class FakeHost implements DomainHost {
  readonly log = new CaptureLog();
  readonly hooks: DomainHooks[] = [];
  readonly events: DriverEvent[] = [];
  readonly dom: DomainObject;
  readonly paths: StatePaths;
  /** the status file as it is on disk (JSON) */
  saved: string;
  saves = 0;
  kill: KillPoint | null = null;
  readonly killed: Promise<void>;
  private onKilled!: () => void;
  private dead = false;
  private qmp: QmpClient | null = null;
  private nodeIndex = 100;

  constructor(readonly qemu: ScriptedQemu, dirs: { stateDir: string; runDir: string }, disks: FakeDisk[], status?: string) {
    this.paths = new StatePaths(dirs);
    this.killed = new Promise((r) => (this.onKilled = r));
    const def = {
      uuid: '00000000-0000-4000-8000-00000000000a', name: 'fake',
      disks: disks.map((d) => ({ type: 'file', device: 'disk', format: 'qcow2', source: d.file, target: d.target, bus: 'scsi', readonly: false, extra: [] })),
    } as unknown as DomainDef;
    this.dom = new DomainObject(def, true);
    this.dom.liveDef = def;
    const nodes: DiskNodes[] = disks.map((d, i) => ({ target: d.target, qdevId: d.target, storageNode: `${d.node}-storage`, formatNode: d.node, nodeIndex: i + 1 }));
    const st: DomainStatus = status
      ? (JSON.parse(status) as DomainStatus)
      : {
          version: 1, uuid: def.uuid, name: 'fake', persistent: true, pid: 1, pidStartTime: 1, binary: 'qemu', qmpSocket: qemu.socketPath,
          agentSocket: null, runDir: dirs.runDir, disks: nodes, startedAt: new Date(0).toISOString(), liveXml: '', extra: {},
        };
    this.saved = JSON.stringify(st);
    // the runtime's own monitor handling is not used: monitor() below connects to the scripted QEMU
    this.dom.run = new QemuRuntime(st, {
      statusFile: this.paths.status(def.uuid), qmpTimeoutMs: 5000, log: this.log, watch: { attached: () => {}, gone: () => {} },
    });
  }

  addHooks(h: DomainHooks): () => void {
    this.hooks.push(h);
    return () => {};
  }

  getDomain(uuid: string): DomainObject {
    if (uuid !== this.dom.uuid) throw virErr('NO_DOMAIN', 'QEMU', `no domain with matching uuid '${uuid}'`);
    return this.dom;
  }

  private readonly lock = new AsyncMutex();
  withDomainLock<T>(uuid: string, fn: (dom: DomainObject) => Promise<T>): Promise<T> {
    return this.lock.run(() => fn(this.getDomain(uuid)));
  }

  async monitor(): Promise<QmpClient> {
    if (this.dead) return new Promise(() => {});
    if (!this.dom.run) throw virErr('OPERATION_INVALID', 'QEMU', 'domain is not running');
    if (!this.qmp || this.qmp.isClosed) {
      this.qmp = await QmpClient.connect(this.qemu.socketPath);
      this.dom.run.qmp = this.qmp;
      this.killAtCommands(this.qmp);
    }
    return this.qmp;
  }

  withAgent<T>(): Promise<T> {
    return Promise.reject(virErr('AGENT_UNRESPONSIVE', 'QEMU', 'guest agent is not configured'));
  }

  emit(ev: DriverEvent): void {
    this.events.push(ev);
  }

  async saveStatus(dom: DomainObject): Promise<void> {
    if (this.dead) return new Promise(() => {});
    this.saves++;
    const k = this.kill;
    const here = k !== null && 'save' in k && k.save === this.saves;
    if (here && k.when === 'before') return this.die();
    if (dom.run) this.saved = JSON.stringify(dom.run.status);
    if (here && k.when === 'after') return this.die();
  }

  /** mutating QMP commands sent by this host's driver */
  commands = 0;

  /** A kill at the n-th mutating command: before it is sent, or once its reply is back. */
  private killAtCommands(qmp: QmpClient): void {
    const execute = qmp.execute.bind(qmp) as (cmd: string, args?: unknown) => Promise<unknown>;
    (qmp as unknown as { execute: typeof execute }).execute = async (cmd, args) => {
      if (this.dead) return new Promise(() => {});
      const k = this.kill;
      const n = QUERIES.has(cmd) ? 0 : ++this.commands;
      const here = k !== null && 'command' in k && k.command === n;
      if (here && k.when === 'before') return this.die();
      const out = await execute(cmd, args);
      if (here && k.when === 'after') return this.die();
      return out;
    };
  }

  async allocateNodeIndex(): Promise<number> {
    return this.nodeIndex++;
  }

  /** The process is gone: every later call of this host hangs (its monitor connection is closed by close()). */
  private die(): Promise<void> {
    this.dead = true;
    this.onKilled();
    return new Promise(() => {});
  }

  /** The driver's open(): definitions loaded, the running QEMU reconnected (hooks in order). */
  async open(): Promise<void> {
    for (const h of this.hooks) await h.onLoaded?.(this.dom);
    await this.monitor();
    await this.lock.run(async () => {
      for (const h of this.hooks) await h.onReconnected?.(this.dom);
    });
  }

  /** The driver's open() found QEMU dead: the stop hooks, with the status file still there. */
  async openDead(reason: number): Promise<void> {
    for (const h of this.hooks) await h.onLoaded?.(this.dom);
    await this.lock.run(async () => {
      for (const h of this.hooks) await h.onStopped?.(this.dom, reason);
    });
  }

  /** The running driver's start of the domain. */
  async start(): Promise<void> {
    for (const h of this.hooks) await h.onLoaded?.(this.dom);
    await this.monitor();
    for (const h of this.hooks) await h.onStarted?.(this.dom);
  }

  get savedJob(): unknown {
    return (JSON.parse(this.saved) as DomainStatus).extra.backupJob;
  }

  async close(): Promise<void> {
    await this.qmp?.close().catch(() => {});
  }
}

/**
 * CheckpointAccess over the scripted QEMU: checkpoints whose metadata was
 * committed (`committed`); prepare adds a persistent bitmap per disk.
 */
export class FakeCheckpoints implements CheckpointAccess {
  constructor(readonly committed: Set<string>) {}

  prepare(dom: DomainObject, xml: string): PreparedCheckpoint {
    const name = /<name>([^<]+)<\/name>/.exec(xml)?.[1] ?? 'cp';
    if (this.committed.has(name)) throw virErr('OPERATION_INVALID', 'DOMAIN', `checkpoint '${name}' already exists`);
    const actions: TransactionAction[] = dom.disks.map((d) => ({
      type: 'block-dirty-bitmap-add', data: { node: d.formatNode!, name, persistent: true, disabled: false },
    }));
    return {
      def: { name } as PreparedCheckpoint['def'],
      actions,
      commit: async () => {
        this.committed.add(name);
      },
    };
  }

  async ensureUsable(_dom: DomainObject, name: string, disk: string): Promise<{ bitmap: string; granularity: number }> {
    if (!this.committed.has(name)) {
      throw virErr('NO_DOMAIN_CHECKPOINT', 'DOMAIN', `Checkpoint '${name}' for incremental backup of disk '${disk}' not found`);
    }
    return { bitmap: name, granularity: 65536 };
  }

  quiesced<T>(_dom: DomainObject, fn: () => Promise<T>): Promise<T> {
    return fn();
  }
}
