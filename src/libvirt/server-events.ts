// Domain events on libvirt's wire: a connection's registrations (procedure
// 316: an event ID and optionally one domain) and a driver event in its
// callback form, one MESSAGE per matching registration carrying that
// registration's callbackID. Pure: the server decides when to send.
// Event IDs we never produce are accepted and never fire.

import type { DriverEvent } from '../api/driver.js';
import { virErr } from '../errors.js';
import { MessageStatus, MessageType, PROGRAM_VERSION, Program, encodePacket } from './packet.js';
import { DomainEventId, remoteEvents, type WireDomain } from './procedures.js';
import { jobStatsToParams, lifecycleToWire } from './semantics.js';
import { encode } from './xdr.js';

/** libvirtd sends its events with serial 1 (clients ignore it). */
const EVENT_SERIAL = 1;

/** One event ID's form of a driver event: the MESSAGE procedure and its payload for a callbackID. */
interface EventForm {
  eventID: number;
  proc: number;
  /** `dom` carries the domain's id at the time of the event (−1 once stopped) */
  payload(callbackID: number, dom: WireDomain): Buffer;
}

/** A driver event as the wire forms it can take (a block job is both BLOCK_JOB and BLOCK_JOB_2, an I/O error IO_ERROR and IO_ERROR_REASON). */
export interface WireEvent {
  uuid: string;
  forms: EventForm[];
}

export function toWireEvent(ev: DriverEvent): WireEvent {
  const forms: EventForm[] = [];
  switch (ev.type) {
    case 'lifecycle': {
      const w = lifecycleToWire(ev);
      if (w) {
        const { proc, body } = remoteEvents.lifecycle;
        forms.push({ eventID: DomainEventId.LIFECYCLE, proc, payload: (callbackID, dom) => encode(body, { callbackID, dom, ...w }) });
      }
      break;
    }
    case 'reboot': {
      const { proc, body } = remoteEvents.reboot;
      forms.push({ eventID: DomainEventId.REBOOT, proc, payload: (callbackID, dom) => encode(body, { callbackID, dom }) });
      break;
    }
    case 'io-error': {
      // libvirt sends both for every error: IO_ERROR without the reason, IO_ERROR_REASON with it
      const io = { srcPath: ev.srcPath, devAlias: ev.devAlias, action: ev.action };
      const one = remoteEvents.ioError;
      const two = remoteEvents.ioErrorReason;
      forms.push({ eventID: DomainEventId.IO_ERROR, proc: one.proc, payload: (callbackID, dom) => encode(one.body, { callbackID, dom, ...io }) });
      forms.push({
        eventID: DomainEventId.IO_ERROR_REASON,
        proc: two.proc,
        payload: (callbackID, dom) => encode(two.body, { callbackID, dom, ...io, reason: ev.reason }),
      });
      break;
    }
    case 'job-completed': {
      const { proc, body } = remoteEvents.jobCompleted;
      const params = jobStatsToParams(ev.stats);
      forms.push({ eventID: DomainEventId.JOB_COMPLETED, proc, payload: (callbackID, dom) => encode(body, { callbackID, dom, params }) });
      break;
    }
    case 'block-job': {
      const job = { type: ev.blockJobType, status: ev.status };
      const one = remoteEvents.blockJob;
      const two = remoteEvents.blockJob2;
      // BLOCK_JOB names the disk by its source path, BLOCK_JOB_2 by its target
      forms.push({
        eventID: DomainEventId.BLOCK_JOB,
        proc: one.proc,
        payload: (callbackID, dom) => encode(one.body, { callbackID, dom, path: ev.path, ...job }),
      });
      forms.push({
        eventID: DomainEventId.BLOCK_JOB_2,
        proc: two.proc,
        payload: (callbackID, dom) => encode(two.body, { callbackID, dom, dst: ev.disk, ...job }),
      });
      break;
    }
  }
  return { uuid: ev.domain.uuid, forms };
}

interface Registration {
  eventID: number;
  /** null: every domain */
  uuid: string | null;
}

/** One connection's event registrations; callbackIDs come from the server so they are unique daemon-wide, as libvirtd's. */
export class EventRegistrations {
  private readonly byId = new Map<number, Registration>();

  constructor(private readonly nextId: () => number) {}

  get size(): number {
    return this.byId.size;
  }

  register(eventID: number, uuid: string | null): number {
    const id = this.nextId();
    this.byId.set(id, { eventID, uuid });
    return id;
  }

  deregister(callbackID: number): void {
    if (!this.byId.delete(callbackID)) {
      throw virErr('INVALID_ARG', 'RPC', `virConnectDomainEventDeregisterAny: callback ID ${callbackID} not registered`);
    }
  }

  clear(): void {
    this.byId.clear();
  }

  /** Whether any registration wants `ev` (so the server resolves its domain id only when someone listens). */
  wants(ev: WireEvent): boolean {
    for (const reg of this.byId.values()) {
      if ((reg.uuid === null || reg.uuid === ev.uuid) && ev.forms.some((f) => f.eventID === reg.eventID)) return true;
    }
    return false;
  }

  /** The MESSAGE packets `ev` of domain `dom` makes for these registrations, in registration order. */
  messages(ev: WireEvent, dom: WireDomain): Buffer[] {
    const out: Buffer[] = [];
    for (const [callbackID, reg] of this.byId) {
      if (reg.uuid !== null && reg.uuid !== ev.uuid) continue;
      for (const form of ev.forms) {
        if (form.eventID !== reg.eventID) continue;
        const header = { prog: Program.REMOTE, vers: PROGRAM_VERSION, proc: form.proc, type: MessageType.MESSAGE, serial: EVENT_SERIAL, status: MessageStatus.OK };
        out.push(encodePacket(header, form.payload(callbackID, dom)));
      }
    }
    return out;
  }
}
