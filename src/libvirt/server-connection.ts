// One client of virtbackd's libvirt socket: frames in (PacketDecoder), the
// connection's state machine (before CONNECT_OPEN only the handshake
// procedures), calls dispatched concurrently and answered by serial,
// keepalive (PONG at once, even while slow calls run; PING when idle once the
// client negotiated it), event registrations, and the shared client limits.
// A payload that does not decode is an error reply and the connection stays
// usable; a framing error closes it, as libvirtd does.

import type * as net from 'node:net';
import type { CheckedDriver } from '../api/checked-driver.js';
import { entryPoints } from '../api/entry-points.js';
import { VirError, toVirError, virErr } from '../errors.js';
import type { Logger } from '../log.js';
import { FlowControl, type ClientPool, type LimitedClient } from '../remote/client-limits.js';
import {
  type Header,
  KeepaliveProc,
  MessageStatus,
  MessageType,
  PROGRAM_VERSION,
  PacketDecoder,
  Program,
  encodePacket,
  type Packet,
} from './packet.js';
import { CONNECT_RO, DriverFeature, readOnlyDenial, remoteError, type WireDomain } from './procedures.js';
import { EventRegistrations, type WireEvent } from './server-events.js';
import { SUPPORTED_FEATURES, qemuDispatch, remoteDispatch, type CallConnection, type Dispatch, type HostFacts } from './server-handlers.js';
import { toWireError } from './semantics.js';
import { decode, encode } from './xdr.js';

/** The URIs a client may open here: the name libvirt clients send for qemu:///system (and the session one). */
const ACCEPTED_URIS: ReadonlySet<string> = new Set(['qemu:///system', 'qemu:///session']);

/**
 * How long events wait for the connection's calls in flight: replies go out
 * before the events their calls caused (friendlier for clients), but a
 * long call must not hold every event back.
 */
const EVENT_HOLD_MS = 200;

/** An error message longer than this is cut: it travels in every error reply. */
const MAX_ERROR_MESSAGE_CHARS = 64 * 1024;

export interface KeepaliveOptions {
  /** idle time after which a client that negotiated keepalive is PINGed (libvirtd's keepalive_interval: 5 s) */
  intervalMs: number;
  /** PINGs left unanswered after which it is dropped */
  count: number;
}

/** What a connection needs from its server. */
export interface ConnectionServer {
  readonly log: Logger;
  readonly pool: ClientPool<LibvirtConnection>;
  readonly host: HostFacts;
  readonly keepalive: KeepaliveOptions;
  /** the largest message accepted from a read-write / read-only client */
  readonly maxMessage: { rw: number; ro: number };
  driver(readOnly: boolean): CheckedDriver;
  nextCallbackId(): number;
  domainStarted(conn: LibvirtConnection, uuid: string, flags: number): Promise<void>;
  forget(conn: LibvirtConnection): void;
}

const EMPTY = Buffer.alloc(0);

/** The programs served, by number (all version 1); keepalive messages are handled before dispatch. */
const programs: ReadonlyMap<number, ReadonlyMap<number, Dispatch>> = new Map([
  [Program.REMOTE, remoteDispatch],
  [Program.QEMU, qemuDispatch],
]);

export class LibvirtConnection implements LimitedClient, CallConnection {
  private readonly decoder: PacketDecoder;
  private readonly flow: FlowControl<LibvirtConnection>;
  private readonly events: EventRegistrations;
  private readonly log: Logger;
  private opened = false;
  /** CONNECT_OPEN asked for VIR_CONNECT_RO */
  private openedReadOnly = false;
  openedUri = 'qemu:///system';
  private closed = false;
  private keepaliveTimer: NodeJS.Timeout | null = null;
  private lastReceived = Date.now();
  private unansweredPings = 0;
  /** event MESSAGEs held while calls are in flight */
  private heldEvents: Buffer[] = [];
  private eventHold: NodeJS.Timeout | null = null;

  constructor(
    private readonly server: ConnectionServer,
    readonly socket: net.Socket,
    /** the read-only socket: no CONNECT_OPEN flag can lift it */
    readonly socketReadOnly: boolean,
    readonly id: number,
  ) {
    this.decoder = new PacketDecoder(socketReadOnly ? server.maxMessage.ro : server.maxMessage.rw);
    this.flow = new FlowControl(socket, server.pool, this);
    this.events = new EventRegistrations(() => server.nextCallbackId());
    this.log = server.log.child({ client: id, protocol: 'libvirt' });
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('error', (e) => this.log.debug({ error: e.message }, 'client socket error'));
    socket.on('close', () => this.onClose());
  }

  get readOnly(): boolean {
    return this.socketReadOnly || this.openedReadOnly;
  }

  get driver(): CheckedDriver {
    return this.server.driver(this.readOnly);
  }

  get host(): HostFacts {
    return this.server.host;
  }

  get bufferedBytes(): number {
    return this.decoder.pendingBytes + this.socket.writableLength;
  }

  // ---- input ----

  private onData(chunk: Buffer): void {
    if (this.closed) return;
    this.lastReceived = Date.now();
    this.unansweredPings = 0;
    let packets: Packet[];
    try {
      packets = this.decoder.push(chunk);
    } catch (e) {
      // The stream has lost its framing: nothing after this can be trusted.
      this.drop(toVirError(e).message);
      return;
    }
    this.flow.received();
    for (const packet of packets) {
      if (this.closed) return;
      this.onPacket(packet);
    }
  }

  private onPacket({ header: h, payload }: Packet): void {
    if (h.prog === Program.KEEPALIVE && h.vers === PROGRAM_VERSION && h.type === MessageType.MESSAGE) {
      if (h.proc === KeepaliveProc.PING) this.sendKeepalive(KeepaliveProc.PONG);
      return; // a PONG: its arrival already counted as activity
    }
    const table = programs.get(h.prog);
    if (table === undefined || h.vers !== PROGRAM_VERSION) return this.replyError(h, virErr('RPC', 'RPC', `Cannot find program ${h.prog} version ${h.vers}`));
    if (h.type !== MessageType.CALL) {
      const what = h.type === MessageType.CALL_WITH_FDS ? 'file descriptor passing' : h.type === MessageType.STREAM ? 'streams' : `message type ${h.type}`;
      return this.replyError(h, virErr('RPC', 'RPC', `Unexpected message type ${h.type}: ${what} not supported`));
    }
    const dispatch = table.get(h.proc);
    if (!dispatch) return this.replyError(h, virErr('RPC', 'RPC', `unknown procedure: ${h.proc}`));
    if (!this.opened && dispatch.row.access !== 'open') {
      return this.replyError(h, virErr('INTERNAL_ERROR', 'RPC', 'hypervisor connection not open'));
    }
    this.flow.callStarted();
    this.runCall(dispatch, payload).then(
      (ret) => this.reply(h, dispatch, ret),
      (e: unknown) => this.replyError(h, e),
    ).finally(() => {
      this.flow.callEnded();
      if (this.flow.callsInFlight === 0) this.flushEvents();
    });
  }

  private async runCall({ row, handler }: Dispatch, payload: Buffer): Promise<unknown> {
    const args = decode(row.args, payload, `the arguments of ${row.api}`);
    if (this.readOnly) {
      const flags = (args as { flags?: unknown } | undefined)?.flags;
      const denial = readOnlyDenial(row, typeof flags === 'number' ? flags : 0);
      // libvirt's public wrapper refuses in its own error domain (checkpoint APIs: DOMAIN_CHECKPOINT)
      const domain = typeof row.access === 'object' ? entryPoints[row.access.entry].errorDomain : 'DOMAIN';
      if (denial !== null) throw virErr('OPERATION_DENIED', domain, denial);
    }
    return handler(this, args);
  }

  // ---- output ----

  private reply(h: Header, { row }: Dispatch, ret: unknown): void {
    let payload: Buffer;
    try {
      payload = encode(row.ret, ret);
    } catch (e) {
      this.log.error({ proc: h.proc, error: toVirError(e).message }, 'a result the protocol cannot carry');
      return this.replyError(h, virErr('INTERNAL_ERROR', 'RPC', `${row.api} produced a result the protocol cannot carry`));
    }
    this.sendPacket({ ...h, type: MessageType.REPLY, status: MessageStatus.OK }, payload, () =>
      this.replyError(h, virErr('INTERNAL_ERROR', 'RPC', `the reply of ${row.api} exceeds the message size limit`)),
    );
  }

  private replyError(h: Header, e: unknown): void {
    const err = toVirError(e, 'RPC');
    if (!(e instanceof VirError)) this.log.warn({ err: e instanceof Error ? e : err }, 'non-VirError from driver');
    const message = err.message.length > MAX_ERROR_MESSAGE_CHARS ? `${err.message.slice(0, MAX_ERROR_MESSAGE_CHARS - 3)}...` : err.message;
    const payload = encode(remoteError, toWireError(new VirError(err.code, err.domain, message)));
    this.sendPacket({ ...h, type: MessageType.REPLY, status: MessageStatus.ERROR }, payload, () => undefined);
  }

  private sendKeepalive(proc: number): void {
    this.sendPacket({ prog: Program.KEEPALIVE, vers: PROGRAM_VERSION, proc, type: MessageType.MESSAGE, serial: 0, status: MessageStatus.OK }, EMPTY, () => undefined);
  }

  private sendPacket(h: Header, payload: Buffer, tooLarge: () => void): void {
    if (this.closed) return;
    let bytes: Buffer;
    try {
      bytes = encodePacket(h, payload);
    } catch {
      return tooLarge();
    }
    this.write(bytes);
  }

  private write(bytes: Buffer): void {
    if (this.closed) return;
    this.flow.wrote(this.socket.write(bytes));
  }

  /** Whether this connection registered for `ev`. */
  wantsEvent(ev: WireEvent): boolean {
    return !this.closed && this.opened && this.events.wants(ev);
  }

  /** A driver event in wire form: one MESSAGE per matching registration, after the replies in flight. */
  deliver(ev: WireEvent, dom: WireDomain): void {
    if (this.closed || !this.opened) return;
    this.heldEvents.push(...this.events.messages(ev, dom));
    if (this.flow.callsInFlight === 0) this.flushEvents();
    else this.eventHold ??= setTimeout(() => this.flushEvents(), EVENT_HOLD_MS);
  }

  private flushEvents(): void {
    if (this.eventHold !== null) clearTimeout(this.eventHold);
    this.eventHold = null;
    const held = this.heldEvents;
    this.heldEvents = [];
    for (const message of held) this.write(message);
  }

  // ---- what the handlers call (CallConnection) ----

  open(name: string | null, flags: number): void {
    if (this.opened) throw virErr('INTERNAL_ERROR', 'RPC', 'connection already open');
    if (name !== null && !ACCEPTED_URIS.has(name)) {
      throw virErr('NO_CONNECT', 'RPC', `no connection driver available for ${name}`);
    }
    this.opened = true;
    this.openedUri = name ?? 'qemu:///system';
    this.openedReadOnly = (flags & CONNECT_RO) !== 0;
    this.log.debug({ uri: name, readOnly: this.readOnly }, 'connection opened');
  }

  close(): void {
    this.opened = false;
    this.events.clear();
  }

  supportsFeature(feature: number): boolean {
    if (feature === DriverFeature.PROGRAM_KEEPALIVE) this.startKeepalive();
    return SUPPORTED_FEATURES.has(feature);
  }

  registerEvent(eventID: number, uuid: string | null): number {
    return this.events.register(eventID, uuid);
  }

  deregisterEvent(callbackID: number): void {
    this.events.deregister(callbackID);
  }

  domainStarted(uuid: string, flags: number): Promise<void> {
    return this.server.domainStarted(this, uuid, flags);
  }

  // ---- keepalive and end ----

  /** The client answers PINGs: ping it when idle, drop it when it stops answering (libvirtd's keepalive). */
  private startKeepalive(): void {
    if (this.keepaliveTimer !== null || this.closed) return;
    const { intervalMs, count } = this.server.keepalive;
    this.keepaliveTimer = setInterval(() => {
      if (Date.now() - this.lastReceived < intervalMs) return;
      if (this.unansweredPings >= count) return this.drop(`no answer to ${count} keepalive PINGs`);
      this.unansweredPings++;
      this.sendKeepalive(KeepaliveProc.PING);
    }, intervalMs);
    this.keepaliveTimer.unref();
  }

  drop(reason: string): void {
    if (this.closed) return;
    this.log.warn({ reason }, 'client dropped');
    this.disconnect();
  }

  /** Ends the connection without blaming the client (the server is closing). */
  disconnect(): void {
    this.socket.destroy();
    this.onClose();
  }

  /** EOF, with or without CONNECT_CLOSE, is a normal end: registrations go, AUTODESTROY domains die (the server's part). */
  private onClose(): void {
    if (this.closed) return;
    this.closed = true;
    this.log.debug('client disconnected');
    if (this.keepaliveTimer !== null) clearInterval(this.keepaliveTimer);
    this.keepaliveTimer = null;
    if (this.eventHold !== null) clearTimeout(this.eventHold);
    this.heldEvents = [];
    this.events.clear();
    this.server.forget(this);
  }
}
