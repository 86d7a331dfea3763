// Shared by the remote-* tests: a fake Driver that records calls and returns
// canned results, one sample argument list per procedure, and a raw client
// that speaks frames directly (so it can lie, stall or send garbage).

import * as net from 'node:net';
import type { Driver, DriverEvent, EventListener } from '../../src/api/driver.js';
import { FrameDecoder, encodeFrame } from '../../src/remote/frame.js';
import type { DriverProcName, ProcArgs, ProcResult } from '../../src/remote/protocol.js';

const UUID = '6f1c2b1e-2d3a-4c5b-8e9f-0a1b2c3d4e5f';

export const sampleArgs: { [P in DriverProcName]: ProcArgs<P> } = {
  domainDefineXML: ['<domain><name>vm1</name></domain>', 0],
  domainUndefine: [UUID, 16],
  domainCreate: [UUID, 1],
  domainDestroy: [UUID, 1],
  domainSuspend: [UUID],
  domainShutdown: [UUID, 1],
  domainReboot: [UUID, 2],
  domainResume: [UUID],
  domainGetAutostart: [UUID],
  domainSetAutostart: [UUID, true],
  domainUpdateDevice: [UUID, "<disk type='file' device='cdrom'><target dev='sdb' bus='sata'/></disk>", 1],
  domainGetBlockJobInfo: [UUID, 'sda', 1],
  domainGetDiskErrors: [UUID, 0],
  domainLookupByName: ['vm1'],
  domainLookupByUUID: [UUID],
  listAllDomains: [1 << 14],
  domainGetInfo: [UUID],
  domainGetXMLDesc: [UUID, 2],
  qemuMonitorCommand: [UUID, '{"execute":"query-status"}', 0],
  domainFSFreeze: [UUID, ['/', '/boot'], 0],
  domainFSThaw: [UUID, [], 0],
  checkpointCreateXML: [UUID, '<domaincheckpoint><name>c1</name></domaincheckpoint>', 1],
  checkpointGetXMLDesc: [UUID, 'c1', 2],
  listAllCheckpoints: [UUID, 2],
  checkpointListAllChildren: [UUID, 'c1', 1],
  checkpointLookupByName: [UUID, 'c1', 0],
  checkpointGetParent: [UUID, 'c2', 0],
  checkpointDelete: [UUID, 'c1', 4],
  listUnknownBitmaps: [UUID],
  backupBegin: [UUID, "<domainbackup mode='pull'/>", null, 2],
  backupGetXMLDesc: [UUID, 0, 0],
  backupEnd: [UUID, 3, 1],
  listJobIds: [UUID],
  getJobStats: [UUID, 3],
  abortJob: [UUID, 0],
};

const summary = {
  name: 'vm1',
  uuid: UUID,
  id: 4242,
  state: 1,
  reason: 1,
  persistent: true,
  checkpoints: 2,
  hasBackupJob: true,
};

export const cannedResults: { [P in DriverProcName]: ProcResult<P> } = {
  domainDefineXML: { name: 'vm1', uuid: UUID },
  domainUndefine: undefined,
  domainCreate: undefined,
  domainDestroy: undefined,
  domainSuspend: undefined,
  domainShutdown: undefined,
  domainReboot: undefined,
  domainResume: undefined,
  domainGetAutostart: true,
  domainSetAutostart: undefined,
  domainUpdateDevice: undefined,
  domainGetBlockJobInfo: { found: true, type: 5, bandwidth: 0, cur: 1 << 20, end: 1 << 30 },
  domainGetDiskErrors: [{ disk: 'vda', error: 2 }, { disk: 'sdb', error: 1 }],
  domainLookupByName: { name: 'vm1', uuid: UUID },
  domainLookupByUUID: { name: 'vm1', uuid: UUID },
  listAllDomains: [summary, { ...summary, name: 'vm2', id: -1, state: 5, reason: 2, hasBackupJob: false }],
  domainGetInfo: { ...summary, maxMem: 262144, memory: 131072, nrVirtCpu: 2, cpuTime: 1_230_000_000 },
  domainGetXMLDesc: "<domain type='qemu'><name>vm1</name></domain>",
  qemuMonitorCommand: '{"return":{"running":true,"status":"running"}}',
  domainFSFreeze: 2,
  domainFSThaw: 0,
  checkpointCreateXML: 'c1',
  checkpointGetXMLDesc: '<domaincheckpoint><name>c1</name></domaincheckpoint>',
  listAllCheckpoints: ['c1', 'c2', 'ü-ñ'],
  checkpointListAllChildren: ['c2'],
  checkpointLookupByName: 'c1',
  checkpointGetParent: 'c1',
  checkpointDelete: undefined,
  listUnknownBitmaps: [{ disk: 'sda', bitmap: 'orphan' }],
  backupBegin: 7,
  backupGetXMLDesc: "<domainbackup mode='pull' id='7'/>",
  backupEnd: 1,
  listJobIds: [7],
  getJobStats: { type: 3, operation: 9, id: 7, time_elapsed: 1234, disk_total: 1 << 30, disk_processed: 1 << 30, disk_remaining: 0, success: true },
  abortJob: undefined,
};

export interface FakeDriver extends Driver {
  calls: Array<{ proc: string; args: unknown[] }>;
  /** Make a procedure throw (or return a promise that the test controls). */
  behaviour: Partial<Record<DriverProcName, (...args: unknown[]) => Promise<unknown>>>;
  emit(event: DriverEvent): void;
  listenerCount(): number;
  closed: boolean;
}

export function fakeDriver(): FakeDriver {
  const listeners = new Set<EventListener>();
  const base = {
    uri: 'fake:///test',
    calls: [] as Array<{ proc: string; args: unknown[] }>,
    behaviour: {} as FakeDriver['behaviour'],
    closed: false,
    async close() {
      base.closed = true;
    },
    subscribe(l: EventListener) {
      listeners.add(l);
      return () => listeners.delete(l);
    },
    emit(event: DriverEvent) {
      for (const l of listeners) l(event);
    },
    listenerCount: () => listeners.size,
  };
  return new Proxy(base, {
    get(target, prop, receiver) {
      if (typeof prop === 'string' && prop in cannedResults) {
        const name = prop as DriverProcName;
        return async (...args: unknown[]) => {
          target.calls.push({ proc: name, args });
          const b = target.behaviour[name];
          if (b) return b(...args);
          return structuredClone(cannedResults[name]);
        };
      }
      return Reflect.get(target, prop, receiver);
    },
  }) as unknown as FakeDriver;
}

/** A client that speaks raw frames. */
export class RawClient {
  readonly socket: net.Socket;
  private readonly decoder = new FrameDecoder();
  readonly messages: Array<Record<string, unknown>> = [];
  private waiters: Array<() => void> = [];
  closed = false;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on('data', (d: Buffer) => {
      for (const f of this.decoder.push(d)) this.messages.push(JSON.parse(f.toString('utf8')) as Record<string, unknown>);
      this.wake();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
    socket.on('error', () => {});
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  static connect(path: string): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = net.createConnection(path, () => resolve(new RawClient(s)));
      s.once('error', reject);
    });
  }

  sendRaw(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  send(msg: unknown): void {
    this.socket.write(encodeFrame(Buffer.from(JSON.stringify(msg), 'utf8')));
  }

  call(serial: number, proc: string, args: unknown[]): Promise<Record<string, unknown>> {
    this.send({ type: 'call', serial, proc, args });
    return this.waitFor((m) => m.serial === serial);
  }

  async waitFor(pred: (m: Record<string, unknown>) => boolean, timeoutMs = 5000): Promise<Record<string, unknown>> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const i = this.messages.findIndex(pred);
      if (i >= 0) return this.messages.splice(i, 1)[0]!;
      if (this.closed) throw new Error('connection closed while waiting');
      if (Date.now() > deadline) throw new Error('timed out waiting for a message');
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 50);
      });
    }
  }

  async waitClosed(timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed) {
      if (Date.now() > deadline) throw new Error('timed out waiting for close');
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 50);
      });
    }
  }

  close(): void {
    this.socket.destroy();
  }
}
